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
