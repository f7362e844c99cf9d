//! `portico-proxy sidecar` as the webhook injects it: the real binary with the injected command
//! line and environment, against a config server played by the test (HTTPS, HTTP/2, the
//! newline-delimited `ConfigMessage` stream), so the test decides what arrives and when.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_proxy_api::{ConfigMessage, InboundPolicy, ProxyConfig};
use tokio::sync::mpsc;

/// What the proxy asked the config server.
#[derive(Debug)]
struct Asked {
    path: String,
    authorization: String,
    /// Lines written here reach the proxy; dropping it ends the stream.
    lines: mpsc::UnboundedSender<Bytes>,
}

/// A config server: TLS with its own CA, HTTP/2, one never-ending stream per request.
struct FakeControlPlane {
    addr: SocketAddr,
    ca_pem: String,
    asked: mpsc::UnboundedReceiver<Asked>,
}

impl FakeControlPlane {
    async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let (asked_tx, asked) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = sock.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let asked_tx = asked_tx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let asked_tx = asked_tx.clone();
                        async move {
                            let (lines, rx) = mpsc::unbounded_channel::<Bytes>();
                            // This control plane issues no workload identities.
                            let refuse = req.uri().path() == portico_proxy_api::CERTIFICATE_PATH;
                            if !refuse {
                                let _ = asked_tx.send(Asked {
                                    path: req.uri().path().to_owned(),
                                    authorization: req
                                        .headers()
                                        .get("authorization")
                                        .map(|v| v.to_str().unwrap().to_owned())
                                        .unwrap_or_default(),
                                    lines,
                                });
                            }
                            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                                let b = rx.recv().await?;
                                Some((Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
                            });
                            let mut resp = Response::new(StreamBody::new(frames));
                            if refuse {
                                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            asked,
        }
    }

    async fn next_request(&mut self) -> Asked {
        tokio::time::timeout(Duration::from_secs(30), self.asked.recv())
            .await
            .expect("the proxy asks for its config")
            .expect("server running")
    }
}

fn push(to: &Asked, msg: ConfigMessage) {
    to.lines.send(Bytes::from(msg.to_line())).unwrap();
}

/// The mesh config of a client pod: one service, one backend; `generation` marks it.
fn mesh_config(generation: u64, backend: &str) -> ProxyConfig {
    config(&format!(
        r#"
generation: {generation}
services: [{{ name: orders, addresses: ["198.19.0.10:80"], backend: {backend} }}]
backends: [{{ name: orders, endpoints: [{{ address: "198.18.64.7:8080" }}] }}]
"#
    ))
}

fn send_config(to: &Asked, cfg: ProxyConfig) {
    let (routes, backends) = cfg.into_parts();
    push(to, ConfigMessage::RouteTable(routes));
    push(to, ConfigMessage::BackendSet(backends));
}

fn inbound_policy() -> InboundPolicy {
    serde_yaml::from_str(
        "ports: [{ port: 8080, policy: shop/orders, authorization: { identities: [\"spiffe://cluster.local/ns/shop/sa/web\"] } }]",
    )
    .unwrap()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Sidecar {
    child: Child,
    admin: SocketAddr,
    inbound: SocketAddr,
    outbound: SocketAddr,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with the command line and environment the webhook injects (only the
/// addresses are free loopback ports and the token file a temporary one).
fn start_sidecar(control_plane: SocketAddr, ca_pem: &str, token_file: &std::path::Path) -> Sidecar {
    let (admin, inbound, outbound) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico-proxy"))
        .args(["sidecar", "--control-plane"])
        .arg(format!("https://127.0.0.1:{}", control_plane.port()))
        .arg("--token-file")
        .arg(token_file)
        .args(["--inbound-addr", &inbound.to_string()])
        .args(["--outbound-addr", &outbound.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--log-level", "info"])
        .env("POD_NAME", "client-0")
        .env("POD_NAMESPACE", "shop")
        .env("POD_IP", "198.18.64.5")
        .env("SERVICE_ACCOUNT", "client")
        .env("PORTICO_CONTROL_PLANE_CA", ca_pem)
        .env("PORTICO_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, stderr) = mpsc::unbounded_channel();
    let out = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            eprintln!("proxy: {line}");
            let _ = tx.send(line);
        }
    });
    Sidecar {
        child,
        admin,
        inbound,
        outbound,
        stderr,
    }
}

impl Sidecar {
    async fn admin(&self, path: &str) -> Option<Reply> {
        let stream = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = request("GET", "admin", path)
            .body(portico_proxy::error::full(""))
            .unwrap();
        Some(read(tx.send_request(req).await.ok()?).await)
    }

    async fn metrics(&self) -> String {
        self.admin("/metrics").await.expect("admin answers").body
    }

    async fn config(&self) -> serde_json::Value {
        self.admin("/config").await.expect("admin answers").json()
    }

    /// Waits for a stderr line containing `text`.
    async fn logged(&mut self, text: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line with {text:?}"))
                .unwrap_or_else(|| panic!("the proxy exited before logging {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

fn series(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn the_injected_sidecar_follows_its_pod_stream_keeps_the_last_good_config_and_reconnects() {
    let mut cp = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-one\n").unwrap();
    let mut sidecar = start_sidecar(cp.addr, &cp.ca_pem, &token);

    let stream = cp.next_request().await;
    assert_eq!(stream.path, "/v1/mesh/pods/shop/client-0/config");
    assert_eq!(stream.authorization, "Bearer token-one");

    // Both halves, then a newer BackendSet, then the inbound policy. A sidecar that served
    // before its inbound policy arrived would apply three configs; this one applies one.
    send_config(&stream, mesh_config(1, "orders"));
    push(
        &stream,
        ConfigMessage::BackendSet(mesh_config(2, "orders").into_parts().1),
    );
    push(&stream, ConfigMessage::InboundPolicy(inbound_policy()));
    sidecar.logged("portico-proxy ready").await;
    let ready = sidecar.admin("/ready").await.expect("admin answers");
    assert_eq!(ready.status, 200);
    let m = sidecar.metrics().await;
    assert_eq!(
        series(&m, r#"portico_config_reloads_total{result="ok"}"#),
        Some(1),
        "{m}"
    );
    assert_eq!(series(&m, "portico_config_version"), Some(2), "{m}");
    let cfg = sidecar.config().await;
    assert_eq!(cfg["inbound"]["ports"][0]["policy"], "shop/orders");
    let listeners: Vec<(String, String, String)> = cfg["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_owned();
            (s("name"), s("address"), s("protocol"))
        })
        .collect();
    assert!(listeners.contains(&(
        "outbound".into(),
        sidecar.outbound.to_string(),
        "OUTBOUND".into()
    )));
    assert!(listeners.contains(&(
        "inbound".into(),
        sidecar.inbound.to_string(),
        "INBOUND".into()
    )));
    tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .expect("outbound bound");
    tokio::net::TcpStream::connect(sidecar.inbound)
        .await
        .expect("inbound bound");

    // A config that does not validate (the service's backend is missing) never replaces the
    // good one. Its route table alone is held for the backend set that follows it (the
    // operator sends a table that starts using a Service just before the set that has it);
    // with that set it is refused.
    send_config(&stream, mesh_config(3, "missing"));
    sidecar
        .logged("config from the control plane refused")
        .await;
    let m = sidecar.metrics().await;
    assert_eq!(
        series(&m, r#"portico_config_reloads_total{result="error"}"#),
        Some(1),
        "{m}"
    );
    assert_eq!(series(&m, "portico_config_version"), Some(2), "{m}");

    // The operator goes away; the projected token rotates meanwhile. The proxy reconnects with
    // the new token and keeps serving the last good config until a full state arrives.
    std::fs::write(&token, "token-two\n").unwrap();
    drop(stream);
    let stream = cp.next_request().await;
    assert_eq!(stream.authorization, "Bearer token-two");
    assert_eq!(sidecar.admin("/ready").await.expect("admin").status, 200);
    assert_eq!(sidecar.config().await["generation"], 2);
    send_config(&stream, mesh_config(4, "orders"));
    push(
        &stream,
        ConfigMessage::InboundPolicy(InboundPolicy::default()),
    );
    sidecar
        .logged("config from the control plane applied")
        .await;
    let cfg = sidecar.config().await;
    assert_eq!(cfg["generation"], 4);
    assert!(
        cfg.get("inbound").is_none(),
        "the emptied policy applies: {cfg}"
    );

    let status = sidecar.terminate().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_sidecar_without_a_control_plane_is_not_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token-value").unwrap();
    let nothing = closed_port().await;
    let cp = FakeControlPlane::start().await;
    let mut sidecar = start_sidecar(nothing, &cp.ca_pem, &token);
    let line = sidecar.logged("cannot reach the control plane").await;
    assert!(
        !line.contains("secret-token-value"),
        "the token is never logged: {line}"
    );
    assert!(
        sidecar
            .admin("/ready")
            .await
            .is_none_or(|r| r.status != 200)
    );
    let status = sidecar.terminate().await;
    assert!(status.success(), "exit status {status}");
}

#[test]
fn the_sidecar_command_line_needs_its_pod() {
    let out = Command::new(env!("CARGO_BIN_EXE_portico-proxy"))
        .args([
            "sidecar",
            "--control-plane",
            "https://127.0.0.1:1",
            "--token-file",
            "/nonexistent",
        ])
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pod-name"), "{err}");
}

/// `portico-proxy gateway --gateway ns/name` and the first form the operator's gateway
/// Deployments run (`--control-plane URL --gateway ns/name`) ask for the same stream.
#[tokio::test]
async fn both_gateway_forms_follow_the_gateway_stream() {
    let mut cp = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (token, ca) = (dir.path().join("token"), dir.path().join("ca.crt"));
    std::fs::write(&token, "gw-token").unwrap();
    std::fs::write(&ca, &cp.ca_pem).unwrap();
    let url = format!("https://127.0.0.1:{}", cp.addr.port());
    for subcommand in [Some("gateway"), None] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico-proxy"));
        cmd.args(subcommand)
            .args(["--control-plane", &url, "--gateway", "shop/web"])
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(&ca)
            .args(["--admin-addr", &free_port().to_string()])
            .env_remove("PORTICO_CONTROL_PLANE_CA")
            .stderr(Stdio::null());
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        let asked = cp.next_request().await;
        assert_eq!(asked.path, "/v1/gateways/shop/web/config", "{subcommand:?}");
        assert_eq!(asked.authorization, "Bearer gw-token");
        let _ = child.0.kill();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
