//! Pods, as the index keeps them: a compact record per Pod (never the Pod itself: at 10,000
//! pods the full objects would cost hundreds of megabytes), and a lookup by address built from
//! it.
//!
//! ```text
//!  Pod shop/orders-7f9c ──► PodInfo { uid, serviceAccount "orders", ips [198.18.64.7],
//!                              │          meshed, probes [(8080, /healthz)], … }
//!                              └─► by_ip  198.18.64.7      → shop/orders-7f9c
//! ```
//!
//! The address lookup finds the pod behind an endpoint (to give a meshed endpoint its
//! identity, and to find the pods a ServicePolicy guards when a slice names no `targetRef`).
//! Only pods whose address is theirs alone go in: not hostNetwork pods (they share the node's
//! address), not pods without an address yet, not finished pods (their address may already
//! belong to someone else). Callers are never identified by address: their identity is the
//! certificate their proxy presents.

use std::collections::BTreeMap;
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
    /// It runs Portico's proxy (injected): callers reach it with mTLS.
    pub meshed: bool,
    /// The kubelet's HTTP probes of its application containers: `(port, path)`.
    pub probes: Vec<(u16, String)>,
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
            meshed: spec.is_some_and(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .any(|c| c.name == crate::admission::inject::PROXY_CONTAINER)
            }),
            probes: spec.map(http_probes).unwrap_or_default(),
        }
    }

    /// Whether the pod's addresses identify it as a caller (see the module docs).
    pub fn identifies(&self) -> bool {
        !self.host_network && !self.finished && !self.ips.is_empty()
    }
}

/// The HTTP probes of the application containers (the proxy's own go to its admin port, which
/// is never redirected), with named ports resolved.
fn http_probes(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<(u16, String)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = Vec::new();
    for c in spec
        .containers
        .iter()
        .filter(|c| c.name != crate::admission::inject::PROXY_CONTAINER)
    {
        let probes = [&c.readiness_probe, &c.liveness_probe, &c.startup_probe];
        for get in probes
            .into_iter()
            .flatten()
            .filter_map(|p| p.http_get.as_ref())
        {
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let path = get.path.clone().unwrap_or_else(|| "/".to_owned());
            // The kubelet sends the path as written, query included; the proxy matches paths.
            let path = path.split('?').next().unwrap_or("/").to_owned();
            if let Some(port) = port {
                out.push((port, path));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every Pod, with the lookups by ServiceAccount and by address.
#[derive(Default)]
pub(super) struct Pods {
    pods: BTreeMap<Key, Arc<PodInfo>>,
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
}
