//! The backends proxies are sent: one per Service port a route table refers to, with the
//! Service's endpoints (identified when they are meshed pods) and its ServicePolicy applied.
//!
//! A Service port is named by a [`ServicePort`]; the set a proxy needs is its [`Wanted`] set,
//! which an endpoint change is matched against so only the proxies using that Service wake.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use portico_api::ServicePolicy;
use portico_proxy_api::{self as contract, BackendSet, BackendUpdate};

use super::{Index, Key, endpoints, inbound, translate};

/// One port of one Service: what a contract backend stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port (not the target port).
    pub port: i32,
}

impl ServicePort {
    /// Port `port` of Service `namespace/service`.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>, port: i32) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            port,
        }
    }

    /// The Service this is a port of.
    pub fn service_key(&self) -> Key {
        Key::new(&self.namespace, &self.service)
    }

    /// Whether this is a port of Service `key`.
    pub fn is_of(&self, key: &Key) -> bool {
        self.namespace == key.namespace && self.service == key.name
    }

    /// The contract backend name, `namespace/service:port`.
    pub fn backend_name(&self) -> String {
        translate::backend_name(&self.namespace, &self.service, self.port)
    }
}

/// The backends one proxy is sent. Each is shared (an `Arc`) with the sets before and after it
/// that have it unchanged: a set costs a pointer per backend however many sets streams still
/// hold, and what changed between two sets is found by comparing pointers.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// See [`contract::ProxyConfig::generation`].
    pub generation: u64,
    /// The backends, in [`Wanted`] order.
    pub backends: Vec<Arc<contract::Backend>>,
    /// Positions by name, made on first use by [`Backends::only`] (once per published set,
    /// shared by every stream that filters it).
    pub by_name: std::sync::OnceLock<HashMap<String, usize>>,
    /// The names of the backends with a meshed endpoint at each address, made on first use by
    /// [`Backends::meshed_at`].
    pub by_address: std::sync::OnceLock<HashMap<String, Vec<String>>>,
}

impl Backends {
    /// The backends of `self` named in `names` (in `names`' order; names it lacks are left
    /// out), sharing them.
    pub fn only<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Backends {
        let by_name = self.by_name.get_or_init(|| {
            self.backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.name.clone(), i))
                .collect()
        });
        Backends {
            generation: self.generation,
            backends: names
                .into_iter()
                .filter_map(|n| by_name.get(n).map(|i| self.backends[*i].clone()))
                .collect(),
            by_name: std::sync::OnceLock::new(),
            by_address: std::sync::OnceLock::new(),
        }
    }

    /// The names of the backends that have a meshed endpoint (one with an identity) at
    /// `address` (`IP:port`).
    pub fn meshed_at(&self, address: &str) -> &[String] {
        let by_address = self.by_address.get_or_init(|| {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            for b in &self.backends {
                for e in b.endpoints.iter().filter(|e| e.identity.is_some()) {
                    map.entry(e.address.clone())
                        .or_default()
                        .push(b.name.clone());
                }
            }
            map
        });
        by_address.get(address).map_or(&[], Vec::as_slice)
    }

    /// Whether both hold the same backends (by pointer, else by value).
    pub fn same_backends(&self, other: &Backends) -> bool {
        self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }

    /// The contract's form of the set.
    pub fn to_set(&self) -> BackendSet {
        BackendSet {
            generation: self.generation,
            backends: self.backends.iter().map(|b| (**b).clone()).collect(),
        }
    }

    /// Whether `next` holds the same Services as `self` in the same order (the usual case: only
    /// endpoints changed), so the two compare place by place.
    fn aligned_with(&self, next: &Backends) -> bool {
        self.backends.len() == next.backends.len()
            && self
                .backends
                .iter()
                .zip(&next.backends)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.name == b.name)
    }

    /// The names of the backends that differ between `self` and `next` (changed, added or
    /// removed), found by pointer where the two sets hold the same Services in the same order.
    pub fn changed_names<'a>(&'a self, next: &'a Backends) -> Vec<&'a str> {
        let aligned = self.aligned_with(next);
        if aligned {
            return self
                .backends
                .iter()
                .zip(&next.backends)
                .filter(|(a, b)| !Arc::ptr_eq(a, b) && a != b)
                .map(|(_, b)| b.name.as_str())
                .collect();
        }
        let before: HashMap<&str, &Arc<contract::Backend>> =
            self.backends.iter().map(|b| (b.name.as_str(), b)).collect();
        let after: HashMap<&str, &Arc<contract::Backend>> =
            next.backends.iter().map(|b| (b.name.as_str(), b)).collect();
        let mut names: Vec<&str> = after
            .iter()
            .filter(|(n, b)| before.get(*n).is_none_or(|a| !Arc::ptr_eq(a, b) && a != *b))
            .map(|(n, _)| *n)
            .chain(before.keys().filter(|n| !after.contains_key(*n)).copied())
            .collect();
        names.sort_unstable();
        names
    }

    /// What turns `self` into `next` (see [`BackendSet::update_to`]); `None` when nothing
    /// changed. Sets of the same Services (the usual case: an endpoint change) are compared
    /// place by place and by pointer, without hashing a name.
    pub fn update_to(&self, next: &Backends) -> Option<BackendUpdate> {
        let aligned = self.aligned_with(next);
        if !aligned {
            return self.to_set().update_to(&next.to_set());
        }
        let backends: Vec<contract::Backend> = self
            .backends
            .iter()
            .zip(&next.backends)
            .filter(|(a, b)| !Arc::ptr_eq(a, b) && a != b)
            .map(|(_, b)| (**b).clone())
            .collect();
        (!backends.is_empty()).then_some(BackendUpdate {
            generation: next.generation,
            backends,
            removed: Vec::new(),
        })
    }
}

impl serde::Serialize for Backends {
    /// As the contract's [`BackendSet`].
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Seq<'a>(&'a [Arc<contract::Backend>]);
        impl serde::Serialize for Seq<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|b| &**b))
            }
        }
        let mut st = serializer.serialize_struct("BackendSet", 2)?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("backends", &Seq(&self.backends))?;
        st.end()
    }
}

/// Service ports a proxy needs, in the order their backends are published.
pub(crate) type Wanted = BTreeSet<ServicePort>;

/// Backends computed during one recompute, by Service port: one event that touches a Service
/// many proxies use computes its endpoints once.
pub(super) type Memo = HashMap<ServicePort, Arc<contract::Backend>>;

impl Index {
    /// The Services with an endpoint that is pod `pod` (by `targetRef`, else by address).
    pub(super) fn services_of_pod(&self, pod: &Key) -> BTreeSet<Key> {
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

    /// The backends for `wanted` (generation 0; the caller stamps it).
    pub(super) fn backend_set(&self, wanted: &Wanted) -> Backends {
        self.backend_set_memo(wanted, &mut Memo::new())
    }

    /// Like [`Index::backend_set`], computing each Service port at most once per `memo`: one
    /// event that touches a Service many proxies use computes its endpoints once.
    pub(super) fn backend_set_memo(&self, wanted: &Wanted, memo: &mut Memo) -> Backends {
        Backends {
            generation: 0,
            backends: wanted
                .iter()
                .map(|w| {
                    memo.entry(w.clone())
                        .or_insert_with(|| Arc::new(self.backend(w)))
                        .clone()
                })
                .collect(),
            by_name: Default::default(),
            by_address: Default::default(),
        }
    }

    /// The ServicePolicy in force for Service `key`: the oldest one targeting it (by creation
    /// time, then name). Later ones are `Conflicted`.
    pub(super) fn policy_for(&self, key: &Key) -> Option<&Arc<ServicePolicy>> {
        self.policies
            .iter()
            .filter(|(pk, p)| pk.namespace == key.namespace && p.spec.target_ref.name == key.name)
            .min_by_key(|(pk, p)| (p.creation_timestamp().map(|t| t.0), (*pk).clone()))
            .map(|(_, p)| p)
    }

    /// The contract backend for Service port `sp`. A missing Service or port gives a backend
    /// with no endpoints: its routes answer 503, and status says why.
    pub(super) fn backend(&self, sp: &ServicePort) -> contract::Backend {
        let key = sp.service_key();
        let port = sp.port;
        let mut b = empty_backend(sp.backend_name());
        let service_port = self
            .services
            .get(&key)
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == port));
        if let Some(sp) = service_port {
            b.protocol = protocol_of(sp.app_protocol.as_deref());
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

/// The protocol a Service port's `appProtocol` names: HTTP/2 with prior knowledge for
/// `kubernetes.io/h2c` (the Gateway API's name) and the common `h2c`, `http2` and `grpc`;
/// HTTP/1.1 otherwise (`kubernetes.io/ws` upgrades over HTTP/1.1). A ServicePolicy's
/// `protocol` still decides when set.
fn protocol_of(app_protocol: Option<&str>) -> contract::UpstreamProtocol {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("kubernetes.io/h2c" | "h2c" | "http2" | "grpc") => contract::UpstreamProtocol::Http2,
        _ => contract::UpstreamProtocol::Http1,
    }
}

/// A backend with no endpoints and default settings, which a policy then shapes.
pub(crate) fn empty_backend(name: String) -> contract::Backend {
    contract::Backend::named(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, addresses: &[&str]) -> Arc<contract::Backend> {
        let mut b = empty_backend(name.into());
        b.endpoints = addresses
            .iter()
            .map(|a| serde_json::from_value(serde_json::json!({"address": a})).unwrap())
            .collect();
        Arc::new(b)
    }

    #[test]
    fn a_meshed_address_names_the_backends_it_serves() {
        let mut meshed = (*backend("shop/orders:80", &["10.0.0.1:8080"])).clone();
        meshed.endpoints[0].identity = Some("spiffe://cluster.local/ns/shop/sa/orders".into());
        let mut admin = meshed.clone();
        admin.name = "shop/orders-admin:80".into();
        let set = Backends {
            generation: 1,
            backends: vec![
                Arc::new(meshed),
                Arc::new(admin),
                backend("shop/legacy:80", &["10.0.0.2:8080"]),
            ],
            ..Default::default()
        };
        assert_eq!(
            set.meshed_at("10.0.0.1:8080"),
            ["shop/orders:80", "shop/orders-admin:80"]
        );
        assert!(set.meshed_at("10.0.0.1:9090").is_empty(), "another port");
        assert!(set.meshed_at("10.0.0.2:8080").is_empty(), "not meshed");
    }

    #[test]
    fn the_changed_names_are_those_added_removed_or_rebuilt_differently() {
        let (a, b) = (
            backend("a", &["10.0.0.1:80"]),
            backend("b", &["10.0.0.2:80"]),
        );
        let set = |backends: Vec<Arc<contract::Backend>>| Backends {
            generation: 1,
            backends,
            ..Default::default()
        };
        let before = set(vec![a.clone(), b.clone()]);
        let same_content = set(vec![backend("a", &["10.0.0.1:80"]), b.clone()]);
        assert!(before.changed_names(&same_content).is_empty());
        let changed = set(vec![a.clone(), backend("b", &["10.0.0.3:80"])]);
        assert_eq!(before.changed_names(&changed), ["b"]);
        let reshaped = set(vec![b.clone(), backend("c", &[])]);
        assert_eq!(before.changed_names(&reshaped), ["a", "c"]);
    }

    #[test]
    fn an_update_between_sets_is_found_by_pointer_or_by_name() {
        let (a, b) = (
            backend("a", &["10.0.0.1:80"]),
            backend("b", &["10.0.0.2:80"]),
        );
        let before = Backends {
            generation: 1,
            backends: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        // Same Services, one rebuilt with the same content, one changed: only the change goes.
        let same_a = backend("a", &["10.0.0.1:80"]);
        let new_b = backend("b", &["10.0.0.2:80", "10.0.0.3:80"]);
        let after = Backends {
            generation: 2,
            backends: vec![same_a, new_b.clone()],
            ..Default::default()
        };
        let update = before.update_to(&after).unwrap();
        assert_eq!(update.generation, 2);
        assert_eq!(update.backends, vec![(*new_b).clone()]);
        assert!(before.same_backends(&before.clone()));
        assert!(!before.same_backends(&after));
        assert_eq!(before.update_to(&before), None);
        // A Service gone and one new: by name.
        let c = backend("c", &["10.0.0.4:80"]);
        let other = Backends {
            generation: 3,
            backends: vec![a, c.clone()],
            ..Default::default()
        };
        let update = before.update_to(&other).unwrap();
        assert_eq!(update.backends, vec![(*c).clone()]);
        assert_eq!(update.removed, ["b"]);
    }
}
