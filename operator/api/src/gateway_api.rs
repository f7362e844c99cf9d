//! The Gateway API's kinds Portico serves (`gateway.networking.k8s.io/v1`, standard channel
//! v1.6.3): [`GatewayClass`], [`ApiGateway`] (the Gateway API's `Gateway`), [`HttpRoute`] and
//! [`GrpcRoute`]. Their CRDs are vendored unchanged (`crds/gateway.networking.k8s.io_*.yaml`),
//! so these types are only for reading objects and writing their status: they hold the fields
//! Portico acts on, and serde ignores the rest. What Portico does not support is reported in
//! status (`UnsupportedValue`, `UnsupportedProtocol`, …), never silently ignored; the operator's
//! `gateway_api` module translates these objects into the same model as Portico's own kinds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The controller name Portico answers to in `GatewayClass.spec.controllerName`, and writes in
/// the `controllerName` of Gateway API route parent statuses.
pub const CONTROLLER_NAME: &str = "portico.dev/gateway-controller";

/// A class of Gateways, bound to one controller.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    plural = "gatewayclasses",
    status = "GatewayClassStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that manages Gateways of this class.
    pub controller_name: String,
    /// Controller-specific parameters; Portico has none, so a class naming some is not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
}

/// Status of a GatewayClass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    /// `Accepted`, `SupportedVersion`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The features the controller supports, by name, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<SupportedFeature>,
}

/// One supported feature of a GatewayClass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedFeature {
    /// The feature's name, e.g. `HTTPRouteQueryParamMatching`.
    pub name: String,
}

/// The Gateway API's Gateway: listeners served by one controller's proxies.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    root = "ApiGateway",
    plural = "gateways",
    namespaced,
    status = "ApiGatewayStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ApiGatewaySpec {
    /// The GatewayClass this Gateway belongs to.
    pub gateway_class_name: String,
    /// The listeners.
    #[serde(default)]
    pub listeners: Vec<ApiListener>,
    /// Requested addresses; Portico assigns its own (the proxy Service's), so requesting any is
    /// reported as `UnsupportedAddress`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<serde_json::Value>,
}

/// One listener of a Gateway API Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiListener {
    /// Unique within the Gateway.
    pub name: String,
    /// Hostname the listener matches (exact or `*.` wildcard); unset matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port.
    pub port: i32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or a domain-prefixed protocol.
    pub protocol: String,
    /// TLS settings of an HTTPS or TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiListenerTls>,
    /// Which routes may attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<ApiAllowedRoutes>,
}

/// TLS settings of a listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The certificates (Secrets) presented.
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

/// A reference to an object by group, kind, name and namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API group; `""` is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; each field that holds one says its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; defaults to the referring object's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Which routes may attach to a listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAllowedRoutes {
    /// From which namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<ApiRouteNamespaces>,
    /// Which route kinds; empty means the kinds the listener's protocol takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

/// The namespaces routes may attach from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `Selector`: the namespaces' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A label selector (`matchLabels` and `matchExpressions`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A route kind, by group and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteGroupKind {
    /// API group; defaults to `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `HTTPRoute`, `GRPCRoute`, …
    pub kind: String,
}

/// Status of a Gateway API Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGatewayStatus {
    /// Addresses the Gateway is reachable at.
    #[serde(default)]
    pub addresses: Vec<ApiGatewayAddress>,
    /// `Accepted`, `Programmed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One per listener.
    #[serde(default)]
    pub listeners: Vec<ApiListenerStatus>,
}

/// One address of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}

/// Status of one listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiListenerStatus {
    /// The listener's name.
    pub name: String,
    /// The route kinds that may attach.
    #[serde(default)]
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes attached (accepted ones).
    #[serde(default)]
    pub attached_routes: i32,
    /// `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A route's reference to its parent (a Gateway, or a Service for the mesh).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiParentRef {
    /// Defaults to `gateway.networking.k8s.io`; `""` with kind `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Defaults to `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    pub name: String,
    /// A listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port of the Gateway (its listeners on that port) or of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Status of an HTTPRoute or GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteStatus {
    /// One per parent ref, per controller: other controllers' entries are kept.
    #[serde(default)]
    pub parents: Vec<ApiRouteParentStatus>,
}

/// A route's status for one parent, written by one controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteParentStatus {
    /// The parent ref, as written in the route.
    pub parent_ref: ApiParentRef,
    /// The controller that wrote this entry.
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The Gateway API's HTTPRoute.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    plural = "httproutes",
    namespaced,
    status = "ApiRouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateways (or Services) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ApiParentRef>,
    /// Host names the route matches.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules; none means one rule sending nothing (404).
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches (any); none matches every request (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied in order.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Where matching requests go.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Request and backend timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Fields of later or experimental versions Portico does not read (`retry`,
    /// `sessionPersistence`): kept so a rule using them is reported, not served differently.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One match of an HTTPRoute rule: every part must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path; defaults to `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// Method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The path; defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Name of the header or parameter.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A filter of an HTTPRoute or GRPCRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`, `RequestRedirect`,
    /// `URLRewrite`, `ExtensionRef`, `CORS`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// With `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// With `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// With `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// With `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// With `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// With `CORS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<HttpCors>,
    /// The settings of filter types Portico does not serve (`extensionRef`, …), kept so the
    /// object reads back whole.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The `CORS` filter: which cross-origin requests the Gateway allows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCors {
    /// Origins (`https://a.example`, `https://*.example.com`, `*`).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Whether credentials may be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Methods, or `*`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers, or `*`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight's answer may be cached (the API's default is 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i32>,
    /// Fields of later versions, kept so the object reads back whole.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Header edits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Set (replace).
    #[serde(default)]
    pub set: Vec<NameValue>,
    /// Add (append).
    #[serde(default)]
    pub add: Vec<NameValue>,
    /// Remove by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A mirror of requests to another backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestMirror {
    /// The backend that gets the copies.
    #[serde(rename = "backendRef")]
    pub backend_ref: BackendObjectRef,
    /// Share of requests mirrored, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    /// Share of requests mirrored, as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// A fraction `numerator / denominator` (denominator defaults to 100).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    /// Numerator.
    pub numerator: i32,
    /// Denominator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i32>,
}

/// A redirect answered by the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// 301 or 302 (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

/// A rewrite of the request's host or path before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlRewrite {
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A path replacement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// A backend by group, kind, name, namespace and port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendObjectRef {
    /// Defaults to `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Defaults to `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A weighted backend of a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpBackendRef {
    /// The backend.
    #[serde(flatten)]
    pub backend: BackendObjectRef,
    /// Weight (default 1); 0 sends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Filters for requests sent to this backend only (not supported: reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
}

/// Timeouts of an HTTPRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// The Gateway API's GRPCRoute.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    root = "GrpcRoute",
    plural = "grpcroutes",
    namespaced,
    status = "ApiRouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// The Gateways (or Services) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ApiParentRef>,
    /// Host names the route matches.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// One rule of a GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// The rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches (any); none matches every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters (the HTTPRoute filter shapes GRPCRoute shares).
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Where matching calls go.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Fields Portico does not read (`sessionPersistence`): kept so they are reported.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One match of a GRPCRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcRouteMatch {
    /// Service and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Headers (metadata).
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// A gRPC service and method match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Fully qualified service, e.g. `foo.bar.Echo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method, e.g. `Ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
