//! Inbound policy on the INBOUND path, with real sockets: the application is a real HTTP or
//! TCP server on 127.0.0.1; callers connect over mesh mTLS with a workload certificate of a
//! test CA (their identity) or in plaintext (no identity), from distinct loopback addresses
//! (127.0.0.2, 127.0.0.3, ...) so each has its own source IP for rate limits; and the proxy
//! serves each connection as a redirected one whose original destination is the application's
//! port ([`Proxy::serve_inbound`]; iptables redirection itself is covered by
//! `interception.rs`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_proxy::Proxy;
use portico_proxy::error::Body;
use portico_proxy::forward::connect::Stream;
use portico_proxy::mesh::mtls::MeshProtocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The pod: a proxy and the socket its INBOUND traffic arrives on. Every connection accepted
/// there is served as if redirected from `app`.
struct Pod {
    proxy: Proxy,
    addr: SocketAddr,
}

/// The pod's identity.
const POD: &str = "spiffe://td/ns/shop/sa/orders";
const WEB: &str = "spiffe://td/ns/shop/sa/web";
const ADMIN: &str = "spiffe://td/ns/shop/sa/admin";
const BOT: &str = "spiffe://td/ns/ops/sa/bot";

/// The mesh of one test: its CA, and the pod's certificate.
fn ca() -> &'static mesh::TestCa {
    static CA: std::sync::OnceLock<mesh::TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(mesh::TestCa::new)
}

/// A caller: a mesh identity, or plaintext.
#[derive(Clone, Copy)]
enum Who {
    Anon,
    As(&'static str),
}

async fn pod(yaml: &str, app: SocketAddr) -> Pod {
    let proxy = mesh::start_as(yaml, ca().store(POD, &[])).await;
    let addr = door(&proxy, app).await;
    Pod { proxy, addr }
}

/// A connection from `from` to `to` as `who` (mTLS for `protocol` to the pod's identity).
async fn connect_as(who: Who, from: &str, to: SocketAddr, protocol: MeshProtocol) -> Stream {
    let tcp = connect_from(from, to).await;
    match who {
        Who::Anon => Stream::Plain(tcp),
        Who::As(id) => {
            let tls = ca().store(id, &[]).tls().unwrap();
            Stream::Tls(Box::new(
                tls.connect(tcp, POD, protocol).await.expect("mTLS"),
            ))
        }
    }
}

/// A socket into `proxy` whose connections are served as redirected to `app`.
async fn door(proxy: &Proxy, app: SocketAddr) -> SocketAddr {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = sock.accept().await else {
                continue;
            };
            let p = p.clone();
            tokio::spawn(async move { p.serve_inbound("inbound", stream, app).await });
        }
    });
    addr
}

/// Connects to `to` from source address `from` (any 127.0.0.0/8 address is local).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// A keep-alive HTTP connection from one source address.
enum Client {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Client {
    async fn open(from: &str, to: SocketAddr, h2: bool) -> Self {
        Self::open_as(Who::Anon, from, to, h2).await
    }

    async fn open_as(who: Who, from: &str, to: SocketAddr, h2: bool) -> Self {
        let protocol = if h2 {
            MeshProtocol::Http2
        } else {
            MeshProtocol::Http1
        };
        let io = TokioIo::new(connect_as(who, from, to, protocol).await);
        if h2 {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Self::H2(tx)
        } else {
            let (tx, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(tx)
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = request("GET", "orders.shop", path);
        if matches!(self, Self::H2(_)) {
            b = b.uri(format!("http://orders.shop{path}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(portico_proxy::error::full("")).unwrap();
        let resp = match self {
            Self::H1(tx) => {
                tx.ready().await.expect("connection still open");
                tx.send_request(req).await.expect("answered")
            }
            Self::H2(tx) => {
                tx.ready().await.expect("connection still open");
                tx.send_request(req).await.expect("answered")
            }
        };
        read(resp).await
    }
}

async fn get_from(from: &str, to: SocketAddr, h2: bool) -> Reply {
    Client::open(from, to, h2).await.get("/orders", &[]).await
}

async fn get_as(who: Who, to: SocketAddr, h2: bool) -> Reply {
    Client::open_as(who, "127.0.0.1", to, h2)
        .await
        .get("/orders", &[])
        .await
}

/// A TCP echo server that counts the connections it accepted.
async fn tcp_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = sock.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// Not HTTP: a TLS record header, so detection decides "opaque" from the first bytes.
const OPAQUE: &[u8] = b"\x16\x03\x01 opaque bytes";

/// Sends [`OPAQUE`] and reads it back, or returns None when the proxy closes the connection.
async fn echo_roundtrip<S>(s: &mut S) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(OPAQUE).await.ok()?;
    let mut buf = vec![0; OPAQUE.len()];
    match s.read_exact(&mut buf).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

fn metric(proxy: &Proxy, series: &str) -> u64 {
    let text = proxy.metrics_text();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn policy(port: u16, rest: &str) -> String {
    format!("inbound:\n  ports:\n    - {{ port: {port}, policy: shop/orders, {rest} }}\n")
}

#[tokio::test]
async fn http_callers_without_an_allowed_identity_get_403_naming_the_policy_and_the_caller() {
    let app = echo("app").await;
    let port = app.addr.port();
    let pod = pod(
        &policy(port, &format!("authorization: {{ identities: [{WEB:?}] }}")),
        app.addr,
    )
    .await;
    for h2 in [false, true] {
        let ok = get_as(Who::As(WEB), pod.addr, h2).await;
        assert_eq!(ok.status, 200, "h2={h2}: {}", ok.body);
        assert_eq!(ok.server(), "app");
        assert_eq!(
            ok.json()["version"],
            if h2 { "HTTP/2.0" } else { "HTTP/1.1" }
        );
        assert_eq!(ok.json()["headers"]["x-forwarded-for"], "127.0.0.1");
        // The app learns who called, from the verified certificate.
        assert_eq!(ok.json()["headers"]["x-portico-client-identity"], WEB);
        let no = get_as(Who::As(ADMIN), pod.addr, h2).await;
        assert_eq!(no.status, 403, "h2={h2}: {}", no.body);
        assert_eq!(no.error(), "forbidden");
        assert!(no.body.contains("shop/orders"), "{}", no.body);
        assert!(no.body.contains(ADMIN), "{}", no.body);
        // An address proves nothing: a plaintext caller has no identity.
        let anon = get_as(Who::Anon, pod.addr, h2).await;
        assert_eq!(anon.status, 403, "h2={h2}: {}", anon.body);
        assert!(anon.body.contains("unauthenticated"), "{}", anon.body);
    }
    assert_eq!(app.hits(), 2, "refused requests never reach the app");
    let refused = format!(
        r#"portico_inbound_refused_total{{port="{port}",policy="shop/orders",reason="authorization"}}"#
    );
    assert_eq!(metric(&pod.proxy, &refused), 4);
    for (client, decision, n) in [
        (WEB, "allow", 2),
        (ADMIN, "deny", 2),
        ("unauthenticated", "deny", 2),
    ] {
        let series = format!(
            r#"portico_inbound_authorizations_total{{port="{port}",policy="shop/orders",client="{client}",decision="{decision}"}}"#
        );
        assert_eq!(metric(&pod.proxy, &series), n, "{series}");
    }
    let handshakes = r#"portico_tls_handshakes_total{direction="inbound",result="ok"}"#;
    assert_eq!(metric(&pod.proxy, handshakes), 4);
    // Inbound requests are counted like every other request, refused ones included.
    let app_addr = app.addr;
    for (class, n) in [("2xx", 2), ("4xx", 4)] {
        let series = format!(
            r#"portico_requests_total{{route="inbound",rule="",backend="{app_addr}",status_class="{class}"}}"#
        );
        assert_eq!(metric(&pod.proxy, &series), n, "{series}");
    }
}

#[tokio::test]
async fn a_namespace_pattern_and_unauthenticated_callers_can_be_allowed() {
    let app = echo("app").await;
    let pod = pod(
        &policy(
            app.addr.port(),
            r#"authorization: { identities: ["spiffe://td/ns/ops/sa/*"], unauthenticated: true }"#,
        ),
        app.addr,
    )
    .await;
    assert_eq!(get_as(Who::As(BOT), pod.addr, false).await.status, 200);
    assert_eq!(get_as(Who::As(BOT), pod.addr, true).await.status, 200);
    assert_eq!(get_as(Who::Anon, pod.addr, false).await.status, 200);
    assert_eq!(get_as(Who::As(WEB), pod.addr, false).await.status, 403);
    // A plaintext header cannot claim an identity.
    let forged = Client::open("127.0.0.2", pod.addr, false)
        .await
        .get("/", &[("x-portico-client-identity", BOT)])
        .await;
    assert_eq!(forged.status, 200);
    assert!(
        forged.json()["headers"]["x-portico-client-identity"].is_null(),
        "{}",
        forged.body
    );
}

#[tokio::test]
async fn opaque_tcp_from_a_refused_identity_is_closed_before_reaching_the_app() {
    let (app, accepted) = tcp_app().await;
    let port = app.port();
    let pod = pod(
        &policy(port, &format!("authorization: {{ identities: [{WEB:?}] }}")),
        app,
    )
    .await;
    let mut allowed = connect_as(Who::As(WEB), "127.0.0.1", pod.addr, MeshProtocol::Opaque).await;
    assert_eq!(echo_roundtrip(&mut allowed).await.as_deref(), Some(OPAQUE));
    let mut refused = connect_as(Who::As(ADMIN), "127.0.0.1", pod.addr, MeshProtocol::Opaque).await;
    assert_eq!(echo_roundtrip(&mut refused).await, None, "closed");
    let mut anon = connect_from("127.0.0.3", pod.addr).await;
    assert_eq!(echo_roundtrip(&mut anon).await, None, "closed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the app never saw them");
    let series = format!(
        r#"portico_inbound_refused_total{{port="{port}",policy="shop/orders",reason="authorization"}}"#
    );
    assert_eq!(metric(&pod.proxy, &series), 2);
    let intercepted =
        r#"portico_intercepted_connections_total{listener="inbound",service="",protocol="opaque"}"#;
    assert_eq!(metric(&pod.proxy, intercepted), 3);
}

#[tokio::test]
async fn a_strict_port_refuses_plaintext_but_lets_the_kubelet_probe_its_paths() {
    let app = echo("app").await;
    let (tcp, accepted) = tcp_app().await;
    let port = app.addr.port();
    let pod = pod(
        &format!("inbound:\n  mtls: Strict\n  probes: [{{ port: {port}, path: /healthz }}]\n"),
        app.addr,
    )
    .await;
    let probe = Client::open("127.0.0.2", pod.addr, false)
        .await
        .get("/healthz", &[])
        .await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    let other = get_from("127.0.0.2", pod.addr, false).await;
    assert_eq!(other.status, 403, "{}", other.body);
    assert!(other.body.contains("requires mTLS"), "{}", other.body);
    assert_eq!(get_as(Who::As(WEB), pod.addr, false).await.status, 200);
    assert_eq!(app.hits(), 2);
    // A port nobody probes: a plaintext connection is closed unread.
    let tcp_door = door(&pod.proxy, tcp).await;
    let mut anon = connect_from("127.0.0.2", tcp_door).await;
    assert_eq!(echo_roundtrip(&mut anon).await, None);
    let mut meshed = connect_as(Who::As(WEB), "127.0.0.1", tcp_door, MeshProtocol::Opaque).await;
    assert_eq!(echo_roundtrip(&mut meshed).await.as_deref(), Some(OPAQUE));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let series = format!(
        r#"portico_inbound_refused_total{{port="{}",policy="",reason="mtls_required"}}"#,
        tcp.port()
    );
    assert_eq!(metric(&pod.proxy, &series), 1);
}

#[tokio::test]
async fn over_the_rate_limit_http_gets_429_with_retry_after_per_client_address() {
    let app = echo("app").await;
    let port = app.addr.port();
    let pod = pod(
        &policy(
            port,
            "rateLimit: { requests: 2, period: 1h, burst: 2, key: { type: ClientIP } }",
        ),
        app.addr,
    )
    .await;
    for (from, h2) in [("127.0.0.2", false), ("127.0.0.6", true)] {
        let mut c = Client::open(from, pod.addr, h2).await;
        assert_eq!(c.get("/", &[]).await.status, 200);
        assert_eq!(c.get("/", &[]).await.status, 200);
        let limited = c.get("/", &[]).await;
        assert_eq!(limited.status, 429, "{from}: {}", limited.body);
        assert_eq!(limited.error(), "rate_limited");
        assert!(limited.body.contains("shop/orders"), "{}", limited.body);
        let retry: u64 = limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1800).contains(&retry), "one token per 30 min: {retry}");
    }
    assert_eq!(
        get_from("127.0.0.3", pod.addr, false).await.status,
        200,
        "another address has its own bucket"
    );
    let series = format!(
        r#"portico_inbound_refused_total{{port="{port}",policy="shop/orders",reason="rate_limit"}}"#
    );
    assert_eq!(metric(&pod.proxy, &series), 2);
    assert_eq!(app.hits(), 5);
}

#[tokio::test]
async fn a_header_keyed_limit_counts_each_value_apart() {
    let app = echo("app").await;
    let pod = pod(
        &policy(
            app.addr.port(),
            "rateLimit: { requests: 1, period: 1h, burst: 1, key: { type: Header, name: x-user } }",
        ),
        app.addr,
    )
    .await;
    let mut c = Client::open("127.0.0.2", pod.addr, false).await;
    assert_eq!(c.get("/", &[("x-user", "alice")]).await.status, 200);
    assert_eq!(c.get("/", &[("x-user", "alice")]).await.status, 429);
    assert_eq!(c.get("/", &[("x-user", "bob")]).await.status, 200);
}

#[tokio::test]
async fn each_new_opaque_connection_counts_as_one_request() {
    let (app, accepted) = tcp_app().await;
    let port = app.port();
    let pod = pod(
        &policy(
            port,
            "rateLimit: { requests: 1, period: 1h, burst: 1, key: { type: Global } }",
        ),
        app,
    )
    .await;
    let mut first = connect_from("127.0.0.2", pod.addr).await;
    assert_eq!(echo_roundtrip(&mut first).await.as_deref(), Some(OPAQUE));
    assert_eq!(
        echo_roundtrip(&mut first).await.as_deref(),
        Some(OPAQUE),
        "an open connection is not limited byte by byte"
    );
    let mut second = connect_from("127.0.0.3", pod.addr).await;
    assert_eq!(
        echo_roundtrip(&mut second).await,
        None,
        "over the global limit"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let series = format!(
        r#"portico_inbound_refused_total{{port="{port}",policy="shop/orders",reason="rate_limit"}}"#
    );
    assert_eq!(metric(&pod.proxy, &series), 1);
}

#[tokio::test]
async fn a_policy_update_applies_to_the_next_request_without_closing_open_connections() {
    let http_app = echo("app").await;
    let (tcp_app, accepted) = tcp_app().await;
    let cfg = |allowed: &str| {
        format!(
            "generation: {}\ninbound:\n  ports:\n    - {{ port: {}, policy: shop/web, authorization: {{ identities: [{allowed:?}] }} }}\n    - {{ port: {}, policy: shop/tcp, authorization: {{ identities: [{allowed:?}] }} }}\n",
            if allowed == WEB { 1 } else { 2 },
            http_app.addr.port(),
            tcp_app.port()
        )
    };
    let pod = pod(&cfg(WEB), http_app.addr).await;
    let tcp_door = door(&pod.proxy, tcp_app).await;

    let mut newcomer = Client::open_as(Who::As(ADMIN), "127.0.0.1", pod.addr, false).await;
    assert_eq!(newcomer.get("/", &[]).await.status, 403);
    let mut old_h2 = Client::open_as(Who::As(WEB), "127.0.0.1", pod.addr, true).await;
    assert_eq!(old_h2.get("/", &[]).await.status, 200);
    let mut old_tcp = connect_as(Who::As(WEB), "127.0.0.1", tcp_door, MeshProtocol::Opaque).await;
    assert_eq!(echo_roundtrip(&mut old_tcp).await.as_deref(), Some(OPAQUE));

    pod.proxy
        .apply(config(&cfg(ADMIN)))
        .await
        .expect("the new policy applies");

    // The same keep-alive connection that was refused is let in now.
    assert_eq!(newcomer.get("/", &[]).await.status, 200);
    // The HTTP/2 connection stays open; its next request meets the new policy.
    assert_eq!(old_h2.get("/", &[]).await.status, 403);
    // The opaque connection was checked when it opened and keeps flowing.
    assert_eq!(echo_roundtrip(&mut old_tcp).await.as_deref(), Some(OPAQUE));
    // A new one from the identity no longer allowed is refused.
    let mut again = connect_as(Who::As(WEB), "127.0.0.1", tcp_door, MeshProtocol::Opaque).await;
    assert_eq!(echo_roundtrip(&mut again).await, None);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_port_without_a_policy_is_open_to_everyone() {
    let guarded = echo("guarded").await;
    let open = echo("open").await;
    let pod = pod(
        &policy(
            guarded.addr.port(),
            &format!("authorization: {{ identities: [{WEB:?}] }}"),
        ),
        guarded.addr,
    )
    .await;
    let open_door = door(&pod.proxy, open.addr).await;
    let r = get_from("127.0.0.9", open_door, false).await;
    assert_eq!((r.status, r.server().as_str()), (200, "open"));
    assert_eq!(get_from("127.0.0.9", pod.addr, false).await.status, 403);
}

/// HTTP/1.1 on INBOUND: the fast path serves keep-alive and pipelined requests and hands the
/// connection to hyper at the first request it leaves to hyper (a chunked body here); every
/// request on the connection reaches the app in order, hop-by-hop fields dropped, and a refused
/// request is answered without ending the connection.
#[tokio::test]
async fn pipelined_http1_requests_reach_the_app_in_order_across_the_hand_off_to_hyper() {
    let app = echo("app").await;
    let pod = pod(
        &policy(app.addr.port(), r#"authorization: { identities: ["*"] }"#),
        app.addr,
    )
    .await;
    let pipelined = concat!(
        "GET /one HTTP/1.1\r\nhost: app\r\nconnection: x-drop\r\nx-drop: 1\r\n\r\n",
        "POST /two HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\n\r\nabc",
        "POST /three HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n3\r\ndef\r\n0\r\n\r\n",
        "GET /four HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    );
    let mut s = connect_as(Who::As(WEB), "127.0.0.4", pod.addr, MeshProtocol::Http1).await;
    let text = exchange_raw(&mut s, pipelined).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{text}");
    assert_paths_in_order(&text, &["/one", "/two", "/three", "/four"]);
    assert!(
        !text.contains("x-drop"),
        "hop-by-hop field reached the app: {text}"
    );
    assert!(
        text.contains(r#""body":"abc""#) && text.contains(r#""body":"def""#),
        "{text}"
    );
    assert!(text.contains(r#""x-forwarded-for":"127.0.0.4""#), "{text}");
    assert_eq!(app.hits(), 4);

    // A refused caller's request is answered by the proxy; the connection carries the next.
    let mut s = connect_from("127.0.0.2", pod.addr).await;
    let two = concat!(
        "GET /a HTTP/1.1\r\nhost: app\r\n\r\n",
        "GET /b HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    );
    let text = exchange_raw(&mut s, two).await;
    assert_eq!(
        text.matches("HTTP/1.1 403 Forbidden\r\n").count(),
        2,
        "{text}"
    );
    assert_eq!(app.hits(), 4, "refused requests never reach the app");
}

/// `Expect: 100-continue` to the pod's application through the INBOUND side: the application
/// decides (the caller hears `100 Continue` only once the app said it), and an app that answers
/// 417 first never gets the body.
#[tokio::test]
async fn expect_100_continue_through_the_inbound_side_is_the_apps_to_answer() {
    let (app, stray) = expect_upstream().await;
    let pod = pod(
        &policy(app.port(), "authorization: { unauthenticated: true }"),
        app,
    )
    .await;
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        )
    };
    let mut conn = connect_from("127.0.0.2", pod.addr).await;
    let start = tokio::time::Instant::now();
    conn.write_all(head("/continue").as_bytes()).await.unwrap();
    let mut text = String::new();
    read_into_until(&mut conn, &mut text, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(250),
        "the sidecar said continue before the app did"
    );
    conn.write_all(b"hello").await.unwrap();
    read_into_until(&mut conn, &mut text, "read 5").await;
    assert!(text.ends_with("read 5"), "{text}");

    let mut conn = connect_from("127.0.0.2", pod.addr).await;
    conn.write_all(head("/refuse").as_bytes()).await.unwrap();
    let mut text = String::new();
    read_into_until(&mut conn, &mut text, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 417"), "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(stray.load(std::sync::atomic::Ordering::SeqCst), 0);
}
