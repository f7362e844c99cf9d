//! The watched objects as the index names them: [`Key`] (namespace and name), [`Object`] (one
//! watched object as the watches hand it over) and [`Kind`].

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use portico_api::gateway_api::{ApiGateway, GatewayClass, GrpcRoute, HttpRoute};
use portico_api::{Gateway, ReferenceGrant, Route, RoutePolicy, ServicePolicy};

use super::PodInfo;

/// Namespace and name of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub(super) fn of<K: kube::Resource>(obj: &K) -> Self {
        Self::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A watched object, as the watches hand it to the index.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Object {
    Gateway(Gateway),
    Route(Route),
    ServicePolicy(ServicePolicy),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    /// A Secret labelled as a credential (see the `credentials` module).
    Credential(Secret),
    Namespace(Namespace),
    /// The Gateway API's grant of cross-namespace references (see the `grants` module).
    ReferenceGrant(ReferenceGrant),
    /// Only the gateway proxy Deployments the operator runs (for `Programmed`). Boxed: a
    /// Deployment is several times larger than the other objects.
    Deployment(Box<Deployment>),
    /// The compact record of a Pod (see the `pods` module).
    Pod(PodInfo),
    /// The Gateway API's GatewayClass (see the `gateway_api` module).
    GatewayClass(GatewayClass),
    /// The Gateway API's Gateway.
    ApiGateway(Box<ApiGateway>),
    /// The Gateway API's HTTPRoute.
    HttpRoute(Box<HttpRoute>),
    /// The Gateway API's GRPCRoute.
    GrpcRoute(Box<GrpcRoute>),
    /// Route policies attached to Gateway API objects (see the `gateway_api` module).
    RoutePolicy(Box<RoutePolicy>),
}

/// The kinds of watched objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Kind {
    Gateway,
    Route,
    ServicePolicy,
    Service,
    EndpointSlice,
    Secret,
    /// Secrets labelled `portico.dev/credential`: a watch of its own (TLS Secrets are
    /// selected by type, credentials by label, and one Secret may be both).
    Credential,
    Namespace,
    ReferenceGrant,
    Deployment,
    Pod,
    GatewayClass,
    ApiGateway,
    HttpRoute,
    GrpcRoute,
    RoutePolicy,
}

impl Kind {
    /// Every kind, in the order the watches start.
    pub const ALL: [Kind; 16] = [
        Kind::Namespace,
        Kind::GatewayClass,
        Kind::ReferenceGrant,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::Credential,
        Kind::ServicePolicy,
        Kind::Route,
        Kind::Gateway,
        Kind::RoutePolicy,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ApiGateway,
        Kind::Pod,
    ];

    /// Lowercase plural, the `kind` label in metrics.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Gateway => "gateways",
            Kind::Route => "routes",
            Kind::ServicePolicy => "servicepolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Secret => "secrets",
            Kind::Credential => "credentials",
            Kind::Namespace => "namespaces",
            Kind::ReferenceGrant => "referencegrants",
            Kind::Deployment => "deployments",
            Kind::Pod => "pods",
            Kind::GatewayClass => "gatewayclasses",
            Kind::ApiGateway => "gateways.gateway.networking.k8s.io",
            Kind::HttpRoute => "httproutes",
            Kind::GrpcRoute => "grpcroutes",
            Kind::RoutePolicy => "routepolicies",
        }
    }
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Gateway(_) => Kind::Gateway,
            Object::Route(_) => Kind::Route,
            Object::ServicePolicy(_) => Kind::ServicePolicy,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::Credential(_) => Kind::Credential,
            Object::Namespace(_) => Kind::Namespace,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Deployment(_) => Kind::Deployment,
            Object::Pod(_) => Kind::Pod,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::ApiGateway(_) => Kind::ApiGateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::RoutePolicy(_) => Kind::RoutePolicy,
        }
    }
}

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
