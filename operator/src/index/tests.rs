use portico_proxy_api::ProxyConfig;
use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

fn mk_gateway(ns: &str, name: &str, listeners: Value) -> Object {
    Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": ns, "name": name, "generation": 1},
        "spec": {"listeners": listeners}
    })))
}

fn mk_http_gateway(ns: &str, name: &str) -> Object {
    mk_gateway(
        ns,
        name,
        json!([{"name": "web", "port": 8080, "protocol": "HTTP"}]),
    )
}

fn mk_route(ns: &str, name: &str, gateway: &str, backend: &str, port: i32) -> Object {
    Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": ns, "name": name, "generation": 2},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "hostnames": ["shop.example.com"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
                       "backendRefs": [{"name": backend, "port": port}]}]
        }
    })))
}

fn mk_service(ns: &str, name: &str, ports: Value) -> Object {
    Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": ports, "clusterIP": "198.19.0.10"}
    })))
}

fn mk_svc(ns: &str, name: &str) -> Object {
    mk_service(ns, name, json!([{"port": 80, "targetPort": 8080}]))
}

/// An EndpointSlice for Service `svc` with one unnamed port and `endpoints` as
/// `(ip, ready, serving, terminating)`.
fn mk_slice(
    ns: &str,
    name: &str,
    svc: &str,
    port: i32,
    endpoints: &[(&str, bool, bool, bool)],
) -> Object {
    mk_slice_ports(ns, name, svc, json!([{"port": port}]), endpoints)
}

fn mk_slice_ports(
    ns: &str,
    name: &str,
    svc: &str,
    ports: Value,
    endpoints: &[(&str, bool, bool, bool)],
) -> Object {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, serving, terminating)| {
            json!({"addresses": [ip], "conditions":
                {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    Object::EndpointSlice(from(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps
    })))
}

fn mk_policy(ns: &str, name: &str, target: &str, created: &str) -> Object {
    Object::ServicePolicy(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
        "spec": {"targetRef": {"name": target},
                 "loadBalancer": {"type": "RoundRobin"},
                 "connection": {"maxConnections": 100, "connectTimeout": "2s"}}
    })))
}

const READY: (bool, bool, bool) = (true, true, false);

fn ep(ip: &str, c: (bool, bool, bool)) -> (&str, bool, bool, bool) {
    (ip, c.0, c.1, c.2)
}

fn addresses(b: &contract::Backend) -> Vec<&str> {
    b.endpoints.iter().map(|e| e.address.as_str()).collect()
}

/// An index with Gateway shop/gw, Route shop/orders → Service shop/orders:80 (targetPort 8080),
/// and one ready endpoint.
fn shop() -> (Index, Subscription) {
    let mut index = Index::new();
    index.apply(mk_http_gateway("shop", "gw"));
    index.apply(mk_svc("shop", "orders"));
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[ep("198.18.64.1", READY)],
    ));
    index.apply(mk_route("shop", "orders", "gw", "orders", 80));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    (index, sub)
}

#[test]
fn a_gateway_proxy_gets_its_listeners_routes_and_endpoints() {
    let (_index, sub) = shop();
    let routes = sub.routes.borrow().clone();
    assert_eq!(routes.listeners.len(), 1);
    assert_eq!(routes.listeners[0].name, "web");
    assert_eq!(routes.listeners[0].address, "0.0.0.0:8080");
    assert_eq!(routes.routes.len(), 1);
    let route = &routes.routes[0];
    assert_eq!(route.name, "shop/orders");
    assert_eq!(route.listeners, vec!["web".to_owned()]);
    assert_eq!(route.hostnames, vec!["shop.example.com".to_owned()]);
    assert_eq!(route.rules[0].backends[0].backend, "shop/orders:80");
    let backends = sub.backends.borrow().clone();
    assert_eq!(backends.backends.len(), 1);
    assert_eq!(backends.backends[0].name, "shop/orders:80");
    assert_eq!(addresses(&backends.backends[0]), ["198.18.64.1:8080"]);
    let joined = ProxyConfig::from_parts((*routes).clone(), backends.to_set());
    joined.validate().expect("the published config is valid");
}

#[test]
fn an_endpoint_change_updates_backends_and_leaves_the_route_table_alone() {
    let (mut index, mut sub) = shop();
    sub.routes.mark_unchanged();
    sub.backends.mark_unchanged();
    let before = sub.backends.borrow().generation;
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[ep("198.18.64.1", READY), ep("198.18.64.2", READY)],
    ));
    assert!(sub.backends.has_changed().unwrap());
    assert!(!sub.routes.has_changed().unwrap());
    let backends = sub.backends.borrow_and_update().clone();
    assert!(backends.generation > before);
    assert_eq!(
        addresses(&backends.backends[0]),
        ["198.18.64.1:8080", "198.18.64.2:8080"]
    );
    // The same slice again changes nothing, so nobody is woken.
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[ep("198.18.64.1", READY), ep("198.18.64.2", READY)],
    ));
    assert!(!sub.backends.has_changed().unwrap());
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready_and_not_ready_ones_never() {
    let (mut index, sub) = shop();
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[
            ep("198.18.64.1", READY),
            ep("198.18.64.2", (false, true, true)),
            ep("198.18.64.3", (false, false, false)),
        ],
    ));
    assert_eq!(
        addresses(&sub.backends.borrow().backends[0]),
        ["198.18.64.1:8080"]
    );
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[
            ep("198.18.64.2", (false, true, true)),
            ep("198.18.64.3", (false, false, false)),
            ep("198.18.64.4", (false, false, true)),
        ],
    ));
    let backends = sub.backends.borrow().clone();
    assert_eq!(addresses(&backends.backends[0]), ["198.18.64.2:8080"]);
    assert!(backends.backends[0].endpoints[0].ready);
}

#[test]
fn named_target_ports_resolve_through_each_slice_s_ports() {
    let mut index = Index::new();
    index.apply(mk_http_gateway("shop", "gw"));
    index.apply(mk_service(
        "shop",
        "orders",
        json!([{"name": "http", "port": 80, "targetPort": "web"},
               {"name": "admin", "port": 9000, "targetPort": 9000}]),
    ));
    index.apply(mk_slice_ports(
        "shop",
        "orders-a",
        "orders",
        json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}]),
        &[ep("198.18.64.1", READY)],
    ));
    index.apply(mk_slice_ports(
        "shop",
        "orders-b",
        "orders",
        json!([{"name": "admin", "port": 9000}, {"name": "http", "port": 9090}]),
        &[ep("198.18.64.2", READY)],
    ));
    index.apply(mk_route("shop", "orders", "gw", "orders", 80));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    assert_eq!(
        addresses(&sub.backends.borrow().backends[0]),
        ["198.18.64.1:8080", "198.18.64.2:9090"]
    );
}

#[test]
fn deleting_a_slice_removes_its_endpoints() {
    let (mut index, sub) = shop();
    let slice = mk_slice("shop", "orders-a", "orders", 8080, &[]);
    index.delete(&slice);
    assert!(sub.backends.borrow().backends[0].endpoints.is_empty());
}

#[test]
fn a_relist_drops_objects_deleted_while_the_watch_was_away() {
    let (mut index, sub) = shop();
    index.reset(
        Kind::EndpointSlice,
        None,
        vec![mk_slice(
            "shop",
            "orders-b",
            "orders",
            8080,
            &[ep("198.18.64.9", READY)],
        )],
    );
    assert_eq!(
        addresses(&sub.backends.borrow().backends[0]),
        ["198.18.64.9:8080"]
    );
    index.reset(Kind::Route, Some("shop"), vec![]);
    assert!(sub.routes.borrow().routes.is_empty());
    assert!(sub.backends.borrow().backends.is_empty());
}

#[test]
fn a_proxy_subscribed_before_its_gateway_exists_gets_it_when_it_appears() {
    let mut index = Index::new();
    let mut sub = index.subscribe(&Key::new("shop", "gw"));
    assert!(sub.routes.borrow_and_update().listeners.is_empty());
    index.apply(mk_http_gateway("shop", "gw"));
    assert!(sub.routes.has_changed().unwrap());
    assert_eq!(sub.routes.borrow().listeners.len(), 1);
    index.delete(&mk_http_gateway("shop", "gw"));
    assert!(sub.routes.borrow().listeners.is_empty());
}

#[test]
fn a_service_policy_shapes_the_backend_and_a_second_one_is_conflicted() {
    let (mut index, sub) = shop();
    index.apply(mk_policy("shop", "first", "orders", "2026-01-01T00:00:00Z"));
    index.apply(mk_policy(
        "shop",
        "second",
        "orders",
        "2026-02-01T00:00:00Z",
    ));
    let b = sub.backends.borrow().backends[0].clone();
    assert_eq!(b.load_balancer, contract::LoadBalancer::RoundRobin);
    assert_eq!(b.limits.max_connections, Some(100));
    assert_eq!(b.connect_timeout, Some(contract::Duration::from_secs(2)));
    let statuses = index.statuses().borrow().clone();
    let first = &statuses.policies[&Key::new("shop", "first")].conditions[0];
    assert!(first.status);
    let second = &statuses.policies[&Key::new("shop", "second")].conditions[0];
    assert_eq!(second.reason, "Conflicted");
    assert!(second.message.contains("shop/first"), "{}", second.message);
    index.apply(mk_policy(
        "shop",
        "orphan",
        "nothing",
        "2026-02-01T00:00:00Z",
    ));
    let statuses = index.statuses().borrow().clone();
    assert_eq!(
        statuses.policies[&Key::new("shop", "orphan")].conditions[0].reason,
        "TargetNotFound"
    );
}

#[test]
fn a_route_to_a_missing_service_or_port_reports_backend_not_found() {
    let mut index = Index::new();
    index.apply(mk_http_gateway("shop", "gw"));
    index.apply(mk_route("shop", "orders", "gw", "orders", 80));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    // The route stays, its backend has no endpoints: requests get 503, not 404.
    assert_eq!(sub.routes.borrow().routes.len(), 1);
    assert!(sub.backends.borrow().backends[0].endpoints.is_empty());
    let status =
        |index: &Index| index.statuses().borrow().routes[&Key::new("shop", "orders")].clone();
    let parent = &status(&index).parents[0];
    assert_eq!(parent.conditions[0].reason, "Accepted");
    assert_eq!(parent.conditions[1].type_, "ResolvedRefs");
    assert_eq!(parent.conditions[1].reason, "BackendNotFound");
    assert_eq!(
        parent.conditions[1].message,
        "rule 1: Service shop/orders not found"
    );
    index.apply(mk_service("shop", "orders", json!([{"port": 8080}])));
    assert_eq!(
        status(&index).parents[0].conditions[1].message,
        "rule 1: Service shop/orders has no port 80"
    );
    index.apply(mk_svc("shop", "orders"));
    assert!(status(&index).parents[0].conditions[1].status);
    let gw = index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    assert_eq!(gw.listeners[0].attached_routes, 1, "one attached route");
}

#[test]
fn routes_from_other_namespaces_attach_only_where_the_listener_allows() {
    let mut index = Index::new();
    index.apply(mk_http_gateway("infra", "gw"));
    let mut route = mk_route("shop", "orders", "gw", "orders", 80);
    if let Object::Route(r) = &mut route {
        r.spec.parent_refs[0].namespace = Some("infra".into());
    }
    index.apply(route.clone());
    let sub = index.subscribe(&Key::new("infra", "gw"));
    assert!(sub.routes.borrow().routes.is_empty());
    let parent = index.statuses().borrow().routes[&Key::new("shop", "orders")].parents[0].clone();
    assert_eq!(parent.conditions[0].reason, "NotAllowedByListeners");
    index.apply(mk_gateway(
        "infra",
        "gw",
        json!([{"name": "web", "port": 8080, "protocol": "HTTP",
                "allowedRoutes": {"from": "Selector", "selector": {"team": "shop"}}}]),
    ));
    assert!(sub.routes.borrow().routes.is_empty());
    index.apply(Object::Namespace(from(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"team": "shop"}}
    }))));
    assert_eq!(sub.routes.borrow().routes.len(), 1);
}

#[test]
fn a_route_to_a_missing_gateway_or_listener_is_not_accepted() {
    let mut index = Index::new();
    index.apply(mk_route("shop", "orders", "nope", "orders", 80));
    let status = index.statuses().borrow().routes[&Key::new("shop", "orders")].clone();
    assert_eq!(status.parents[0].conditions[0].reason, "NoSuchParent");
    assert_eq!(
        status.parents[0].conditions[0].message,
        "Gateway shop/nope not found"
    );
    index.apply(mk_http_gateway("shop", "gw"));
    let mut route = mk_route("shop", "orders", "gw", "orders", 80);
    if let Object::Route(r) = &mut route {
        r.spec.parent_refs[0].section_name = Some("tls".into());
    }
    index.apply(route);
    let status = index.statuses().borrow().routes[&Key::new("shop", "orders")].clone();
    assert_eq!(status.parents[0].conditions[0].reason, "NoMatchingParent");
}

#[test]
fn an_https_listener_carries_its_secret_inline_or_is_left_out() {
    let mut index = Index::new();
    index.apply(mk_gateway(
        "shop",
        "gw",
        json!([{"name": "web", "port": 8080, "protocol": "HTTP"},
               {"name": "tls", "port": 8443, "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cert"}]}}]),
    ));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    assert_eq!(sub.routes.borrow().listeners.len(), 1);
    let gw = index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    assert_eq!(
        gw.listeners[1].conditions[1].reason,
        "InvalidCertificateRef"
    );
    let (secret, cert) = super::tls::test_secret("shop", "cert");
    index.apply(Object::Secret(from(secret)));
    let routes = sub.routes.borrow().clone();
    assert_eq!(routes.listeners.len(), 2);
    assert_eq!(
        routes.listeners[1].tls.as_ref().map(|t| t.cert.clone()),
        Some(contract::Pem::Inline { inline: cert })
    );
}

#[test]
fn an_invalid_route_is_dropped_alone_and_reported() {
    let (mut index, sub) = shop();
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "bad"},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(("}}],
                            "backendRefs": [{"name": "orders", "port": 80}]}]}
    }))));
    let names: Vec<String> = sub
        .routes
        .borrow()
        .routes
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(names, ["shop/orders"]);
    let status = index.statuses().borrow().routes[&Key::new("shop", "bad")].clone();
    assert_eq!(status.parents[0].conditions[0].reason, "UnsupportedValue");
}

#[test]
fn a_gateway_is_programmed_once_its_proxy_service_has_an_address_and_a_proxy_is_available() {
    let (mut index, _sub) = shop();
    let gw = |index: &Index| index.statuses().borrow().gateways[&Key::new("shop", "gw")].clone();
    assert_eq!(gw(&index).conditions[1].reason, "AddressNotAssigned");
    index.apply(mk_svc("shop", "portico-gateway-gw"));
    let state = gw(&index);
    assert_eq!(state.addresses, ["198.19.0.10"]);
    assert_eq!(state.conditions[1].reason, "Pending");
    assert_eq!(
        state.conditions[1].message,
        "Deployment shop/portico-gateway-gw has no available proxy yet"
    );
    let deployment = |available: i32| {
        Object::Deployment(Box::new(from(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"namespace": "shop", "name": "portico-gateway-gw"},
            "status": {"availableReplicas": available}
        }))))
    };
    index.apply(deployment(0));
    assert!(!gw(&index).conditions[1].status);
    index.apply(deployment(1));
    assert!(gw(&index).conditions[1].status);
    assert_eq!(gw(&index).conditions[1].reason, "Programmed");
}

#[test]
fn an_endpoint_change_wakes_only_the_proxies_that_use_the_service() {
    let (mut index, mut shop_sub) = shop();
    index.apply(mk_http_gateway("shop", "other"));
    index.apply(mk_svc("shop", "pay"));
    index.apply(mk_route("shop", "pay", "other", "pay", 80));
    let mut other = index.subscribe(&Key::new("shop", "other"));
    other.backends.mark_unchanged();
    shop_sub.backends.mark_unchanged();
    index.apply(mk_slice(
        "shop",
        "pay-a",
        "pay",
        8080,
        &[ep("198.18.64.7", READY)],
    ));
    assert!(other.backends.has_changed().unwrap());
    assert!(!shop_sub.backends.has_changed().unwrap());
    assert_eq!(
        addresses(&other.backends.borrow_and_update().backends[0]),
        ["198.18.64.7:8080"]
    );
    // Moving a slice to another Service updates both sides.
    index.apply(mk_slice(
        "shop",
        "pay-a",
        "orders",
        8080,
        &[ep("198.18.64.7", READY)],
    ));
    assert!(other.backends.borrow().backends[0].endpoints.is_empty());
    assert_eq!(
        addresses(&shop_sub.backends.borrow().backends[0]),
        ["198.18.64.1:8080", "198.18.64.7:8080"]
    );
}

/// 1,000 Services with 10 endpoints each, 50 Gateways with 20 Routes each (every Service used
/// by one Gateway): one EndpointSlice change recomputes one proxy's backends, not the world.
/// Prints the figures.
#[test]
fn one_endpoint_change_at_scale_is_cheap() {
    let mut index = Index::new();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut routes = Vec::new();
    let mut gateways = Vec::new();
    for g in 0..50 {
        gateways.push(mk_http_gateway("scale", &format!("gw-{g}")));
        for r in 0..20 {
            let svc = format!("svc-{g}-{r}");
            services.push(mk_svc("scale", &svc));
            let ips: Vec<String> = (0..10)
                .map(|e| format!("198.18.{g}.{}", r * 10 + e))
                .collect();
            let eps: Vec<_> = ips.iter().map(|ip| ep(ip, READY)).collect();
            slices.push(mk_slice("scale", &format!("{svc}-a"), &svc, 8080, &eps));
            routes.push(mk_route("scale", &svc, &format!("gw-{g}"), &svc, 80));
        }
    }
    let started = std::time::Instant::now();
    index.reset(Kind::Service, None, services);
    index.reset(Kind::EndpointSlice, None, slices);
    index.reset(Kind::Gateway, None, gateways);
    index.reset(Kind::Route, None, routes);
    let load = started.elapsed();
    let mut subs: Vec<Subscription> = (0..50)
        .map(|g| index.subscribe(&Key::new("scale", format!("gw-{g}"))))
        .collect();
    assert_eq!(subs[7].backends.borrow().backends.len(), 20);
    assert_eq!(subs[7].backends.borrow().backends[3].endpoints.len(), 10);
    for s in &mut subs {
        s.backends.mark_unchanged();
    }
    let changes = 200;
    let started = std::time::Instant::now();
    for i in 0..changes {
        let ip = format!("198.18.200.{}", i % 250);
        let eps = [ep(&ip, READY)];
        index.apply(mk_slice("scale", "svc-7-3-a", "svc-7-3", 8080, &eps));
    }
    let per_change = started.elapsed() / changes;
    assert!(subs[7].backends.has_changed().unwrap());
    assert!(
        subs.iter()
            .enumerate()
            .all(|(g, s)| g == 7 || !s.backends.has_changed().unwrap())
    );
    let started = std::time::Instant::now();
    index.apply(mk_svc("scale", "svc-7-3"));
    index.apply(mk_route("scale", "svc-9-9", "gw-9", "svc-9-9", 80));
    let full = started.elapsed() / 2;
    eprintln!(
        "scale (1000 services, 10000 endpoints, 50 gateways, 1000 routes): load {load:?}, \
         one EndpointSlice change {per_change:?}, one Service/Route change (full recompute) {full:?}"
    );
    // A full recompute takes hundreds of milliseconds here in a debug build; an endpoint change
    // must not be one (the bound leaves room for a loaded 2-core machine).
    assert!(
        per_change < std::time::Duration::from_millis(50),
        "{per_change:?} per change"
    );
}

#[test]
fn sidecars_get_every_service_by_cluster_ip_with_its_mesh_routes() {
    let (mut index, _gw) = shop();
    index.apply(mk_service(
        "shop",
        "pay",
        json!([{"port": 80}, {"port": 9000}, {"port": 53, "protocol": "UDP"}]),
    ));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "canary"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "orders", "port": 80}],
                 "rules": [{"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                            "backendRefs": [{"name": "pay", "port": 80}]}]}
    }))));
    let mut sub = index.subscribe_mesh();
    let routes = sub.routes.borrow_and_update().clone();
    let names: Vec<&str> = routes.services.iter().map(|s| s.name.as_str()).collect();
    // `pay` has the same cluster IP in these builders; its ports differ, so addresses do too.
    assert_eq!(
        names,
        ["shop/orders:80", "shop/pay:9000"],
        "{:?}",
        routes.services
    );
    let orders = &routes.services[0];
    assert_eq!(orders.addresses, ["198.19.0.10:80"]);
    assert_eq!(orders.backend, "shop/orders:80");
    assert_eq!(orders.routes, ["shop/canary"]);
    assert_eq!(routes.routes.len(), 1);
    assert!(routes.listeners.is_empty());
    let backends = sub.backends.borrow_and_update().clone();
    let config = ProxyConfig::from_parts((*routes).clone(), backends.to_set());
    config.validate().expect("the mesh config is valid");
    assert_eq!(
        addresses(config.backend("shop/orders:80").unwrap()),
        ["198.18.64.1:8080"]
    );
    // Endpoints keep flowing to sidecars.
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        8080,
        &[ep("198.18.64.5", READY)],
    ));
    assert!(sub.backends.has_changed().unwrap());
    assert!(!sub.routes.has_changed().unwrap());
}
