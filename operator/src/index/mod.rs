//! The in-memory index: every watched object, and what each proxy must be told.
//!
//! ```text
//!  watch events ──apply/delete/reset──► Index ──refresh──► per Gateway: watch::Sender<RouteTable>
//!  (Gateway, Route, ServicePolicy,        │                             watch::Sender<Backends>
//!   Service, EndpointSlice, Secret,       ├──────────────► watch::Sender<Statuses> (status writer)
//!   Namespace, ReferenceGrant, Pod)       └──────────────► per connected sidecar's pod:
//!                                                          watch::Sender<InboundPolicy>
//! ```
//!
//! Pods are kept as compact records (`pods`) and only feed the per-pod inbound policies
//! (`inbound`): a pod event never recomputes routes, backends or statuses.
//!
//! Each event updates the stored objects and recomputes the outputs; a channel is only written
//! when its content really changed, so an EndpointSlice change never touches a RouteTable
//! receiver and an unrelated Route never wakes a proxy. The index is synchronous and owns no
//! tasks: tests apply objects and read receivers directly.
//!
//! The work is split by job:
//!
//! | module        | job                                                                   |
//! |---------------|-----------------------------------------------------------------------|
//! | `object`      | [`Key`], [`Object`], [`Kind`]: what the watches hand in               |
//! | `route_entry` | a Route translated once on arrival, with what keeps it from serving   |
//! | `attach`      | which listeners a Route's parent ref attaches to, or why not          |
//! | `hostnames`   | listener/Route hostname intersection                                  |
//! | `tls`         | HTTPS listeners' certificates from their Secrets                      |
//! | `credentials` | authentication policies' keys and users from their Secrets            |
//! | `grants`      | cross-namespace references and the ReferenceGrants that permit them   |
//! | `listeners`   | the listeners a Gateway's proxies bind; what feeds a TCP listener     |
//! | `routes`      | the route table of one Gateway's proxies                              |
//! | `mesh`        | the mesh-wide config of sidecars                                      |
//! | `backends`    | backends by [`ServicePort`], endpoints and policy applied             |
//! | `endpoints`   | a Service port's endpoints from its EndpointSlices                    |
//! | `pods`        | compact Pod records, by key and by address                            |
//! | `refresh`     | recomputing and publishing only what changed                          |
//! | `status`      | the status every object should carry                                  |
//! | `inbound`     | per-pod inbound policies                                              |

mod attach;
mod backends;
pub mod credentials;
mod endpoints;
pub mod gateway_api;
mod grants;
mod hostnames;
mod inbound;
mod listeners;
mod mesh;
mod object;
mod pods;
mod refresh;
mod route_entry;
mod routes;
mod status;
mod tls;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use portico_api::gateway_api::GatewayClass;
use portico_api::route_policy::TargetKind;
use portico_api::{Gateway, ReferenceGrant, RoutePolicy, ServicePolicy};
use portico_proxy_api::{self as contract, RouteTable};
use tokio::sync::watch;

use attach::Attachment;
use backends::Memo;
pub(crate) use backends::{Wanted, empty_backend};
use gateway_api::{ApiGatewayEntry, ApiSource, GRPCROUTE, HTTPROUTE};
use object::SERVICE_NAME_LABEL;
use route_entry::RouteEntry;

pub use backends::{Backends, ServicePort};
pub use inbound::rate_limit;
pub use mesh::mesh_key;
pub use object::{Key, Kind, Object};
pub use pods::PodInfo;
pub use status::{
    ApiGatewayState, ApiListenerState, ApiRouteState, ClassState, Cond, GatewayState,
    ListenerState, ParentState, PolicyState, RoutePolicyState, RouteState, Statuses,
};

/// Name of the ServiceAccount, Service and Deployment of a Gateway's proxies:
/// `portico-gateway-<gateway name>`, in the Gateway's namespace.
pub fn proxy_name(gateway: &str) -> String {
    portico_proxy_api::gateway_proxy_name(gateway)
}

/// What one gateway proxy is subscribed to.
struct ProxyChannels {
    routes: watch::Sender<Arc<RouteTable>>,
    backends: watch::Sender<Arc<Backends>>,
    /// The Service ports the last RouteTable refers to: what an endpoint change must touch.
    wanted: Wanted,
}

/// Receivers of one gateway proxy's config: the two halves travel apart.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Listeners and routes.
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// Backends and endpoints.
    pub backends: watch::Receiver<Arc<Backends>>,
}

/// Counters the admin endpoint reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexStats {
    /// Events applied (apply, delete, reset).
    pub events: u64,
    /// RouteTable publications.
    pub route_updates: u64,
    /// BackendSet publications.
    pub backend_updates: u64,
    /// Objects held.
    pub objects: u64,
}

/// The index. Wrap it in a mutex to share it; no method awaits.
pub struct Index {
    /// The Gateways served: Portico's, and the Gateway API's of a Portico class translated
    /// (see [`Index::merge_gateways`]).
    gateways: BTreeMap<Key, Arc<Gateway>>,
    /// Portico's own Gateways.
    own_gateways: BTreeMap<Key, Arc<Gateway>>,
    /// The Gateway API's Gateways (of any class), translated.
    api_gateways: BTreeMap<Key, Arc<ApiGatewayEntry>>,
    /// The keys in `gateways` that are Gateway API Gateways.
    api_gateway_keys: BTreeSet<Key>,
    /// GatewayClasses, by name.
    classes: BTreeMap<String, Arc<GatewayClass>>,
    /// The Gateway API routes as watched, by index key (see `gateway_api::route_key`).
    api_sources: BTreeMap<Key, ApiSource>,
    /// RoutePolicies, attached to Gateway API routes and Gateways.
    route_policies: BTreeMap<Key, Arc<RoutePolicy>>,
    routes: BTreeMap<Key, Arc<RouteEntry>>,
    policies: BTreeMap<Key, Arc<ServicePolicy>>,
    services: BTreeMap<Key, Arc<Service>>,
    /// EndpointSlices by Service, then by slice name.
    slices: BTreeMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// The Service each stored slice is filed under (for deletes and relabels).
    slice_service: BTreeMap<Key, Key>,
    /// `kubernetes.io/tls` Secrets, read and checked as listener certificates.
    secrets: BTreeMap<Key, Arc<tls::TlsPair>>,
    /// Secrets labelled as credentials, for authentication policies.
    credentials: BTreeMap<Key, Arc<Secret>>,
    namespaces: BTreeMap<String, Arc<Namespace>>,
    /// ReferenceGrants, by key: the grants of one namespace are one range.
    grants: BTreeMap<Key, Arc<ReferenceGrant>>,
    deployments: BTreeMap<Key, Arc<Deployment>>,
    pods: pods::Pods,
    /// The guarding ServicePolicy (with authorization or rate limit) in force per Service.
    guards: BTreeMap<Key, Key>,
    /// Inbound policies of the pods whose sidecar subscribed.
    inbound: BTreeMap<Key, watch::Sender<Arc<contract::InboundPolicy>>>,
    proxies: BTreeMap<Key, ProxyChannels>,
    generation: u64,
    statuses: watch::Sender<Arc<Statuses>>,
    gateway_specs: watch::Sender<Arc<GatewaySpecs>>,
    stats: IndexStats,
    mesh: MeshSettings,
}

/// How the mesh identifies workloads, fixed when the operator starts.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// The trust domain of SPIFFE IDs (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub trust_domain: String,
    /// The operator issues workload certificates: endpoints of meshed pods carry their
    /// identity, and proxies connect to them with mTLS.
    pub identities: bool,
    /// The mTLS mode of namespaces without a `portico.dev/mtls-mode` annotation.
    pub mtls: contract::MtlsMode,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            identities: true,
            mtls: contract::MtlsMode::Permissive,
        }
    }
}

/// What the reconciler needs of one Gateway to run its proxies.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewaySpec {
    /// The Gateway's `metadata.uid`, for the owner references of the proxy objects.
    pub uid: String,
    /// The Gateway is the Gateway API's kind (`gateway.networking.k8s.io`), not Portico's: the
    /// owner references name that kind.
    pub gateway_api: bool,
    /// The Gateway's spec.
    pub spec: portico_api::GatewaySpec,
}

/// The Gateways the reconciler must run proxies for.
pub type GatewaySpecs = BTreeMap<Key, GatewaySpec>;

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            gateways: BTreeMap::new(),
            own_gateways: BTreeMap::new(),
            api_gateways: BTreeMap::new(),
            api_gateway_keys: BTreeSet::new(),
            classes: BTreeMap::new(),
            api_sources: BTreeMap::new(),
            route_policies: BTreeMap::new(),
            routes: BTreeMap::new(),
            policies: BTreeMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_service: BTreeMap::new(),
            secrets: BTreeMap::new(),
            credentials: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            grants: BTreeMap::new(),
            deployments: BTreeMap::new(),
            pods: pods::Pods::default(),
            guards: BTreeMap::new(),
            inbound: BTreeMap::new(),
            proxies: BTreeMap::new(),
            generation: 0,
            statuses: watch::Sender::new(Arc::new(Statuses::default())),
            gateway_specs: watch::Sender::new(Arc::new(GatewaySpecs::new())),
            stats: IndexStats::default(),
            mesh: MeshSettings::default(),
        }
    }

    /// An empty index for a mesh with `mesh`'s settings.
    pub fn with_mesh(mesh: MeshSettings) -> Self {
        Self {
            mesh,
            ..Self::new()
        }
    }

    /// Adds or replaces an object and recomputes what changed.
    pub fn apply(&mut self, obj: Object) {
        self.stats.events += 1;
        match obj {
            Object::EndpointSlice(slice) => {
                let key = Key::of(&slice);
                let mut touched: BTreeSet<Key> =
                    self.slice_service.get(&key).cloned().into_iter().collect();
                if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                    touched.insert(Key::new(key.namespace.clone(), svc.clone()));
                }
                let mut pods = self.slice_pods(&key);
                self.insert(Object::EndpointSlice(slice));
                self.refresh_endpoints(&touched);
                pods.extend(self.slice_pods(&key));
                self.refresh_inbound(pods);
            }
            Object::Pod(pod) => {
                let key = pod.key.clone();
                let mesh_changed = self.pods.get(&key).is_none_or(|old| {
                    old.meshed != pod.meshed
                        || old.ips != pod.ips
                        || old.service_account != pod.service_account
                });
                let meshed = pod.meshed;
                self.pods.insert(pod);
                if meshed && mesh_changed && self.mesh.identities {
                    // Endpoints of this pod now carry its identity.
                    let services = self.services_of_pod(&key);
                    self.refresh_endpoints(&services);
                }
                self.refresh_inbound(BTreeSet::from([key]));
            }
            Object::Namespace(ns) => {
                let name = ns.name_any();
                self.insert(Object::Namespace(ns));
                self.refresh();
                let pods = self.subscribed_in(Some(&name));
                self.refresh_inbound(pods);
            }
            Object::ServicePolicy(policy) => {
                let ns = policy.namespace().unwrap_or_default();
                self.insert(Object::ServicePolicy(policy));
                self.refresh_guards();
                self.refresh();
                let pods = self.subscribed_in(Some(&ns));
                self.refresh_inbound(pods);
            }
            obj => {
                let kind = obj.kind();
                self.insert(obj);
                // Done here, once per event, not in `insert`: a relist inserts many objects and
                // then derives these once (see `reset`).
                if kind == Kind::RoutePolicy {
                    self.retranslate_api_routes();
                }
                if matches!(
                    kind,
                    Kind::Gateway | Kind::ApiGateway | Kind::GatewayClass | Kind::RoutePolicy
                ) {
                    self.merge_gateways();
                }
                self.refresh();
            }
        }
    }

    /// Removes an object and recomputes what changed.
    pub fn delete(&mut self, obj: &Object) {
        let key = match obj {
            Object::Gateway(o) => Key::of(o),
            Object::Route(o) => Key::of(o),
            Object::ServicePolicy(o) => Key::of(o),
            Object::Service(o) => Key::of(o),
            Object::EndpointSlice(o) => Key::of(o),
            Object::Secret(o) | Object::Credential(o) => Key::of(o),
            Object::Namespace(o) => Key::of(o),
            Object::ReferenceGrant(o) => Key::of(o),
            Object::Deployment(o) => Key::of(&**o),
            Object::Pod(o) => o.key.clone(),
            Object::GatewayClass(o) => Key::of(o),
            Object::ApiGateway(o) => Key::of(&**o),
            Object::HttpRoute(o) => Key::of(&**o),
            Object::GrpcRoute(o) => Key::of(&**o),
            Object::RoutePolicy(o) => Key::of(&**o),
        };
        self.delete_key(obj.kind(), &key);
    }

    /// Removes the object of `kind` called `key` (namespace empty for Namespaces).
    pub fn delete_key(&mut self, kind: Kind, key: &Key) {
        self.stats.events += 1;
        match kind {
            Kind::EndpointSlice => {
                let touched: BTreeSet<Key> =
                    self.slice_service.get(key).cloned().into_iter().collect();
                let pods = self.slice_pods(key);
                self.remove(kind, key);
                self.refresh_endpoints(&touched);
                self.refresh_inbound(pods);
            }
            Kind::Pod => {
                self.pods.remove(key);
                self.refresh_inbound(BTreeSet::from([key.clone()]));
            }
            Kind::ServicePolicy => {
                self.remove(kind, key);
                self.refresh_guards();
                self.refresh();
                let pods = self.subscribed_in(Some(&key.namespace));
                self.refresh_inbound(pods);
            }
            _ => {
                self.remove(kind, key);
                self.refresh();
            }
        }
    }

    /// Replaces every object of `kind` (in `namespace`, or everywhere when `None`) with
    /// `objects`, after a watch's (re)list. Objects missing from the list were deleted meanwhile.
    pub fn reset(&mut self, kind: Kind, namespace: Option<&str>, objects: Vec<Object>) {
        let keep = |k: &Key| namespace.is_some_and(|ns| ns != k.namespace);
        let route_kind = |k: &Key| gateway_api::split_route_key(k).map(|(kind, _)| kind.kind);
        match kind {
            Kind::Gateway => self.own_gateways.retain(|k, _| keep(k)),
            Kind::ApiGateway => self.api_gateways.retain(|k, _| keep(k)),
            Kind::GatewayClass => self.classes.clear(),
            Kind::Route => self
                .routes
                .retain(|k, _| keep(k) || route_kind(k).is_some()),
            Kind::HttpRoute => {
                self.routes
                    .retain(|k, _| keep(k) || route_kind(k) != Some(HTTPROUTE.kind));
                self.api_sources
                    .retain(|k, _| keep(k) || route_kind(k) != Some(HTTPROUTE.kind));
            }
            Kind::GrpcRoute => {
                self.routes
                    .retain(|k, _| keep(k) || route_kind(k) != Some(GRPCROUTE.kind));
                self.api_sources
                    .retain(|k, _| keep(k) || route_kind(k) != Some(GRPCROUTE.kind));
            }
            Kind::RoutePolicy => self.route_policies.retain(|k, _| keep(k)),
            Kind::ServicePolicy => self.policies.retain(|k, _| keep(k)),
            Kind::Service => self.services.retain(|k, _| keep(k)),
            Kind::Secret => self.secrets.retain(|k, _| keep(k)),
            Kind::Credential => self.credentials.retain(|k, _| keep(k)),
            Kind::Namespace => self.namespaces.clear(),
            Kind::ReferenceGrant => self.grants.retain(|k, _| keep(k)),
            Kind::Deployment => self.deployments.retain(|k, _| keep(k)),
            Kind::EndpointSlice => {
                self.slices.retain(|k, _| keep(k));
                self.slice_service.retain(|k, _| keep(k));
            }
            Kind::Pod => self.pods.remove_where(|k| !keep(k)),
        }
        for obj in objects.into_iter().filter(|o| o.kind() == kind) {
            self.insert(obj);
        }
        if kind == Kind::RoutePolicy {
            self.retranslate_api_routes();
        }
        self.merge_gateways();
        self.stats.events += 1;
        // Pods feed nothing but inbound policies; a relist of 10,000 pods must not recompute
        // every route and status.
        if kind != Kind::Pod {
            self.refresh_guards();
            self.refresh();
        }
        // Pods of one namespace can be callers of any namespace's Services.
        let scope = if kind == Kind::Pod { None } else { namespace };
        let pods = self.subscribed_in(scope);
        self.refresh_inbound(pods);
    }

    fn insert(&mut self, obj: Object) {
        match obj {
            Object::Gateway(o) => {
                self.own_gateways.insert(Key::of(&o), Arc::new(o));
            }
            Object::ApiGateway(o) => {
                self.api_gateways
                    .insert(Key::of(&*o), Arc::new(ApiGatewayEntry::new(*o)));
            }
            Object::GatewayClass(o) => {
                self.classes
                    .insert(gateway_api::class_name(&o), Arc::new(o));
            }
            Object::HttpRoute(o) => {
                let key = gateway_api::route_key(
                    HTTPROUTE,
                    &o.namespace().unwrap_or_default(),
                    &o.name_any(),
                );
                self.insert_api_route(key, ApiSource::Http(o));
            }
            Object::GrpcRoute(o) => {
                let key = gateway_api::route_key(
                    GRPCROUTE,
                    &o.namespace().unwrap_or_default(),
                    &o.name_any(),
                );
                self.insert_api_route(key, ApiSource::Grpc(o));
            }
            Object::RoutePolicy(o) => {
                self.route_policies.insert(Key::of(&*o), Arc::new(*o));
            }
            Object::Route(o) => {
                let key = Key::of(&o);
                self.routes
                    .insert(key.clone(), Arc::new(RouteEntry::new(&key, o)));
            }
            Object::ServicePolicy(o) => {
                self.policies.insert(Key::of(&o), Arc::new(o));
            }
            Object::Service(o) => {
                self.services.insert(Key::of(&o), Arc::new(o));
            }
            Object::Secret(o) => {
                self.secrets
                    .insert(Key::of(&o), Arc::new(tls::tls_pair(&o)));
            }
            Object::Credential(o) => {
                self.credentials.insert(Key::of(&o), Arc::new(o));
            }
            Object::Namespace(o) => {
                self.namespaces.insert(o.name_any(), Arc::new(o));
            }
            Object::ReferenceGrant(o) => {
                self.grants.insert(Key::of(&o), Arc::new(o));
            }
            Object::Deployment(o) => {
                self.deployments.insert(Key::of(&*o), Arc::new(*o));
            }
            Object::Pod(o) => {
                self.pods.insert(o);
            }
            Object::EndpointSlice(o) => {
                let key = Key::of(&o);
                self.remove_slice(&key);
                let Some(service) = o.labels().get(SERVICE_NAME_LABEL).cloned() else {
                    return;
                };
                let service = Key::new(key.namespace.clone(), service);
                self.slices
                    .entry(service.clone())
                    .or_default()
                    .insert(key.name.clone(), Arc::new(o));
                self.slice_service.insert(key, service);
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Gateway => {
                self.own_gateways.remove(key);
                self.merge_gateways();
            }
            Kind::ApiGateway => {
                self.api_gateways.remove(key);
                self.merge_gateways();
            }
            Kind::GatewayClass => {
                self.classes.remove(&key.name);
                self.merge_gateways();
            }
            Kind::HttpRoute | Kind::GrpcRoute => {
                let kind = if kind == Kind::HttpRoute {
                    HTTPROUTE
                } else {
                    GRPCROUTE
                };
                let key = gateway_api::route_key(kind, &key.namespace, &key.name);
                self.routes.remove(&key);
                self.api_sources.remove(&key);
            }
            Kind::RoutePolicy => {
                self.route_policies.remove(key);
                self.retranslate_api_routes();
                self.merge_gateways();
            }
            Kind::Route => {
                self.routes.remove(key);
            }
            Kind::ServicePolicy => {
                self.policies.remove(key);
            }
            Kind::Service => {
                self.services.remove(key);
            }
            Kind::Secret => {
                self.secrets.remove(key);
            }
            Kind::Credential => {
                self.credentials.remove(key);
            }
            Kind::Namespace => {
                self.namespaces.remove(&key.name);
            }
            Kind::ReferenceGrant => {
                self.grants.remove(key);
            }
            Kind::Deployment => {
                self.deployments.remove(key);
            }
            Kind::EndpointSlice => self.remove_slice(key),
            Kind::Pod => {
                self.pods.remove(key);
            }
        }
    }

    fn remove_slice(&mut self, key: &Key) {
        if let Some(service) = self.slice_service.remove(key)
            && let Some(slices) = self.slices.get_mut(&service)
        {
            slices.remove(&key.name);
            if slices.is_empty() {
                self.slices.remove(&service);
            }
        }
    }

    /// The config receivers of the proxies of Gateway `gateway`. A Gateway that does not exist
    /// (yet) has an empty config; it fills in when the Gateway appears.
    pub fn subscribe(&mut self, gateway: &Key) -> Subscription {
        if !self.proxies.contains_key(gateway) {
            let (routes, wanted) = self.gateway_routes(gateway);
            let backends = self.backend_set(&wanted);
            self.generation += 1;
            let routes = Arc::new(RouteTable {
                generation: self.generation,
                ..routes
            });
            let backends = Arc::new(Backends {
                generation: self.generation,
                ..backends
            });
            self.proxies.insert(
                gateway.clone(),
                ProxyChannels {
                    routes: watch::Sender::new(routes),
                    backends: watch::Sender::new(backends),
                    wanted,
                },
            );
        }
        let ch = &self.proxies[gateway];
        Subscription {
            routes: ch.routes.subscribe(),
            backends: ch.backends.subscribe(),
        }
    }

    /// The config receivers of sidecar proxies: the mesh-wide config (see the `mesh` module).
    pub fn subscribe_mesh(&mut self) -> Subscription {
        self.subscribe(&mesh_key())
    }

    /// The desired status of every Gateway, Route and ServicePolicy, recomputed on each change.
    pub fn statuses(&self) -> watch::Receiver<Arc<Statuses>> {
        self.statuses.subscribe()
    }

    /// Every Gateway's uid and spec; changes only when a Gateway is added, removed or its spec
    /// changes (status writes do not wake the reconciler).
    pub fn gateway_specs(&self) -> watch::Receiver<Arc<GatewaySpecs>> {
        self.gateway_specs.subscribe()
    }

    /// Counters for the admin endpoint.
    pub fn stats(&self) -> IndexStats {
        let objects = self.own_gateways.len()
            + self.api_gateways.len()
            + self.classes.len()
            + self.route_policies.len()
            + self.routes.len()
            + self.policies.len()
            + self.services.len()
            + self.slice_service.len()
            + self.secrets.len()
            + self.credentials.len()
            + self.namespaces.len()
            + self.grants.len()
            + self.deployments.len()
            + self.pods.len();
        IndexStats {
            objects: objects as u64,
            ..self.stats
        }
    }

    /// Rebuilds the served Gateways: Portico's, and each Gateway API Gateway whose class names
    /// Portico's controller and whose name no Portico Gateway holds.
    fn merge_gateways(&mut self) {
        let mut gateways = self.own_gateways.clone();
        let mut api_keys = BTreeSet::new();
        for (key, entry) in &self.api_gateways {
            if gateways.contains_key(key) || !self.class_is_ours(gateway_api::class_of(&entry.api))
            {
                continue;
            }
            let mut translated = entry.translated.clone();
            translated.spec.defaults = self
                .route_policy_for(&key.namespace, TargetKind::Gateway, &key.name, None)
                .map(gateway_api::gateway_defaults);
            gateways.insert(key.clone(), Arc::new(translated));
            api_keys.insert(key.clone());
        }
        self.gateways = gateways;
        self.api_gateway_keys = api_keys;
    }

    /// Stores a Gateway API route and translates it with the RoutePolicies attached to it.
    fn insert_api_route(&mut self, key: Key, source: ApiSource) {
        let entry = self.api_route_entry(&key, &source);
        self.routes.insert(key.clone(), Arc::new(entry));
        self.api_sources.insert(key, source);
    }

    fn api_route_entry(&self, key: &Key, source: &ApiSource) -> RouteEntry {
        let (_, real) = gateway_api::split_route_key(key).unwrap_or((source.kind(), key.clone()));
        let t = source.translate(|section| {
            self.route_policy_for(&real.namespace, source.target_kind(), &real.name, section)
        });
        RouteEntry::from_api(key, source.kind(), t)
    }

    /// Translates every Gateway API route again (a RoutePolicy changed).
    fn retranslate_api_routes(&mut self) {
        let entries: Vec<(Key, RouteEntry)> = self
            .api_sources
            .iter()
            .map(|(k, s)| (k.clone(), self.api_route_entry(k, s)))
            .collect();
        for (k, e) in entries {
            self.routes.insert(k, Arc::new(e));
        }
    }

    /// The RoutePolicy that applies to target `kind`/`name` (and rule `section`, or the whole
    /// object) in `namespace`: of those naming exactly that target, the oldest, then the first
    /// by name.
    pub(super) fn route_policy_for(
        &self,
        namespace: &str,
        kind: TargetKind,
        name: &str,
        section: Option<&str>,
    ) -> Option<&RoutePolicy> {
        self.route_policies
            .range(Key::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, p)| &**p)
            .filter(|p| {
                p.spec.target_refs.iter().any(|t| {
                    t.kind == kind && t.name == name && t.section_name.as_deref() == section
                })
            })
            .min_by(|a, b| {
                (
                    a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    a.name_any(),
                )
                    .cmp(&(
                        b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        b.name_any(),
                    ))
            })
    }

    /// Whether GatewayClass `name` exists and names Portico's controller.
    fn class_is_ours(&self, name: &str) -> bool {
        self.classes
            .get(name)
            .is_some_and(|c| gateway_api::is_ours(c))
    }

    /// The kind of the served Gateway `key`, as grants name it.
    pub(super) fn gateway_kind(&self, key: &Key) -> grants::GroupKind {
        if self.api_gateway_keys.contains(key) {
            gateway_api::API_GATEWAY
        } else {
            grants::GATEWAY
        }
    }

    /// Number of Gateways with a config channel (subscribed or existing).
    pub fn proxy_channels(&self) -> usize {
        self.proxies.len()
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fields;
#[cfg(test)]
mod tests_gateway_api;
#[cfg(test)]
mod tests_grants;
#[cfg(test)]
mod tests_inbound;
#[cfg(test)]
mod tests_policies;
