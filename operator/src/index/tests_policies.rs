//! Route rule policies as the index serves them: a Gateway's defaults filling rules without
//! their own, credentials read from labelled Secrets, and Routes the contract refuses.

use base64::Engine;
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

fn accepted(index: &Index, route: &str) -> Cond {
    index.statuses().borrow().routes[&Key::new("shop", route)].parents[0].conditions[0].clone()
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

/// A credential Secret in `shop` with `data` as text.
fn credential(name: &str, data: Value, labelled: bool) -> Object {
    let data: serde_json::Map<String, Value> = data
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().expect("text");
            (
                k.clone(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(text)),
            )
        })
        .collect();
    let labels = if labelled {
        json!({"portico.dev/credential": "true"})
    } else {
        json!({})
    };
    let secret = from(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"namespace": "shop", "name": name, "labels": labels}, "data": data}));
    if labelled {
        Object::Credential(secret)
    } else {
        Object::Secret(secret)
    }
}

#[test]
fn gateway_rate_limit_and_authentication_defaults_fill_rules_without_their_own() {
    let mut index = shop_with_defaults(json!({
        "rateLimit": {"requests": 10, "unit": "Second"},
        "authentication": {"apiKey": {"secretRef": {"name": "keys"}, "header": "X-Key"}}
    }));
    index.apply(credential("keys", json!({"team-a": "key-a\n"}), true));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let own = json!({"rateLimit": {"requests": 1, "unit": "Minute", "key": "Global"}});
    index.apply(mk_route_rules("shop", json!({"name": "gw"}), Some(own)));
    let routes = sub.routes.borrow();
    let rules = &routes.routes[0].rules;
    let limit = |i: usize| {
        rules[i]
            .rate_limit
            .as_ref()
            .map(|r| (r.requests, r.period.get()))
    };
    assert_eq!(
        limit(0),
        Some((10, std::time::Duration::from_secs(1))),
        "inherited"
    );
    assert_eq!(
        limit(1),
        Some((1, std::time::Duration::from_secs(60))),
        "its own"
    );
    for rule in rules {
        let keys = rule
            .authentication
            .as_ref()
            .and_then(|a| a.api_key.as_ref())
            .expect("the default's API keys");
        assert_eq!(keys.header, "x-key");
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(
            (keys.keys[0].client.as_str(), keys.keys[0].key.as_str()),
            ("team-a", "key-a")
        );
    }
    drop(routes);
    let gw = index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    assert!(
        gw.conditions
            .iter()
            .any(|c| c.type_ == "ResolvedRefs" && c.status)
    );
}

#[test]
fn route_credentials_come_from_labelled_secrets_and_a_missing_one_is_named() {
    let mut index = shop_with_defaults(json!({}));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    // Not labelled: the operator never sees it as a credential.
    index.apply(credential(
        "users",
        json!({"auth": "bob:$2y$05$abcdefghijklmnopqrstuu5Cq8eYvJvhNtH0QLyKdh2Mbq/6i3aa"}),
        false,
    ));
    index.apply(credential(
        "issuer",
        json!({"jwks": "{\"keys\": []}"}),
        true,
    ));
    let auth = json!({"authentication": {
        "basic": {"secretRef": {"name": "users"}},
        "jwt": {"issuer": "https://i", "jwksSecretRef": {"name": "issuer"},
                "claimsToHeaders": [{"claim": "sub", "header": "X-User"}]}}});
    index.apply(mk_route_rules("shop", json!({"name": "gw"}), Some(auth)));
    let a = sub.routes.borrow().routes[0].rules[1]
        .authentication
        .clone()
        .expect("served with its authentication");
    let jwt = a.jwt.expect("jwt");
    assert_eq!(jwt.jwks.as_deref(), Some("{\"keys\": []}"));
    assert_eq!(jwt.claims_to_headers[0].header, "x-user");
    let basic = a.basic.expect("basic");
    assert!(basic.users.is_empty(), "no users: every request is refused");
    assert_eq!(basic.realm, "portico");
    let status = index.statuses().borrow().routes[&Key::new("shop", "shop")].clone();
    let resolved = &status.parents[0].conditions[1];
    assert_eq!(
        (resolved.type_, resolved.status, resolved.reason.as_str()),
        ("ResolvedRefs", false, "InvalidCredentials")
    );
    assert!(
        resolved.message.contains(
            "rule 2: Secret shop/users not found (credential Secrets need the label portico.dev/credential)"
        ),
        "{}",
        resolved.message
    );
    // Labelled, it is read at once: the users arrive without touching the Route.
    index.apply(credential(
        "users",
        json!({"auth": "bob:$2y$05$abcdefghijklmnopqrstuu5Cq8eYvJvhNtH0QLyKdh2Mbq/6i3aa"}),
        true,
    ));
    let users = sub.routes.borrow().routes[0].rules[1]
        .authentication
        .as_ref()
        .and_then(|a| a.basic.as_ref())
        .map(|b| b.users.len());
    assert_eq!(users, Some(1));
}

#[test]
fn a_gateway_rate_limit_store_holds_every_rule_limit_under_its_own_prefix() {
    let mut index = shop_with_defaults(json!({"rateLimit": {"requests": 10, "unit": "Second"}}));
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw", "generation": 4},
        "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}],
                 "defaults": {"rateLimit": {"requests": 10, "unit": "Second"}},
                 "rateLimitStore": {"redis": {"address": "redis.cache:6379",
                                              "failureMode": "FailClosed"}}}
    }))));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let own = json!({"name": "admin",
                     "rateLimit": {"requests": 1, "unit": "Minute", "key": "Global"}});
    index.apply(mk_route_rules("shop", json!({"name": "gw"}), Some(own)));
    let routes = sub.routes.borrow();
    let stores: Vec<_> = routes.routes[0]
        .rules
        .iter()
        .map(|r| r.rate_limit.as_ref().and_then(|l| l.store.clone()))
        .collect();
    let want = |prefix: &str| {
        Some(portico_proxy_api::RateLimitStore {
            address: "redis.cache:6379".into(),
            prefix: prefix.into(),
            timeout: portico_proxy_api::Duration::from_millis(50),
            fail_open: false,
        })
    };
    assert_eq!(
        stores,
        [
            want("portico:shop/gw:shop/shop:0"),
            want("portico:shop/gw:shop/shop:admin")
        ],
        "the default's limit and the rule's own, each named by rule position or name"
    );
}
