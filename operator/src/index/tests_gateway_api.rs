//! The Gateway API's kinds as the index serves them: attachment only between kinds of one API,
//! listeners sharing a port, GAMMA routes for sidecars, name conflicts with Portico Gateways.

use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

fn class(name: &str) -> Object {
    Object::GatewayClass(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name, "generation": 1},
        "spec": {"controllerName": "portico.dev/gateway-controller"}
    })))
}

fn api_gateway(name: &str, listeners: Value) -> Object {
    Object::ApiGateway(Box::new(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": name, "generation": 1},
        "spec": {"gatewayClassName": "portico", "listeners": listeners}
    }))))
}

fn http_route(name: &str, spec: Value) -> Object {
    Object::HttpRoute(Box::new(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": name, "generation": 1},
        "spec": spec
    }))))
}

fn service(name: &str, ip: &str) -> Object {
    Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"ports": [{"port": 80}], "clusterIP": ip}
    })))
}

fn shop() -> Index {
    let mut index = Index::new();
    index.apply(class("portico"));
    index.apply(service("orders", "198.19.0.10"));
    index.apply(service("pay", "198.19.0.11"));
    index
}

#[test]
fn listeners_sharing_a_port_serve_each_route_for_its_own_listener_s_hostnames() {
    let mut index = shop();
    index.apply(api_gateway(
        "gw",
        json!([{"name": "foo", "port": 80, "protocol": "HTTP", "hostname": "foo.example.com"},
               {"name": "bar", "port": 80, "protocol": "HTTP", "hostname": "bar.example.com"}]),
    ));
    for (name, section, backend) in [("a", "foo", "orders"), ("b", "bar", "pay")] {
        index.apply(http_route(
            name,
            json!({"parentRefs": [{"name": "gw", "sectionName": section}],
                   "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}),
        ));
    }
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let table = sub.routes.borrow().clone();
    assert_eq!(table.listeners.len(), 1, "{:?}", table.listeners);
    let hosts: Vec<(&str, &[String], &[String])> = table
        .routes
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.listeners.as_slice(),
                r.hostnames.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            (
                "shop/httproute:a",
                &["foo".to_owned()][..],
                &["foo.example.com".to_owned()][..]
            ),
            (
                "shop/httproute:b",
                &["foo".to_owned()][..],
                &["bar.example.com".to_owned()][..]
            ),
        ]
    );
}

#[test]
fn a_portico_route_does_not_attach_to_a_gateway_api_gateway_nor_an_httproute_to_a_portico_one() {
    let mut index = shop();
    index.apply(api_gateway(
        "api-gw",
        json!([{"name": "web", "port": 8080, "protocol": "HTTP"}]),
    ));
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "own-gw"},
        "spec": {"listeners": [{"name": "web", "port": 8081, "protocol": "HTTP"}]}
    }))));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "portico"},
        "spec": {"parentRefs": [{"name": "api-gw"}],
                 "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}
    }))));
    index.apply(http_route(
        "api",
        json!({"parentRefs": [{"name": "own-gw"}],
               "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}),
    ));
    for gw in ["api-gw", "own-gw"] {
        let sub = index.subscribe(&Key::new("shop", gw));
        assert!(sub.routes.borrow().routes.is_empty(), "{gw}");
    }
    let statuses = index.statuses().borrow().clone();
    let portico = &statuses.routes[&Key::new("shop", "portico")];
    assert_eq!(portico.parents[0].conditions[0].reason, "NoSuchParent");
    // The HTTPRoute's parent is not a Gateway API Gateway of Portico's: no entry of ours.
    let api = &statuses.api_routes[&("HTTPRoute", Key::new("shop", "api"))];
    assert!(api.parents.is_empty(), "{api:?}");
}

#[test]
fn an_httproute_with_a_service_parent_configures_the_sidecars() {
    let mut index = shop();
    index.apply(http_route(
        "canary",
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
               "rules": [{"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                          "backendRefs": [{"name": "pay", "port": 80}]}]}),
    ));
    let sub = index.subscribe_mesh();
    let routes = sub.routes.borrow().clone();
    let orders = routes
        .services
        .iter()
        .find(|s| s.name == "shop/orders:80")
        .expect("orders in the mesh table");
    assert_eq!(orders.routes, ["shop/httproute:canary"]);
    let statuses = index.statuses().borrow().clone();
    let canary = &statuses.api_routes[&("HTTPRoute", Key::new("shop", "canary"))];
    assert_eq!(canary.parents.len(), 1);
    assert_eq!(canary.parents[0].1[0].reason, "Accepted");
}

#[test]
fn a_gateway_api_gateway_named_like_a_portico_gateway_is_not_served_and_says_why() {
    let mut index = shop();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw"},
        "spec": {"listeners": [{"name": "web", "port": 8081, "protocol": "HTTP"}]}
    }))));
    index.apply(api_gateway(
        "gw",
        json!([{"name": "web", "port": 8080, "protocol": "HTTP"}]),
    ));
    let statuses = index.statuses().borrow().clone();
    let api = &statuses.api_gateways[&Key::new("shop", "gw")];
    assert!(!api.conditions[0].status);
    assert!(
        api.conditions[0].message.contains("Portico Gateway"),
        "{api:?}"
    );
    assert!(statuses.gateways.contains_key(&Key::new("shop", "gw")));
}

#[test]
fn a_route_on_listeners_for_different_hostnames_is_served_on_each_for_its_names_only() {
    let mut index = shop();
    index.apply(api_gateway(
        "gw",
        json!([{"name": "bar", "port": 80, "protocol": "HTTP", "hostname": "*.bar.com"},
               {"name": "foo", "port": 80, "protocol": "HTTP", "hostname": "*.foo.com"},
               {"name": "exact", "port": 80, "protocol": "HTTP", "hostname": "very.specific.com"}]),
    ));
    index.apply(http_route(
        "wild",
        json!({"parentRefs": [{"name": "gw", "sectionName": "bar"},
                              {"name": "gw", "sectionName": "foo"}],
               "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}),
    ));
    // The route's `*.specific.com` meets the listener's exact name: only that name is served.
    index.apply(http_route(
        "narrowed",
        json!({"parentRefs": [{"name": "gw", "sectionName": "exact"}],
               "hostnames": ["*.specific.com"],
               "rules": [{"backendRefs": [{"name": "pay", "port": 80}]}]}),
    ));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let table = sub.routes.borrow().clone();
    let hosts: Vec<(&str, Vec<&str>)> = table
        .routes
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.hostnames.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            ("shop/httproute:narrowed", vec!["very.specific.com"]),
            ("shop/httproute:wild", vec!["*.bar.com"]),
            ("shop/httproute:wild#foo", vec!["*.foo.com"]),
        ]
    );
    assert!(table.routes.iter().all(|r| r.listeners == ["bar"]));
}

#[test]
fn a_service_port_s_app_protocol_h2c_makes_its_backend_http2() {
    let mut index = shop();
    index.apply(Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "grpc"},
        "spec": {"clusterIP": "198.19.0.12",
                 "ports": [{"port": 80, "appProtocol": "kubernetes.io/h2c"},
                           {"port": 81, "appProtocol": "kubernetes.io/ws"}]}
    }))));
    index.apply(api_gateway(
        "gw",
        json!([{"name": "web", "port": 80, "protocol": "HTTP"}]),
    ));
    index.apply(http_route(
        "r",
        json!({"parentRefs": [{"name": "gw"}],
               "rules": [{"backendRefs": [{"name": "grpc", "port": 80}]},
                         {"matches": [{"path": {"type": "PathPrefix", "value": "/ws"}}],
                          "backendRefs": [{"name": "grpc", "port": 81}]}]}),
    ));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let backends = sub.backends.borrow().clone();
    let protocol = |name: &str| {
        backends
            .backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.protocol)
    };
    assert_eq!(
        protocol("shop/grpc:80"),
        Some(portico_proxy_api::UpstreamProtocol::Http2)
    );
    assert_eq!(
        protocol("shop/grpc:81"),
        Some(portico_proxy_api::UpstreamProtocol::Http1)
    );
}

#[test]
fn the_oldest_route_comes_first_so_it_wins_ties() {
    let mut index = shop();
    index.apply(api_gateway(
        "gw",
        json!([{"name": "web", "port": 80, "protocol": "HTTP"}]),
    ));
    for (name, created) in [
        ("alpha", "2026-12-02T10:00:00Z"),
        ("zeta", "2026-12-01T10:00:00Z"),
    ] {
        let mut route = http_route(
            name,
            json!({"parentRefs": [{"name": "gw"}],
                   "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}),
        );
        if let Object::HttpRoute(r) = &mut route {
            r.metadata.creation_timestamp = Some(from(json!(created)));
        }
        index.apply(route);
    }
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let names: Vec<String> = sub
        .routes
        .borrow()
        .routes
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(names, ["shop/httproute:zeta", "shop/httproute:alpha"]);
}

#[test]
fn routes_of_a_listener_exclude_the_hosts_of_more_specific_listeners_on_its_port() {
    let mut index = shop();
    index.apply(api_gateway(
        "gw",
        json!([{"name": "empty", "port": 80, "protocol": "HTTP"},
               {"name": "wild", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"},
               {"name": "foo", "port": 80, "protocol": "HTTP", "hostname": "*.foo.example.com"},
               {"name": "abc", "port": 80, "protocol": "HTTP", "hostname": "abc.foo.example.com"},
               {"name": "other-port", "port": 8080, "protocol": "HTTP", "hostname": "x.example.com"}]),
    ));
    for section in ["empty", "wild", "foo", "abc"] {
        index.apply(http_route(
            section,
            json!({"parentRefs": [{"name": "gw", "sectionName": section}],
                   "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}),
        ));
    }
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let table = sub.routes.borrow().clone();
    let excluded = |name: &str| {
        table
            .routes
            .iter()
            .find(|r| r.name == format!("shop/httproute:{name}"))
            .map(|r| r.excluded_hostnames.clone())
            .expect("the route")
    };
    assert_eq!(
        excluded("empty"),
        ["*.example.com", "*.foo.example.com", "abc.foo.example.com"]
    );
    assert_eq!(
        excluded("wild"),
        ["*.foo.example.com", "abc.foo.example.com"]
    );
    assert_eq!(excluded("foo"), ["abc.foo.example.com"]);
    assert!(excluded("abc").is_empty());
}

#[test]
fn a_later_listener_that_conflicts_on_a_port_is_conflicted_and_the_earlier_keeps_serving() {
    let mut index = shop();
    index.apply(api_gateway(
        "gw",
        json!([{"name": "web", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
               {"name": "same-host", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
               {"name": "tls-on-80", "port": 80, "protocol": "HTTPS", "hostname": "b.example.com",
                "tls": {"certificateRefs": [{"name": "cert"}]}},
               {"name": "other", "port": 80, "protocol": "HTTP", "hostname": "c.example.com"}]),
    ));
    let statuses = index.statuses().borrow().clone();
    let api = &statuses.api_gateways[&Key::new("shop", "gw")];
    let conflicted = |name: &str| {
        api.listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.conditions.iter().find(|c| c.type_ == "Conflicted"))
            .map(|c| (c.status, c.reason.clone()))
    };
    assert_eq!(conflicted("web"), None);
    assert_eq!(conflicted("other"), None);
    assert_eq!(
        conflicted("same-host"),
        Some((true, "HostnameConflict".to_owned()))
    );
    assert_eq!(
        conflicted("tls-on-80"),
        Some((true, "ProtocolConflict".to_owned()))
    );
    assert_eq!(api.conditions[0].reason, "ListenersNotValid");
    let sub = index.subscribe(&Key::new("shop", "gw"));
    let table = sub.routes.borrow().clone();
    assert_eq!(table.listeners.len(), 1, "one socket on port 80");
    assert_eq!(
        table.listeners[0].protocol,
        portico_proxy_api::Protocol::Http
    );
}
