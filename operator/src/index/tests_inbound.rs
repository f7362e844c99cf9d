//! Per-pod inbound policies: which ports a pod guards, and who may call them.

use portico_proxy_api::{InboundAuthorization, InboundPolicy, RateLimitKey};
use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

/// A running Pod with ServiceAccount `sa` and address `ip` (none when empty).
fn mk_pod(ns: &str, name: &str, sa: &str, ip: &str) -> Object {
    mk_pod_with(ns, name, sa, ip, json!({}), "Running")
}

fn mk_pod_with(ns: &str, name: &str, sa: &str, ip: &str, spec: Value, phase: &str) -> Object {
    let mut spec_v = json!({"serviceAccountName": sa, "containers": [{"name": "app"}]});
    if let (Some(s), Some(extra)) = (spec_v.as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let status = if ip.is_empty() {
        json!({"phase": phase})
    } else {
        json!({"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]})
    };
    let pod: k8s_openapi::api::core::v1::Pod = from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}")},
        "spec": spec_v, "status": status
    }));
    Object::Pod(PodInfo::of(&pod))
}

/// A slice of Service `svc` with port 8080 and one endpoint per `(ip, pod)`; an empty pod name
/// leaves `targetRef` out.
fn mk_slice(ns: &str, name: &str, svc: &str, eps: &[(&str, &str)]) -> Object {
    let eps: Vec<Value> = eps
        .iter()
        .map(|(ip, pod)| {
            if pod.is_empty() {
                json!({"addresses": [ip]})
            } else {
                json!({"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
            }
        })
        .collect();
    Object::EndpointSlice(from(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })))
}

fn mk_guard(ns: &str, name: &str, target: &str, created: &str, extra: Value) -> Object {
    let mut spec = json!({"targetRef": {"name": target}});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    Object::ServicePolicy(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
        "spec": spec
    })))
}

fn allow_web() -> Value {
    json!({"authorization": {"defaultAction": "Deny",
                             "allowedServiceAccounts": [{"name": "web"}]},
           "rateLimit": {"requests": 100, "unit": "Second"}})
}

/// Namespace shop: pod orders-0 (SA orders) behind Service orders, guarded by policy
/// `orders-only` (only SA web, 100/s); callers web-0 (SA web) and other-0 (SA other).
fn shop() -> (Index, watch::Receiver<Arc<InboundPolicy>>) {
    let mut index = Index::new();
    index.apply(mk_pod("shop", "orders-0", "orders", "198.18.64.1"));
    index.apply(mk_pod("shop", "web-0", "web", "198.18.64.2"));
    index.apply(mk_pod("shop", "other-0", "other", "198.18.64.3"));
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0")],
    ));
    index.apply(mk_guard(
        "shop",
        "orders-only",
        "orders",
        "2026-01-01T00:00:00Z",
        allow_web(),
    ));
    let rx = index.subscribe_pod(&Key::new("shop", "orders-0"));
    (index, rx)
}

fn authorization(rx: &mut watch::Receiver<Arc<InboundPolicy>>) -> InboundAuthorization {
    let policy = rx.borrow_and_update().clone();
    assert_eq!(policy.ports.len(), 1, "{policy:?}");
    policy.ports[0]
        .authorization
        .clone()
        .expect("an authorization")
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[test]
fn a_pod_behind_a_guarded_service_gets_its_endpoint_port_with_the_allowed_identities() {
    let (_index, rx) = shop();
    let policy = rx.borrow().clone();
    assert_eq!(policy.ports.len(), 1);
    let port = &policy.ports[0];
    assert_eq!(port.port, 8080);
    assert_eq!(port.policy, "shop/orders-only");
    let auth = port.authorization.as_ref().unwrap();
    assert_eq!(auth.identities, [WEB]);
    assert!(!auth.unauthenticated);
    assert_eq!(port.mtls, None);
    let rl = port.rate_limit.as_ref().unwrap();
    assert_eq!(
        (rl.requests, rl.period.get(), rl.burst, &rl.key),
        (
            100,
            std::time::Duration::from_secs(1),
            100,
            &RateLimitKey::ClientIp
        )
    );
}

#[test]
fn callers_coming_changing_address_and_going_wake_no_one() {
    // Callers prove who they are with certificates: their pods' addresses are nobody's policy.
    let (mut index, mut rx) = shop();
    rx.borrow_and_update();
    index.apply(mk_pod("shop", "web-1", "web", "198.18.64.4"));
    index.apply(mk_pod("shop", "web-1", "web", "198.18.64.5"));
    index.delete_key(Kind::Pod, &Key::new("shop", "web-0"));
    index.apply(mk_pod_with(
        "shop",
        "web-host",
        "web",
        "198.18.0.2",
        json!({"hostNetwork": true}),
        "Running",
    ));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(authorization(&mut rx).identities, [WEB]);
}

#[test]
fn default_actions_compile_to_identity_patterns() {
    let (mut index, mut rx) = shop();
    let later = "2026-01-02T00:00:00Z";
    index.delete_key(Kind::ServicePolicy, &Key::new("shop", "orders-only"));
    assert!(rx.borrow_and_update().ports.is_empty());

    // Deny, but callers outside the mesh are welcome: mesh callers only when listed.
    index.apply(mk_guard(
        "shop",
        "p",
        "orders",
        later,
        json!({"authorization": {
        "defaultAction": "Deny", "allowUnauthenticated": true,
        "allowedServiceAccounts": [{"name": "web"}]}}),
    ));
    let auth = authorization(&mut rx);
    assert_eq!(auth.identities, [WEB]);
    assert!(auth.unauthenticated);

    // Allow, but only callers with a mesh identity.
    index.apply(mk_guard(
        "shop",
        "p",
        "orders",
        later,
        json!({"authorization": {"defaultAction": "Allow"}}),
    ));
    let auth = authorization(&mut rx);
    assert_eq!(auth.identities, ["*"]);
    assert!(!auth.unauthenticated);

    // Allow everyone: nothing to enforce but the rate limit.
    index.apply(mk_guard("shop", "p", "orders", later, json!({
        "authorization": {"defaultAction": "Allow", "allowUnauthenticated": true},
        "rateLimit": {"requests": 5, "unit": "Minute", "burst": 10, "key": "Header", "header": "x-user"}})));
    let policy = rx.borrow_and_update().clone();
    assert_eq!(policy.ports[0].authorization, None);
    let rl = policy.ports[0].rate_limit.clone().unwrap();
    assert_eq!(
        (rl.requests, rl.period.get().as_secs(), rl.burst),
        (5, 60, 10)
    );
    assert_eq!(
        rl.key,
        RateLimitKey::Header {
            name: "x-user".into()
        }
    );
}

#[test]
fn wildcard_and_other_namespace_service_accounts_become_spiffe_patterns() {
    let mut index = Index::with_mesh(MeshSettings {
        trust_domain: "prod.example".into(),
        ..MeshSettings::default()
    });
    index.apply(mk_pod("shop", "orders-0", "orders", "198.18.64.1"));
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0")],
    ));
    index.apply(mk_guard(
        "shop",
        "orders-only",
        "orders",
        "2026-01-01T00:00:00Z",
        json!({
        "authorization": {"allowedServiceAccounts": [
            {"name": "*", "namespace": "batch"}, {"name": "other"}]}}),
    ));
    let mut rx = index.subscribe_pod(&Key::new("shop", "orders-0"));
    assert_eq!(
        authorization(&mut rx).identities,
        [
            "spiffe://prod.example/ns/batch/sa/*",
            "spiffe://prod.example/ns/shop/sa/other"
        ]
    );
}

#[test]
fn the_mtls_mode_comes_from_the_policy_then_the_namespace_then_the_mesh_and_probes_pass() {
    let mut index = Index::with_mesh(MeshSettings {
        mtls: contract::MtlsMode::Strict,
        ..MeshSettings::default()
    });
    index.apply(mk_pod_with(
        "shop",
        "orders-0",
        "orders",
        "198.18.64.1",
        json!({"containers": [{"name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready?full=1", "port": "http"}},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 9090}}}]}),
        "Running",
    ));
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0")],
    ));
    let mut rx = index.subscribe_pod(&Key::new("shop", "orders-0"));
    let policy = rx.borrow_and_update().clone();
    assert_eq!(policy.mtls, contract::MtlsMode::Strict, "the mesh default");
    let probes: Vec<(u16, &str)> = policy
        .probes
        .iter()
        .map(|p| (p.port, p.path.as_str()))
        .collect();
    assert_eq!(probes, [(8080, "/ready"), (9090, "/live")]);
    index.apply(Object::Namespace(from(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"portico.dev/mtls-mode": "permissive"}}
    }))));
    assert_eq!(rx.borrow_and_update().mtls, contract::MtlsMode::Permissive);
    index.apply(mk_guard(
        "shop",
        "strict",
        "orders",
        "2026-01-01T00:00:00Z",
        json!({"mtls": {"mode": "Strict"}}),
    ));
    let policy = rx.borrow_and_update().clone();
    assert_eq!(policy.ports.len(), 1);
    assert_eq!(policy.ports[0].mtls, Some(contract::MtlsMode::Strict));
    assert_eq!(policy.ports[0].authorization, None);
}

/// Service `shop/orders`, port 80 → 8080.
fn orders_service() -> Object {
    Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "orders"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "clusterIP": "198.19.0.10"}
    })))
}

#[test]
fn endpoints_of_meshed_pods_carry_their_identity() {
    let mut index = Index::new();
    let proxy = json!({"containers": [{"name": "app"}, {"name": "portico-proxy"}]});
    index.apply(mk_pod_with(
        "shop",
        "orders-0",
        "orders",
        "198.18.64.1",
        proxy,
        "Running",
    ));
    index.apply(mk_pod("shop", "legacy-0", "legacy", "198.18.64.2"));
    index.apply(orders_service());
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0"), ("198.18.64.2", "legacy-0")],
    ));
    let b = index.backend(&ServicePort::new("shop", "orders", 80));
    let ids: Vec<(&str, Option<&str>)> = b
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.identity.as_deref()))
        .collect();
    assert_eq!(
        ids,
        [
            (
                "198.18.64.1:8080",
                Some("spiffe://cluster.local/ns/shop/sa/orders")
            ),
            ("198.18.64.2:8080", None)
        ]
    );
    // Without identities, every endpoint is plaintext.
    let mut off = Index::with_mesh(MeshSettings {
        identities: false,
        ..MeshSettings::default()
    });
    let proxy = json!({"containers": [{"name": "app"}, {"name": "portico-proxy"}]});
    off.apply(mk_pod_with(
        "shop",
        "orders-0",
        "orders",
        "198.18.64.1",
        proxy,
        "Running",
    ));
    off.apply(orders_service());
    off.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0")],
    ));
    assert_eq!(
        off.backend(&ServicePort::new("shop", "orders", 80))
            .endpoints[0]
            .identity,
        None
    );
}

#[test]
fn an_endpoint_without_target_ref_is_matched_by_address() {
    let mut index = Index::new();
    index.apply(mk_pod("shop", "orders-0", "orders", "198.18.64.1"));
    index.apply(mk_pod("shop", "web-0", "web", "198.18.64.2"));
    index.apply(mk_guard(
        "shop",
        "p",
        "orders",
        "2026-01-01T00:00:00Z",
        allow_web(),
    ));
    let mut rx = index.subscribe_pod(&Key::new("shop", "orders-0"));
    assert!(rx.borrow_and_update().ports.is_empty());
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "")],
    ));
    assert_eq!(authorization(&mut rx).identities, [WEB]);
    // The endpoint goes away: so does the port.
    index.apply(mk_slice("shop", "orders-a", "orders", &[]));
    assert!(rx.borrow_and_update().ports.is_empty());
}

#[test]
fn a_pod_port_guarded_through_two_services_keeps_the_policy_of_the_first_service() {
    let (mut index, mut rx) = shop();
    index.apply(mk_slice(
        "shop",
        "api-a",
        "api",
        &[("198.18.64.1", "orders-0")],
    ));
    index.apply(mk_guard(
        "shop",
        "api-open",
        "api",
        "2025-01-01T00:00:00Z",
        json!({"rateLimit": {"requests": 1, "unit": "Hour"}}),
    ));
    let policy = rx.borrow_and_update().clone();
    assert_eq!(policy.ports.len(), 1);
    assert_eq!(policy.ports[0].policy, "shop/api-open", "api sorts first");
}

#[test]
fn an_unguarded_pod_has_an_empty_policy_and_unrelated_changes_do_not_wake_it() {
    let (mut index, _rx) = shop();
    let mut web = index.subscribe_pod(&Key::new("shop", "web-0"));
    assert!(web.borrow_and_update().ports.is_empty());
    index.apply(mk_pod("shop", "web-1", "web", "198.18.64.4"));
    index.apply(mk_slice(
        "shop",
        "orders-a",
        "orders",
        &[("198.18.64.1", "orders-0"), ("198.18.64.7", "")],
    ));
    assert!(!web.has_changed().unwrap());
}

#[test]
fn a_relist_of_pods_drops_pods_deleted_meanwhile() {
    let (mut index, mut rx) = shop();
    rx.borrow_and_update();
    index.reset(
        Kind::Pod,
        None,
        vec![
            mk_pod("shop", "orders-0", "orders", "198.18.64.1"),
            mk_pod("shop", "other-0", "other", "198.18.64.3"),
        ],
    );
    assert!(
        !rx.has_changed().unwrap(),
        "callers' pods are nobody's policy"
    );
    assert!(index.pod(&Key::new("shop", "web-0")).is_none());
    assert_eq!(
        index.pod(&Key::new("shop", "orders-0")).unwrap().uid,
        "uid-orders-0"
    );
}
