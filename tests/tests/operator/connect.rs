//! `ServicePolicy.spec.connection.connectTimeout`: how long a proxy waits for an endpoint to
//! accept a connection, through the operator and a real gateway proxy.

use tokio::net::{TcpSocket, TcpStream};

use super::*;

/// An endpoint on `addr` that never completes a handshake: a listener whose accept queue is
/// full and never drained, so the kernel drops further SYNs and a connect hangs (as to a
/// host that went away without a trace). The returned values keep it so.
async fn hanging_endpoint(
    addr: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, Vec<TcpStream>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(addr)?;
    let listener = socket.listen(0)?;
    // Connections fill the queue one by one until a connect of our own hangs.
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(conn) => queued.push(conn?),
            Err(_) => return Ok((listener, queued)),
        }
    }
    bail!(
        "{addr} still completes handshakes after {} connections",
        queued.len()
    )
}

/// `GET path`, the status and how long the answer took.
async fn timed_get(gateway: SocketAddr, path: &str) -> anyhow::Result<(u16, Duration)> {
    let started = Instant::now();
    let (status, _) = http_get(gateway, "any.example.com", path).await?;
    Ok((status, started.elapsed()))
}

pub(super) async fn a_connect_timeout_bounds_the_wait_for_an_endpoint(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let _quick = hanging_endpoint("198.18.65.93:8080".parse()?).await?;
    let _plain = hanging_endpoint("198.18.65.94:8080".parse()?).await?;
    gateway_on_free_port(&ctx).await?;
    for (name, ip) in [("quick", "198.18.65.93"), ("plain", "198.18.65.94")] {
        create::<Service>(&ctx, service(name)).await?;
        create::<EndpointSlice>(&ctx, slice(&format!("{name}-1"), name, &[ip])).await?;
    }
    policy_for(
        &ctx,
        "quick",
        json!({"connection": {"connectTimeout": "200ms"}}),
    )
    .await?;
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "connect"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/quick"}}],
                 "backendRefs": [{"name": "quick", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/plain"}}],
                 "backendRefs": [{"name": "plain", "port": 80}]}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_backend(&proxy, "the policy in the proxy's config", |b| {
        b.connect_timeout.is_some()
    })
    .await?;
    until_backend(&proxy, "both backends with their endpoint", |b| {
        b.name.ends_with("/plain:80") && !b.endpoints.is_empty()
    })
    .await?;
    let (quick, quick_took) = timed_get(proxy.addr, "/quick").await?;
    let (plain, plain_took) = timed_get(proxy.addr, "/plain").await?;
    eprintln!(
        "connectTimeout 200ms: {quick} after {quick_took:?}; default (1s): {plain} after {plain_took:?}"
    );
    ensure!(quick >= 500 && plain >= 500, "a hanging endpoint must fail");
    ensure!(
        quick_took < Duration::from_millis(700),
        "with connectTimeout 200ms the answer took {quick_took:?}"
    );
    ensure!(
        plain_took >= Duration::from_millis(900),
        "without a policy the default 1s applies; the answer took {plain_took:?}"
    );
    Ok(())
}
