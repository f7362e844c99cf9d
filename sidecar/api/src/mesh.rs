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
/// compiled by the operator from the ServicePolicies of the Services the pod backs and from the
/// mesh's (or namespace's) mTLS mode.
///
/// A caller is known by the identity in its client certificate: meshed proxies connect to
/// each other with mTLS (see [`crate::Endpoint::identity`]), so the INBOUND listener learns the
/// caller's SPIFFE ID from the handshake. A plaintext caller has no identity. A port not listed
/// is open to every caller without a limit (plaintext too, unless `mtls` is `Strict`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPolicy {
    /// One entry per guarded port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<InboundPort>,
    /// The pod's mode for ports whose entry does not set one: `Strict` refuses plaintext.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mtls: MtlsMode,
    /// The kubelet's HTTP probes of the pod's containers: plaintext `GET`s of these paths pass
    /// on a `Strict` port (the kubelet has no mesh identity), as Linkerd lets probes through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbePath>,
}

/// Whether plaintext callers are let in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// mTLS and plaintext callers both (the default: a mesh can be adopted a pod at a time).
    #[default]
    Permissive,
    /// mTLS callers only; a plaintext connection is closed (HTTP probes excepted).
    Strict,
}

/// One HTTP path the kubelet probes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbePath {
    /// The container port probed.
    pub port: u16,
    /// The path probed (no query).
    pub path: String,
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
    /// The port's mTLS mode; none takes the pod's ([`InboundPolicy::mtls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// Which callers may connect; none means every caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<InboundAuthorization>,
    /// How many requests the port takes; none means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Who may call a port, by verified mesh identity: a caller whose identity matches one of
/// `identities` is let in, a caller without one (plaintext) only when `unauthenticated`,
/// anyone else is refused.
///
/// HTTP requests that are refused get `403`; an opaque TCP connection that is refused is closed
/// before a byte reaches the application.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundAuthorization {
    /// Identities let in: a SPIFFE ID (`spiffe://cluster.local/ns/shop/sa/web`), every
    /// ServiceAccount of a namespace (`spiffe://cluster.local/ns/shop/sa/*`), or `*` for any
    /// mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Let in callers without a mesh identity.
    #[serde(default, skip_serializing_if = "is_default")]
    pub unauthenticated: bool,
}

/// A token bucket kept by each proxy: `requests` per `period`, bursts up to `burst`.
///
/// On a sidecar's inbound port it is the pod's own, so a Service with N pods takes up to N times
/// the rate in total (as Envoy's local rate limit); for opaque TCP every new connection counts as
/// one request and is closed when over the limit. On a route rule each gateway replica keeps its
/// own bucket, unless the limit names a [`RateLimitStore`]: then every proxy with the same store
/// and prefix takes from one bucket kept there. Over the limit, HTTP requests get `429` with
/// `retry-after`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per `period`.
    pub requests: u64,
    /// The period `requests` refers to.
    pub period: Duration,
    /// Largest burst; at least `requests`.
    pub burst: u64,
    /// What one bucket counts.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Where the buckets are kept when they are shared by several proxies (route rules only;
    /// absent: in each proxy's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<RateLimitStore>,
}

/// A Redis server that keeps rate-limit buckets for several proxies (the replicas of a gateway),
/// so they share one budget. Each request runs one script in Redis, atomically, with Redis's
/// clock; when Redis cannot answer within `timeout`, `fail_open` decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitStore {
    /// The Redis server, `host:port`.
    pub address: String,
    /// Starts the name of every key of this limit's buckets: limits with the same store and
    /// prefix share buckets (the operator makes it unique per Gateway, Route and rule).
    pub prefix: String,
    /// How long a request waits for Redis (connecting included) before `fail_open` decides.
    pub timeout: Duration,
    /// When Redis fails or is too slow: `true` lets the request through, `false` answers `503`.
    #[serde(default)]
    pub fail_open: bool,
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
    /// One bucket for all traffic (to the port, or of the rule).
    Global,
}
