//! Rate limits shared by a Gateway's replicas through `Gateway.spec.rateLimitStore`: two gateway
//! proxies fed by the operator take from one budget kept in a real `redis-server`, and a Redis
//! that stops fails closed or open as the Gateway says.

use std::process::{Child, Command, Stdio};

use super::auth::request;
use super::health::Nginx;
use super::*;

/// A `redis-server` of this test's own on 127.0.0.1, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` without persistence; a machine without it fails the test (it is a
    /// Debian package that `hack/k8s-bins.sh` installs).
    async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context(
                "redis-server is needed by this test and could not be started: install it with \
                 `apt-get install redis-server` (hack/k8s-bins.sh does)",
            )?;
        let redis = Self { child, port };
        let client = portico_proxy::policy::redis::Client::new(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(1),
        );
        eventually(
            "redis-server answers PING",
            Duration::from_secs(10),
            || async { Ok(client.call(&[b"PING"]).await.ok().map(drop)) },
        )
        .await?;
        Ok(redis)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A second gateway proxy with `first`'s config from the operator's stream, its `web` listener
/// moved to a free loopback port (both cannot bind the Gateway's port in one network
/// namespace). It serves that config without following the stream.
async fn second_proxy(
    ctx: &Ctx,
    op: &Operator,
) -> anyhow::Result<(portico_proxy::Proxy, SocketAddr)> {
    let cp = gateway_control_plane(ctx, op, "proxy-b").await?;
    let (mut config, _session) = tokio::time::timeout(
        Duration::from_secs(20),
        portico_proxy::app::control::first_config(&cp),
    )
    .await
    .context("no first config")?;
    for l in &mut config.listeners {
        l.address = "127.0.0.1:0".into();
    }
    let proxy = portico_proxy::Proxy::start(config, portico_proxy::Options::default()).await?;
    let addr = proxy.listener_addr("web").context("no listener web")?;
    Ok((proxy, addr))
}

/// `Gateway.spec.rateLimitStore.redis` (`address`, `failureMode`, `timeout`): a rule's own
/// `rateLimit` and the Gateway's `defaults.rateLimit` are each one budget for both proxies
/// (N requests in total, then 429 from either); with Redis stopped, `FailClosed` answers 503
/// and, once the Gateway says `FailOpen`, requests pass; both are counted in
/// `portico_rate_limit_store_errors_total`.
pub(super) async fn two_gateway_replicas_share_one_budget(ctx: Ctx) -> anyhow::Result<()> {
    let mut redis = Redis::start().await?;
    let dir = ctx.plane.dir().join(format!("nginx-{}", ctx.namespace));
    let _nginx = Nginx::start_with(
        dir,
        &[("a", "198.18.67.10:8080")],
        "location /own { return 200 \"ok\"; } location /inherited { return 200 \"ok\"; }",
    )
    .await?;
    let port = free_port()?;
    create::<Gateway>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {
                "listeners": [{"name": "web", "port": port, "protocol": "HTTP"}],
                "defaults": {"rateLimit": {"requests": 3, "unit": "Minute", "key": "Global"}},
                "rateLimitStore": {"redis": {"address": format!("127.0.0.1:{}", redis.port),
                                             "failureMode": "FailClosed", "timeout": "200ms"}}
            }
        }),
    )
    .await?;
    create::<Service>(&ctx, service("api")).await?;
    create::<EndpointSlice>(&ctx, slice("api-1", "api", &["198.18.67.10"])).await?;
    let backend = json!([{"name": "api", "port": 80}]);
    let prefix = |p: &str| json!([{"path": {"type": "PathPrefix", "value": p}}]);
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "api"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"], "rules": [
                {"name": "own", "matches": prefix("/own"), "backendRefs": backend,
                 "rateLimit": {"requests": 4, "unit": "Minute", "key": "Header", "header": "x-client"}},
                {"name": "inherited", "matches": prefix("/inherited"), "backendRefs": backend}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let a = start_proxy(&ctx, &op).await?;
    until_rule(&a, "the store in the proxy's config", |r| {
        r.rate_limit.as_ref().is_some_and(|l| l.store.is_some())
    })
    .await?;
    let (b, b_addr) = second_proxy(&ctx, &op).await?;
    let both = [a.addr, b_addr];

    // The rule's own limit: 4 per minute per x-client, across both replicas.
    for i in 0..4 {
        let (status, head, _) = request(both[i % 2], "/own", &[("x-client", "c1")]).await?;
        ensure!(
            status == 200 && head.contains(&format!("ratelimit-remaining: {}", 3 - i)),
            "request {i} to proxy {}: {status}\n{head}",
            i % 2
        );
    }
    for addr in both {
        let (status, head, _) = request(addr, "/own", &[("x-client", "c1")]).await?;
        ensure!(
            status == 429 && head.contains("retry-after: 15"),
            "the shared budget is spent on {addr}: {status}\n{head}"
        );
    }
    let (status, _, _) = request(b_addr, "/own", &[("x-client", "c2")]).await?;
    ensure!(
        status == 200,
        "another header value has its own bucket: {status}"
    );

    // The Gateway's default: 3 per minute for all, across both replicas.
    for i in 0..3 {
        let (status, _, _) = request(both[(i + 1) % 2], "/inherited", &[]).await?;
        ensure!(status == 200, "inherited request {i}: {status}");
    }
    for addr in both {
        let (status, _, _) = request(addr, "/inherited", &[]).await?;
        ensure!(
            status == 429,
            "the default's budget is spent on {addr}: {status}"
        );
    }

    // Redis stops: FailClosed refuses with 503.
    redis.stop();
    for addr in both {
        let (status, head, _) = request(addr, "/own", &[("x-client", "c3")]).await?;
        ensure!(
            status == 503 && head.contains("x-portico-error: rate_limit_store_unavailable"),
            "fail closed on {addr}: {status}\n{head}"
        );
    }
    let refused = support::metric(
        &a.proxy.metrics_text(),
        "portico_rate_limit_store_errors_total",
        &["rule=\"own\"", "decision=\"refused\""],
    );
    ensure!(refused == Some(1.0), "refusals counted: {refused:?}");

    // FailOpen: the proxy that follows the operator lets requests through.
    let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    gateways
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rateLimitStore": {"redis": {"failureMode": "FailOpen"}}}}),
            ),
        )
        .await?;
    until_rule(&a, "failOpen in the proxy's config", |r| {
        r.rate_limit
            .as_ref()
            .and_then(|l| l.store.as_ref())
            .is_some_and(|s| s.fail_open)
    })
    .await?;
    let (status, head, _) = request(a.addr, "/own", &[("x-client", "c3")]).await?;
    ensure!(status == 200, "fail open: {status}\n{head}");
    let allowed = support::metric(
        &a.proxy.metrics_text(),
        "portico_rate_limit_store_errors_total",
        &["rule=\"own\"", "decision=\"allowed\""],
    );
    ensure!(
        allowed == Some(1.0),
        "requests let through counted: {allowed:?}"
    );
    b.shutdown(Duration::from_millis(100)).await;
    Ok(())
}
