//! Fields the schema accepts but the data plane does not enforce yet.
//!
//! A field without effect misleads: a Route with `authentication` that is served open is worse
//! than a Route that is not served at all. So an object that sets one of these fields is
//! `Accepted=False` with reason `Unsupported` (the message names each field), and nothing of it
//! is served: the Route is attached to no listener and to no Service. docs/fields.md lists these fields with the tests that
//! prove the refusal.

use portico_api::route::RouteSpec;

/// The `Accepted` reason of an object that uses an unsupported field.
pub const REASON: &str = "Unsupported";

/// The paths of the unsupported fields `spec` sets, such as `spec.rules[1].authentication`, in
/// rule order.
pub fn route_fields(spec: &RouteSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let set = [
            ("cache", r.cache.is_some()),
            ("fallback", r.fallback.is_some()),
        ];
        out.extend(
            set.iter()
                .filter(|(_, is_set)| *is_set)
                .map(|(field, _)| format!("spec.rules[{i}].{field}")),
        );
    }
    out
}

/// The condition message for `fields` (not empty): `spec.rules[1].authentication is not
/// supported yet`, or a list joined with commas and `are`.
pub fn message(fields: &[String]) -> String {
    let verb = if fields.len() == 1 { "is" } else { "are" };
    format!("{} {verb} not supported yet", fields.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unsupported_route_field_is_named_with_its_rule_index() {
        let spec: RouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {"backendRefs": [{"name": "a", "port": 80}]},
                {"backendRefs": [{"name": "a", "port": 80}],
                 "authentication": {"apiKey": {"secretRef": {"name": "keys"}}},
                 "rateLimit": {"requests": 1, "unit": "Second"},
                 "cache": {"ttl": "10s"},
                 "fallback": {"staleFor": "1m"}}
            ]
        }))
        .unwrap();
        assert_eq!(
            route_fields(&spec),
            ["spec.rules[1].cache", "spec.rules[1].fallback",]
        );
        assert_eq!(
            message(&route_fields(&spec)[..1]),
            "spec.rules[1].cache is not supported yet"
        );
    }
}
