//! The response cache and fallback set on Route rules, in front of nginx and a counting backend.

use super::health::Nginx;
use super::*;

/// One GET over a fresh HTTP/1.1 connection: the status, the head (lower-cased) and the body.
async fn get_full(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut text))
        .await
        .context("no answer in 5s")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// `Route.spec.rules[].cache` and `.fallback`: nginx's page is served from the cache on the
/// second GET (`x-portico-cache: hit`, `Age`); a burst of 20 identical misses reaches the
/// counting backend once; once nginx is stopped, the page it served is answered stale within
/// `staleFor` (`x-portico-fallback: stale`) and a page never fetched gets the fallback's
/// `directResponse`; a 503 with nothing stored gets the `directResponse` too.
pub(super) async fn cache(ctx: Ctx) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let dir = std::env::temp_dir().join(format!("portico-cache-{}", ctx.namespace));
    let nginx = Nginx::start(dir.clone(), &[("a", "198.18.65.141:8080")]).await?;
    std::fs::write(nginx.files("a").join("page.json"), "{\"page\":1}")?;

    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("site")).await?;
    create::<EndpointSlice>(&ctx, slice("site-1", "site", &["198.18.65.141"])).await?;
    let (_task, seen) = flaky_service(&ctx, "api", "198.18.65.142").await?;
    let seen = seen.requests;
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "site"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/files"}}],
                 "cache": {"ttl": "2s", "maxBodyBytes": 65536},
                 "fallback": {"staleFor": "10m",
                              "directResponse": {"statusCode": 503, "body": "maintenance",
                                                 "contentType": "text/plain"}},
                 "backendRefs": [{"name": "site", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/slow"}}],
                 "cache": {"ttl": "1m"},
                 "backendRefs": [{"name": "api", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/unavailable"}}],
                 "fallback": {"directResponse": {"statusCode": 200, "body": "{\"items\":[]}",
                                                 "contentType": "application/json"}},
                 "backendRefs": [{"name": "api", "port": 80}]}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "cache and fallback in the proxy's config", |r| {
        r.cache.as_ref().is_some_and(|c| c.max_body_bytes == 65536) && r.fallback.is_some()
    })
    .await?;

    // A hit: the second GET is the cache's, with its age.
    let (status, head, body) = get_full(proxy.addr, "/files/page.json").await?;
    ensure!(status == 200 && body == "{\"page\":1}", "{status} {body:?}");
    ensure!(head.contains("x-portico-cache: miss"), "first GET:\n{head}");
    let (_, head, body) = get_full(proxy.addr, "/files/page.json").await?;
    ensure!(body == "{\"page\":1}", "{body:?}");
    ensure!(
        head.contains("x-portico-cache: hit") && head.contains("\nage: "),
        "second GET:\n{head}"
    );

    // Coalescing: 20 identical misses, one request upstream (the backend answers in 300 ms).
    let before = seen.load(Ordering::SeqCst);
    let burst: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_full(proxy.addr, "/slow")))
        .collect();
    for answer in burst {
        let (status, _, _) = answer.await??;
        ensure!(status == 200, "a request of the burst got {status}");
    }
    let upstream = seen.load(Ordering::SeqCst) - before;
    ensure!(
        upstream == 1,
        "20 identical misses made {upstream} upstream requests"
    );

    // Nothing stored, the backend answers 503: the fallback's default answer.
    let (status, head, body) = get_full(proxy.addr, "/unavailable").await?;
    ensure!(
        status == 200 && body == "{\"items\":[]}",
        "/unavailable: {status} {body:?}"
    );
    ensure!(
        head.contains("x-portico-fallback: default")
            && head.contains("content-type: application/json"),
        "/unavailable:\n{head}"
    );

    // nginx stops; the page is past its 2 s ttl but within staleFor: served stale.
    drop(nginx);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, head, body) = get_full(proxy.addr, "/files/page.json").await?;
    ensure!(
        status == 200 && body == "{\"page\":1}",
        "stale page: {status} {body:?}\n{head}"
    );
    ensure!(
        head.contains("x-portico-fallback: stale"),
        "stale page:\n{head}"
    );
    let (status, head, body) = get_full(proxy.addr, "/files/other.json").await?;
    ensure!(
        status == 503 && body == "maintenance",
        "a page never fetched: {status} {body:?}"
    );
    ensure!(head.contains("x-portico-fallback: default"), "{head}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
