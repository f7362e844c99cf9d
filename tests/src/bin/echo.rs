//! `portico-echo NAME ADDR...`: a small HTTP/1.1 + h2c backend for demos and tests. It answers
//! every request with one JSON line naming itself, so a client can see which backend served it.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

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
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let name = name.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = serde_json::json!({
                            "backend": name,
                            "listen": addr.to_string(),
                            "method": req.method().as_str(),
                            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                            "host": req.headers().get("host").and_then(|h| h.to_str().ok()),
                        });
                        let response = Response::builder()
                            .header("content-type", "application/json")
                            .header("x-backend", name.as_str())
                            .body(Full::new(Bytes::from(format!("{body}\n"))));
                        async move { Ok::<_, Infallible>(response.unwrap_or_default()) }
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
