//! Sidecar mode: what a proxy needs to make sense of connections that iptables redirected to it.
//!
//! ```text
//!  app ──connect 198.19.0.10:80──► iptables REDIRECT ──► OUTBOUND listener
//!                                                          │ SO_ORIGINAL_DST = 198.19.0.10:80
//!                                                          ▼
//!                      services[] has 198.19.0.10:80? ── yes ─► that Service's routes (HTTP)
//!                                                      │          or its backend (opaque TCP)
//!                                                      └─ no ──► the original destination, untouched
//! ```
//!
//! A [`Service`] is the mesh's name for a Kubernetes Service: its virtual addresses (ClusterIP
//! and port), the routes attached to it, and the backend that serves it when no route matches.

use serde::{Deserialize, Serialize};

use crate::{Duration, is_default};

/// A service reachable at virtual addresses that the outbound listener recognises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Unique among services; the route label in metrics when no route of its own matched.
    pub name: String,
    /// `IP:PORT` pairs the application dials (ClusterIP and service port).
    pub addresses: Vec<String>,
    /// Where connections go when no route matches and for opaque traffic.
    pub backend: String,
    /// HTTP routes attached to the service, by name; empty sends everything to [`Self::backend`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Skip protocol detection: the service speaks something other than HTTP, possibly
    /// server-first (MySQL, SMTP), so the proxy must not wait for the client's first bytes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub opaque: bool,
}

/// Settings for the INBOUND and OUTBOUND listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interception {
    /// Service ports never sniffed: connections to them go to the service's backend as opaque
    /// TCP at once (server-speaks-first protocols). Inbound and passed-through connections are
    /// never sniffed anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// TCP (default 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_timeout: Option<Duration>,
}

impl Interception {
    /// The detection timeout when none is configured: long enough for a client that writes
    /// right after connecting, short enough that a server-first protocol on an undeclared port
    /// only pays it once per connection.
    pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);

    /// The detection timeout in force.
    pub fn detect_timeout(&self) -> Duration {
        self.detect_timeout.unwrap_or(Self::DEFAULT_DETECT_TIMEOUT)
    }
}

/// Sidecar mode: what the INBOUND listener enforces for connections to this pod's own ports,
/// compiled by the operator from the ServicePolicies of the Services the pod backs.
///
/// A port not listed is open to every caller without a limit, as in a pod without a sidecar.
///
/// Until the mesh has mTLS, a caller's identity is its source address: the operator maps the
/// addresses of the pods it sees to their ServiceAccounts (the same trust NetworkPolicy puts in
/// pod IPs) and sends the result here as plain address lists, so the proxy never needs to
/// know about ServiceAccounts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPolicy {
    /// One entry per guarded port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<InboundPort>,
}

/// The policy of one port of the pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPort {
    /// The container port (the original destination port of redirected connections).
    pub port: u16,
    /// Where the policy comes from (`namespace/name` of the ServicePolicy); a label in metrics
    /// and in the body of a refusal.
    pub policy: String,
    /// Which callers may connect; none means every caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<InboundAuthorization>,
    /// How many requests the port takes; none means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<InboundRateLimit>,
}

/// Who may call a port, by source IP address: a caller in `allow` is let in, one in `deny` is
/// refused, anyone else gets `default`.
///
/// HTTP requests that are refused get `403`; an opaque TCP connection that is refused is closed
/// before a byte reaches the application.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundAuthorization {
    /// Source addresses let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<std::net::IpAddr>,
    /// Source addresses refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<std::net::IpAddr>,
    /// What happens to a source in neither list.
    #[serde(default)]
    pub default: InboundAction,
}

/// Let a caller in or refuse it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboundAction {
    /// Let it in.
    Allow,
    /// Refuse it (the default: an authorization that lists nobody lets nobody in).
    #[default]
    Deny,
}

/// A token bucket kept by each sidecar for its own pod: `requests` per `period`, bursts up to
/// `burst`. A Service with N pods therefore takes up to N times the rate in total (as Envoy's
/// local rate limit). Over the limit, HTTP requests get `429` with `retry-after`; for opaque TCP
/// every new connection counts as one request and is closed when over the limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundRateLimit {
    /// Requests allowed per `period`.
    pub requests: u64,
    /// The period `requests` refers to.
    pub period: Duration,
    /// Largest burst; at least `requests`.
    pub burst: u64,
    /// What one bucket counts.
    #[serde(default)]
    pub key: RateLimitKey,
}

/// What one rate-limit bucket counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum RateLimitKey {
    /// One bucket per client address (the default).
    #[default]
    #[serde(rename = "ClientIP")]
    ClientIp,
    /// One bucket per value of a request header (requests without it share one bucket).
    Header {
        /// The header's name.
        name: String,
    },
    /// One bucket for all traffic to the port.
    Global,
}
