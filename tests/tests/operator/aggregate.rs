//! Aggregation on Route rules: one GET fanned out to several Services, their JSON merged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// A backend at `addr` answering every request with `body` (JSON), or never while `stalled`
/// is set.
async fn json_backend(
    addr: SocketAddr,
    body: &'static str,
    stalled: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let stalled = stalled.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let stalled = stalled.load(Ordering::SeqCst);
                    async move {
                        if stalled {
                            std::future::pending::<()>().await;
                        }
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(body.as_bytes()),
                        ));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

/// `GET path` (`connection: close`): status, the head lower-cased, and the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut text))
        .await
        .context("no answer in 10s")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// `Route.spec.rules[].aggregate` (`backends[]` with `key` and `path`, `timeout`): a GET is
/// answered with the JSON of two Services merged, one at the top level and one under its key,
/// each asked at its own path; when one stalls past the timeout, or has no server at all, the
/// other's data is answered with `x-portico-aggregate: incomplete` naming the failed one; once
/// it answers again the answer is whole again.
pub(super) async fn aggregate(ctx: Ctx) -> anyhow::Result<()> {
    gateway_on_free_port(&ctx).await?;
    let never = Arc::new(AtomicBool::new(false));
    let orders_stalled = Arc::new(AtomicBool::new(false));
    let users_addr: SocketAddr = "198.18.65.151:8080".parse()?;
    let orders_addr: SocketAddr = "198.18.65.152:8080".parse()?;
    let _users = json_backend(users_addr, r#"{"user": "ada", "plan": "pro"}"#, never).await?;
    let _orders = json_backend(
        orders_addr,
        r#"{"count": 2, "last": "A-7"}"#,
        orders_stalled.clone(),
    )
    .await?;
    for (name, ip) in [
        ("users", "198.18.65.151"),
        ("orders", "198.18.65.152"),
        // Nothing listens there: connections are refused.
        ("gone", "198.18.65.153"),
    ] {
        create::<Service>(&ctx, service(name)).await?;
        create::<EndpointSlice>(&ctx, slice(&format!("{name}-1"), name, &[ip])).await?;
    }
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "api"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["api.example.com"], "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/summary"}}],
                 "aggregate": {"timeout": "500ms", "backends": [
                     {"name": "users", "port": 80, "path": "/users/ada"},
                     {"name": "orders", "port": 80, "key": "orders"}
                 ]}},
                {"matches": [{"path": {"type": "Exact", "value": "/with-gone"}}],
                 "aggregate": {"backends": [
                     {"name": "users", "port": 80},
                     {"name": "gone", "port": 80, "key": "gone"}
                 ]}}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "the aggregate in the proxy's config", |r| {
        r.aggregate
            .as_ref()
            .is_some_and(|a| a.timeout.get() == Duration::from_millis(500))
    })
    .await?;

    let whole = json!({"user": "ada", "plan": "pro", "orders": {"count": 2, "last": "A-7"}});
    let (status, head, body) = eventually("a whole merged answer", Duration::from_secs(10), || {
        let addr = proxy.addr;
        async move {
            let answer = get(addr, "/summary").await?;
            Ok((answer.0 == 200).then_some(answer))
        }
    })
    .await?;
    ensure!(status == 200 && head.contains("content-type: application/json"));
    ensure!(!head.contains("x-portico-aggregate"), "complete: {head}");
    ensure!(serde_json::from_str::<Value>(&body)? == whole, "{body}");

    // A Service whose endpoint refuses connections is left out.
    let (status, head, body) = get(proxy.addr, "/with-gone").await?;
    ensure!(status == 200, "{status} {head}");
    ensure!(
        head.contains("x-portico-aggregate: incomplete")
            && head.contains("x-portico-aggregate-failed: gone"),
        "{head}"
    );
    ensure!(
        serde_json::from_str::<Value>(&body)? == json!({"user": "ada", "plan": "pro"}),
        "{body}"
    );

    // A stalled Service is waited for until the timeout only.
    orders_stalled.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (status, head, body) = get(proxy.addr, "/summary").await?;
    let took = started.elapsed();
    ensure!(status == 200, "{status} {head}");
    ensure!(
        head.contains("x-portico-aggregate: incomplete")
            && head.contains("x-portico-aggregate-failed: orders"),
        "{head}"
    );
    ensure!(
        serde_json::from_str::<Value>(&body)? == json!({"user": "ada", "plan": "pro"}),
        "{body}"
    );
    ensure!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "the stalled backend held the answer {took:?}"
    );

    orders_stalled.store(false, Ordering::SeqCst);
    let (_, head, body) = get(proxy.addr, "/summary").await?;
    ensure!(!head.contains("x-portico-aggregate"), "whole again: {head}");
    ensure!(serde_json::from_str::<Value>(&body)? == whole, "{body}");
    Ok(())
}
