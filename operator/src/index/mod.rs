//! The in-memory index: every watched object, and what each proxy must be told.
//!
//! ```text
//!  watch events ──apply/delete/reset──► Index ──refresh──► per Gateway: watch::Sender<RouteTable>
//!  (Gateway, Route, ServicePolicy,        │                             watch::Sender<BackendSet>
//!   Service, EndpointSlice, Secret,       ├──────────────► watch::Sender<Statuses> (status writer)
//!   Namespace, Pod)                       └──────────────► per connected sidecar's pod:
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

mod endpoints;
mod inbound;
mod mesh;
mod pods;
mod status;
pub mod translate;
pub mod unsupported;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use portico_api::gateway::{ListenerProtocol, RouteNamespaces};
use portico_api::route::{ParentKind, ParentReference};
use portico_api::{Gateway, Route, ServicePolicy};
use portico_proxy_api::{self as contract, BackendSet, ProxyConfig, RouteTable};
use tokio::sync::watch;

pub use inbound::rate_limit;
pub use mesh::mesh_key;
pub use pods::PodInfo;
pub use status::{Cond, GatewayState, ParentState, PolicyState, RouteState, Statuses};

/// Name of the ServiceAccount, Service and Deployment of a Gateway's proxies:
/// `portico-gateway-<gateway name>`, in the Gateway's namespace.
pub fn proxy_name(gateway: &str) -> String {
    portico_proxy_api::gateway_proxy_name(gateway)
}

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

    fn of<K: kube::Resource>(obj: &K) -> Self {
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
    Namespace(Namespace),
    /// Only the gateway proxy Deployments the operator runs (for `Programmed`). Boxed: a
    /// Deployment is several times larger than the other objects.
    Deployment(Box<Deployment>),
    /// The compact record of a Pod (see the `pods` module).
    Pod(PodInfo),
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
    Namespace,
    Deployment,
    Pod,
}

impl Kind {
    /// Every kind, in the order the watches start.
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::ServicePolicy,
        Kind::Route,
        Kind::Gateway,
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
            Kind::Namespace => "namespaces",
            Kind::Deployment => "deployments",
            Kind::Pod => "pods",
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
            Object::Namespace(_) => Kind::Namespace,
            Object::Deployment(_) => Kind::Deployment,
            Object::Pod(_) => Kind::Pod,
        }
    }
}

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What one gateway proxy is subscribed to.
struct ProxyChannels {
    routes: watch::Sender<Arc<RouteTable>>,
    backends: watch::Sender<Arc<BackendSet>>,
    /// The Service ports the last RouteTable refers to: what an endpoint change must touch.
    wanted: Wanted,
}

/// Service ports a proxy needs, as `(namespace, service, port)`.
pub(crate) type Wanted = BTreeSet<(String, String, i32)>;

/// Backends computed during one recompute, by Service port.
type Memo = std::collections::HashMap<(String, String, i32), contract::Backend>;

/// Receivers of one gateway proxy's config: the two halves travel apart.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Listeners and routes.
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// Backends and endpoints.
    pub backends: watch::Receiver<Arc<BackendSet>>,
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
    gateways: BTreeMap<Key, Arc<Gateway>>,
    routes: BTreeMap<Key, Arc<RouteEntry>>,
    policies: BTreeMap<Key, Arc<ServicePolicy>>,
    services: BTreeMap<Key, Arc<Service>>,
    /// EndpointSlices by Service, then by slice name.
    slices: BTreeMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// The Service each stored slice is filed under (for deletes and relabels).
    slice_service: BTreeMap<Key, Key>,
    secrets: BTreeMap<Key, Arc<Secret>>,
    namespaces: BTreeMap<String, Arc<Namespace>>,
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

/// The Gateways the reconciler must run proxies for: `uid` (for owner references) and spec.
pub type GatewaySpecs = BTreeMap<Key, (String, portico_api::GatewaySpec)>;

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
            routes: BTreeMap::new(),
            policies: BTreeMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_service: BTreeMap::new(),
            secrets: BTreeMap::new(),
            namespaces: BTreeMap::new(),
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

    /// The Services with an endpoint that is pod `pod` (by `targetRef`, else by address).
    fn services_of_pod(&self, pod: &Key) -> BTreeSet<Key> {
        let Some(info) = self.pods.get(pod) else {
            return BTreeSet::new();
        };
        self.slices
            .iter()
            .filter(|(svc, _)| svc.namespace == pod.namespace)
            .filter(|(svc, slices)| {
                slices.values().any(|slice| {
                    slice
                        .endpoints
                        .iter()
                        .flatten()
                        .any(|ep| inbound::backs(ep, &svc.namespace, info))
                })
            })
            .map(|(svc, _)| svc.clone())
            .collect()
    }

    /// Fills in the identity of each endpoint that is a meshed pod (when identities are on).
    fn identify(&self, endpoints: &mut [contract::Endpoint]) {
        if !self.mesh.identities {
            return;
        }
        for ep in endpoints {
            let Some(ip) = ep
                .address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip())
            else {
                continue;
            };
            ep.identity = self
                .pods
                .by_ip(&ip)
                .and_then(|k| self.pods.get(k))
                .filter(|p| p.meshed)
                .map(|p| {
                    contract::spiffe_id(
                        &self.mesh.trust_domain,
                        &p.key.namespace,
                        &p.service_account,
                    )
                });
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
                self.insert(obj);
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
            Object::Secret(o) => Key::of(o),
            Object::Namespace(o) => Key::of(o),
            Object::Deployment(o) => Key::of(&**o),
            Object::Pod(o) => o.key.clone(),
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
        match kind {
            Kind::Gateway => self.gateways.retain(|k, _| keep(k)),
            Kind::Route => self.routes.retain(|k, _| keep(k)),
            Kind::ServicePolicy => self.policies.retain(|k, _| keep(k)),
            Kind::Service => self.services.retain(|k, _| keep(k)),
            Kind::Secret => self.secrets.retain(|k, _| keep(k)),
            Kind::Namespace => self.namespaces.clear(),
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
                self.gateways.insert(Key::of(&o), Arc::new(o));
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
                self.secrets.insert(Key::of(&o), Arc::new(o));
            }
            Object::Namespace(o) => {
                self.namespaces.insert(o.name_any(), Arc::new(o));
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
                self.gateways.remove(key);
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
            Kind::Namespace => {
                self.namespaces.remove(&key.name);
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
            let backends = Arc::new(BackendSet {
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
        let objects = self.gateways.len()
            + self.routes.len()
            + self.policies.len()
            + self.services.len()
            + self.slice_service.len()
            + self.secrets.len()
            + self.namespaces.len()
            + self.deployments.len()
            + self.pods.len();
        IndexStats {
            objects: objects as u64,
            ..self.stats
        }
    }

    /// Number of Gateways with a config channel (subscribed or existing).
    pub fn proxy_channels(&self) -> usize {
        self.proxies.len()
    }

    /// Publishes `backends` to `key`'s channel if it differs from what was sent.
    fn publish_backends(&mut self, key: &Key, backends: BackendSet) {
        let generation = self.generation + 1;
        let Some(ch) = self.proxies.get(key) else {
            return;
        };
        let sent = ch.backends.send_if_modified(|cur| {
            if cur.backends == backends.backends {
                return false;
            }
            *cur = Arc::new(BackendSet {
                generation,
                ..backends
            });
            true
        });
        if sent {
            self.stats.backend_updates += 1;
            self.generation = generation;
        }
    }

    /// After an EndpointSlice change: only the BackendSets of proxies that use one of the
    /// `services` are recomputed. Routes, statuses and other proxies are untouched.
    fn refresh_endpoints(&mut self, services: &BTreeSet<Key>) {
        let affected: Vec<(Key, Wanted)> = self
            .proxies
            .iter()
            .filter(|(_, ch)| {
                ch.wanted.iter().any(|(ns, svc, _)| {
                    services
                        .iter()
                        .any(|s| s.namespace == *ns && s.name == *svc)
                })
            })
            .map(|(k, ch)| (k.clone(), ch.wanted.clone()))
            .collect();
        let mut memo = Memo::new();
        for (key, wanted) in affected {
            // The published set was computed from the same `wanted`, in the same order: only
            // the touched Services' backends are recomputed, the others are taken as they are
            // (the mesh-wide set holds every Service; recomputing all of them per endpoint
            // change cost most of the operator's CPU at 1,000 Services).
            let current = self
                .proxies
                .get(&key)
                .map(|ch| ch.backends.borrow().clone());
            let backends = wanted
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let touched = services.iter().any(|s| s.namespace == w.0 && s.name == w.1);
                    let kept = current
                        .as_ref()
                        .and_then(|c| c.backends.get(i))
                        .filter(|b| !touched && b.name == translate::backend_name(&w.0, &w.1, w.2));
                    match kept {
                        Some(b) => b.clone(),
                        None => memo
                            .entry(w.clone())
                            .or_insert_with(|| self.backend(&w.0, &w.1, w.2))
                            .clone(),
                    }
                })
                .collect();
            self.publish_backends(
                &key,
                BackendSet {
                    generation: 0,
                    backends,
                },
            );
        }
    }

    /// Recomputes everything: every proxy's config, the Gateway specs and the statuses.
    fn refresh(&mut self) {
        let keys: BTreeSet<Key> = self
            .gateways
            .keys()
            .chain(self.proxies.keys())
            .cloned()
            .collect();
        let mut memo = Memo::new();
        let mut by_gateway = self.routes_by_gateway();
        for key in keys {
            let candidates = by_gateway.remove(&key).unwrap_or_default();
            let (routes, wanted) = self.gateway_routes_of(&key, &candidates);
            let backends = self.backend_set_memo(&wanted, &mut memo);
            let generation = self.generation + 1;
            let ch = self
                .proxies
                .entry(key.clone())
                .or_insert_with(|| ProxyChannels {
                    routes: watch::Sender::new(Arc::new(RouteTable::default())),
                    backends: watch::Sender::new(Arc::new(BackendSet::default())),
                    wanted: Wanted::new(),
                });
            ch.wanted = wanted;
            let sent = ch.routes.send_if_modified(|cur| {
                if cur.listeners == routes.listeners
                    && cur.routes == routes.routes
                    && cur.services == routes.services
                {
                    return false;
                }
                *cur = Arc::new(RouteTable {
                    generation,
                    ..routes
                });
                true
            });
            if sent {
                self.stats.route_updates += 1;
                self.generation = generation;
            }
            self.publish_backends(&key, backends);
            let Some(ch) = self.proxies.get(&key) else {
                continue;
            };
            let gone = !self.gateways.contains_key(&key);
            if gone && ch.routes.receiver_count() == 0 && ch.backends.receiver_count() == 0 {
                self.proxies.remove(&key);
            }
        }
        let specs: GatewaySpecs = self
            .gateways
            .iter()
            .map(|(k, g)| (k.clone(), (g.uid().unwrap_or_default(), g.spec.clone())))
            .collect();
        self.gateway_specs.send_if_modified(|cur| {
            if **cur == specs {
                return false;
            }
            *cur = Arc::new(specs);
            true
        });
        let statuses = self.compute_statuses();
        self.statuses.send_if_modified(|cur| {
            if **cur == statuses {
                return false;
            }
            *cur = Arc::new(statuses);
            true
        });
    }

    /// Whether `route`'s namespace may attach to `listener` of `gw`.
    fn namespace_allowed(
        &self,
        gw: &Gateway,
        listener: &portico_api::gateway::Listener,
        route_ns: &str,
    ) -> bool {
        let allowed = listener.allowed_routes.clone().unwrap_or_default();
        match allowed.from {
            RouteNamespaces::Same => gw.namespace().as_deref() == Some(route_ns),
            RouteNamespaces::All => true,
            RouteNamespaces::Selector => {
                let Some(ns) = self.namespaces.get(route_ns) else {
                    return false;
                };
                let labels = ns.labels();
                allowed
                    .selector
                    .unwrap_or_default()
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            }
        }
    }

    /// Which listeners (by index) of `gw` one parent ref of `route` attaches to, or why none.
    fn attach(&self, gw: &Gateway, route: &Route, parent: &ParentReference) -> Attachment {
        let route_ns = route.namespace().unwrap_or_default();
        let by_section: Vec<usize> = gw
            .spec
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
            .map(|(i, _)| i)
            .collect();
        if by_section.is_empty() {
            return Attachment::Rejected(
                "NoMatchingParent",
                format!(
                    "Gateway {}/{} has no listener {:?}",
                    gw.namespace().unwrap_or_default(),
                    gw.name_any(),
                    parent.section_name.as_deref().unwrap_or_default()
                ),
            );
        }
        let allowed: Vec<usize> = by_section
            .into_iter()
            .filter(|i| self.namespace_allowed(gw, &gw.spec.listeners[*i], &route_ns))
            .collect();
        if allowed.is_empty() {
            return Attachment::Rejected(
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {} allows Routes from namespace {route_ns}",
                    gw.name_any()
                ),
            );
        }
        let matching: Vec<usize> = allowed
            .into_iter()
            .filter(|i| {
                let l = &gw.spec.listeners[*i];
                match (&l.hostname, l.protocol) {
                    (_, ListenerProtocol::TCP) | (None, _) => true,
                    (Some(h), _) => {
                        route.spec.hostnames.is_empty()
                            || route
                                .spec
                                .hostnames
                                .iter()
                                .any(|rh| translate::hostnames_intersect(h, &rh.0))
                    }
                }
            })
            .collect();
        if matching.is_empty() {
            return Attachment::Rejected(
                "NoMatchingListenerHostname",
                "no listener hostname matches the Route's hostnames".to_owned(),
            );
        }
        Attachment::Attached(matching)
    }

    /// The listener indexes of `gw` that `route` attaches to, over all its parent refs.
    fn attached_listeners(&self, gw_key: &Key, gw: &Gateway, route: &Route) -> BTreeSet<usize> {
        let route_ns = route.namespace().unwrap_or_default();
        route
            .spec
            .parent_refs
            .iter()
            .filter(|p| {
                p.kind == ParentKind::Gateway
                    && p.name == gw_key.name
                    && p.namespace.as_deref().unwrap_or(&route_ns) == gw_key.namespace
            })
            .filter_map(|p| match self.attach(gw, route, p) {
                Attachment::Attached(ls) => Some(ls),
                Attachment::Rejected(..) => None,
            })
            .flatten()
            .collect()
    }

    /// The TLS material of an HTTPS listener: the first certificate Secret is served by
    /// default, the others when the client's SNI names one of their names.
    fn listener_tls(
        &self,
        gw_ns: &str,
        l: &portico_api::gateway::Listener,
    ) -> Result<contract::Tls, String> {
        let refs = l
            .tls
            .as_ref()
            .map(|t| t.certificate_refs.as_slice())
            .unwrap_or_default();
        let Some((first, more)) = refs.split_first() else {
            return Err(format!("listener {} has no certificateRefs", l.name));
        };
        let pair = |r: &portico_api::common::SecretObjectReference| {
            let key = Key::new(r.namespace.as_deref().unwrap_or(gw_ns), &r.name);
            let Some(secret) = self.secrets.get(&key) else {
                return Err(format!(
                    "Secret {key} not found (or not of type kubernetes.io/tls)"
                ));
            };
            let data = secret.data.clone().unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .filter(|s| !s.is_empty())
            };
            match (text("tls.crt"), text("tls.key")) {
                (Some(cert), Some(key_pem)) => Ok(contract::CertificateKey {
                    cert: contract::Pem::Inline { inline: cert },
                    key: contract::Pem::Inline { inline: key_pem },
                }),
                _ => Err(format!("Secret {key} lacks tls.crt or tls.key")),
            }
        };
        let default = pair(first)?;
        Ok(contract::Tls {
            cert: default.cert,
            key: default.key,
            min_version: match l.tls.as_ref().and_then(|t| t.min_version) {
                Some(portico_api::gateway::TlsVersion::V1_3) => contract::TlsVersion::V1_3,
                Some(portico_api::gateway::TlsVersion::V1_2) | None => contract::TlsVersion::V1_2,
            },
            sni: more.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }

    /// The Routes that name each Gateway as a parent, in Route order: a full recompute then
    /// looks at each Gateway's own Routes only, not at every Route for every Gateway.
    fn routes_by_gateway(&self) -> BTreeMap<Key, Vec<Key>> {
        let mut map: BTreeMap<Key, Vec<Key>> = BTreeMap::new();
        for (rkey, route) in &self.routes {
            let parents: BTreeSet<Key> = route
                .spec
                .parent_refs
                .iter()
                .filter(|p| p.kind == ParentKind::Gateway)
                .map(|p| Key::new(p.namespace.as_deref().unwrap_or(&rkey.namespace), &p.name))
                .collect();
            for parent in parents {
                map.entry(parent).or_default().push(rkey.clone());
            }
        }
        map
    }

    /// The route table of Gateway `key`'s proxies (generation 0; the caller stamps it) and the
    /// Service ports it refers to.
    fn gateway_routes(&self, key: &Key) -> (RouteTable, Wanted) {
        let candidates = self.routes_by_gateway().remove(key).unwrap_or_default();
        self.gateway_routes_of(key, &candidates)
    }

    /// [`Index::gateway_routes`] with the Routes that name the Gateway (`candidates`) known.
    fn gateway_routes_of(&self, key: &Key, candidates: &[Key]) -> (RouteTable, Wanted) {
        if *key == mesh_key() {
            return self.mesh_routes();
        }
        let Some(gw) = self.gateways.get(key) else {
            return Default::default();
        };
        // A Gateway whose defaults the proxies cannot enforce serves no Route: its listeners
        // stay bound and answer 404, never a response that skipped a default's check.
        let candidates = if unsupported::gateway_fields(&gw.spec).is_empty() {
            candidates
        } else {
            &[]
        };
        let mut listeners = Vec::new();
        for l in &gw.spec.listeners {
            let tls = if l.protocol == ListenerProtocol::HTTPS {
                match self.listener_tls(&key.namespace, l) {
                    Ok(tls) => Some(tls),
                    // Without a certificate the listener is left out; status says why.
                    Err(_) => {
                        listeners.push(None);
                        continue;
                    }
                }
            } else {
                None
            };
            listeners.push(Some(translate::listener(l, tls)));
        }
        let mut wanted = Wanted::new();
        let mut routes = Vec::new();
        for (rkey, route) in candidates
            .iter()
            .filter_map(|k| self.routes.get_key_value(k))
        {
            let attached = self.attached_listeners(key, gw, route);
            let attached: Vec<usize> = attached
                .into_iter()
                .filter(|i| listeners[*i].is_some())
                .collect();
            if attached.is_empty() {
                continue;
            }
            // Each route was checked alone when it arrived, so one invalid Route is dropped
            // without taking the others down; status reports it. A Route with a field the
            // proxies cannot enforce is not served at all (an auth-requiring rule served open
            // would be worse than a 404).
            if route.problem.is_some() || !route.unsupported.is_empty() {
                continue;
            }
            let rules = route.rules.clone();
            let mut http_listeners = Vec::new();
            for i in &attached {
                let l = &gw.spec.listeners[*i];
                if l.protocol == ListenerProtocol::TCP {
                    // A TCP listener forwards to the backends of the first rule of the first
                    // attached Route, chosen per connection by their weights.
                    if let Some(Some(cl)) = listeners.get_mut(*i)
                        && cl.backends.is_empty()
                        && let Some(first) = rules.first().filter(|r| !r.backends.is_empty())
                    {
                        cl.backends = first.backends.clone();
                        if let Some(r) = route.spec.rules.first() {
                            wanted.extend(
                                translate::rule_backend_refs(&rkey.namespace, r)
                                    .take(r.backend_refs.len())
                                    .map(|(n, s, p)| (n.to_owned(), s.to_owned(), p)),
                            );
                        }
                    }
                } else {
                    http_listeners.push(l);
                }
            }
            if http_listeners.is_empty() || rules.is_empty() {
                continue;
            }
            let listener_hosts: BTreeSet<Option<&str>> = http_listeners
                .iter()
                .map(|l| l.hostname.as_deref())
                .collect();
            let hostnames = if route.spec.hostnames.is_empty() {
                match listener_hosts.iter().next() {
                    Some(Some(h)) if listener_hosts.len() == 1 => vec![(*h).to_owned()],
                    _ => Vec::new(),
                }
            } else {
                route
                    .spec
                    .hostnames
                    .iter()
                    .map(|h| h.0.clone())
                    .filter(|h| {
                        listener_hosts
                            .iter()
                            .any(|lh| lh.is_none_or(|lh| translate::hostnames_intersect(lh, h)))
                    })
                    .collect()
            };
            let candidate = contract::Route {
                name: rkey.to_string(),
                listeners: http_listeners.iter().map(|l| l.name.clone()).collect(),
                hostnames,
                rules,
            };
            wanted.extend(route.refs.iter().cloned());
            routes.push(candidate);
        }
        (
            RouteTable {
                generation: 0,
                // A TCP listener no Route feeds has nowhere to send bytes: it is left out (as an
                // HTTPS listener without its certificate is), rather than making the whole
                // config invalid for the proxy.
                listeners: listeners
                    .into_iter()
                    .flatten()
                    .filter(|l| {
                        l.protocol != contract::Protocol::Tcp
                            || l.backend.is_some()
                            || !l.backends.is_empty()
                    })
                    .collect(),
                routes,
                ..RouteTable::default()
            },
            wanted,
        )
    }

    /// The backends for `wanted` (generation 0; the caller stamps it).
    fn backend_set(&self, wanted: &Wanted) -> BackendSet {
        self.backend_set_memo(wanted, &mut Memo::new())
    }

    /// Like [`Index::backend_set`], computing each Service port at most once per `memo`: one
    /// event that touches a Service many proxies use computes its endpoints once.
    fn backend_set_memo(&self, wanted: &Wanted, memo: &mut Memo) -> BackendSet {
        BackendSet {
            generation: 0,
            backends: wanted
                .iter()
                .map(|w| {
                    memo.entry(w.clone())
                        .or_insert_with(|| self.backend(&w.0, &w.1, w.2))
                        .clone()
                })
                .collect(),
        }
    }

    /// The ServicePolicy in force for Service `key`: the oldest one targeting it (by creation
    /// time, then name). Later ones are `Conflicted`.
    fn policy_for(&self, key: &Key) -> Option<&Arc<ServicePolicy>> {
        self.policies
            .iter()
            .filter(|(pk, p)| pk.namespace == key.namespace && p.spec.target_ref.name == key.name)
            .min_by_key(|(pk, p)| (p.creation_timestamp().map(|t| t.0), (*pk).clone()))
            .map(|(_, p)| p)
    }

    /// The contract backend for port `port` of Service `ns/svc`. A missing Service or port
    /// gives a backend with no endpoints: its routes answer 503, and status says why.
    fn backend(&self, ns: &str, svc: &str, port: i32) -> contract::Backend {
        let key = Key::new(ns, svc);
        let mut b = empty_backend(translate::backend_name(ns, svc, port));
        let service_port = self
            .services
            .get(&key)
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == port));
        if let Some(sp) = service_port {
            let slices = self.slices.get(&key);
            b.endpoints = endpoints::endpoints(
                sp,
                slices.into_iter().flat_map(|m| m.values().map(|s| &**s)),
            );
            self.identify(&mut b.endpoints);
        }
        if let Some(p) = self.policy_for(&key) {
            translate::apply_policy(&mut b, &p.spec);
        }
        b
    }
}

/// A Route with its translation, done once when it arrives rather than on every recompute.
pub(crate) struct RouteEntry {
    route: Route,
    /// The contract rules.
    rules: Vec<contract::RouteRule>,
    /// Every Service port the rules send to (backends and mirrors).
    refs: Wanted,
    /// Why the contract refuses the Route, if it does.
    problem: Option<String>,
    /// The unsupported fields it sets (see the `unsupported` module): it is then not served.
    unsupported: Vec<String>,
}

impl RouteEntry {
    fn new(key: &Key, route: Route) -> Self {
        let rules: Vec<contract::RouteRule> = route
            .spec
            .rules
            .iter()
            .map(|r| translate::rule(&key.namespace, r))
            .collect();
        let refs: Wanted = route
            .spec
            .rules
            .iter()
            .flat_map(|r| translate::rule_backend_refs(&key.namespace, r))
            .map(|(n, s, p)| (n.to_owned(), s.to_owned(), p))
            .collect();
        let problem = route_problem(
            &contract::Route {
                name: key.to_string(),
                listeners: Vec::new(),
                hostnames: route.spec.hostnames.iter().map(|h| h.0.clone()).collect(),
                rules: rules.clone(),
            },
            &refs,
        );
        let unsupported = unsupported::route_fields(&route.spec);
        Self {
            route,
            rules,
            refs,
            problem,
            unsupported,
        }
    }
}

impl std::ops::Deref for RouteEntry {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

/// Why the contract would refuse `route`, if it would. The route is checked alone, without
/// listeners, with empty backends for its references: only its own content is judged.
fn route_problem(
    route: &contract::Route,
    refs: &BTreeSet<(String, String, i32)>,
) -> Option<String> {
    let cfg = ProxyConfig {
        routes: vec![contract::Route {
            listeners: Vec::new(),
            ..route.clone()
        }],
        backends: refs
            .iter()
            .map(|(ns, svc, port)| empty_backend(translate::backend_name(ns, svc, *port)))
            .collect(),
        ..ProxyConfig::default()
    };
    cfg.validate().err().map(|e| e.to_string())
}

pub(crate) fn empty_backend(name: String) -> contract::Backend {
    contract::Backend {
        name,
        endpoints: Vec::new(),
        protocol: contract::UpstreamProtocol::default(),
        load_balancer: contract::LoadBalancer::default(),
        outlier_detection: None,
        limits: contract::Limits::default(),
        connect_timeout: None,
        idle_timeout: None,
        retry_budget: None,
    }
}

/// The outcome of one parent ref against one Gateway.
enum Attachment {
    /// Attached to these listeners (indexes into the Gateway's listeners).
    Attached(Vec<usize>),
    /// Not attached: `(reason, message)` for the Route's `Accepted` condition.
    Rejected(&'static str, String),
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fields;
#[cfg(test)]
mod tests_inbound;
#[cfg(test)]
mod tests_unsupported;
