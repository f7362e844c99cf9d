//! Real servers and clients on 127.0.0.1 for the integration tests.
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_proxy::error::{Body, full};
use portico_proxy::{Options, Proxy};
use portico_proxy_api::ProxyConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub mod mesh;

pub type BoxFut = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFut + Send + Sync>;

/// An upstream server that counts its requests.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves HTTP/1.1 (with upgrades) and h2c on an ephemeral port.
pub async fn upstream(handler: Handler) -> Upstream {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = sock.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// An upstream that holds every request until released: `entered` gets a message as each
/// request arrives, and each `release.notify_one()` lets one of them answer 200. Tests use it
/// to have a request provably in flight.
pub struct Gated {
    pub upstream: Upstream,
    pub entered: tokio::sync::mpsc::Receiver<()>,
    pub release: Arc<tokio::sync::Notify>,
}

pub async fn gated_upstream() -> Gated {
    let (entered_tx, entered) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let upstream = upstream(handler(move |_req: Request<Incoming>| {
        let entered_tx = entered_tx.clone();
        let gate = gate.clone();
        async move {
            entered_tx.send(()).await.unwrap();
            gate.notified().await;
            status(200)
        }
    }))
    .await;
    Gated {
        upstream,
        entered,
        release,
    }
}

/// Answers with a JSON description of the request it received.
pub async fn echo(name: &'static str) -> Upstream {
    upstream(handler(move |req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let json = serde_json::json!({
            "server": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let mut resp = Response::new(full(json.to_string()));
        resp.headers_mut().insert("x-server", name.parse().unwrap());
        resp
    }))
    .await
}

/// A response with `status` and a short body.
pub fn status(code: u16) -> Response<Body> {
    let mut r = Response::new(full(format!("status {code}")));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
    r
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    sock.local_addr().unwrap()
}

pub fn config(yaml: &str) -> ProxyConfig {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"))
}

pub async fn start(yaml: &str) -> Proxy {
    let opts = Options {
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        access_log: false,
        identity: None,
        cache_max_bytes: None,
        demand: None,
    };
    Proxy::start(config(yaml), opts)
        .await
        .expect("proxy starts")
}

/// A finished response with its body read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub version: Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap_or("").to_owned()
    }

    pub fn error(&self) -> &str {
        self.headers
            .get("x-portico-error")
            .map_or("", |v| v.to_str().unwrap())
    }
}

/// Sends one request on a fresh connection (HTTP/1.1 or h2c prior knowledge).
pub async fn send(addr: SocketAddr, req: Request<Body>, h2: bool) -> Response<Incoming> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        tx.send_request(req).await.unwrap()
    }
}

pub async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

pub fn request(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
}

/// GET `path` over HTTP/1.1 with `Host: example.com`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = request("GET", "example.com", path).body(full("")).unwrap();
    read(send(addr, req, false).await).await
}

pub fn bytes_body(b: &'static [u8]) -> Body {
    Full::new(Bytes::from_static(b))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Writes `raw` (requests, pipelined) on `stream` and reads until the peer closes: the answers
/// as text.
pub async fn exchange_raw<S>(stream: &mut S, raw: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `text` holds a whole response head and as much body as its `content-length` says
/// (for reading a kept-alive connection's answer off the wire).
pub fn has_whole_response(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .is_some_and(|n| body.len() >= n.parse::<usize>().unwrap())
}

/// Asserts that `text` holds [`echo`]'s answers for `paths`, each one, in that order.
pub fn assert_paths_in_order(text: &str, paths: &[&str]) {
    let at: Vec<usize> = paths
        .iter()
        .map(|p| {
            text.find(&format!(r#""path":"{p}""#))
                .unwrap_or_else(|| panic!("{p} missing: {text}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "not in order {paths:?}: {text}"
    );
}

/// Where `needle` starts in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An upstream that knows `Expect: 100-continue`: `/continue` says `100 Continue` after 300 ms
/// and then reads the body, `/refuse` answers 417 at once (and notes any body bytes that still
/// reach it), `/silent` ignores `Expect` and waits for the body. Each answer says how many body
/// bytes it read.
pub async fn expect_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let stray = Arc::new(AtomicUsize::new(0));
    let strays = stray.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = sock.accept().await {
            let strays = strays.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_head(&mut conn, &mut buf).await else {
                    return;
                };
                let head = head.to_lowercase();
                assert!(head.contains("expect: 100-continue"), "{head}");
                let want: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap();
                let mut body = buf;
                if head.starts_with("post /refuse") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let mut chunk = [0u8; 1024];
                    if let Ok(Ok(k)) = tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        conn.read(&mut chunk),
                    )
                    .await
                    {
                        strays.fetch_add(k + body.len(), Ordering::SeqCst);
                    }
                    return;
                }
                if head.starts_with("post /continue") {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .unwrap();
                }
                while body.len() < want {
                    let mut chunk = [0u8; 1024];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                    }
                }
                let text = format!("read {}", body.len());
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, stray)
}

/// Reads from `conn` until `buf` holds a whole request head, and takes it out of `buf` (what
/// came after it stays): the head as it came, or `None` when the connection closed first.
pub async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = find_bytes(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}

/// An upstream speaking raw bytes: for each request head (and its `content-length` body) it
/// calls `reply` with the head and the number of requests seen before on that connection, and
/// writes what it returns; `None` closes the connection without answering. A reply that ends
/// with [`THEN_CLOSE`] is written without it and the connection closed.
pub struct Raw {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn raw_upstream<F>(reply: F) -> Raw
where
    F: Fn(&str, usize) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reply = Arc::new(reply);
    let (count, seen) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = sock.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (reply, seen) = (reply.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut n = 0;
                while let Some(head) = read_head(&mut conn, &mut buf).await {
                    let body_len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < body_len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..body_len);
                    seen.lock().unwrap().push(head.clone());
                    match reply(&head, n) {
                        Some(bytes) => {
                            let (bytes, close) = match bytes.strip_suffix(THEN_CLOSE) {
                                Some(b) => (b, true),
                                None => (&bytes[..], false),
                            };
                            if conn.write_all(bytes).await.is_err() || close {
                                return;
                            }
                        }
                        None => return,
                    }
                    n += 1;
                }
            });
        }
    });
    Raw {
        addr,
        accepted,
        heads,
    }
}

/// Appended to a raw reply: close the connection after writing it.
pub const THEN_CLOSE: &[u8] = b"<close>";

/// The request target of a raw head.
pub fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// Reads from `conn` until `text` holds `want` (or 5 s pass).
pub async fn read_into_until(conn: &mut TcpStream, text: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !text.contains(want) {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => text.push_str(&String::from_utf8_lossy(&chunk[..k])),
            _ => break,
        }
    }
}
