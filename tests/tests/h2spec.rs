//! h2spec, the HTTP/2 conformance tester (built by `hack/k8s-bins.sh`, so this runs with the
//! end-to-end tests), against portico-proxy: its HTTP listener (h2c by prior knowledge, on the
//! same port as HTTP/1.1) and its HTTPS listener (h2 by ALPN). Every test must pass.

use std::net::SocketAddr;

use portico_proxy::{Options, Proxy};
use portico_tests::cluster::{bin_dir, free_port};
use portico_tests::support::backend_after_body;

/// Runs h2spec against `port` (with TLS when `tls`) and returns its summary line.
async fn h2spec(port: u16, tls: bool) -> String {
    let bin = bin_dir().join("h2spec");
    assert!(
        bin.exists(),
        "{} is missing: hack/k8s-bins.sh builds it (make e2e runs that)",
        bin.display()
    );
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-o", "5"]);
    if tls {
        // The listener's certificate is self-signed.
        cmd.args(["-t", "-k"]);
    }
    let out = cmd.output().await.expect("h2spec runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        summary.contains(" 0 skipped, 0 failed") && out.status.success(),
        "h2spec on port {port} (tls: {tls}): {summary}\n{}",
        text.split("Failures:").nth(1).unwrap_or(&text)
    );
    summary
}

#[tokio::test]
async fn h2spec_passes_every_test_on_h2c_and_tls_listeners() {
    let up: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    // h2spec's flow-control cases need a response bigger than a window (64 KiB); with a small
    // one it skips them.
    let body: &'static str = Box::leak("x".repeat(100_000).into_boxed_str());
    let _backend = backend_after_body(up, body).await.unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let yaml = format!(
        r#"
listeners:
  - {{ name: h2c, address: "127.0.0.1:0", protocol: HTTP }}
  - name: tls
    address: "127.0.0.1:0"
    protocol: HTTPS
    tls: {{ cert: {{ inline: {cert:?} }}, key: {{ inline: {key:?} }} }}
routes: [{{ name: all, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, endpoints: [{{ address: "{up}" }}] }}]
"#,
        cert = ck.cert.pem(),
        key = ck.signing_key.serialize_pem(),
    );
    let config = serde_yaml::from_str(&yaml).unwrap();
    let proxy = Proxy::start(config, Options::default()).await.unwrap();
    for (listener, tls) in [("h2c", false), ("tls", true)] {
        let port = proxy.listener_addr(listener).unwrap().port();
        let summary = h2spec(port, tls).await;
        eprintln!("h2spec {listener}: {summary}");
    }
}
