//! Mesh mTLS between two proxies, with real sockets: a client proxy (identity `web`) sends to
//! a backend whose endpoint is a meshed pod (identity `orders`): the pod's proxy serves its
//! INBOUND as redirected connections to a real application on 127.0.0.1. A tap between the two
//! proxies records the bytes on the wire.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::mesh::{TestCa, start_as};
use common::*;
use portico_proxy::Proxy;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const ORDERS: &str = "spiffe://td/ns/shop/sa/orders";
const WEB: &str = "spiffe://td/ns/shop/sa/web";
const ADMIN: &str = "spiffe://td/ns/shop/sa/admin";

/// A pod: its proxy (identity `orders` from `ca`) and the socket whose connections are served
/// as redirected to `app`.
async fn pod(ca: &TestCa, yaml: &str, app: SocketAddr) -> (Proxy, SocketAddr) {
    pod_trusting(ca, &[], yaml, app).await
}

/// Relays connections to `to`, recording what the client side sent.
async fn tap(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = sock.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut up = TcpStream::connect(to).await.unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut ur, mut uw) = up.split();
                let upstream = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            let _ = uw.shutdown().await;
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut ur, &mut cw);
                let _ = tokio::join!(upstream, downstream);
            });
        }
    });
    (addr, seen)
}

fn client_config(endpoint: SocketAddr, identity: &str, protocol: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: web, address: "127.0.0.1:0", protocol: HTTP }}
  - {{ name: redis, address: "127.0.0.1:0", protocol: TCP, backend: orders }}
routes: [{{ name: all, rules: [{{ backends: [{{ backend: orders }}] }}] }}]
backends: [{{ name: orders, protocol: {protocol}, endpoints: [{{ address: "{endpoint}", identity: "{identity}" }}] }}]
"#
    )
}

fn metric(proxy: &Proxy, series: &str) -> u64 {
    proxy
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn meshed_proxies_talk_mtls_for_http1_http2_and_opaque_tcp() {
    let ca = TestCa::new();
    let app = echo("orders").await;
    let (server, door) = pod(&ca, "{}", app.addr).await;
    let (wire, seen) = tap(door).await;
    for protocol in ["http1", "http2"] {
        let client = start_as(&client_config(wire, ORDERS, protocol), ca.store(WEB, &[])).await;
        let addr = client.listener_addr("web").unwrap();
        for path in ["/secret-path", "/secret-path?again"] {
            let r = get(addr, path).await;
            assert_eq!(r.status, 200, "{protocol}: {}", r.body);
            assert_eq!(r.server(), "orders");
            // The server side verified the client's certificate and told the app.
            assert_eq!(
                r.json()["headers"]["x-portico-client-identity"],
                WEB,
                "{protocol}"
            );
        }
        let out = r#"portico_tls_handshakes_total{direction="outbound",result="ok"}"#;
        assert_eq!(metric(&client, out), 1, "{protocol}: one pooled connection");
    }
    // On the wire: TLS records only, the server's identity as SNI, the ALPN of each protocol,
    // and not a byte of the requests in the clear.
    let bytes = seen.lock().unwrap().clone();
    assert_eq!(bytes[0], 0x16, "a TLS handshake record first");
    assert!(contains(&bytes, b"orders.shop.serviceaccount.identity.td"));
    assert!(contains(&bytes, b"portico.mesh/h1") && contains(&bytes, b"portico.mesh/h2"));
    assert!(
        !contains(&bytes, b"secret-path"),
        "a request was sent in the clear"
    );

    // Opaque TCP rides mTLS as well.
    let (tcp_app, _) = tcp_echo().await;
    let (_tcp_server, tcp_door) = pod(&ca, "{}", tcp_app).await;
    let (tcp_wire, tcp_seen) = tap(tcp_door).await;
    let client = start_as(
        &client_config(tcp_wire, ORDERS, "http1"),
        ca.store(WEB, &[]),
    )
    .await;
    let mut c = TcpStream::connect(client.listener_addr("redis").unwrap())
        .await
        .unwrap();
    c.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut buf = [0u8; 14];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"*1\r\n$4\r\nPING\r\n");
    let bytes = tcp_seen.lock().unwrap().clone();
    assert!(contains(&bytes, b"portico.mesh/tcp") && !contains(&bytes, b"PING"));
    let inbound = r#"portico_tls_handshakes_total{direction="inbound",result="ok"}"#;
    assert_eq!(metric(&server, inbound), 2);
}

/// A TCP echo server.
async fn tcp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = sock.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_peer_proving_another_identity_is_refused() {
    let ca = TestCa::new();
    let app = echo("orders").await;
    let (_server, door) = pod(&ca, "{}", app.addr).await;
    // The client expects `admin` at this address; the pod is `orders`.
    let client = start_as(&client_config(door, ADMIN, "http1"), ca.store(WEB, &[])).await;
    let r = get(client.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(app.hits(), 0);
    let failed = r#"portico_tls_handshakes_total{direction="outbound",result="error"}"#;
    assert!(metric(&client, failed) >= 1);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_root_is_refused_and_trusted_during_a_rotation() {
    let old = TestCa::new();
    let new = TestCa::new();
    let app = echo("orders").await;
    // The pod trusts only the old root.
    let (server, door) = pod(&old, "{}", app.addr).await;
    let stranger = start_as(&client_config(door, ORDERS, "http1"), new.store(WEB, &[])).await;
    let r = get(stranger.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(app.hits(), 0);
    let refused = r#"portico_tls_handshakes_total{direction="inbound",result="error"}"#;
    assert!(metric(&server, refused) >= 1);
    // During a rotation both roots are trusted: a peer with a certificate from the new root
    // talks to a pod whose certificate is still from the old one, and the other way round.
    let both = [&old, &new];
    let (_server, door) = pod_trusting(&old, &both, "{}", app.addr).await;
    let client = start_as(&client_config(door, ORDERS, "http1"), new.store(WEB, &both)).await;
    let r = get(client.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-portico-client-identity"], WEB);
}

/// A pod whose certificate comes from `ca` and which trusts `anchors` (`ca` alone when empty).
async fn pod_trusting(
    ca: &TestCa,
    anchors: &[&TestCa],
    yaml: &str,
    app: SocketAddr,
) -> (Proxy, SocketAddr) {
    let proxy = start_as(yaml, ca.store(ORDERS, anchors)).await;
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = sock.accept().await {
            let p = p.clone();
            tokio::spawn(async move { p.serve_inbound("inbound", stream, app).await });
        }
    });
    (proxy, addr)
}

#[tokio::test]
async fn a_proxy_without_an_identity_speaks_plaintext_to_meshed_endpoints() {
    let ca = TestCa::new();
    let app = echo("orders").await;
    let (_server, door) = pod(&ca, "{}", app.addr).await;
    let client = start(&client_config(door, ORDERS, "http1")).await;
    let r = get(client.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 200, "permissive: {}", r.body);
    assert!(r.json()["headers"]["x-portico-client-identity"].is_null());
}
