//! Types shared by several resources: durations, references, conditions and the API-gateway
//! policies (authentication, rate limits, CORS) that both Gateways and Routes carry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Portico resource.
pub const GROUP: &str = "portico.dev";
/// The API version of every Portico resource.
pub const VERSION: &str = "v1alpha1";

/// A duration in the Gateway API format: one to four `<number><unit>` pairs with units `h`, `m`,
/// `s` or `ms`, for example `10s`, `1m30s` or `250ms`. Numbers have at most five digits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Duration(
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"), length(max = 32))] pub String,
);

impl Duration {
    /// Parses the duration into a [`std::time::Duration`]; `None` when the text is malformed.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        parse_duration(&self.0)
    }
}

/// Parses the Gateway API duration format (`1h30m`, `250ms`, `10s`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * u32::try_from(value).ok()?;
    }
    Some(total)
}

/// A reference to a Secret in the same namespace as the referring object (or in `namespace`,
/// where cross-namespace references are allowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults to the referring object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key inside the Secret's data, where the Secret holds more than one value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Status conditions, as every Kubernetes resource reports them
/// (type, status, reason, message, observedGeneration, lastTransitionTime).
pub type Conditions = Vec<Condition>;

/// Authentication required before a request is routed. When several methods are set, a
/// request passes with any one of them; without a valid credential it gets `401` and is never
/// forwarded. The Secrets named here must carry the label `portico.dev/credential` (the
/// operator watches only those, not every Secret of the cluster).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.jwt) || has(self.apiKey) || has(self.basic)",
     "message": "set at least one of jwt, apiKey and basic"}
]))]
pub struct Authentication {
    /// Validate a JSON Web Token carried in the `Authorization: Bearer` header (or `fromHeader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthentication>,
    /// Validate an API key against the keys stored in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuthentication>,
    /// Validate HTTP basic credentials against an htpasswd file (bcrypt hashes) in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuthentication>,
}

/// HTTP basic authentication: `user:hash` lines as `htpasswd -B` writes them (bcrypt only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthentication {
    /// The Secret holding the htpasswd file, under the key `auth` unless `key` says otherwise.
    pub secret_ref: SecretObjectReference,
    /// The realm named in the `WWW-Authenticate` challenge. Defaults to `portico`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r#"^[^"\\]*$"#))]
    pub realm: Option<String>,
}

/// JWT validation: signature (from a JWKS), issuer, audience and expiry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.jwksUri) != has(self.jwksSecretRef)",
     "message": "exactly one of jwksUri and jwksSecretRef must be set"}
]))]
pub struct JwtAuthentication {
    /// Expected `iss` claim.
    #[schemars(length(min = 1, max = 253))]
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,
    /// HTTPS address of the issuer's JSON Web Key Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"), length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// A Secret whose `jwks` key (or `key`) holds the JSON Web Key Set (for issuers without a
    /// public URI). The proxies fetch `jwksUri` themselves, refresh it every 5 minutes and on an
    /// unknown `kid`, and keep the last good set while the issuer is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretObjectReference>,
    /// Header that carries the token instead of `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub from_header: Option<String>,
    /// Claims copied into request headers for the backend, e.g. `sub` → `x-user-id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims_to_headers: Vec<ClaimToHeader>,
}

/// Copies one JWT claim into a request header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Claim name, e.g. `sub`.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// Header name, e.g. `x-user-id`.
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
}

/// API-key validation: the key in `header` must be one of the values in the Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuthentication {
    /// Header that carries the key. Defaults to `x-api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Secret whose values are the accepted keys (one key per data entry; the entry's name
    /// identifies the client in access logs and metrics, never the key itself). With `key`,
    /// only that entry.
    pub secret_ref: SecretObjectReference,
}

/// A token-bucket rate limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.key == 'Header' ? has(self.header) : !has(self.header)",
     "message": "header must be set when key is Header, and only then", "fieldPath": ".header"},
    {"rule": "!has(self.burst) || self.burst >= self.requests",
     "message": "burst must be at least requests", "fieldPath": ".burst"}
]))]
pub struct RateLimit {
    /// Requests allowed per `unit`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub requests: i64,
    /// The period `requests` refers to.
    pub unit: RateLimitUnit,
    /// Largest burst above the steady rate; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: Option<i64>,
    /// What one bucket counts: every client address, every value of a header, or all traffic.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Header whose value selects the bucket, with `key: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

/// The period of a rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitUnit {
    /// Per second.
    #[default]
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// What a rate-limit bucket is keyed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitKey {
    /// One bucket per client address.
    #[default]
    ClientIP,
    /// One bucket per value of `header`.
    Header,
    /// One bucket shared by all traffic.
    Global,
}

/// Cross-origin resource sharing: the proxy answers preflight requests itself and adds the
/// `Access-Control-*` headers to responses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.allowCredentials) && self.allowCredentials && has(self.allowOrigins) && '*' in self.allowOrigins)",
     "message": "allowCredentials cannot be combined with the wildcard origin '*'", "fieldPath": ".allowOrigins"}
]))]
pub struct Cors {
    /// Allowed origins (`https://app.example.com`, `https://*.example.com`, or `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_origins: Vec<String>,
    /// Allowed methods for cross-origin requests; `*` allows any (a credentialed preflight is
    /// then answered with the method it asked for, as the Fetch standard requires).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub allow_methods: Vec<CorsMethod>,
    /// Request headers a cross-origin request may send; `*` allows any (a credentialed
    /// preflight is then answered with the headers it asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may expose to scripts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight answer. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials (cookies, authorization headers) may be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// A method a CORS policy allows: an HTTP method, or `*` for any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum CorsMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// Any method.
    #[serde(rename = "*")]
    Any,
}

/// An HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration as Std;

    #[test]
    fn durations_in_the_gateway_api_format_parse() {
        assert_eq!(parse_duration("10s"), Some(Std::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Std::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Some(Std::from_secs(5400)));
        assert_eq!(parse_duration("1m0s500ms"), Some(Std::from_millis(60_500)));
        assert_eq!(parse_duration("0s"), Some(Std::ZERO));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in ["", "10", "s", "10 s", "1.5s", "10d", "123456s", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?} should not parse");
        }
    }
}
