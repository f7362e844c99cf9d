use crate::*;

const SIDECAR: &str = r#"
listeners:
  - { name: outbound, address: "0.0.0.0:4140", protocol: OUTBOUND }
  - { name: inbound, address: "0.0.0.0:4143", protocol: INBOUND }
routes:
  - name: orders-v2
    rules: [{ matches: [{ path: { type: PathPrefix, value: /v2 } }], backends: [{ backend: orders-v2 }] }]
services:
  - { name: orders, addresses: ["198.19.0.10:80"], backend: orders, routes: [orders-v2] }
  - { name: mysql, addresses: ["198.19.0.11:3306"], backend: mysql, opaque: true }
interception: { opaquePorts: [25], detectTimeout: 50ms }
backends:
  - { name: orders, endpoints: [{ address: "198.18.0.5:8080" }] }
  - { name: orders-v2, endpoints: [{ address: "198.18.0.6:8080" }] }
  - { name: mysql, endpoints: [{ address: "198.18.0.7:3306" }] }
"#;

fn sidecar() -> ProxyConfig {
    serde_yaml::from_str(SIDECAR).expect("the sidecar example parses")
}

fn err(cfg: &ProxyConfig) -> String {
    cfg.validate()
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn a_sidecar_config_parses_and_validates() {
    let cfg = sidecar();
    cfg.validate().expect("valid");
    assert_eq!(cfg.services.len(), 2);
    assert_eq!(cfg.interception.opaque_ports, [25]);
    assert_eq!(cfg.interception.detect_timeout(), Duration::from_millis(50));
}

#[test]
fn configs_without_services_read_as_before() {
    let cfg: ProxyConfig = serde_yaml::from_str("listeners: []").expect("parses");
    assert!(cfg.services.is_empty());
    assert_eq!(
        cfg.interception.detect_timeout(),
        Interception::DEFAULT_DETECT_TIMEOUT
    );
    let json = serde_json::to_string(&cfg).expect("serializes");
    assert!(!json.contains("services") && !json.contains("interception"));
}

#[test]
fn services_survive_the_split_into_parts() {
    let cfg = sidecar();
    let (routes, backends) = cfg.clone().into_parts();
    assert_eq!(ProxyConfig::from_parts(routes, backends), cfg);
}

#[test]
fn a_virtual_address_names_one_service() {
    let mut cfg = sidecar();
    cfg.services[1].addresses = vec!["198.19.0.10:80".into()];
    assert_eq!(
        err(&cfg),
        r#"service "mysql": address 198.19.0.10:80 belongs to another service too"#
    );
}

#[test]
fn service_references_must_exist() {
    let mut cfg = sidecar();
    cfg.services[0].backend = "nope".into();
    assert_eq!(
        err(&cfg),
        r#"service "orders": backend "nope" is not defined"#
    );
    let mut cfg = sidecar();
    cfg.services[0].routes = vec!["nope".into()];
    assert_eq!(
        err(&cfg),
        r#"service "orders": route "nope" is not defined"#
    );
    let mut cfg = sidecar();
    cfg.services[0].addresses = vec!["orders:80".into()];
    assert_eq!(
        err(&cfg),
        r#"service "orders": address "orders:80" is not IP:PORT"#
    );
}

#[test]
fn sidecar_listeners_take_no_backend_and_no_routes() {
    let mut cfg = sidecar();
    cfg.listeners[0].backend = Some("orders".into());
    assert!(err(&cfg).contains("use services"), "{}", err(&cfg));
    let mut cfg = sidecar();
    cfg.routes[0].listeners = vec!["outbound".into()];
    assert!(err(&cfg).contains("attach the route to a service"));
}

fn with_inbound(yaml: &str) -> ProxyConfig {
    ProxyConfig {
        inbound: serde_yaml::from_str(yaml).expect("the inbound policy parses"),
        ..Default::default()
    }
}

#[test]
fn an_inbound_policy_parses_and_validates() {
    let cfg = with_inbound(
        r#"
ports:
  - port: 8080
    policy: shop/orders
    authorization: { identities: ["spiffe://td/ns/shop/sa/web", "spiffe://td/ns/ops/sa/*", "*"], unauthenticated: true }
    rateLimit: { requests: 10, period: 1s, burst: 20, key: { type: Header, name: x-user } }
  - port: 9090
    policy: shop/metrics
    rateLimit: { requests: 5, period: 1m, burst: 5 }
"#,
    );
    cfg.validate().expect("valid");
    assert_eq!(
        cfg.inbound.ports[1].rate_limit.as_ref().unwrap().key,
        RateLimitKey::ClientIp
    );
    // An authorization that names nobody refuses everybody.
    let deny_all = with_inbound("ports: [{ port: 1, policy: p, authorization: {} }]");
    let auth = deny_all.inbound.ports[0].authorization.as_ref().unwrap();
    assert!(auth.identities.is_empty() && !auth.unauthenticated);
    let strict = with_inbound("mtls: Strict\nprobes: [{ port: 8080, path: /healthz }]");
    strict.validate().expect("valid");
    assert_eq!(strict.inbound.mtls, crate::MtlsMode::Strict);
}

#[test]
fn identity_patterns_match_one_identity_a_namespace_or_any() {
    use crate::{identity_matches, identity_pattern_ok};
    let web = "spiffe://td/ns/shop/sa/web";
    assert!(identity_matches(web, web));
    assert!(!identity_matches(web, "spiffe://td/ns/shop/sa/webx"));
    assert!(identity_matches("spiffe://td/ns/shop/sa/*", web));
    assert!(!identity_matches("spiffe://td/ns/sho/sa/*", web));
    assert!(!identity_matches(
        "spiffe://td/ns/shop/sa/*",
        "spiffe://td/ns/shop/sa/"
    ));
    assert!(identity_matches("*", web));
    for ok in ["*", web, "spiffe://td/ns/shop/sa/*"] {
        assert!(identity_pattern_ok(ok), "{ok}");
    }
    for bad in [
        "",
        "web",
        "spiffe://",
        "spiffe://td/ns/*/sa/web",
        "10.0.0.1",
    ] {
        assert!(!identity_pattern_ok(bad), "{bad}");
    }
}

#[test]
fn a_bad_inbound_policy_is_refused_naming_the_port() {
    let cases = [
        ("ports: [{ port: 0, policy: p }]", "inbound port 0: port 0"),
        (
            "ports: [{ port: 80, policy: a }, { port: 80, policy: b }]",
            "inbound port 80: has two policies",
        ),
        (
            "ports: [{ port: 80, policy: p, authorization: { identities: [10.0.0.1] } }]",
            "inbound port 80: \"10.0.0.1\" is not `*`, a SPIFFE ID",
        ),
        (
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 0, period: 1s, burst: 1 } }]",
            "inbound port 80 rateLimit: requests must be at least 1",
        ),
        (
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 5, period: 1s, burst: 4 } }]",
            "burst must be at least requests",
        ),
        (
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 5, period: 0s, burst: 5 } }]",
            "period must be longer than 0",
        ),
        (
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 5, period: 1s, burst: 5, key: { type: Header, name: 'a b' } } }]",
            "header name \"a b\" is not a valid token",
        ),
        (
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 5, period: 1s, burst: 5, store: { address: 'r:6379', prefix: p, timeout: 50ms } } }]",
            "inbound port 80 rateLimit: a port's limit has no store",
        ),
    ];
    for (yaml, want) in cases {
        let e = with_inbound(yaml).validate().expect_err(yaml).to_string();
        assert!(e.contains(want), "{yaml}: {e}");
    }
}
