//! A sidecar's own stream (`/v1/mesh/pods/{namespace}/{name}/config`): who may read it, the
//! pod's inbound policy compiled from a ServicePolicy, and tokens checked while it is open.
//! Pods are real Pod objects scheduled on the kwok node, which gives them 198.18.64.x addresses.

use k8s_openapi::api::core::v1::Pod;
use portico_proxy_api::InboundPolicy;

use portico_tests::support::{pod_token, running_pod};

use super::*;

fn pod_path(ctx: &Ctx, pod: &str) -> String {
    format!("/v1/mesh/pods/{}/{pod}/config", ctx.namespace)
}

fn status_of(r: Result<ConfigStream, (u16, String)>) -> u16 {
    match r {
        Ok(_) => 200,
        Err((status, _)) => status,
    }
}

/// The mesh-wide config, then the pod's inbound policy.
async fn pod_full_state(stream: &mut ConfigStream) -> anyhow::Result<InboundPolicy> {
    stream.full_state().await?;
    match stream.next(Duration::from_secs(10)).await? {
        (_, ConfigMessage::InboundPolicy(p)) => Ok(p),
        (_, other) => bail!("expected an inboundPolicy third, got {other:?}"),
    }
}

/// Reads the stream until an inbound policy satisfies `want`; returns it.
async fn inbound_until(
    stream: &mut ConfigStream,
    what: &str,
    want: impl Fn(&InboundPolicy) -> bool,
) -> anyhow::Result<InboundPolicy> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        let Ok((_, msg)) = stream.next(deadline - Instant::now()).await else {
            break;
        };
        if let ConfigMessage::InboundPolicy(p) = msg {
            if want(&p) {
                return Ok(p);
            }
            last = Some(p);
        }
    }
    bail!("{what}: not seen within 30s; last inbound policy: {last:?}")
}

pub(super) async fn only_the_pod_s_own_token_reads_its_stream(ctx: Ctx) -> anyhow::Result<()> {
    let (pod0, _) = running_pod(&ctx, "app-0", "app", "app").await?;
    let (pod1, _) = running_pod(&ctx, "app-1", "app", "app").await?;
    let op = start_operator(&ctx, "op-a").await?;
    let path = pod_path(&ctx, "app-0");
    let own = pod_token(&ctx, &pod0).await?;
    let mut stream = open_path(&op, &path, Some(&own))
        .await?
        .map_err(|e| anyhow::anyhow!("the pod's own token was refused: {e:?}"))?;
    let policy = pod_full_state(&mut stream).await?;
    ensure!(
        policy == InboundPolicy::default(),
        "no ServicePolicy guards app-0, yet: {policy:?}"
    );

    let sibling = pod_token(&ctx, &pod1).await?;
    ensure!(
        status_of(open_path(&op, &path, Some(&sibling)).await?) == 403,
        "a token bound to another pod of the same ServiceAccount"
    );
    let other_account = token(&ctx, "other", "portico").await?;
    ensure!(
        status_of(open_path(&op, &path, Some(&other_account)).await?) == 403,
        "a token of another ServiceAccount"
    );
    ensure!(
        status_of(open_path(&op, &path, None).await?) == 401,
        "no token"
    );
    ensure!(
        status_of(open_path(&op, &path, Some("garbage")).await?) == 401,
        "a bad token"
    );
    ensure!(
        status_of(open_path(&op, &pod_path(&ctx, "nope"), Some(&own)).await?) == 404,
        "a pod that does not exist"
    );
    // The mesh-wide stream is unchanged: any ServiceAccount, no inbound policy.
    let mut mesh = open_path(&op, "/v1/mesh/config", Some(&other_account))
        .await?
        .map_err(|e| anyhow::anyhow!("mesh stream refused: {e:?}"))?;
    mesh.full_state().await?;
    ensure!(
        mesh.next(Duration::from_millis(500)).await.is_err(),
        "the mesh-wide stream sends no inbound policy"
    );
    Ok(())
}

pub(super) async fn a_service_policy_becomes_the_inbound_policy_of_its_pods(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let (orders0, _) = running_pod(&ctx, "orders-0", "orders", "orders").await?;
    running_pod(&ctx, "web-0", "web", "web").await?;
    create::<Service>(
        &ctx,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "orders"},
            "spec": {"selector": {"app": "orders"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }),
    )
    .await?;
    create::<ServicePolicy>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
            "metadata": {"name": "orders-callers"},
            "spec": {"targetRef": {"name": "orders"},
                     "authorization": {"defaultAction": "Deny",
                                       "allowedServiceAccounts": [{"name": "web"}]},
                     "rateLimit": {"requests": 50, "unit": "Minute"}}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let token = pod_token(&ctx, &orders0).await?;
    let mut stream = open_path(&op, &pod_path(&ctx, "orders-0"), Some(&token))
        .await?
        .map_err(|e| anyhow::anyhow!("refused: {e:?}"))?;
    // Callers are named by identity (their proxies prove it with certificates), not address.
    let web = format!("spiffe://cluster.local/ns/{}/sa/web", ctx.namespace);
    let allowed = |p: &InboundPolicy| {
        p.ports
            .first()
            .and_then(|port| port.authorization.as_ref())
            .is_some_and(|a| a.identities == [web.clone()] && !a.unauthenticated)
    };
    let first = pod_full_state(&mut stream).await?;
    let policy = if allowed(&first) {
        first
    } else {
        // The EndpointSlice controller may not have written the slice yet.
        inbound_until(&mut stream, "orders-0 guarded for SA web", allowed).await?
    };
    ensure!(policy.ports.len() == 1, "{policy:?}");
    let port = &policy.ports[0];
    ensure!(port.port == 8080, "the endpoint port: {port:?}");
    ensure!(
        port.policy == format!("{}/orders-callers", ctx.namespace),
        "{port:?}"
    );
    let rl = port.rate_limit.as_ref().context("a rate limit")?;
    ensure!(
        rl.requests == 50 && rl.burst == 50 && rl.period.get() == Duration::from_secs(60),
        "{rl:?}"
    );

    // Caller pods coming and going change nothing: identities do not depend on addresses.
    running_pod(&ctx, "web-1", "web", "web").await?;
    Api::<Pod>::namespaced(ctx.client.clone(), &ctx.namespace)
        .delete("web-0", &DeleteParams::default().grace_period(0))
        .await?;
    ensure!(
        stream.next(Duration::from_secs(1)).await.is_err(),
        "a caller pod's churn woke the guarded pod's stream"
    );
    Ok(())
}

pub(super) async fn a_stream_ends_soon_after_its_service_account_is_deleted(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let (app0, _) = running_pod(&ctx, "app-0", "app", "app").await?;
    let tls = serving_cert(&ctx)?;
    let config_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let op = start_operator_rechecking(&ctx, "op-a", tls, config_addr, 2, Duration::from_secs(1))
        .await?;
    let token = pod_token(&ctx, &app0).await?;
    let mut stream = open_path(&op, &pod_path(&ctx, "app-0"), Some(&token))
        .await?
        .map_err(|e| anyhow::anyhow!("refused: {e:?}"))?;
    pod_full_state(&mut stream).await?;
    // Still open after a few re-checks while the token is good.
    ensure!(
        tokio::time::timeout(Duration::from_secs(3), stream.rx.recv())
            .await
            .is_err(),
        "the stream ended (or sent something) while its token was still good"
    );
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ctx.namespace)
        .delete("app", &DeleteParams::default())
        .await?;
    let deleted = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while stream.rx.recv().await.is_some() {}
    })
    .await;
    ensure!(
        ended.is_ok(),
        "the stream was still open 15s after the ServiceAccount went"
    );
    eprintln!(
        "stream ended {:?} after its ServiceAccount was deleted (re-check every 1s)",
        deleted.elapsed()
    );
    ensure!(
        metric(&op, "portico_operator_config_streams_revoked_total").await? >= 1.0,
        "the revocation is counted"
    );
    ensure!(
        status_of(open_path(&op, &pod_path(&ctx, "app-0"), Some(&token)).await?) == 401,
        "the token is refused from now on"
    );
    Ok(())
}
