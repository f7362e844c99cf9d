//! `Route`: routing rules for traffic entering through a Gateway (north–south) or addressed to a
//! Kubernetes Service inside the mesh (east–west). Shapes follow the Gateway API's HTTPRoute.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Authentication, Cors, Duration, HttpMethod, RateLimit};

/// Desired state of a Route.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "Route",
    plural = "routes",
    shortname = "prt",
    category = "portico",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Hostnames","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.parentRefs[0].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.parents[0].conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// What the Route attaches to: Gateways (their listeners) or Services (mesh traffic
    /// addressed to them).
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<ParentReference>,
    /// Host names the Route answers for (exact, or a leading `*.` wildcard). Empty matches every
    /// host the parent accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<Hostname>,
    /// Ordered rules; the most specific match across all rules wins (see `RouteMatch`).
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
}

/// A host name, optionally with a leading `*.` wildcard label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Hostname(
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub String,
);

/// What a Route attaches to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.kind == 'Gateway' || !has(self.sectionName)",
     "message": "sectionName selects a Gateway listener and applies only to Gateway parents", "fieldPath": ".sectionName"},
    {"rule": "self.kind == 'Service' || !has(self.port)",
     "message": "port applies only to Service parents", "fieldPath": ".port"}
]))]
pub struct ParentReference {
    /// `Gateway` (a Portico Gateway) or `Service` (a Kubernetes Service in the mesh).
    #[serde(default)]
    pub kind: ParentKind,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the parent; defaults to the Route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Name of the Gateway listener to attach to; unset attaches to every listener that allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub section_name: Option<String>,
    /// Port of the Service parent the rules apply to; unset applies to every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// The kind of a Route's parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ParentKind {
    /// A Portico Gateway.
    #[default]
    Gateway,
    /// A Kubernetes Service (east–west mesh routing).
    Service,
}

/// One routing rule: which requests it matches, what it does to them, where they go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.filters) && self.filters.exists(f, f.type == 'RequestRedirect' || f.type == 'DirectResponse') && has(self.backendRefs) && size(self.backendRefs) > 0)",
     "message": "backendRefs must be empty when the rule answers with a RequestRedirect or DirectResponse filter", "fieldPath": ".backendRefs"},
    {"rule": "!has(self.filters) || self.filters.filter(f, f.type == 'RequestRedirect' || f.type == 'DirectResponse').size() <= 1",
     "message": "a rule may have at most one RequestRedirect or DirectResponse filter", "fieldPath": ".filters"},
    {"rule": "!has(self.filters) || !(self.filters.exists(f, f.type == 'RequestRedirect') && self.filters.exists(f, f.type == 'URLRewrite'))",
     "message": "RequestRedirect and URLRewrite filters cannot be used together", "fieldPath": ".filters"},
    {"rule": "!has(self.filters) || ['RequestHeaderModifier', 'ResponseHeaderModifier', 'URLRewrite'].all(t, self.filters.filter(f, f.type == t).size() <= 1)",
     "message": "RequestHeaderModifier, ResponseHeaderModifier and URLRewrite may each appear at most once per rule", "fieldPath": ".filters"},
    {"rule": "!has(self.retry) || !has(self.retry.attempts) || self.retry.attempts == 0 || !has(self.filters) || !self.filters.exists(f, f.type == 'DirectResponse' || f.type == 'RequestRedirect')",
     "message": "retry has no effect on a rule answered by the proxy itself", "fieldPath": ".retry"},
    {"rule": "!has(self.fallback) || (has(self.backendRefs) && size(self.backendRefs) > 0)",
     "message": "fallback needs backendRefs whose failures it masks", "fieldPath": ".fallback"},
    {"rule": "!has(self.aggregate) || !has(self.backendRefs) || size(self.backendRefs) == 0",
     "message": "a rule either forwards (backendRefs) or aggregates (aggregate), not both", "fieldPath": ".aggregate"},
    {"rule": "!has(self.aggregate) || !has(self.filters) || !self.filters.exists(f, f.type == 'RequestRedirect' || f.type == 'DirectResponse' || f.type == 'RequestMirror')",
     "message": "an aggregate rule cannot have RequestRedirect, DirectResponse or RequestMirror filters", "fieldPath": ".filters"},
    {"rule": "!has(self.aggregate) || (!has(self.retry) && !has(self.timeouts))",
     "message": "an aggregate rule has no retry or timeouts; aggregate.timeout bounds each backend", "fieldPath": ".aggregate"},
    {"rule": "!has(self.aggregate) || !has(self.matches) || self.matches.all(m, !has(m.method) || m.method == 'GET' || m.method == 'HEAD')",
     "message": "an aggregate rule answers GET and HEAD only; its matches may not name another method", "fieldPath": ".matches"}
]))]
pub struct RouteRule {
    /// Optional name, used in metrics, access logs and status messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Conditions a request must meet; any one match selects the rule. Empty matches every
    /// request (path prefix `/`). Precedence across rules: exact path, then the longest prefix,
    /// then regex; then the most header matches, then the most query matches, then a method
    /// match; then rule order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Filters applied, in order, to matched requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<RouteFilter>,
    /// Where matched requests go, split by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Request timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries of failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Request bodies larger than this many bytes are refused with 413 `body_too_large` (by
    /// `content-length` before anything is sent upstream, or as an undeclared body streams).
    /// No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_request_body_bytes: Option<i64>,
    /// Compress responses for clients that accept it (`accept-encoding`): zstd, brotli or gzip.
    /// Only compressible types (text, JSON, JavaScript, XML, SVG) not encoded already, of at
    /// least `minBytes` when their length is declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<RouteCompression>,
    /// Authentication required for this rule (overrides the Gateway default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Rate limit for this rule (overrides the Gateway default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// CORS for this rule (overrides the Gateway default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Response caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// What to answer when every backend fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Answer with one JSON object merged from several backends, asked in parallel, instead of
    /// forwarding to one (`backendRefs` must then be empty). GET and HEAD only; other methods
    /// get 405.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
}

/// Fan-out of one request to several backends whose JSON object bodies are merged into the
/// answer. A backend that fails (no connection, timeout, non-2xx, a body that is not a JSON
/// object or larger than 1 MiB) is left out and the answer carries
/// `x-portico-aggregate: incomplete`; when every backend fails the answer is 502.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.backends.all(a, !has(a.key) || self.backends.filter(b, has(b.key) && b.key == a.key).size() == 1)",
     "message": "keys must be unique", "fieldPath": ".backends"},
    {"rule": "!has(self.timeout) || duration(self.timeout) > duration('0s')",
     "message": "timeout must be longer than 0s", "fieldPath": ".timeout"}
]))]
pub struct Aggregate {
    /// The backends asked, in order: with top-level merging, a later backend's field replaces
    /// an earlier one's of the same name.
    #[schemars(length(min = 1, max = 8))]
    pub backends: Vec<AggregateBackend>,
    /// How long each backend may take, to the end of its body. Defaults to 5s. A duration such
    /// as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One backend of an aggregate rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregateBackend {
    /// Only `Service` is supported.
    #[serde(default)]
    pub kind: BackendKind,
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Service namespace; defaults to the Route's (another namespace needs a ReferenceGrant,
    /// as for `backendRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The path sent to this backend (the request's query string is appended); defaults to the
    /// request's path, after any `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^?#]*$"))]
    pub path: Option<String>,
    /// Put this backend's object under this key of the answer; absent merges its fields into
    /// the answer's top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub key: Option<String>,
}

/// Conditions on a request. All set conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition. Defaults to the prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Header conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// A path condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'RegularExpression' || self.value.startsWith('/')",
     "message": "an Exact or PathPrefix value must start with '/'", "fieldPath": ".value"},
    {"rule": "self.type == 'RegularExpression' || !self.value.contains('//')",
     "message": "an Exact or PathPrefix value must not contain '//'", "fieldPath": ".value"}
]))]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (whole segments: `/api` matches `/api/x`, not `/apix`) or
    /// `RegularExpression` (RE2 syntax, anchored at both ends).
    #[serde(rename = "type", default)]
    pub type_: PathMatchType,
    /// The path or expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value's segments.
    #[default]
    PathPrefix,
    /// The path matches the regular expression.
    RegularExpression,
}

/// How a header or query value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    /// Equal to the value.
    #[default]
    Exact,
    /// Matches the regular expression (RE2 syntax, anchored).
    RegularExpression,
}

/// A header condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: ValueMatchType,
    /// Header name (case-insensitive).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Expected value or expression.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A query parameter condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: ValueMatchType,
    /// Parameter name (case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Expected value or expression.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// A filter: set `type` and the field of the same name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'RequestHeaderModifier') == has(self.requestHeaderModifier)",
     "message": "requestHeaderModifier must be set for type RequestHeaderModifier, and only then"},
    {"rule": "(self.type == 'ResponseHeaderModifier') == has(self.responseHeaderModifier)",
     "message": "responseHeaderModifier must be set for type ResponseHeaderModifier, and only then"},
    {"rule": "(self.type == 'URLRewrite') == has(self.urlRewrite)",
     "message": "urlRewrite must be set for type URLRewrite, and only then"},
    {"rule": "(self.type == 'RequestRedirect') == has(self.requestRedirect)",
     "message": "requestRedirect must be set for type RequestRedirect, and only then"},
    {"rule": "(self.type == 'RequestMirror') == has(self.requestMirror)",
     "message": "requestMirror must be set for type RequestMirror, and only then"},
    {"rule": "(self.type == 'DirectResponse') == has(self.directResponse)",
     "message": "directResponse must be set for type DirectResponse, and only then"}
]))]
pub struct RouteFilter {
    /// Which filter this is.
    #[serde(rename = "type")]
    pub type_: RouteFilterType,
    /// Adds, sets or removes request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Adds, sets or removes response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Rewrites the host or path before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Answers with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// Copies requests to a second backend, fire-and-forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// Answers with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// The type of a filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum RouteFilterType {
    #[default]
    RequestHeaderModifier,
    ResponseHeaderModifier,
    URLRewrite,
    RequestRedirect,
    RequestMirror,
    DirectResponse,
}

/// Header changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.set) || has(self.add) || has(self.remove)",
     "message": "set at least one of set, add and remove"}
]))]
pub struct HeaderModifier {
    /// Headers to set, replacing any existing value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HttpHeader>,
    /// Headers to append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HttpHeader>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpHeader {
    /// Header name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A URL rewrite.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// How a path is changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'ReplaceFullPath') == has(self.replaceFullPath)",
     "message": "replaceFullPath must be set for type ReplaceFullPath, and only then"},
    {"rule": "(self.type == 'ReplacePrefixMatch') == has(self.replacePrefixMatch)",
     "message": "replacePrefixMatch must be set for type ReplacePrefixMatch, and only then"}
]))]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch` (replaces the matched `PathPrefix`).
    #[serde(rename = "type")]
    pub type_: PathModifierType,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub replace_full_path: Option<String>,
    /// The prefix that replaces the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/"))]
    pub replace_prefix_match: Option<String>,
}

/// The type of a path change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum PathModifierType {
    #[default]
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// A redirect answer. Unset parts keep the request's values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.statusCode) || self.statusCode in [301, 302, 303, 307, 308]",
     "message": "statusCode must be one of 301, 302, 303, 307, 308", "fieldPath": ".statusCode"}
]))]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Redirect status. Defaults to 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

/// A URL scheme for redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum RedirectScheme {
    Http,
    Https,
}

/// Request mirroring.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// The Service that receives the copies; its answers are discarded.
    pub backend_ref: BackendObjectReference,
    /// Share of requests mirrored, 0–100. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
}

/// A fixed answer produced by the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// HTTP status, 200–599.
    #[schemars(range(min = 200, max = 599))]
    pub status_code: i32,
    /// Response body, at most 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
    /// `Content-Type` of the body. Defaults to `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub content_type: Option<String>,
}

/// A Kubernetes Service and port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    /// Only `Service` is supported.
    #[serde(default)]
    pub kind: BackendKind,
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Service namespace; defaults to the Route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The kind of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackendKind {
    /// A Kubernetes Service.
    #[default]
    Service,
}

/// A weighted backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Only `Service` is supported.
    #[serde(default)]
    pub kind: BackendKind,
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Service namespace; defaults to the Route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Relative share of requests, 0–1,000,000. Defaults to 1; 0 sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub weight: Option<i32>,
}

/// Request timeouts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))",
     "message": "backendRequest must not be longer than request", "fieldPath": ".backendRequest"}
]))]
pub struct Timeouts {
    /// Whole request, including retries, to the response's head. `0s` disables it. Defaults
    /// to 60s when neither timeout is set. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Each attempt to a backend. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
}

/// Retry policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.codes) || (has(self.retryOn) && 'RetriableStatusCodes' in self.retryOn)",
     "message": "codes needs RetriableStatusCodes in retryOn", "fieldPath": ".codes"}
]))]
pub struct Retry {
    /// Extra attempts after the first, 0–10. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<i32>,
    /// Conditions that trigger a retry. Defaults to `ConnectFailure`, `Reset`, `GatewayError`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub retry_on: Vec<RetryOn>,
    /// Status codes retried with `RetriableStatusCodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub codes: Vec<RetryStatusCode>,
    /// First backoff; later ones double, with jitter, up to `maxBackoff`. Defaults to 25ms. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    /// Longest backoff. Defaults to 250ms. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    /// Also retry non-idempotent methods (POST, PATCH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
}

/// An HTTP status code that may be retried, 400–599.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct RetryStatusCode(#[schemars(range(min = 400, max = 599))] pub i32);

/// Response compression of a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCompression {
    /// The encodings offered, in order of preference when the client accepts several equally.
    /// Defaults to `[zstd, br, gzip]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub encodings: Option<Vec<CompressionEncoding>>,
    /// Responses that declare a smaller `content-length` are sent uncompressed. Defaults to
    /// 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_bytes: Option<i64>,
}

/// A content coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionEncoding {
    /// Zstandard.
    Zstd,
    /// Brotli.
    Br,
    /// gzip.
    Gzip,
}

/// A condition that triggers a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection to the backend could not be made.
    ConnectFailure,
    /// The backend reset the connection or stream.
    Reset,
    /// A status listed in `codes`.
    RetriableStatusCodes,
    /// gRPC status CANCELLED.
    GrpcCancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    GrpcDeadlineExceeded,
    /// gRPC status RESOURCE_EXHAUSTED.
    GrpcResourceExhausted,
    /// gRPC status UNAVAILABLE.
    GrpcUnavailable,
}

/// Response caching in the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// How long a response stays fresh (unless its `Cache-Control` says less). A duration such as `10s`, `1m30s` or `250ms`.
    pub ttl: Duration,
    /// Largest body cached. Defaults to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67_108_864))]
    pub max_body_bytes: Option<i64>,
    /// Request headers that are part of the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub vary_headers: Vec<String>,
}

/// Masks backend failures: serve the last good (cached) response, or a default answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.staleFor) || has(self.directResponse)",
     "message": "set staleFor, directResponse or both"}
]))]
pub struct Fallback {
    /// Backend answers treated as failures, 500–599. Defaults to 502, 503, 504 and connection
    /// errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub on_status: Vec<FallbackStatusCode>,
    /// Serve the last successful response for the same request for up to this long. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_for: Option<Duration>,
    /// Answer when nothing cached is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// A 5xx status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct FallbackStatusCode(#[schemars(range(min = 500, max = 599))] pub i32);

/// Observed state of a Route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Status per parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parents: Vec<RouteParentStatus>,
}

/// Status of a Route for one parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent this status is for.
    pub parent_ref: ParentReference,
    /// `portico.dev/operator`.
    pub controller_name: String,
    /// `Accepted` and `ResolvedRefs`, with the standard reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}
