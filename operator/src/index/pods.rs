//! Pods, as the index keeps them: a compact record per Pod (never the Pod itself: at 10,000
//! pods the full objects would cost hundreds of megabytes), and two lookups built from it.
//!
//! ```text
//!  Pod shop/orders-7f9c ──► PodInfo { uid, serviceAccount "orders", ips [198.18.64.7], … }
//!                              │
//!                              ├─► by_sa  (shop, orders)   → {shop/orders-7f9c, …}
//!                              └─► by_ip  198.18.64.7      → shop/orders-7f9c
//! ```
//!
//! Until the mesh has mTLS a caller is known by its source address, so only pods whose address
//! says who they are go into the lookups: not hostNetwork pods (they share the node's address),
//! not pods without an address yet, not finished pods (their address may already belong to
//! someone else). A terminating pod still runs and still calls others while it drains, so it
//! keeps its identity until it is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::Key;

/// What the index keeps of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: Key,
    /// The Pod's uid: a token bound to a deleted Pod of the same name must not pass.
    pub uid: String,
    /// `spec.serviceAccountName` (`default` when unset, as the API server fills it in).
    pub service_account: String,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// Phase `Succeeded` or `Failed`: the pod runs no more.
    pub finished: bool,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub terminating: bool,
    /// `spec.hostNetwork`: its address is the node's.
    pub host_network: bool,
}

impl PodInfo {
    /// The compact record of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Self {
            key: Key::new(pod.namespace().unwrap_or_default(), pod.name_any()),
            uid: pod.uid().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            ips,
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        }
    }

    /// Whether the pod's addresses identify it as a caller (see the module docs).
    pub fn identifies(&self) -> bool {
        !self.host_network && !self.finished && !self.ips.is_empty()
    }

    /// What other pods' policies may depend on: the ServiceAccount and addresses of an
    /// identifying pod; `None` for the others.
    pub(super) fn identity(&self) -> Option<(&str, &[IpAddr])> {
        self.identifies()
            .then_some((self.service_account.as_str(), self.ips.as_slice()))
    }
}

/// Every Pod, with the lookups by ServiceAccount and by address.
#[derive(Default)]
pub(super) struct Pods {
    pods: BTreeMap<Key, Arc<PodInfo>>,
    /// Identifying pods by `(namespace, serviceAccount)`.
    by_sa: BTreeMap<(String, String), BTreeSet<Key>>,
    /// Identifying pods by address. Two pods with one address (a stale record while an address
    /// is reused) keep the later one; the earlier one is dropped from here when it goes.
    by_ip: BTreeMap<IpAddr, Key>,
}

impl Pods {
    /// The record of pod `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<PodInfo>> {
        self.pods.get(key)
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Adds or replaces a pod; returns the record it replaced.
    pub fn insert(&mut self, pod: PodInfo) -> Option<Arc<PodInfo>> {
        let old = self.remove(&pod.key);
        if pod.identifies() {
            self.by_sa
                .entry((pod.key.namespace.clone(), pod.service_account.clone()))
                .or_default()
                .insert(pod.key.clone());
            for ip in &pod.ips {
                self.by_ip.insert(*ip, pod.key.clone());
            }
        }
        self.pods.insert(pod.key.clone(), Arc::new(pod));
        old
    }

    /// Removes pod `key`; returns its record.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        let sa = (old.key.namespace.clone(), old.service_account.clone());
        if let Some(set) = self.by_sa.get_mut(&sa) {
            set.remove(key);
            if set.is_empty() {
                self.by_sa.remove(&sa);
            }
        }
        for ip in &old.ips {
            if self.by_ip.get(ip) == Some(key) {
                self.by_ip.remove(ip);
            }
        }
        Some(old)
    }

    /// Removes every pod for which `drop` holds.
    pub fn remove_where(&mut self, drop: impl Fn(&Key) -> bool) {
        let gone: Vec<Key> = self.pods.keys().filter(|k| drop(k)).cloned().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// The pod that has address `ip`, if an identifying pod has it.
    pub fn by_ip(&self, ip: &IpAddr) -> Option<&Key> {
        self.by_ip.get(ip)
    }

    /// Addresses of the identifying pods of ServiceAccount `namespace/name` (`*`: of every
    /// ServiceAccount in `namespace`).
    pub fn ips_of(&self, namespace: &str, name: &str, out: &mut BTreeSet<IpAddr>) {
        let keys: Box<dyn Iterator<Item = &BTreeSet<Key>>> = if name == "*" {
            Box::new(
                self.by_sa
                    .range((namespace.to_owned(), String::new())..)
                    .take_while(|((ns, _), _)| ns == namespace)
                    .map(|(_, v)| v),
            )
        } else {
            Box::new(
                self.by_sa
                    .get(&(namespace.to_owned(), name.to_owned()))
                    .into_iter(),
            )
        };
        for key in keys.flatten() {
            if let Some(pod) = self.pods.get(key) {
                out.extend(pod.ips.iter().copied());
            }
        }
    }

    /// Addresses of every identifying pod, in order.
    pub fn all_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_ip.keys().copied()
    }
}
