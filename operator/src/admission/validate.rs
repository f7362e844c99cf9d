//! Validation of Portico's custom resources beyond what the CRD schema and its CEL rules can
//! express: regular expressions that compile, Route rules that are not duplicates, and Secret
//! references that point at Secrets of the right type.
//!
//! Regular expressions are compiled with the `regex` crate, which is the engine the proxy uses.
//! Its syntax is RE2's (no backreferences, no look-around; linear-time matching), so an
//! expression accepted here behaves the same in RE2-based tools such as Envoy or Gateway API
//! conformance suites, and one that needs backtracking is rejected here rather than at the proxy.
//!
//! The checks that need no cluster state ([`route_errors`], [`secret_refs`]) are pure; only
//! reading the referenced Secrets is done by the webhook.

use portico_api::common::{Authentication, SecretObjectReference};
use portico_api::route::{PathMatchType, RouteMatch, RouteSpec, ValueMatchType};
use portico_api::{GatewaySpec, gateway::ListenerProtocol};

/// Largest compiled size accepted for one expression: well above any routing expression, and it
/// keeps a pasted-in monster from costing the proxy memory on every request.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One reason an object is rejected, with the path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.rules[1].matches[0].path.value`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The type a referenced Secret must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretType {
    /// `kubernetes.io/tls`: a certificate chain and key (`tls.crt`, `tls.key`).
    Tls,
    /// `Opaque`: arbitrary keys (a JWKS, API keys).
    Opaque,
}

impl SecretType {
    /// The value of a Secret's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::Tls => "kubernetes.io/tls",
            SecretType::Opaque => "Opaque",
        }
    }
}

/// A Secret an object refers to, to be checked against the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// JSON path of the reference, e.g. `spec.listeners[0].tls.certificateRefs[0]`.
    pub field: String,
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// The type it must have.
    pub expected: SecretType,
}

/// Checks a referenced Secret's type. `actual` is the Secret's `type` (`None` when the Secret
/// has none, which the apiserver reads as `Opaque`); a missing Secret is not checked here: it is
/// reported in the object's status, since it may well be created after the object.
pub fn check_secret_type(reference: &SecretRef, actual: Option<&str>) -> Option<FieldError> {
    let actual = actual.unwrap_or("Opaque");
    (actual != reference.expected.as_str()).then(|| {
        FieldError::new(
            reference.field.clone(),
            format!(
                "Secret {}/{} has type {actual:?}, expected {:?}",
                reference.namespace,
                reference.name,
                reference.expected.as_str()
            ),
        )
    })
}

/// The errors of a Route that need no cluster state.
pub fn route_errors(spec: &RouteSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen: Vec<(usize, Vec<String>)> = Vec::new();
    for (r, rule) in spec.rules.iter().enumerate() {
        for (m, matched) in rule.matches.iter().enumerate() {
            let at = format!("spec.rules[{r}].matches[{m}]");
            if let Some(path) = &matched.path
                && path.type_ == PathMatchType::RegularExpression
                && let Some(e) = regex_error(&path.value)
            {
                errors.push(FieldError::new(format!("{at}.path.value"), e));
            }
            for (h, header) in matched.headers.iter().enumerate() {
                if header.type_ == ValueMatchType::RegularExpression
                    && let Some(e) = regex_error(&header.value)
                {
                    errors.push(FieldError::new(format!("{at}.headers[{h}].value"), e));
                }
            }
            for (q, query) in matched.query_params.iter().enumerate() {
                if query.type_ == ValueMatchType::RegularExpression
                    && let Some(e) = regex_error(&query.value)
                {
                    errors.push(FieldError::new(format!("{at}.queryParams[{q}].value"), e));
                }
            }
        }
        let key = matches_key(&rule.matches);
        if let Some((first, _)) = seen.iter().find(|(_, k)| *k == key) {
            errors.push(FieldError::new(
                format!("spec.rules[{r}].matches"),
                format!(
                    "same matches as spec.rules[{first}]; this rule could never be selected \
                     (merge the two rules, or make their matches differ)"
                ),
            ));
        } else {
            seen.push((r, key));
        }
    }
    errors
}

/// A canonical form of a rule's matches, so that rules matching the same requests compare equal
/// whatever the order of their matches, headers and query parameters, and an absent path equals
/// its default (prefix `/`).
fn matches_key(matches: &[RouteMatch]) -> Vec<String> {
    let default = [RouteMatch::default()];
    let matches = if matches.is_empty() {
        &default[..]
    } else {
        matches
    };
    let mut keys: Vec<String> = matches
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.path.is_none() {
                m.path = Some(portico_api::route::PathMatch {
                    type_: PathMatchType::PathPrefix,
                    value: "/".into(),
                });
            }
            // Header names are case-insensitive; query parameter names are not.
            for h in &mut m.headers {
                h.name = h.name.to_ascii_lowercase();
            }
            m.headers
                .sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
            m.query_params
                .sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
            serde_json::to_string(&m).unwrap_or_default()
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Why `expression` is not an acceptable (RE2-compatible) regular expression, if it is not.
/// Compiled anchored, as the proxy uses it.
fn regex_error(expression: &str) -> Option<String> {
    regex::RegexBuilder::new(&format!("^(?:{expression})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .err()
        .map(|e| {
            // The regex crate's message is multi-line (it draws a caret under the error); keep
            // it, on one line, since kubectl prints the message as is.
            let text = e.to_string();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("invalid regular expression (RE2 syntax): {text}")
        })
}

/// The Secrets a Route refers to (per-rule authentication), with the type each must have.
pub fn route_secret_refs(spec: &RouteSpec, namespace: &str) -> Vec<SecretRef> {
    let mut refs = Vec::new();
    for (r, rule) in spec.rules.iter().enumerate() {
        if let Some(auth) = &rule.authentication {
            auth_refs(
                auth,
                &format!("spec.rules[{r}].authentication"),
                namespace,
                &mut refs,
            );
        }
    }
    refs
}

/// The Secrets a Gateway refers to: listener certificates (must be TLS Secrets) and the default
/// authentication's key material.
pub fn secret_refs(spec: &GatewaySpec, namespace: &str) -> Vec<SecretRef> {
    let mut refs = Vec::new();
    for (l, listener) in spec.listeners.iter().enumerate() {
        if listener.protocol != ListenerProtocol::HTTPS {
            continue;
        }
        for (c, cert) in listener
            .tls
            .iter()
            .flat_map(|t| &t.certificate_refs)
            .enumerate()
        {
            refs.push(secret_ref(
                format!("spec.listeners[{l}].tls.certificateRefs[{c}]"),
                cert,
                namespace,
                SecretType::Tls,
            ));
        }
    }
    if let Some(auth) = spec
        .defaults
        .as_ref()
        .and_then(|d| d.authentication.as_ref())
    {
        auth_refs(auth, "spec.defaults.authentication", namespace, &mut refs);
    }
    refs
}

fn auth_refs(auth: &Authentication, at: &str, namespace: &str, refs: &mut Vec<SecretRef>) {
    if let Some(jwks) = auth.jwt.as_ref().and_then(|j| j.jwks_secret_ref.as_ref()) {
        refs.push(secret_ref(
            format!("{at}.jwt.jwksSecretRef"),
            jwks,
            namespace,
            SecretType::Opaque,
        ));
    }
    if let Some(key) = &auth.api_key {
        refs.push(secret_ref(
            format!("{at}.apiKey.secretRef"),
            &key.secret_ref,
            namespace,
            SecretType::Opaque,
        ));
    }
    if let Some(basic) = &auth.basic {
        refs.push(secret_ref(
            format!("{at}.basic.secretRef"),
            &basic.secret_ref,
            namespace,
            SecretType::Opaque,
        ));
    }
}

fn secret_ref(
    field: String,
    reference: &SecretObjectReference,
    namespace: &str,
    expected: SecretType,
) -> SecretRef {
    SecretRef {
        field,
        namespace: reference
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_owned()),
        name: reference.name.clone(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_route(rules: serde_json::Value) -> RouteSpec {
        serde_json::from_value(json!({
            "parentRefs": [{"kind": "Service", "name": "orders"}],
            "rules": rules,
        }))
        .expect("a valid route spec")
    }

    fn mk_gateway(spec: serde_json::Value) -> GatewaySpec {
        serde_json::from_value(spec).expect("a valid gateway spec")
    }

    #[test]
    fn bad_path_regex_names_the_field() {
        let spec = mk_route(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}]},
            {"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}]},
        ]));
        let errors = route_errors(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.starts_with("spec.rules[1].matches[0].path.value: invalid regular expression"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn non_re2_constructs_are_rejected() {
        for expr in [r"(a)\1", "(?=look)ahead", "(?<!x)y"] {
            assert!(regex_error(expr).is_some(), "{expr}");
        }
        for expr in [r"/api/v[0-9]+/.*", r"(?i)/Users/\d+", "[[:alpha:]]+"] {
            assert_eq!(regex_error(expr), None, "{expr}");
        }
    }

    #[test]
    fn header_and_query_regexes_are_checked_but_exact_values_are_not() {
        let spec = mk_route(json!([{"matches": [{
            "headers": [
                {"type": "Exact", "name": "x-a", "value": "(("},
                {"type": "RegularExpression", "name": "x-b", "value": "[z-a]"},
            ],
            "queryParams": [{"type": "RegularExpression", "name": "q", "value": "*"}],
        }]}]));
        let fields: Vec<String> = route_errors(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].matches[0].headers[1].value",
                "spec.rules[0].matches[0].queryParams[0].value"
            ]
        );
    }

    #[test]
    fn identical_rules_are_rejected() {
        let spec = mk_route(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}, {"method": "GET"}]},
            {"matches": [{"path": {"type": "Exact", "value": "/b"}}]},
            {"matches": [{"method": "GET"}, {"path": {"type": "PathPrefix", "value": "/a"}}]},
        ]));
        let errors = route_errors(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.rules[2].matches");
        assert!(errors[0].message.contains("spec.rules[0]"), "{errors:?}");
    }

    #[test]
    fn empty_matches_equal_the_default_prefix_and_different_rules_pass() {
        let spec = mk_route(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
            {},
        ]));
        assert_eq!(route_errors(&spec).len(), 1);
        let spec = mk_route(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "method": "POST"}]},
            {"matches": [{"headers": [{"name": "X-V", "value": "1"}]}]},
            {"matches": [{"headers": [{"name": "x-v", "value": "2"}]}]},
        ]));
        assert_eq!(route_errors(&spec), []);
    }

    #[test]
    fn gateway_secret_refs_and_their_types() {
        let spec = mk_gateway(json!({
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "cert"}, {"name": "other", "namespace": "certs"}]}},
            ],
            "defaults": {"authentication": {
                "jwt": {"issuer": "https://issuer", "jwksSecretRef": {"name": "jwks"}},
                "apiKey": {"secretRef": {"name": "keys"}},
            }},
        }));
        let refs = secret_refs(&spec, "shop");
        let summary: Vec<(&str, &str, &str, SecretType)> = refs
            .iter()
            .map(|r| {
                (
                    r.field.as_str(),
                    r.namespace.as_str(),
                    r.name.as_str(),
                    r.expected,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "spec.listeners[1].tls.certificateRefs[0]",
                    "shop",
                    "cert",
                    SecretType::Tls
                ),
                (
                    "spec.listeners[1].tls.certificateRefs[1]",
                    "certs",
                    "other",
                    SecretType::Tls
                ),
                (
                    "spec.defaults.authentication.jwt.jwksSecretRef",
                    "shop",
                    "jwks",
                    SecretType::Opaque
                ),
                (
                    "spec.defaults.authentication.apiKey.secretRef",
                    "shop",
                    "keys",
                    SecretType::Opaque
                ),
            ]
        );
        assert_eq!(check_secret_type(&refs[0], Some("kubernetes.io/tls")), None);
        let err = check_secret_type(&refs[0], Some("Opaque")).expect("an error");
        assert_eq!(
            err.to_string(),
            "spec.listeners[1].tls.certificateRefs[0]: Secret shop/cert has type \"Opaque\", expected \"kubernetes.io/tls\""
        );
        assert_eq!(
            check_secret_type(&refs[2], None),
            None,
            "no type means Opaque"
        );
        assert!(check_secret_type(&refs[3], Some("kubernetes.io/tls")).is_some());
    }

    #[test]
    fn route_auth_secret_refs() {
        let spec = mk_route(json!([
            {},
            {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
             "authentication": {"apiKey": {"secretRef": {"name": "keys"}}}},
        ]));
        let refs = route_secret_refs(&spec, "shop");
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs[0].field,
            "spec.rules[1].authentication.apiKey.secretRef"
        );
    }
}
