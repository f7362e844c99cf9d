//! Fields the schema accepts but the data plane does not enforce yet.
//!
//! A field without effect misleads: a Route with `authentication` that is served open is worse
//! than a Route that is not served at all. So an object that sets one of these fields is
//! `Accepted=False` with reason `Unsupported` (the message names each field), and nothing of it
//! is served: the Route is attached to no listener and to no Service; a Gateway with such
//! defaults keeps its listeners bound but serves no Route (its clients get 404, never a response
//! that skipped the default's check). docs/fields.md lists these fields with the tests that
//! prove the refusal.

use portico_api::gateway::GatewaySpec;
use portico_api::route::RouteSpec;

/// The `Accepted` reason of an object that uses an unsupported field.
pub const REASON: &str = "Unsupported";

/// The paths of the unsupported fields `spec` sets, such as `spec.rules[1].authentication`, in
/// rule order.
pub fn route_fields(spec: &RouteSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let set = [
            ("authentication", r.authentication.is_some()),
            ("rateLimit", r.rate_limit.is_some()),
        ];
        out.extend(
            set.iter()
                .filter(|(_, is_set)| *is_set)
                .map(|(field, _)| format!("spec.rules[{i}].{field}")),
        );
    }
    out
}

/// The paths of the unsupported fields a Gateway's `spec` sets (`spec.defaults.*`). An empty
/// `defaults: {}` asks for nothing and is accepted.
pub fn gateway_fields(spec: &GatewaySpec) -> Vec<String> {
    let Some(d) = &spec.defaults else {
        return Vec::new();
    };
    [
        ("authentication", d.authentication.is_some()),
        ("rateLimit", d.rate_limit.is_some()),
    ]
    .iter()
    .filter(|(_, is_set)| *is_set)
    .map(|(field, _)| format!("spec.defaults.{field}"))
    .collect()
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
            ["spec.rules[1].authentication", "spec.rules[1].rateLimit"],
            "cache and fallback are served"
        );
        assert_eq!(
            message(&route_fields(&spec)[..1]),
            "spec.rules[1].authentication is not supported yet"
        );
    }

    #[test]
    fn gateway_defaults_are_unsupported_unless_empty() {
        let spec = |defaults: serde_json::Value| -> GatewaySpec {
            serde_json::from_value(serde_json::json!({
                "listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}],
                "defaults": defaults
            }))
            .unwrap()
        };
        assert!(gateway_fields(&spec(serde_json::json!({}))).is_empty());
        assert_eq!(
            gateway_fields(&spec(serde_json::json!({
                "authentication": {"apiKey": {"secretRef": {"name": "keys"}}},
                "rateLimit": {"requests": 1, "unit": "Second"},
                "cors": {"allowOrigins": ["*"]}
            }))),
            ["spec.defaults.authentication", "spec.defaults.rateLimit"],
            "a CORS default is served (the Gateway's Routes inherit it)"
        );
    }
}
