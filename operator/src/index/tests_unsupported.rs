//! Objects that set a field the proxies cannot enforce yet: refused with `Unsupported`, named in
//! the message, and never served.

use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

/// Gateway shop/gw (one HTTP listener, `defaults` as given), Service shop/orders:80 and Service
/// shop/pay:80.
fn shop_with_defaults(defaults: Value) -> Index {
    let mut index = Index::new();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw", "generation": 3},
        "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}],
                 "defaults": defaults}
    }))));
    for (name, ip) in [("orders", "198.19.0.10"), ("pay", "198.19.0.11")] {
        index.apply(Object::Service(from(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"ports": [{"port": 80}], "clusterIP": ip}
        }))));
    }
    index
}

/// Route shop/`name` with parent `parent` and one rule to shop/orders:80, plus `extra` fields on
/// a second rule when given.
fn mk_route_rules(name: &str, parent: Value, extra: Option<Value>) -> Object {
    let mut rules = vec![json!({"backendRefs": [{"name": "orders", "port": 80}]})];
    if let Some(Value::Object(extra)) = extra {
        let mut rule = json!({"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                              "backendRefs": [{"name": "orders", "port": 80}]});
        if let Some(r) = rule.as_object_mut() {
            r.extend(extra);
        }
        rules.push(rule);
    }
    Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": name, "generation": 4},
        "spec": {"parentRefs": [parent], "hostnames": ["shop.example.com"], "rules": rules}
    })))
}

fn served(sub: &Subscription) -> Vec<String> {
    sub.routes
        .borrow()
        .routes
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn accepted(index: &Index, route: &str) -> Cond {
    index.statuses().borrow().routes[&Key::new("shop", route)].parents[0].conditions[0].clone()
}

#[test]
fn a_route_with_an_unsupported_field_is_unsupported_and_not_served_until_it_is_removed() {
    let mut index = shop_with_defaults(json!({}));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let api_key = json!({"authentication": {"apiKey": {"secretRef": {"name": "keys"}}}});
    index.apply(mk_route_rules(
        "admin",
        json!({"name": "gw"}),
        Some(api_key),
    ));
    assert!(
        served(&sub).is_empty(),
        "a rule that needs authentication must never be served open"
    );
    let cond = accepted(&index, "admin");
    assert!(!cond.status);
    assert_eq!(cond.reason, "Unsupported");
    assert_eq!(
        cond.message,
        "spec.rules[1].authentication is not supported yet"
    );
    assert_eq!(
        index.statuses().borrow().gateways[&Key::new("shop", "gw")].listeners[0].attached_routes,
        0,
        "a refused Route is not counted as attached"
    );
    index.apply(mk_route_rules("admin", json!({"name": "gw"}), None));
    assert_eq!(served(&sub), ["shop/admin"]);
    assert!(accepted(&index, "admin").status);
}

#[test]
fn every_unsupported_route_field_is_named_in_one_message() {
    let mut index = shop_with_defaults(json!({}));
    // cache and fallback are served: only the unsupported field is named.
    let fields = json!({
        "authentication": {"apiKey": {"secretRef": {"name": "keys"}}},
        "cache": {"ttl": "30s"},
        "fallback": {"directResponse": {"statusCode": 503}}
    });
    index.apply(mk_route_rules("all", json!({"name": "gw"}), Some(fields)));
    let cond = accepted(&index, "all");
    assert_eq!(cond.reason, "Unsupported");
    assert_eq!(
        cond.message,
        "spec.rules[1].authentication is not supported yet"
    );
}

#[test]
fn a_mesh_route_with_an_unsupported_field_is_unsupported_and_not_given_to_sidecars() {
    let mut index = shop_with_defaults(json!({}));
    let sub = index.subscribe_mesh();
    let auth = json!({"authentication": {"apiKey": {"secretRef": {"name": "keys"}}}});
    let parent = json!({"kind": "Service", "name": "pay"});
    index.apply(mk_route_rules("canary", parent.clone(), Some(auth)));
    assert!(served(&sub).is_empty());
    let pay = |sub: &Subscription| {
        sub.routes
            .borrow()
            .services
            .iter()
            .find(|s| s.name == "shop/pay:80")
            .map(|s| s.routes.clone())
    };
    assert_eq!(pay(&sub), Some(Vec::new()));
    let cond = accepted(&index, "canary");
    assert_eq!(
        (cond.status, cond.reason.as_str(), cond.message.as_str()),
        (
            false,
            "Unsupported",
            "spec.rules[1].authentication is not supported yet"
        )
    );
    index.apply(mk_route_rules("canary", parent, None));
    assert_eq!(served(&sub), ["shop/canary"]);
    assert_eq!(pay(&sub), Some(vec!["shop/canary".to_owned()]));
    assert!(accepted(&index, "canary").status);
}

#[test]
fn a_gateway_with_unsupported_defaults_is_unsupported_and_serves_no_route() {
    let mut index =
        shop_with_defaults(json!({"authentication": {"apiKey": {"secretRef": {"name": "k"}}}}));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    index.apply(mk_route_rules("orders", json!({"name": "gw"}), None));
    assert!(
        served(&sub).is_empty(),
        "the default's check cannot be skipped"
    );
    let listeners: Vec<String> = sub
        .routes
        .borrow()
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(
        listeners,
        ["web"],
        "the listener stays bound and answers 404"
    );
    let gw = index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    assert_eq!(gw.generation, Some(3));
    let (accepted_gw, programmed) = (&gw.conditions[0], &gw.conditions[1]);
    assert_eq!(
        (
            accepted_gw.type_,
            accepted_gw.status,
            accepted_gw.reason.as_str()
        ),
        ("Accepted", false, "Unsupported")
    );
    assert_eq!(
        accepted_gw.message,
        "spec.defaults.authentication is not supported yet"
    );
    assert_eq!((programmed.type_, programmed.status), ("Programmed", false));
    let cond = accepted(&index, "orders");
    assert_eq!(cond.reason, "Unsupported");
    assert_eq!(
        cond.message,
        "Gateway shop/gw is not accepted: spec.defaults.authentication is not supported yet"
    );
    // Without the defaults, the same Route is served.
    let mut index = shop_with_defaults(json!({}));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    index.apply(mk_route_rules("orders", json!({"name": "gw"}), None));
    assert_eq!(served(&sub), ["shop/orders"]);
    assert!(index.statuses().borrow().gateways[&Key::new("shop", "gw")].conditions[0].status);
}

#[test]
fn a_mesh_route_the_contract_refuses_is_not_accepted_either() {
    let mut index = shop_with_defaults(json!({}));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "bad"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "pay"}],
                 "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(("}}],
                            "backendRefs": [{"name": "orders", "port": 80}]}]}
    }))));
    let cond = accepted(&index, "bad");
    assert_eq!(
        (cond.status, cond.reason.as_str()),
        (false, "UnsupportedValue")
    );
}

#[test]
fn a_gateway_cors_default_applies_to_every_rule_without_its_own() {
    let mut index =
        shop_with_defaults(json!({"cors": {"allowOrigins": ["https://app.example.com"]}}));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let own = json!({"cors": {"allowOrigins": ["https://admin.example.com"]}});
    index.apply(mk_route_rules("shop", json!({"name": "gw"}), Some(own)));
    assert!(accepted(&index, "shop").status, "a CORS default is served");
    let routes = sub.routes.borrow();
    let rules = &routes.routes[0].rules;
    let origins = |i: usize| rules[i].cors.as_ref().map(|c| c.allow_origins.clone());
    assert_eq!(
        origins(0),
        Some(vec!["https://app.example.com".to_owned()]),
        "inherited"
    );
    assert_eq!(
        origins(1),
        Some(vec!["https://admin.example.com".to_owned()]),
        "its own"
    );
    drop(routes);
    // A mesh route (a Service parent) has no Gateway, so no default.
    let mesh = index.subscribe_mesh();
    index.apply(mk_route_rules(
        "east",
        json!({"kind": "Service", "name": "pay"}),
        None,
    ));
    let mesh_routes = mesh.routes.borrow();
    let east = mesh_routes
        .routes
        .iter()
        .find(|r| r.name == "shop/east")
        .expect("served");
    assert!(east.rules.iter().all(|r| r.cors.is_none()));
}
