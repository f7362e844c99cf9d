//! The HTTP data plane end to end: real upstreams and clients on loopback, proxy in-process.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use http::{Request, Response, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_proxy::Proxy;
use portico_proxy::error::{BoxError, full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn one_backend(addr: std::net::SocketAddr, protocol: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: all, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, protocol: {protocol}, endpoints: [{{ address: "{addr}" }}] }}]
"#
    )
}

#[tokio::test]
async fn http1_request_is_proxied_with_forwarded_headers_and_no_hop_headers() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let req = request("GET", "shop.example.com", "/items?id=7")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .body(full(""))
        .unwrap();
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, false).await).await;
    assert_eq!(reply.status, 200);
    let j = reply.json();
    assert_eq!(j["path"], "/items");
    assert_eq!(j["query"], "id=7");
    let h = &j["headers"];
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-end-to-end"], "kept");
    assert!(
        h.get("x-hop").is_none() && h.get("keep-alive").is_none(),
        "{h}"
    );
}

#[tokio::test]
async fn h2c_client_reaches_http1_backend() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let req = Request::get("http://example.com/x").body(full("")).unwrap();
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, true).await).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.json()["version"], "HTTP/1.1");
    assert_eq!(reply.json()["headers"]["host"], "example.com");
}

/// An HTTP/2 GET whose stream stays open after its headers carries a body of unknown length;
/// hyper's HTTP/1.1 client would drop it (it assumes a GET has none), so the proxy sends it
/// chunked, and the upstream answers only once the body has ended.
#[tokio::test]
async fn an_h2_get_with_an_open_body_reaches_an_http1_backend_with_its_body() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let (tx, rx) = mpsc::channel(4);
    let req = Request::get("http://example.com/search")
        .body(ChannelBody(rx).boxed_unsync())
        .unwrap();
    let sent = tokio::spawn(async move {
        tx.send(Frame::data(Bytes::from("query body")))
            .await
            .unwrap();
    });
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, true).await).await;
    sent.await.unwrap();
    assert_eq!(reply.status, 200);
    let j = reply.json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["body"], "query body");
    assert_eq!(j["headers"]["transfer-encoding"], "chunked");
}

#[tokio::test]
async fn auto_upstream_protocol_follows_the_client() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "auto")).await;
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.json()["version"], "HTTP/1.1");
    let req = Request::get("http://example.com/").body(full("")).unwrap();
    let reply = read(send(addr, req, true).await).await;
    assert_eq!(reply.json()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn http1_client_reaches_h2_backend() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "http2")).await;
    let reply = get(proxy.listener_addr("web").unwrap(), "/y").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["version"], "HTTP/2.0");
}

/// A body fed frame by frame from a channel, so a test controls when each frame is sent.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

#[tokio::test]
async fn grpc_streams_both_ways_and_trailers_pass_through() {
    // A gRPC-like bidirectional echo: every request frame is echoed as soon as it arrives, and
    // the response ends with `grpc-status` trailers.
    let up = upstream(handler(|req: Request<Incoming>| async move {
        let (tx, rx) = mpsc::channel(4);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let _ = tx.send(Frame::data(data)).await;
                }
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "done".parse().unwrap());
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
        let mut resp = Response::new(ChannelBody(rx).boxed_unsync());
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp
    }))
    .await;
    let proxy = start(&one_backend(up.addr, "http2")).await;

    let (tx, rx) = mpsc::channel(4);
    let req = Request::post("http://example.com/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChannelBody(rx).boxed_unsync())
        .unwrap();
    let resp = send(proxy.listener_addr("web").unwrap(), req, true).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for msg in ["one", "two"] {
        tx.send(Frame::data(Bytes::from(msg))).await.unwrap();
        // The echo arrives while the request stream is still open: nothing is buffered.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), msg);
    }
    drop(tx);
    let trailers = loop {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(t) = frame.into_trailers() {
            break t;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let up = upstream(handler(|mut req: Request<Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on.await.unwrap());
            let mut buf = [0u8; 4];
            io.read_exact(&mut buf).await.unwrap();
            io.write_all(&buf).await.unwrap();
        });
        let mut resp = status(101);
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        resp
    }))
    .await;
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let req = request("GET", "example.com", "/ws")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let resp = send(proxy.listener_addr("web").unwrap(), req, false).await;
    assert_eq!(resp.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn tcp_listener_forwards_bytes_unchanged() {
    let echo_sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo_sock.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo_sock.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let proxy = start(&format!(
        r#"
listeners: [{{ name: redis, address: "127.0.0.1:0", protocol: TCP, backend: redis }}]
backends: [{{ name: redis, endpoints: [{{ address: "{echo_addr}" }}] }}]
"#
    ))
    .await;
    let mut c = TcpStream::connect(proxy.listener_addr("redis").unwrap())
        .await
        .unwrap();
    let msg = b"*1\r\n$4\r\nPING\r\n\x00\xff binary too";
    c.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
}

/// A proxy with one HTTPS listener (self-signed for `localhost`) in front of an echo server,
/// and a TLS connector trusting it.
struct Https {
    proxy: Proxy,
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    _dir: tempfile::TempDir,
}

impl Https {
    async fn start(upstream: SocketAddr) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        // The certificate from a file, the key inline: both ways of passing PEM.
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("tls.crt");
        std::fs::write(&cert_file, ck.cert.pem()).unwrap();
        let yaml = format!(
            r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    protocol: HTTPS
    tls: {{ cert: {{ file: {cert:?} }}, key: {{ inline: {key:?} }} }}
routes: [{{ name: all, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, endpoints: [{{ address: "{upstream}" }}] }}]
"#,
            cert = cert_file.display().to_string(),
            key = ck.signing_key.serialize_pem(),
        );
        let proxy = start(&yaml).await;
        let addr = proxy.listener_addr("tls").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        Self {
            proxy,
            addr,
            roots,
            _dir: dir,
        }
    }

    /// A TLS connection offering `alpn` (nothing when empty).
    async fn connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        if !alpn.is_empty() {
            cfg.alpn_protocols = vec![alpn.to_vec()];
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let agreed = tls.get_ref().1.alpn_protocol();
        assert_eq!(agreed, (!alpn.is_empty()).then_some(alpn));
        tls
    }
}

#[tokio::test]
async fn https_listener_negotiates_h2_and_http1_with_alpn() {
    let up = echo("a").await;
    let https = Https::start(up.addr).await;
    for (alpn, h2) in [
        (&b"h2"[..], true),
        (&b"http/1.1"[..], false),
        (&b""[..], false),
    ] {
        let io = TokioIo::new(https.connect(alpn).await);
        // Two requests on one connection: the second after the connection was idle.
        let replies = if h2 {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut replies = Vec::new();
            for path in ["/s", "/t"] {
                let req = Request::get(format!("https://localhost{path}"))
                    .body(full(""))
                    .unwrap();
                replies.push(read(tx.send_request(req).await.unwrap()).await);
            }
            replies
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut replies = Vec::new();
            for path in ["/s", "/t"] {
                let req = request("GET", "localhost", path).body(full("")).unwrap();
                replies.push(read(tx.send_request(req).await.unwrap()).await);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            replies
        };
        for (reply, path) in replies.iter().zip(["/s", "/t"]) {
            assert_eq!(reply.status, 200, "alpn {alpn:?}");
            assert_eq!(reply.json()["path"], path);
            assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");
            let version = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            assert_eq!(reply.version, version, "alpn {alpn:?}");
        }
    }
    assert_eq!(up.hits(), 6);
    drop(https.proxy);
}

/// After ALPN `h2` only HTTP/2 is spoken: HTTP/1.1 bytes instead of the connection preface are
/// a connection error (h2spec 3.5), never an HTTP/1.1 answer; a real HTTP/2 client still works.
#[tokio::test]
async fn after_alpn_h2_a_connection_without_the_preface_is_an_error_not_http1() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = echo("a").await;
    let https = Https::start(up.addr).await;
    let mut tls = https.connect(b"h2").await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .expect("the proxy ends the connection");
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "answered as HTTP/1.1: {}",
        String::from_utf8_lossy(&out)
    );
    // Whatever came is HTTP/2 frames: a SETTINGS frame (type 4) first, maybe a GOAWAY (7).
    if out.len() >= 9 {
        assert_eq!(out[3], 4, "not an HTTP/2 frame: {out:?}");
    }
    assert_eq!(up.hits(), 0);
}

/// HTTP/1.1 over TLS (ALPN `http/1.1` or none) is served by the fast path: pipelined requests
/// are answered in order, a chunked request hands the connection to hyper with what was read,
/// and the connection ends with a TLS close_notify (the client reads a clean end of stream).
#[tokio::test]
async fn https_http1_pipelines_across_the_hand_off_and_closes_with_close_notify() {
    let up = echo("a").await;
    let https = Https::start(up.addr).await;
    for alpn in [&b"http/1.1"[..], &b""[..]] {
        let mut tls = https.connect(alpn).await;
        let pipelined = concat!(
            "GET /one HTTP/1.1\r\nhost: localhost\r\n\r\n",
            "POST /two HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n",
            "3\r\nabc\r\n0\r\n\r\n",
            "GET /three HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        );
        // Reading to the end fails (UnexpectedEof) if the proxy closes without close_notify.
        let text = exchange_raw(&mut tls, pipelined).await;
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
        assert_paths_in_order(&text, &["/one", "/two", "/three"]);
        assert!(text.contains(r#""body":"abc""#), "{text}");

        // Closed by the proxy after a plain `connection: close` request too (no hand-off).
        let mut tls = https.connect(alpn).await;
        let close = "GET /four HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
        let text = exchange_raw(&mut tls, close).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }
    assert_eq!(up.hits(), 8);
}

/// An idle HTTP/1.1 connection over TLS waits for its next request without a buffer, moving
/// records from the socket into the TLS state itself: a request whose TLS record arrives in
/// pieces (a partial record decrypts to nothing) is still read whole, before and after an idle
/// pause on a kept-alive connection.
#[tokio::test]
async fn an_https_request_whose_tls_record_arrives_in_pieces_is_served() {
    use std::io::{Read as _, Write as _};
    let up = echo("a").await;
    let https = Https::start(up.addr).await;
    let (mut tcp, mut tls) = https.connect(b"http/1.1").await.into_inner();
    // Sends `raw` as TLS records cut into three TCP writes with pauses between them.
    async fn send_in_pieces(tcp: &mut TcpStream, tls: &mut rustls::ClientConnection, raw: &str) {
        tls.writer().write_all(raw.as_bytes()).unwrap();
        let mut wire = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut wire).unwrap();
        }
        for piece in [
            &wire[..3],
            &wire[3..wire.len() / 2],
            &wire[wire.len() / 2..],
        ] {
            tcp.write_all(piece).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Reads plaintext until `done` says the response is whole.
    async fn receive(
        tcp: &mut TcpStream,
        tls: &mut rustls::ClientConnection,
        done: impl Fn(&str, bool) -> bool,
    ) -> String {
        let mut text = Vec::new();
        loop {
            let mut raw = [0u8; 4096];
            let n = tcp.read(&mut raw).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&text));
            tls.read_tls(&mut &raw[..n]).unwrap();
            let state = tls.process_new_packets().unwrap();
            let mut chunk = vec![0u8; state.plaintext_bytes_to_read()];
            tls.reader().read_exact(&mut chunk).unwrap();
            text.extend_from_slice(&chunk);
            let s = String::from_utf8_lossy(&text).into_owned();
            if done(&s, state.peer_has_closed()) {
                return s;
            }
        }
    }
    send_in_pieces(
        &mut tcp,
        &mut tls,
        "GET /one HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await;
    let one = receive(&mut tcp, &mut tls, |s, _| has_whole_response(s)).await;
    assert_paths_in_order(&one, &["/one"]);
    assert!(one.starts_with("HTTP/1.1 200 OK\r\n"), "{one}");
    // Idle on the kept connection, then the next request, also in pieces.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let close = "GET /two HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    send_in_pieces(&mut tcp, &mut tls, close).await;
    let two = receive(&mut tcp, &mut tls, |_, closed| closed).await;
    assert!(two.starts_with("HTTP/1.1 200 OK\r\n"), "{two}");
    assert_paths_in_order(&two, &["/two"]);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn routes_by_host_path_method_header_and_query() {
    let (a, b, c, d) = (
        echo("a").await,
        echo("b").await,
        echo("c").await,
        echo("d").await,
    );
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: api
    hostnames: ["*.example.com"]
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]
        backends: [{{ backend: a }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /api }}, headers: [{{ name: x-beta, value: "on|yes", type: RegularExpression }}] }}]
        backends: [{{ backend: b }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /api }}, method: DELETE, query: [{{ name: force, value: "1" }}] }}]
        backends: [{{ backend: c }}]
  - name: other
    hostnames: [other.test]
    rules: [{{ backends: [{{ backend: d }}] }}]
backends:
  - {{ name: a, endpoints: [{{ address: "{}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{}" }}] }}
  - {{ name: c, endpoints: [{{ address: "{}" }}] }}
  - {{ name: d, endpoints: [{{ address: "{}" }}] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let go = |method: &'static str, host: &'static str, path: &'static str, beta: bool| async move {
        let mut r = request(method, host, path);
        if beta {
            r = r.header("x-beta", "yes");
        }
        read(send(addr, r.body(full("")).unwrap(), false).await).await
    };
    assert_eq!(
        go("GET", "www.example.com", "/api/x", false).await.server(),
        "a"
    );
    assert_eq!(
        go("GET", "www.example.com", "/api/x", true).await.server(),
        "b"
    );
    assert_eq!(
        go("DELETE", "www.example.com", "/api/x?force=1", false)
            .await
            .server(),
        "c"
    );
    assert_eq!(
        go("GET", "other.test:8080", "/anything", false)
            .await
            .server(),
        "d"
    );
    let miss = go("GET", "nope.test", "/api", false).await;
    assert_eq!((miss.status, miss.error()), (404, "no_route"));
}

#[tokio::test]
async fn weighted_split_respects_weights() {
    let (a, b, z) = (echo("a").await, echo("b").await, echo("z").await);
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: split
    rules: [{{ backends: [{{ backend: a, weight: 3 }}, {{ backend: b, weight: 1 }}, {{ backend: z, weight: 0 }}] }}]
backends:
  - {{ name: a, endpoints: [{{ address: "{}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{}" }}] }}
  - {{ name: z, endpoints: [{{ address: "{}" }}] }}
"#,
        a.addr, b.addr, z.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..200 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    assert_eq!(z.hits(), 0, "weight 0 gets nothing");
    // 3:1 over 200 requests: a gets 150 on average; 100..=190 is beyond 6 standard deviations.
    assert!(
        (100..=190).contains(&a.hits()),
        "a={} b={}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 200);
}

#[tokio::test]
async fn filters_edit_headers_and_rewrite_the_path() {
    let up = echo("a").await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /old }} }}]
        filters:
          - {{ type: RequestHeaderModifier, set: [{{ name: x-env, value: prod }}], add: [{{ name: x-tag, value: t }}], remove: [x-secret] }}
          - {{ type: UrlRewrite, hostname: internal.svc, path: {{ type: ReplacePrefixMatch, value: /new }} }}
          - {{ type: ResponseHeaderModifier, set: [{{ name: x-served-by, value: portico }}], remove: [x-server] }}
        backends: [{{ backend: app }}]
backends: [{{ name: app, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let req = request("GET", "example.com", "/old/a/b?q=1")
        .header("x-secret", "s")
        .header("x-env", "dev")
        .body(full(""))
        .unwrap();
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, false).await).await;
    let j = reply.json();
    assert_eq!(j["path"], "/new/a/b");
    assert_eq!(j["query"], "q=1");
    assert_eq!(j["headers"]["host"], "internal.svc");
    assert_eq!(j["headers"]["x-env"], "prod");
    assert_eq!(j["headers"]["x-tag"], "t");
    assert!(j["headers"].get("x-secret").is_none());
    assert_eq!(reply.headers["x-served-by"], "portico");
    assert!(reply.headers.get("x-server").is_none());
}

#[tokio::test]
async fn redirect_and_direct_response_answer_without_a_backend() {
    let proxy = start(
        r#"
listeners: [{ name: web, address: "127.0.0.1:0", protocol: HTTP }]
routes:
  - name: r
    rules:
      - matches: [{ path: { type: PathPrefix, value: /old } }]
        filters: [{ type: RequestRedirect, scheme: https, path: { type: ReplacePrefixMatch, value: /new }, statusCode: 301 }]
      - matches: [{ path: { type: Exact, value: /teapot } }]
        filters: [{ type: DirectResponse, status: 418, body: "short and stout", headers: [{ name: x-pot, value: tea }] }]
"#,
    )
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let r = get(addr, "/old/page?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://example.com/new/page?x=1");
    let r = get(addr, "/teapot").await;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));
    assert_eq!(r.headers["x-pot"], "tea");
}

#[tokio::test]
async fn mirror_gets_a_copy_and_never_delays_the_request() {
    let main = echo("main").await;
    let (seen_tx, mut seen_rx) = mpsc::channel::<String>(1);
    let never = Arc::new(tokio::sync::Notify::new());
    let shadow = upstream(handler(move |req: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        let never = never.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen_tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .await
                .unwrap();
            // The shadow never answers; the main request must not care.
            never.notified().await;
            status(200)
        }
    }))
    .await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules: [{{ filters: [{{ type: RequestMirror, backend: shadow }}], backends: [{{ backend: main }}] }}]
backends:
  - {{ name: main, endpoints: [{{ address: "{}" }}] }}
  - {{ name: shadow, endpoints: [{{ address: "{}" }}] }}
"#,
        main.addr, shadow.addr
    ))
    .await;
    let req = request("POST", "example.com", "/orders")
        .body(full("order-1"))
        .unwrap();
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, false).await).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body"], "order-1");
    assert_eq!(seen_rx.recv().await.unwrap(), "order-1");
}

#[tokio::test]
async fn connect_failure_is_502_and_no_ready_endpoint_is_503() {
    let closed = closed_port().await;
    let up = echo("a").await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /down }} }}]
        backends: [{{ backend: down }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /notready }} }}]
        backends: [{{ backend: notready }}]
backends:
  - {{ name: down, endpoints: [{{ address: "{closed}" }}] }}
  - {{ name: notready, endpoints: [{{ address: "{}", ready: false }}] }}
"#,
        up.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let r = get(addr, "/down").await;
    assert_eq!((r.status, r.error()), (502, "connect_failure"));
    assert!(r.body.contains("could not connect"), "{}", r.body);
    let r = get(addr, "/notready").await;
    assert_eq!((r.status, r.error()), (503, "no_healthy_endpoint"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_proxy_stays_up() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GARBAGE\x01 / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(get(addr, "/still-up").await.status, 200);
}

/// Every hop stamps the request: the client's `x-request-id` is kept (else one is made), the
/// W3C trace id is the client's at every hop and each proxy adds its own parent id; requests
/// without a `traceparent` start a trace. Both request paths (HTTP/1.1 fast path, h2c through
/// hyper), and the proxy's own error answers carry the request ID.
#[tokio::test]
async fn request_ids_and_trace_context_are_stamped_at_each_hop() {
    let app = echo("app").await;
    let inner = start(&one_backend(app.addr, "http1")).await;
    let inner_addr = inner.listener_addr("web").unwrap();
    let outer = start(&one_backend(inner_addr, "auto")).await;
    let addr = outer.listener_addr("web").unwrap();
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for h2 in [false, true] {
        let req = request("GET", "example.com", "/")
            .header("traceparent", sent)
            .header("tracestate", "vendor=1")
            .header("x-request-id", "req-42")
            .body(full(""))
            .unwrap();
        let got = read(send(addr, req, h2).await).await.json();
        let h = &got["headers"];
        assert_eq!(
            h["x-request-id"], "req-42",
            "h2 {h2}: the client's ID is kept"
        );
        let tp = h["traceparent"].as_str().unwrap();
        assert_eq!(
            &tp[..36],
            &sent[..36],
            "h2 {h2}: same version and trace id: {tp}"
        );
        assert!(tp.ends_with("-01"), "flags kept: {tp}");
        assert_ne!(&tp[36..52], &sent[36..52], "a new parent id: {tp}");
        assert_eq!(h["tracestate"], "vendor=1");

        // No IDs from the client: the first proxy makes them, the second keeps them.
        let req = request("GET", "example.com", "/").body(full("")).unwrap();
        let got = read(send(addr, req, h2).await).await.json();
        let h = &got["headers"];
        assert_eq!(h["x-request-id"].as_str().unwrap().len(), 36, "{h}");
        let tp = h["traceparent"].as_str().unwrap();
        assert!(
            tp.starts_with("00-") && tp.ends_with("-00") && tp.len() == 55,
            "{tp}"
        );
    }
    // The proxy's own answer (no route for this host) names the request.
    let lonely = start(
        r#"
listeners: [{ name: web, address: "127.0.0.1:0", protocol: HTTP }]
routes: [{ name: r, hostnames: [only.example.com], rules: [{ filters: [{ type: DirectResponse, status: 200 }] }] }]
"#,
    )
    .await;
    let req = request("GET", "other.example.com", "/")
        .header("x-request-id", "req-404")
        .body(full(""))
        .unwrap();
    let resp = send(lonely.listener_addr("web").unwrap(), req, false).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "req-404");
}

/// `maxRequestBodyBytes`: a declared body over the limit is refused with 413 before anything
/// goes upstream (the fast HTTP/1 path; HTTP/2 through hyper), an undeclared one (chunked,
/// streamed through hyper) once it passes the limit; bodies within it pass.
#[tokio::test]
async fn a_rule_body_limit_answers_413() {
    let app = echo("app").await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: r, rules: [{{ maxRequestBodyBytes: 10, backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, endpoints: [{{ address: "{}" }}] }}]
"#,
        app.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for (body, want) in [("0123456789", 200), ("0123456789x", 413)] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let raw = format!(
            "POST / HTTP/1.1\r\nhost: example.com\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange_raw(&mut tcp, &raw).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{body}: {answer}"
        );
        if want == 413 {
            assert!(
                answer.contains("x-portico-error: body_too_large"),
                "{answer}"
            );
        }
    }
    let hits = app.hits();
    // Chunked: no length declared, the limit holds as the body streams.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let answer = exchange_raw(
        &mut tcp,
        "POST / HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "chunked: {answer}");
    // HTTP/2, through hyper's path.
    for (body, want) in [(&b"0123456789"[..], 200), (&b"0123456789abcdef"[..], 413)] {
        let req = request("POST", "example.com", "/")
            .body(bytes_body(body))
            .unwrap();
        let resp = send(addr, req, true).await;
        assert_eq!(resp.status(), want, "h2 body of {}", body.len());
    }
    assert!(
        app.hits() > hits,
        "bodies within the limit still reach the app"
    );
}

/// An HTTP/2 client's requests to an HTTP/1.1 upstream get answers of every framing:
/// chunked bodies decoded into data, lengths and close-delimited bodies whole, HEAD without a
/// body; the upstream connection is reused while it can carry on and replaced when the
/// upstream closed it while idle.
#[tokio::test]
async fn h2_clients_get_http1_answers_of_every_framing_on_reused_connections() {
    use std::sync::atomic::Ordering;
    // `/chunked`: two chunks, an extension and a trailer; `/close`: the body ends with the
    // connection; `/stale`: answered, then the connection closed while idle in the pool.
    let up = raw_upstream(|head, _| {
        let answer: &[u8] = match target(head) {
            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
            "/close" => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end<close>",
            "/stale" => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength<close>",
            _ if head.starts_with("HEAD ") => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength",
        };
        Some(answer.to_vec())
    })
    .await;
    let accepted = up.accepted.clone();
    let proxy = start(&one_backend(up.addr, "http1")).await;
    let addr = proxy.listener_addr("web").unwrap();
    let h2 = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://example.com{path}"))
            .body(full(""))
            .unwrap()
    };
    // The upstream connection goes back to the pool just after the client has the end of the
    // body; the next request waits a moment so that it finds it there.
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(50));
    let reply = read(send(addr, h2("GET", "/chunked"), true).await).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello, world");
    assert_eq!(reply.headers["x-up"], "chunked");
    assert!(reply.headers.get("transfer-encoding").is_none());
    settle().await;
    let reply = read(send(addr, h2("GET", "/length"), true).await).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "length"));
    settle().await;
    let reply = read(send(addr, h2("HEAD", "/length"), true).await).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    assert_eq!(reply.headers["content-length"], "6");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection carried the three answers"
    );
    let reply = read(send(addr, h2("GET", "/close"), true).await).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "until the end"));
    let reply = read(send(addr, h2("GET", "/stale"), true).await).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "length"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The pooled connection was closed by the upstream: the request goes on a new one.
    let before = accepted.load(Ordering::SeqCst);
    let reply = read(send(addr, h2("GET", "/length"), true).await).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "length"));
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
}
