//! Routes: which requests go where, and what happens to them on the way.

use serde::{Deserialize, Serialize};

use crate::{Duration, is_default, one};

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
    /// Hosts (exact or wildcard, as `hostnames`) this route never serves even when `hostnames`
    /// takes them: those of more specific listeners sharing its listener's port, which the
    /// Gateway API isolates (a request belongs to the most specific listener that takes its
    /// host). Empty for most routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_hostnames: Vec<String>,
    /// Rules; the most specific matching rule wins (see the proxy's `router` module).
    pub rules: Vec<RouteRule>,
}

/// One rule of a route: when it matches, what happens to the request, and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// The rule's name within its route: a label of the request metrics and a field of the
    /// access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// Request bodies larger than this many bytes are refused with 413 (by `content-length`
    /// before anything is sent, or as the body streams); no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Response compression negotiated with the client's `accept-encoding`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Cross-origin resource sharing: preflights answered by the proxy, allowed origins marked
    /// on responses; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Credentials a request must present before anything else of the rule runs (after a CORS
    /// preflight, which carries none); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<crate::Authentication>,
    /// A token bucket per client address, header value or for all the rule's requests; over it
    /// requests get `429`. None when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::RateLimit>,
    /// Answer with one JSON object merged from several backends asked in parallel, instead of
    /// forwarding to one; `backends` is then empty. None when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    /// Response cache for GET and HEAD requests; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// What clients get when the backends fail: the last good answer, or a fixed one; none
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// A rule that fans a GET out to several backends and answers with their JSON objects merged:
/// `200 application/json`. A backend that fails (no connection or endpoint, timeout, non-2xx,
/// a body over 1 MiB or not a JSON object) is left out and the answer carries
/// `x-portico-aggregate: incomplete` and `x-portico-aggregate-failed` naming the failed ones;
/// when all fail the answer is 502 `aggregate_failed`. Methods other than GET and HEAD get 405.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Aggregate {
    /// The backends asked, 1–8, in merge order: a later top-level field replaces an earlier
    /// one of the same name.
    pub backends: Vec<AggregateBackend>,
    /// How long each backend may take, from the request to the end of its body.
    #[serde(default = "five_seconds")]
    pub timeout: Duration,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// One backend of an [`Aggregate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateBackend {
    /// A backend name.
    pub backend: String,
    /// The path sent to it (`/...`, no query; the request's query is appended); the request's
    /// own path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The answer's key its object goes under; absent merges its fields into the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A rule's response cache. GET and HEAD answers are stored per host, path, query and the
/// values of `vary_headers`; a HEAD may be answered from a stored GET.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// How long an answer stays fresh; a shorter `Cache-Control: max-age`/`s-maxage` on the
    /// answer wins.
    pub ttl: Duration,
    /// Answers with a larger body are passed through and not stored.
    #[serde(default = "default_cache_body")]
    pub max_body_bytes: u64,
    /// Request headers whose values are part of the key (lower case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_headers: Vec<String>,
}

fn default_cache_body() -> u64 {
    1 << 20
}

/// A rule's fallback: backend failures (the statuses listed, timeouts, connection failures)
/// answered with the last good answer for the same request if it expired at most `stale_for`
/// ago, else with `direct_response`, else as they came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// Upstream statuses treated as failures (500–599); 502, 503 and 504 when absent.
    #[serde(default = "default_fallback_statuses")]
    pub on_status: Vec<u16>,
    /// How long past its expiry a stored answer may still be served (stale-if-error). With it,
    /// the rule stores its good GET answers even without a `cache` (fresh for no time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_for: Option<Duration>,
    /// The answer when no stored one may be served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

fn default_fallback_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}

/// A rule's CORS policy (the Fetch standard's CORS protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Allowed origins: exact (`https://app.example.com`), a subdomain wildcard
    /// (`https://*.example.com`), or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods a cross-origin request may use (upper case).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers a cross-origin request may send (`*`: any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Credentials (cookies, `authorization`) may be sent.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// Response compression of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compression {
    /// The encodings offered, in the proxy's order of preference (the client's q-values decide
    /// first; this order breaks ties). All three when absent.
    #[serde(default = "all_encodings")]
    pub encodings: Vec<Encoding>,
    /// Responses that declare a smaller `content-length` are sent as they are.
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u64,
}

/// A content coding the proxy can compress with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Zstandard (RFC 8878), level 3.
    Zstd,
    /// Brotli (RFC 7932), quality 4.
    Br,
    /// gzip (RFC 1952), level 5.
    Gzip,
}

impl Encoding {
    /// The `content-encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }
}

fn all_encodings() -> Vec<Encoding> {
    vec![Encoding::Zstd, Encoding::Br, Encoding::Gzip]
}

fn default_min_bytes() -> u64 {
    1024
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
    /// Share of requests mirrored, 0–100 (each request is drawn at random).
    #[serde(default = "crate::hundred", skip_serializing_if = "crate::is_hundred")]
    pub percent: u32,
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
    /// HTTP statuses worth retrying with [`RetryOn::RetriableStatusCodes`], e.g. 409 or 503.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
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
    /// A response status listed in [`RetryPolicy::status_codes`].
    RetriableStatusCodes,
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
    /// The window requests and retries are counted over (default 10 s).
    #[serde(default = "ten_seconds")]
    pub window: Duration,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: ten_seconds(),
        }
    }
}
