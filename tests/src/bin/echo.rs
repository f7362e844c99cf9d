//! `portico-echo NAME ADDR...`: a small HTTP/1.1 + h2c backend for demos and tests. It answers
//! every request with one JSON line naming itself, so a client can see which backend served it.
//!
//! It is also the "app" of meshed test pods, calling other Services the way an application does
//! (by name or ClusterIP, plain HTTP/1.1: in a meshed pod its sidecar intercepts the call):
//! - `GET /call?url=http://HOST:PORT/PATH` makes one GET and answers
//!   `{"status": N, "body": "...", "traceparent": ..., "requestId": ...}` (status 0 and
//!   `"error"` when the call failed). Like an instrumented application, it passes the
//!   `traceparent`, `tracestate` and `x-request-id` it was called with on to that GET.
//! - `GET /load?url=...&n=N&interval_ms=M` makes N GETs, one every M ms, each on a new
//!   connection, and answers `{"ok": N, "failed": N, "statuses": {...}, "errors": [...]}`;
//!   a call fails unless it gets a 2xx.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        bail!("usage: portico-echo NAME ADDR...");
    };
    let addrs: Vec<SocketAddr> = args
        .map(|a| a.parse().with_context(|| format!("bad address {a}")))
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        bail!("usage: portico-echo NAME ADDR...");
    }
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let name = name.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let name = name.clone();
                            async move { Ok::<_, Infallible>(answer(&name, addr, &req).await) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    eprintln!("portico-echo {name} serving");
    // The accept loops run until the process is stopped.
    futures_util::future::try_join_all(tasks).await?;
    Ok(())
}

async fn answer(
    name: &str,
    addr: SocketAddr,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let header = |name: &str| req.headers().get(name).and_then(|h| h.to_str().ok());
    // Like an instrumented application: the trace context and request ID it was called with go
    // on with the calls it makes.
    let propagated: Vec<(&str, &str)> = ["traceparent", "tracestate", "x-request-id"]
        .into_iter()
        .filter_map(|n| Some((n, header(n)?)))
        .collect();
    let body = match req.uri().path() {
        "/call" => match param(query, "url") {
            Some(url) => match get(&url, &propagated).await {
                Ok((status, body)) => json!({
                    "status": status, "body": body,
                    "traceparent": header("traceparent"), "requestId": header("x-request-id"),
                }),
                Err(e) => json!({"status": 0, "error": format!("{e:#}")}),
            },
            None => json!({"error": "missing url"}),
        },
        "/load" => match param(query, "url") {
            Some(url) => {
                let n = param(query, "n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                let interval = param(query, "interval_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10);
                load(&url, n, Duration::from_millis(interval)).await
            }
            None => json!({"error": "missing url"}),
        },
        _ => json!({
            "backend": name,
            "listen": addr.to_string(),
            "method": req.method().as_str(),
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "host": req.headers().get("host").and_then(|h| h.to_str().ok()),
            // Set by the sidecar from the caller's verified mesh certificate.
            "clientIdentity": req
                .headers()
                .get("x-portico-client-identity")
                .and_then(|h| h.to_str().ok()),
            "traceparent": header("traceparent"),
            "requestId": header("x-request-id"),
        }),
    };
    Response::builder()
        .header("content-type", "application/json")
        .header("x-backend", name)
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .unwrap_or_default()
}

async fn load(url: &str, n: u32, interval: Duration) -> Value {
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut tick = tokio::time::interval(interval);
    for _ in 0..n {
        tick.tick().await;
        match get(url, &[]).await {
            Ok((status, _)) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                if (200..300).contains(&status) {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                *statuses.entry("error".into()).or_default() += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    json!({"ok": ok, "failed": failed, "statuses": statuses, "errors": errors})
}

/// One `GET` of an `http://host[:port]/path` URL on a new connection (`Connection: close`).
async fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let extra: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\n{extra}connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .context("reading the response")?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| {
                format!("no status line in {:?}", text.lines().next().unwrap_or(""))
            })?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5s")?
}

/// The percent-decoded value of `key` in a query string.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
