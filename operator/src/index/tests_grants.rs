//! Cross-namespace references need a ReferenceGrant (the `grants` module): Route backend refs
//! and mirrors to another namespace's Service, Gateway certificate refs to another namespace's
//! Secret.

use portico_proxy_api::ProxyConfig;
use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

fn mk_grant(ns: &str, name: &str, from_: Value, to: Value) -> Object {
    Object::ReferenceGrant(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"from": from_, "to": to}
    })))
}

/// A grant in `other` for Routes of `shop` to Services (`name`, or all when `None`).
fn routes_of_shop_to_services(name: Option<&str>) -> Object {
    let mut to = json!({"group": "", "kind": "Service"});
    if let Some(n) = name {
        to["name"] = json!(n);
    }
    mk_grant(
        "other",
        "shop-routes",
        json!([{"group": "portico.dev", "kind": "Route", "namespace": "shop"}]),
        json!([to]),
    )
}

fn mk_svc(ns: &str, name: &str, cluster_ip: &str) -> Object {
    Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": [{"port": 80}], "clusterIP": cluster_ip}
    })))
}

fn mk_slice(ns: &str, svc: &str, ip: &str) -> Object {
    Object::EndpointSlice(from(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{svc}-a"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"port": 80}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]
    })))
}

/// Gateway shop/gw; Services shop/orders and other/pay with one endpoint each; Route
/// shop/orders with rule "orders" → other/pay:80 (retried) and rule "local" → shop/orders:80
/// (namespace written out: the same namespace needs no grant), subscribed.
fn cross_namespace_route() -> (Index, Subscription) {
    let mut index = Index::new();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw"},
        "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}]}
    }))));
    index.apply(mk_svc("shop", "orders", "198.19.0.10"));
    index.apply(mk_slice("shop", "orders", "198.18.66.1"));
    index.apply(mk_svc("other", "pay", "198.19.0.11"));
    index.apply(mk_slice("other", "pay", "198.18.66.2"));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "orders", "generation": 1},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {"name": "orders",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/pay"}}],
                 "backendRefs": [{"name": "pay", "namespace": "other", "port": 80}],
                 "retry": {"attempts": 3}},
                {"name": "local",
                 "backendRefs": [{"name": "orders", "namespace": "shop", "port": 80}]}
            ]
        }
    }))));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    (index, sub)
}

fn resolved_refs(index: &Index, route: &Key) -> Cond {
    let status = index.statuses().borrow().routes[route].clone();
    let conds = &status.parents[0].conditions;
    assert_eq!(
        (conds[0].type_, conds[0].status),
        ("Accepted", true),
        "a refused ref leaves the Route accepted: {conds:?}"
    );
    conds[1].clone()
}

fn backend_names(sub: &Subscription) -> Vec<String> {
    sub.backends
        .borrow()
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect()
}

/// Asserts rule "orders" of shop/orders answers 500 itself and other/pay is not sent.
fn assert_refused(index: &Index, sub: &Subscription) {
    let routes = sub.routes.borrow().clone();
    let rule = &routes.routes[0].rules[0];
    assert!(rule.backends.is_empty(), "{rule:?}");
    assert_eq!(rule.retry, None);
    let [contract::Filter::DirectResponse(d)] = rule.filters.as_slice() else {
        panic!("a refused rule answers itself: {rule:?}");
    };
    assert_eq!(d.status, 500);
    assert_eq!(d.body, route_entry::NOT_PERMITTED_BODY);
    assert_eq!(
        routes.routes[0].rules[1].backends[0].backend,
        "shop/orders:80"
    );
    assert_eq!(backend_names(sub), ["shop/orders:80"]);
    let config = ProxyConfig::from_parts((*routes).clone(), sub.backends.borrow().to_set());
    config
        .validate()
        .expect("a refused rule keeps the config valid");
    let cond = resolved_refs(index, &Key::new("shop", "orders"));
    assert_eq!(
        (cond.status, cond.reason.as_str(), cond.message.as_str()),
        (
            false,
            "RefNotPermitted",
            "rule \"orders\": Service other/pay needs a ReferenceGrant in namespace other from portico.dev/Route in shop"
        )
    );
}

/// Asserts rule "orders" of shop/orders sends to other/pay, retried, with its endpoint.
fn assert_served(index: &Index, sub: &Subscription) {
    let routes = sub.routes.borrow().clone();
    let rule = &routes.routes[0].rules[0];
    assert_eq!(rule.backends[0].backend, "other/pay:80");
    assert!(rule.filters.is_empty(), "{rule:?}");
    assert_eq!(rule.retry.as_ref().map(|r| r.attempts), Some(3));
    assert_eq!(backend_names(sub), ["other/pay:80", "shop/orders:80"]);
    let pay = &sub.backends.borrow().backends[0];
    assert_eq!(pay.endpoints[0].address, "198.18.66.2:80");
    let cond = resolved_refs(index, &Key::new("shop", "orders"));
    assert!(cond.status, "{cond:?}");
}

#[test]
fn a_backend_in_another_namespace_without_a_grant_answers_500_and_is_not_permitted() {
    let (index, sub) = cross_namespace_route();
    assert_refused(&index, &sub);
}

#[test]
fn a_grant_permits_a_backend_and_deleting_it_refuses_it_again() {
    let (mut index, mut sub) = cross_namespace_route();
    sub.routes.mark_unchanged();
    index.apply(routes_of_shop_to_services(None));
    assert!(
        sub.routes.has_changed().unwrap(),
        "a new grant wakes the proxies"
    );
    assert_served(&index, &sub);
    // A grant for that one Service permits it too.
    index.delete_key(Kind::ReferenceGrant, &Key::new("other", "shop-routes"));
    assert_refused(&index, &sub);
    index.apply(routes_of_shop_to_services(Some("pay")));
    assert_served(&index, &sub);
    index.delete_key(Kind::ReferenceGrant, &Key::new("other", "shop-routes"));
    assert_refused(&index, &sub);
}

#[test]
fn a_grant_for_another_kind_name_namespace_or_in_another_namespace_does_not_permit() {
    let (mut index, sub) = cross_namespace_route();
    let from_shop_routes = json!([{"group": "portico.dev", "kind": "Route", "namespace": "shop"}]);
    let to_services = json!([{"group": "", "kind": "Service"}]);
    for grant in [
        // Another name.
        routes_of_shop_to_services(Some("db")),
        // Another kind referred to.
        mk_grant(
            "other",
            "secrets",
            from_shop_routes.clone(),
            json!([{"group": "", "kind": "Secret"}]),
        ),
        // Another kind referring.
        mk_grant(
            "other",
            "gateways",
            json!([{"group": "portico.dev", "kind": "Gateway", "namespace": "shop"}]),
            to_services.clone(),
        ),
        // Another referring namespace.
        mk_grant(
            "other",
            "elsewhere",
            json!([{"group": "portico.dev", "kind": "Route", "namespace": "elsewhere"}]),
            to_services.clone(),
        ),
        // The Gateway API's HTTPRoute is not Portico's Route.
        mk_grant(
            "other",
            "httproutes",
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}]),
            to_services.clone(),
        ),
        // A grant in the referring namespace grants nothing.
        mk_grant(
            "shop",
            "wrong-side",
            from_shop_routes.clone(),
            to_services.clone(),
        ),
    ] {
        index.apply(grant);
    }
    assert_refused(&index, &sub);
}

#[test]
fn a_mirror_to_another_namespace_without_a_grant_is_dropped_and_its_rule_still_forwards() {
    let mut index = Index::new();
    index.apply(mk_svc("shop", "orders", "198.19.0.10"));
    index.apply(mk_svc("other", "copy", "198.19.0.12"));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "mirrored", "generation": 1},
        "spec": {
            "parentRefs": [{"kind": "Service", "name": "orders"}],
            "rules": [{"name": "all",
                       "filters": [{"type": "RequestMirror", "requestMirror":
                                    {"backendRef": {"name": "copy", "namespace": "other", "port": 80}}}],
                       "backendRefs": [{"name": "orders", "port": 80}]}]
        }
    }))));
    let sub = index.subscribe_mesh();
    let rule = sub.routes.borrow().routes[0].rules[0].clone();
    assert_eq!(rule.backends[0].backend, "shop/orders:80");
    assert!(rule.filters.is_empty(), "{rule:?}");
    let cond = resolved_refs(&index, &Key::new("shop", "mirrored"));
    assert_eq!(cond.reason, "RefNotPermitted");
    assert_eq!(
        cond.message,
        "rule \"all\": Service other/copy needs a ReferenceGrant in namespace other from portico.dev/Route in shop"
    );
    index.apply(routes_of_shop_to_services(Some("copy")));
    let rule = sub.routes.borrow().routes[0].rules[0].clone();
    assert!(
        matches!(rule.filters.as_slice(), [contract::Filter::RequestMirror(m)] if m.backend == "other/copy:80"),
        "{rule:?}"
    );
    assert!(resolved_refs(&index, &Key::new("shop", "mirrored")).status);
}

#[test]
fn a_mesh_route_to_another_namespace_without_a_grant_answers_500() {
    let mut index = Index::new();
    index.apply(mk_svc("shop", "orders", "198.19.0.10"));
    index.apply(mk_svc("other", "pay", "198.19.0.11"));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "canary", "generation": 1},
        "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
                 "rules": [{"backendRefs": [{"name": "pay", "namespace": "other", "port": 80}]}]}
    }))));
    let sub = index.subscribe_mesh();
    let rule = sub.routes.borrow().routes[0].rules[0].clone();
    assert!(rule.backends.is_empty());
    assert!(
        matches!(rule.filters.as_slice(), [contract::Filter::DirectResponse(d)] if d.status == 500)
    );
    let cond = resolved_refs(&index, &Key::new("shop", "canary"));
    assert_eq!(cond.reason, "RefNotPermitted");
    assert!(
        cond.message.starts_with("rule 1: Service other/pay"),
        "{}",
        cond.message
    );
    index.apply(routes_of_shop_to_services(None));
    let rule = sub.routes.borrow().routes[0].rules[0].clone();
    assert_eq!(rule.backends[0].backend, "other/pay:80");
}

#[test]
fn a_tcp_listener_is_not_fed_by_a_backend_in_another_namespace_without_a_grant() {
    let mut index = Index::new();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw"},
        "spec": {"listeners": [{"name": "db", "port": 5432, "protocol": "TCP"}]}
    }))));
    index.apply(mk_svc("other", "pay", "198.19.0.11"));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"backendRefs": [{"name": "pay", "namespace": "other", "port": 80}]}]}
    }))));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    assert!(sub.routes.borrow().listeners.is_empty());
    assert!(sub.backends.borrow().backends.is_empty());
    index.apply(routes_of_shop_to_services(None));
    assert_eq!(
        sub.routes.borrow().listeners[0].backends[0].backend,
        "other/pay:80"
    );
    assert_eq!(backend_names(&sub), ["other/pay:80"]);
}

/// Gateway shop/gw with an HTTPS listener whose certificate is Secret certs/wild.
fn gateway_with_a_certificate_in_another_namespace() -> (Index, Subscription) {
    let mut index = Index::new();
    index.apply(Object::Secret(from(
        super::tls::test_secret("certs", "wild").0,
    )));
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw"},
        "spec": {"listeners": [{"name": "tls", "port": 8443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "wild", "namespace": "certs"}]}}]}
    }))));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    (index, sub)
}

fn listener_refs(index: &Index) -> Cond {
    let gw = index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    gw.listeners[0].conditions[1].clone()
}

#[test]
fn a_certificate_in_another_namespace_is_read_only_with_a_grant() {
    let (mut index, sub) = gateway_with_a_certificate_in_another_namespace();
    // Neither read nor sent: the listener is left out.
    assert!(sub.routes.borrow().listeners.is_empty());
    let refused = |index: &Index| {
        let cond = listener_refs(index);
        assert_eq!(
            (
                cond.type_,
                cond.status,
                cond.reason.as_str(),
                cond.message.as_str()
            ),
            (
                "ResolvedRefs",
                false,
                "RefNotPermitted",
                "Secret certs/wild needs a ReferenceGrant in namespace certs from portico.dev/Gateway in shop"
            )
        );
    };
    refused(&index);
    // A grant to Routes, or to another Secret, is not one to this Gateway's certificate.
    index.apply(mk_grant(
        "certs",
        "routes",
        json!([{"group": "portico.dev", "kind": "Route", "namespace": "shop"}]),
        json!([{"group": "", "kind": "Secret"}]),
    ));
    index.apply(mk_grant(
        "certs",
        "other-secret",
        json!([{"group": "portico.dev", "kind": "Gateway", "namespace": "shop"}]),
        json!([{"group": "", "kind": "Secret", "name": "other"}]),
    ));
    refused(&index);
    assert!(sub.routes.borrow().listeners.is_empty());
    index.apply(mk_grant(
        "certs",
        "gateways",
        json!([{"group": "portico.dev", "kind": "Gateway", "namespace": "shop"}]),
        json!([{"group": "", "kind": "Secret", "name": "wild"}]),
    ));
    let tls = sub.routes.borrow().listeners[0].tls.clone().expect("tls");
    assert!(
        matches!(&tls.cert, contract::Pem::Inline { inline } if inline.contains("BEGIN CERTIFICATE"))
    );
    assert!(listener_refs(&index).status);
    index.delete_key(Kind::ReferenceGrant, &Key::new("certs", "gateways"));
    assert!(sub.routes.borrow().listeners.is_empty());
    refused(&index);
}

/// Route shop/combined with one aggregate rule over shop/orders:80 (key `orders`) and
/// other/pay:80 (top level), on the setup of [`cross_namespace_route`].
fn aggregate_route(index: &mut Index) {
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "combined", "generation": 1},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["combined.example.com"],
            "rules": [{"name": "both", "aggregate": {"timeout": "2s", "backends": [
                {"name": "orders", "port": 80, "key": "orders", "path": "/orders"},
                {"name": "pay", "namespace": "other", "port": 80}
            ]}}]
        }
    }))));
}

#[test]
fn aggregated_backends_are_sent_with_their_endpoints_and_need_a_grant_like_backend_refs() {
    let (mut index, sub) = cross_namespace_route();
    aggregate_route(&mut index);
    let combined = |sub: &Subscription| {
        let routes = sub.routes.borrow();
        let route = routes
            .routes
            .iter()
            .find(|r| r.name == "shop/combined")
            .expect("the aggregate Route is served");
        route.rules[0].clone()
    };
    // Without a grant the rule answers 500 itself, like a rule with a refused backend ref.
    let rule = combined(&sub);
    assert_eq!(rule.aggregate, None, "{rule:?}");
    assert!(matches!(
        rule.filters.as_slice(),
        [contract::Filter::DirectResponse(d)] if d.status == 500
    ));
    let cond = resolved_refs(&index, &Key::new("shop", "combined"));
    assert_eq!(
        (cond.status, cond.reason.as_str()),
        (false, "RefNotPermitted"),
        "{cond:?}"
    );

    index.apply(routes_of_shop_to_services(None));
    let rule = combined(&sub);
    let agg = rule.aggregate.expect("permitted: aggregated");
    assert_eq!(agg.timeout, contract::Duration::from_secs(2));
    assert_eq!(
        agg.backends,
        [
            contract::AggregateBackend {
                backend: "shop/orders:80".into(),
                path: Some("/orders".into()),
                key: Some("orders".into()),
            },
            contract::AggregateBackend {
                backend: "other/pay:80".into(),
                path: None,
                key: None,
            },
        ]
    );
    assert_eq!(backend_names(&sub), ["other/pay:80", "shop/orders:80"]);
    let endpoints: Vec<String> = sub
        .backends
        .borrow()
        .backends
        .iter()
        .map(|b| b.endpoints[0].address.clone())
        .collect();
    assert_eq!(endpoints, ["198.18.66.2:80", "198.18.66.1:80"]);
    assert!(resolved_refs(&index, &Key::new("shop", "combined")).status);
    let routes = sub.routes.borrow().clone();
    let config = ProxyConfig::from_parts((*routes).clone(), sub.backends.borrow().to_set());
    config.validate().expect("the aggregate rule is valid");
}
