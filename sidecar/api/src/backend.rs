//! Backends: named sets of endpoints and the policy for talking to them.

use serde::{Deserialize, Serialize};

use crate::{Duration, is_default, one};

/// A named set of endpoints and how to talk to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Unique among backends; the `backend` label in metrics.
    pub name: String,
    /// Instances of the service.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How an endpoint is chosen for each request.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Passive health checking; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Concurrency limits; unlimited when absent.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Time allowed to open a connection to an endpoint (default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// How long an idle connection to an endpoint is kept for reuse (default 90 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// A cap on retries to this backend shared by every rule that retries to it; when set it
    /// replaces the rules' own budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<crate::RetryBudget>,
    /// Active health checks: each proxy probes every endpoint and sends no requests to one
    /// that fails them; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl Backend {
    /// A backend with no endpoints and default settings.
    pub fn named(name: String) -> Self {
        Self {
            name,
            endpoints: Vec::new(),
            protocol: UpstreamProtocol::default(),
            load_balancer: LoadBalancer::default(),
            outlier_detection: None,
            limits: Limits::default(),
            connect_timeout: None,
            idle_timeout: None,
            retry_budget: None,
            health_check: None,
        }
    }
}

/// Active HTTP health checks of a backend's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with `GET`; a status 200–399 passes (as the kubelet's HTTP probes).
    pub path: String,
    /// Port probed instead of the endpoint's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between checks of one endpoint (each wait varies by ±10%, so checks spread out).
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// Time one check may take, connecting included; longer is a failure.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy endpoint healthy again.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}

fn three() -> u32 {
    3
}

/// One instance of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT`.
    pub address: String,
    /// Not-ready (and terminating) endpoints get no new requests.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Relative share for round robin and consistent hashing.
    #[serde(default = "one")]
    pub weight: u32,
    /// Topology zone, informational for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The endpoint's mesh identity (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`): a proxy with
    /// its own identity connects to it with mTLS and accepts only a certificate for exactly
    /// this identity. None: the endpoint is outside the mesh, and is spoken to in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn yes() -> bool {
    true
}

/// Protocol spoken to a backend's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); use for gRPC.
    Http2,
    /// The same version the client used.
    Auto,
}

/// Endpoint selection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LoadBalancer {
    /// Power of two random choices, picking the lower peak-EWMA latency × load.
    #[default]
    P2cEwma,
    /// Each endpoint in turn, by weight.
    RoundRobin,
    /// The same key goes to the same endpoint while it stays healthy.
    ConsistentHash {
        /// Where the key comes from.
        #[serde(rename = "hashOn")]
        hash_on: HashOn,
    },
}

/// Key source for consistent hashing, e.g. `{ type: Header, name: x-user }`. Requests without
/// the key are spread at random.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum HashOn {
    /// A request header's value.
    Header {
        /// Header name.
        name: String,
    },
    /// A cookie's value.
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// The client's IP address.
    ClientIp,
}

/// Passive health checking: endpoints that keep failing are ejected for a while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures (5xx, connect failure, reset, timeout) that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection length; the n-th ejection lasts n times this, up to `maxEjectionTime`.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// At most this share (0–100) of endpoints is ejected at once, so a global outage is not
    /// turned into a total one.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

fn default_max_ejected_percent() -> u32 {
    50
}

/// Concurrency limits per backend (per proxy). Above them the proxy answers 503 at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight to the backend at once. Over HTTP/1 each holds one connection, so this
    /// also caps the connections in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests allowed to wait for a free slot; the next one gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}
