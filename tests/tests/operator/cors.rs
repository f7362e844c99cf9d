//! CORS on Route rules: preflights answered by the proxy, allowed origins marked.

use super::*;

/// Sends `raw` (one request, `connection: close`) to `addr` and returns the answer's head,
/// lower-cased.
async fn head_of(addr: SocketAddr, raw: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(raw.as_bytes()).await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase())
}

/// `Route.spec.rules[].cors`: a preflight from an allowed origin (exact or a subdomain
/// wildcard) is answered by the proxy with the `Access-Control-Allow-*` headers and never
/// reaches the backend; a disallowed origin, method or header gets no allow headers; an
/// ordinary request from an allowed origin gets `Access-Control-Allow-Origin`, the exposed
/// headers and credentials; every answer varies by `Origin`.
pub(super) async fn cors(ctx: Ctx) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    gateway_on_free_port(&ctx).await?;
    let (_task, seen) = flaky_service(&ctx, "api", "198.18.65.111").await?;
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "api"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{
                "backendRefs": [{"name": "api", "port": 80}],
                "cors": {"allowOrigins": ["https://shop.example.com", "https://*.example.org"],
                         "allowMethods": ["GET", "POST"], "allowHeaders": ["content-type"],
                         "exposeHeaders": ["x-total"], "maxAge": "10m",
                         "allowCredentials": true}
            }]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "cors in the proxy's config", |r| r.cors.is_some()).await?;
    let preflight = |origin: &str, method: &str, headers: &str| {
        format!(
            "OPTIONS /items HTTP/1.1\r\nhost: api.example.com\r\norigin: {origin}\r\n\
             access-control-request-method: {method}\r\n{headers}connection: close\r\n\r\n"
        )
    };
    let before = seen.requests.load(Ordering::SeqCst);
    let ok = head_of(
        proxy.addr,
        &preflight(
            "https://a.example.org",
            "POST",
            "access-control-request-headers: Content-Type\r\n",
        ),
    )
    .await?;
    for want in [
        "http/1.1 204",
        "access-control-allow-origin: https://a.example.org",
        "access-control-allow-methods: get, post",
        "access-control-allow-headers: content-type",
        "access-control-max-age: 600",
        "access-control-allow-credentials: true",
        "vary: origin",
    ] {
        ensure!(ok.contains(want), "allowed preflight lacks {want:?}:\n{ok}");
    }
    for (origin, method, headers) in [
        ("https://evil.net", "GET", ""),
        ("https://shop.example.com", "DELETE", ""),
        (
            "https://shop.example.com",
            "GET",
            "access-control-request-headers: x-secret\r\n",
        ),
    ] {
        let refused = head_of(proxy.addr, &preflight(origin, method, headers)).await?;
        ensure!(
            refused.starts_with("http/1.1 204") && !refused.contains("access-control-allow"),
            "{origin} {method} {headers:?}: {refused}"
        );
    }
    ensure!(
        seen.requests.load(Ordering::SeqCst) == before,
        "a preflight reached the backend"
    );
    let get = |origin: &str| {
        format!(
            "GET /items HTTP/1.1\r\nhost: api.example.com\r\norigin: {origin}\r\nconnection: close\r\n\r\n"
        )
    };
    let allowed = head_of(proxy.addr, &get("https://shop.example.com")).await?;
    for want in [
        "http/1.1 200",
        "access-control-allow-origin: https://shop.example.com",
        "access-control-expose-headers: x-total",
        "access-control-allow-credentials: true",
        "vary: origin",
    ] {
        ensure!(
            allowed.contains(want),
            "allowed request lacks {want:?}:\n{allowed}"
        );
    }
    let other = head_of(proxy.addr, &get("https://evil.net")).await?;
    ensure!(
        other.starts_with("http/1.1 200") && !other.contains("access-control-allow-origin"),
        "a disallowed origin is served but not marked: {other}"
    );
    Ok(())
}
