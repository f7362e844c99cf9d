//! Per-pod inbound policy: what a sidecar enforces on connections to its own pod's ports,
//! compiled from the ServicePolicies (with `authorization` and/or `rateLimit`) of the Services
//! the pod backs.
//!
//! ```text
//!  ServicePolicy shop/orders-only ─targetRef─► Service shop/orders ─EndpointSlices─► pod orders-0
//!    authorization: allow SA shop/web                               port 8080 (endpoint port)
//!    rateLimit: 100/Second                                                │
//!                                                                         ▼
//!  InboundPolicy of orders-0: [{port 8080, policy "shop/orders-only",
//!                               authorization {identities [spiffe://<td>/ns/shop/sa/web]},
//!                               rateLimit {100 per 1s, burst 100, ClientIP}}]
//!                             + mtls mode (namespace annotation or mesh default) and the
//!                               pod's HTTP probe paths
//! ```
//!
//! A pod backs a Service when an endpoint of one of its slices names the pod (`targetRef`) or,
//! without a `targetRef`, has one of the pod's addresses. Only Services in the pod's own
//! namespace are considered. Two policies for one pod port: the one of the Service that sorts
//! first wins (the ServicePolicy `Conflicted` condition covers two policies on one Service).
//!
//! Only pods with an open stream have a channel, so the work of a change is proportional to the
//! connected sidecars it touches: a slice change touches the pods it names (and only when its
//! Service is guarded), a policy or namespace change the pods of its namespace, a pod change
//! itself. Callers are matched by the identity in their certificates, so no policy depends on
//! other pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::Endpoint;
use kube::ResourceExt;
use portico_api::common::{RateLimitKey, RateLimitUnit};
use portico_api::policy::MtlsMode;
use portico_api::policy::{Authorization, AuthorizationAction};
use portico_proxy_api::{self as contract, InboundAuthorization, InboundPolicy, InboundPort};
use tokio::sync::watch;

use super::pods::PodInfo;
use super::{Index, Key};

/// Namespace annotation that sets the mTLS mode of the namespace's pods (`strict` or
/// `permissive`).
pub const MTLS_MODE_ANNOTATION: &str = "portico.dev/mtls-mode";

/// The contract's mode for a ServicePolicy's.
fn mtls_mode(m: MtlsMode) -> contract::MtlsMode {
    match m {
        MtlsMode::Permissive => contract::MtlsMode::Permissive,
        MtlsMode::Strict => contract::MtlsMode::Strict,
    }
}

/// Compiled authorizations by policy, shared by the pods of one recompute.
type AuthMemo = HashMap<Key, Option<InboundAuthorization>>;

impl Index {
    /// The inbound-policy receiver of pod `pod`'s sidecar. A pod not (yet) known has an empty
    /// policy; it fills in when the pod and the Services it backs appear.
    pub fn subscribe_pod(&mut self, pod: &Key) -> watch::Receiver<Arc<InboundPolicy>> {
        if let Some(tx) = self.inbound.get(pod) {
            return tx.subscribe();
        }
        let policy = self.inbound_policy(pod, &mut AuthMemo::new());
        let tx = watch::Sender::new(Arc::new(policy));
        let rx = tx.subscribe();
        self.inbound.insert(pod.clone(), tx);
        rx
    }

    /// The record of pod `key`, if the Pod watch has seen it.
    pub fn pod(&self, key: &Key) -> Option<Arc<PodInfo>> {
        self.pods.get(key).cloned()
    }

    /// Pods whose sidecar is connected (or was, until the next recompute), in `namespace` or
    /// everywhere.
    pub(super) fn subscribed_in(&self, namespace: Option<&str>) -> BTreeSet<Key> {
        match namespace {
            None => self.inbound.keys().cloned().collect(),
            Some(ns) => self
                .inbound
                .range(Key::new(ns, "")..)
                .take_while(|(k, _)| k.namespace == ns)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// Recomputes which Service each guarding ServicePolicy (one with `authorization` or
    /// `rateLimit`) is in force for: the oldest policy of a Service wins, as for backends.
    pub(super) fn refresh_guards(&mut self) {
        let mut winners: BTreeMap<Key, (Option<_>, Key)> = BTreeMap::new();
        for (pk, p) in &self.policies {
            let svc = Key::new(pk.namespace.clone(), p.spec.target_ref.name.clone());
            let candidate = (p.creation_timestamp().map(|t| t.0), pk.clone());
            match winners.get_mut(&svc) {
                Some(w) if candidate < *w => *w = candidate,
                Some(_) => {}
                None => {
                    winners.insert(svc, candidate);
                }
            }
        }
        self.guards = winners
            .into_iter()
            .filter(|(_, (_, pk))| {
                self.policies.get(pk).is_some_and(|p| {
                    p.spec.authorization.is_some()
                        || p.spec.rate_limit.is_some()
                        || p.spec.mtls.is_some()
                })
            })
            .map(|(svc, (_, pk))| (svc, pk))
            .collect();
    }

    /// Publishes the policy of each pod in `pods` that has a channel; channels nobody reads any
    /// more are dropped on the way.
    pub(super) fn refresh_inbound(&mut self, pods: BTreeSet<Key>) {
        let mut memo = AuthMemo::new();
        for key in pods {
            match self.inbound.get(&key) {
                None => continue,
                Some(tx) if tx.receiver_count() == 0 => {
                    self.inbound.remove(&key);
                    continue;
                }
                Some(_) => {}
            }
            let policy = self.inbound_policy(&key, &mut memo);
            if let Some(tx) = self.inbound.get(&key) {
                tx.send_if_modified(|cur| {
                    if **cur == policy {
                        return false;
                    }
                    *cur = Arc::new(policy);
                    true
                });
            }
        }
    }

    /// The pods with a channel that an endpoint of stored slice `slice` names, when the slice's
    /// Service is guarded (else a slice change cannot change any inbound policy).
    pub(super) fn slice_pods(&self, slice: &Key) -> BTreeSet<Key> {
        let Some(service) = self.slice_service.get(slice) else {
            return BTreeSet::new();
        };
        if self.inbound.is_empty() || !self.guards.contains_key(service) {
            return BTreeSet::new();
        }
        self.slices
            .get(service)
            .and_then(|m| m.get(&slice.name))
            .into_iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter_map(|ep| self.endpoint_pod(&slice.namespace, ep))
            .filter(|k| self.inbound.contains_key(k))
            .collect()
    }

    /// The pod an endpoint stands for: its `targetRef` Pod, else the pod with its address.
    fn endpoint_pod(&self, slice_ns: &str, ep: &Endpoint) -> Option<Key> {
        match &ep.target_ref {
            Some(r) if r.kind.as_deref() == Some("Pod") => Some(Key::new(
                r.namespace.as_deref().unwrap_or(slice_ns),
                r.name.clone()?,
            )),
            _ => ep
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .find_map(|ip| self.pods.by_ip(&ip).cloned()),
        }
    }

    /// The inbound policy of pod `key` (empty for a pod the index does not know).
    pub(super) fn inbound_policy(&self, key: &Key, memo: &mut AuthMemo) -> InboundPolicy {
        let Some(pod) = self.pods.get(key) else {
            return InboundPolicy::default();
        };
        let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
        let guards = self
            .guards
            .range(Key::new(key.namespace.clone(), "")..)
            .take_while(|(svc, _)| svc.namespace == key.namespace);
        for (svc, pk) in guards {
            let Some(policy) = self.policies.get(pk) else {
                continue;
            };
            for slice in self.slices.get(svc).into_iter().flat_map(|m| m.values()) {
                if !slice
                    .endpoints
                    .iter()
                    .flatten()
                    .any(|ep| backs(ep, &svc.namespace, pod))
                {
                    continue;
                }
                for port in slice.ports.iter().flatten() {
                    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                        continue;
                    }
                    let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    let name = pk.to_string();
                    if let Some(taken) = ports.get(&number) {
                        if taken.policy != name {
                            tracing::debug!(pod = %key, port = number, kept = %taken.policy,
                                ignored = %name, "two ServicePolicies guard one pod port; the first Service's is kept");
                        }
                        continue;
                    }
                    let authorization = policy.spec.authorization.as_ref().and_then(|a| {
                        memo.entry(pk.clone())
                            .or_insert_with(|| self.authorization(&pk.namespace, a))
                            .clone()
                    });
                    let rate_limit = policy.spec.rate_limit.as_ref().and_then(rate_limit);
                    ports.insert(
                        number,
                        InboundPort {
                            port: number,
                            policy: name,
                            mtls: policy.spec.mtls.as_ref().map(|m| mtls_mode(m.mode)),
                            authorization,
                            rate_limit,
                        },
                    );
                }
            }
        }
        InboundPolicy {
            ports: ports.into_values().collect(),
            mtls: self.namespace_mtls(&key.namespace),
            probes: pod
                .probes
                .iter()
                .map(|(port, path)| contract::ProbePath {
                    port: *port,
                    path: path.clone(),
                })
                .collect(),
        }
    }

    /// The mTLS mode of namespace `ns`: its `portico.dev/mtls-mode` annotation (`strict` or
    /// `permissive`), else the mesh default.
    pub(super) fn namespace_mtls(&self, ns: &str) -> contract::MtlsMode {
        let annotation = self
            .namespaces
            .get(ns)
            .and_then(|n| n.annotations().get(MTLS_MODE_ANNOTATION).cloned());
        match annotation
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("strict") => contract::MtlsMode::Strict,
            Some("permissive") => contract::MtlsMode::Permissive,
            _ => self.mesh.mtls,
        }
    }

    /// An authorization compiled into identity patterns: ServiceAccounts become SPIFFE IDs
    /// (`*` for every ServiceAccount of a namespace), `defaultAction: Allow` any mesh identity.
    fn authorization(&self, policy_ns: &str, auth: &Authorization) -> Option<InboundAuthorization> {
        let td = &self.mesh.trust_domain;
        let unauthenticated = auth.allow_unauthenticated.unwrap_or(false);
        let identities = match auth.default_action {
            // Everyone, meshed or not: nothing to enforce.
            AuthorizationAction::Allow if unauthenticated => return None,
            AuthorizationAction::Allow => vec!["*".to_owned()],
            AuthorizationAction::Deny => auth
                .allowed_service_accounts
                .iter()
                .map(|r| {
                    let ns = r.namespace.as_deref().unwrap_or(policy_ns);
                    contract::spiffe_id(td, ns, &r.name)
                })
                .collect(),
        };
        Some(InboundAuthorization {
            identities,
            unauthenticated,
        })
    }
}

/// Whether endpoint `ep` (of a slice in `slice_ns`) is pod `pod`.
pub(super) fn backs(ep: &Endpoint, slice_ns: &str, pod: &PodInfo) -> bool {
    match &ep.target_ref {
        Some(r) if r.kind.as_deref() == Some("Pod") => {
            r.name.as_deref() == Some(pod.key.name.as_str())
                && r.namespace.as_deref().unwrap_or(slice_ns) == pod.key.namespace
        }
        _ => ep
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .any(|ip| pod.ips.contains(&ip)),
    }
}

/// Whether the compiled form of `auth` (of a policy in `policy_ns`) changes when a pod of
/// ServiceAccount `ns/sa` comes, goes or changes address.
/// The contract rate limit of a `rateLimit` (a ServicePolicy's, a Route rule's or a Gateway's
/// default). `None` for a `Header` key without a header name, which admission already refuses.
pub fn rate_limit(rl: &portico_api::common::RateLimit) -> Option<contract::RateLimit> {
    let requests = u64::try_from(rl.requests).ok().filter(|r| *r > 0)?;
    let period = match rl.unit {
        RateLimitUnit::Second => contract::Duration::from_secs(1),
        RateLimitUnit::Minute => contract::Duration::from_secs(60),
        RateLimitUnit::Hour => contract::Duration::from_secs(3600),
    };
    let burst = rl
        .burst
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(requests)
        .max(requests);
    let key = match rl.key {
        RateLimitKey::ClientIP => contract::RateLimitKey::ClientIp,
        RateLimitKey::Global => contract::RateLimitKey::Global,
        RateLimitKey::Header => contract::RateLimitKey::Header {
            name: rl.header.clone()?,
        },
    };
    Some(contract::RateLimit {
        requests,
        period,
        burst,
        key,
        store: None,
    })
}
