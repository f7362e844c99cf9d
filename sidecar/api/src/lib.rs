//! The operator→proxy contract: versioned serde types shared by the operator and the proxy.
//!
//! A [`ProxyConfig`] is everything one proxy needs. It is written by `portico-operator` (streamed)
//! or by a person (a YAML file for standalone use), checked as a whole with
//! [`ProxyConfig::validate`], and only then applied.
//!
//! ```text
//!  ProxyConfig ─┬─ listeners[]  where traffic comes in (HTTP | HTTPS | TCP)
//!               ├─ routes[]     hostnames → rules (matches, filters, weighted backend refs)
//!               └─ backends[]   named endpoint sets + how to talk to them (LB, outliers, limits)
//! ```
//!
//! Routes change rarely; endpoints change on every pod restart. The two halves therefore also
//! travel separately: [`RouteTable`] (listeners + routes) and [`BackendSet`] (backends) can be
//! sent apart and joined with [`ProxyConfig::from_parts`].

mod duration;
mod validate;

use serde::{Deserialize, Serialize};

pub use duration::{Duration, ParseDurationError};
pub use validate::ValidationError;

/// The contract version this crate reads and writes. A config with another `apiVersion` is
/// refused, so an old proxy never half-understands a newer operator.
pub const API_VERSION: &str = "portico.dev/proxy/v1";

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The whole configuration of one proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Must be [`API_VERSION`].
    #[serde(default = "api_version")]
    pub api_version: String,
    /// A number that grows with every change; reported as `portico_config_version`.
    #[serde(default)]
    pub generation: u64,
    /// Where traffic comes in.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Routing rules for HTTP and HTTPS listeners.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Named sets of endpoints that routes and TCP listeners send traffic to.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            api_version: api_version(),
            generation: 0,
            listeners: Vec::new(),
            routes: Vec::new(),
            backends: Vec::new(),
        }
    }
}

/// The low-churn half of a config: listeners and routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    /// See [`ProxyConfig::generation`].
    #[serde(default)]
    pub generation: u64,
    /// See [`ProxyConfig::listeners`].
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// See [`ProxyConfig::routes`].
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// The high-churn half of a config: backends and their endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSet {
    /// See [`ProxyConfig::generation`].
    #[serde(default)]
    pub generation: u64,
    /// See [`ProxyConfig::backends`].
    #[serde(default)]
    pub backends: Vec<Backend>,
}

impl ProxyConfig {
    /// Joins the two halves. The generation is the larger of the two, so a change to either half
    /// moves the reported config version forward.
    pub fn from_parts(routes: RouteTable, backends: BackendSet) -> Self {
        Self {
            api_version: api_version(),
            generation: routes.generation.max(backends.generation),
            listeners: routes.listeners,
            routes: routes.routes,
            backends: backends.backends,
        }
    }

    /// Splits into the halves that travel separately.
    pub fn into_parts(self) -> (RouteTable, BackendSet) {
        (
            RouteTable {
                generation: self.generation,
                listeners: self.listeners,
                routes: self.routes,
            },
            BackendSet {
                generation: self.generation,
                backends: self.backends,
            },
        )
    }

    /// The backend called `name`, if any.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// A socket the proxy accepts connections on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners; used in logs, metrics and [`Route::listeners`].
    pub name: String,
    /// `IP:PORT` to bind. Port 0 lets the OS choose (useful in tests).
    pub address: String,
    /// What is spoken on the socket.
    pub protocol: Protocol,
    /// Certificate and key; required for HTTPS, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// For TCP listeners: the backend every connection is forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// The protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS, chosen by ALPN.
    Https,
    /// Opaque bytes, forwarded unchanged to [`Listener::backend`].
    Tcp,
}

/// A certificate chain and private key for a TLS listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, leaf first (PEM).
    pub cert: Pem,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
}

/// PEM text, either in a file (re-read on every config apply, so renewed certs are picked up) or
/// inline (what the operator sends, so the proxy needs no access to Secrets).
/// Written `{ file: /etc/tls/tls.crt }` or `{ inline: "-----BEGIN ..." }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pem {
    /// Path of a PEM file.
    File {
        /// The path.
        file: String,
    },
    /// The PEM text itself.
    Inline {
        /// The text.
        inline: String,
    },
}

/// Routing rules for a set of hostnames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Unique among routes; the `route` label in metrics.
    pub name: String,
    /// Listener names this route attaches to; empty means every HTTP and HTTPS listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    /// Exact (`api.example.com`) or wildcard (`*.example.com`, one or more labels) host names;
    /// empty matches any host. Exact beats wildcard; a longer wildcard beats a shorter one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Rules; the most specific matching rule wins (see the proxy's `router` module).
    pub rules: Vec<RouteRule>,
}

/// One rule of a route: when it matches, what happens to the request, and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Any one match selects the rule; empty matches every request (like a `/` prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Applied in order before the request is forwarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Where the request goes, split by weight. May be empty only when a filter answers the
    /// request itself (redirect or direct response).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendRef>,
    /// Time limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: Timeouts,
    /// Retries; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// Conditions a request must all meet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path condition; absent means any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Every listed header must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Every listed query parameter must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// A path condition. Prefixes match whole segments: `/api` matches `/api` and `/api/x`, not
/// `/apix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The path equals the value.
    Exact(String),
    /// The path starts with the value, on a segment boundary.
    PathPrefix(String),
    /// The whole path matches the regular expression.
    RegularExpression(String),
}

/// A condition on a header or query parameter value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// The expected value, or the regular expression the whole value must match.
    pub value: String,
    /// How `value` is compared.
    #[serde(default, rename = "type", skip_serializing_if = "is_default")]
    pub kind: MatchKind,
}

/// How a [`ValueMatch`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchKind {
    /// Byte-for-byte equality.
    #[default]
    Exact,
    /// The whole value matches the regular expression.
    RegularExpression,
}

/// Something done to a request or its response, written with a `type` field:
/// `{ type: RequestHeaderModifier, set: [{ name: x-env, value: prod }] }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    /// Edit request headers before forwarding.
    RequestHeaderModifier(HeaderModifier),
    /// Edit response headers before answering.
    ResponseHeaderModifier(HeaderModifier),
    /// Change host and/or path before forwarding.
    UrlRewrite(UrlRewrite),
    /// Answer with a redirect instead of forwarding.
    RequestRedirect(Redirect),
    /// Answer with a fixed response instead of forwarding.
    DirectResponse(DirectResponse),
    /// Send a copy of the request to another backend; its answer is ignored.
    RequestMirror(Mirror),
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes. Applied remove → set → add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers to replace (or create).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Headers to append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Header names to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// How a path is rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathRewrite {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part matched by the rule's `PathPrefix` match (the rule must have one).
    ReplacePrefixMatch(String),
}

/// A URL rewrite applied before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// New `Host` / `:authority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// A redirect answer; each absent part keeps the request's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host name of the new location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port of the new location; omitted from the URL when it is the scheme's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path of the new location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A fixed answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status, 200–599.
    pub status: u16,
    /// Response body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
}

/// Where mirrored copies go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// A backend name.
    pub backend: String,
}

/// A weighted reference from a rule to a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// A backend name.
    pub backend: String,
    /// Relative share of requests; 0 sends none.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Time limits of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request, all retries included, until response headers arrive (504 after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Each attempt, until its response headers arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
}

/// When and how a failed attempt is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Failures worth retrying.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// gRPC status codes (from `grpc-status`) worth retrying, e.g. 14 (UNAVAILABLE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_status_codes: Vec<u32>,
    /// Delay between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Methods that may be retried; default: the idempotent ones (RFC 9110 §9.2.2).
    #[serde(default = "default_retry_methods")]
    pub methods: Vec<String>,
    /// Cap on retries as a share of live traffic.
    #[serde(default)]
    pub budget: RetryBudget,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::GatewayError]
}

fn default_retry_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .map(str::to_owned)
        .to_vec()
}

/// A kind of failure that a [`RetryPolicy`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response (and the failures below).
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504 responses, connect failures and resets.
    GatewayError,
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The connection broke before response headers arrived.
    Reset,
    /// A `grpc-status` listed in [`RetryPolicy::grpc_status_codes`].
    RetriableGrpc,
}

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[0, min(max, base·2ⁿ)]`, so retrying clients do not move in lockstep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// First delay bound.
    pub base: Duration,
    /// Largest delay bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// Retries may use `ratio` of the requests seen in the last 10 s, plus `minPerSecond`, so a
/// struggling backend sees at most `(1 + ratio)` times its normal load, not `attempts` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of live traffic, 0.0–1.0.
    pub ratio: f64,
    /// Retries always allowed per second, so low-traffic routes can still retry.
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

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
