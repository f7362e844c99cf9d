//! Fields the schema accepts but the proxies do not enforce yet (issue "No field without
//! effect"): the object says `Accepted=False`, reason `Unsupported`, naming the field, and what
//! it would change is not served — through a real apiserver, the operator's status writer and a
//! real gateway proxy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::*;

/// Condition `type_` of `conds`, as `(status, reason, message, observedGeneration)`.
fn condition(conds: &[Condition], type_: &str) -> Option<(String, String, String, Option<i64>)> {
    conds.iter().find(|c| c.type_ == type_).map(|c| {
        (
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    })
}

/// Route `name`'s `Accepted` condition (first parent) and its `metadata.generation`.
async fn route_accepted(
    ctx: &Ctx,
    name: &str,
) -> anyhow::Result<(Option<(String, String, String, Option<i64>)>, Option<i64>)> {
    let route = Api::<Route>::namespaced(ctx.client.clone(), &ctx.namespace)
        .get(name)
        .await?;
    let conds = route
        .status
        .and_then(|s| s.parents.into_iter().next())
        .map(|p| p.conditions)
        .unwrap_or_default();
    Ok((condition(&conds, "Accepted"), route.metadata.generation))
}

/// Waits until Route `name` is `Accepted` with `status`/`reason` (and `message`, when given)
/// for its current generation.
async fn until_route_accepted(
    ctx: &Ctx,
    name: &str,
    status: &str,
    reason: &str,
    message: Option<&str>,
) -> anyhow::Result<()> {
    eventually(
        &format!("Route {name} Accepted={status} {reason}"),
        Duration::from_secs(20),
        || async {
            let (cond, generation) = route_accepted(ctx, name).await?;
            Ok(cond
                .filter(|(s, r, m, observed)| {
                    s == status
                        && r == reason
                        && message.is_none_or(|want| m == want)
                        && *observed == generation
                })
                .map(|_| ()))
        },
    )
    .await
}

/// Asserts `path` on `shop.example.com` keeps answering 404 (not served) for a while: long
/// enough for a wrongly served config to have reached the proxy.
async fn stays_404(gateway: SocketAddr, path: &str) -> anyhow::Result<()> {
    for _ in 0..10 {
        let (status, body) = http_get(gateway, "shop.example.com", path).await?;
        ensure!(status == 404, "{path} answered {status} {body:?}: served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The e2e route: `/orders` of shop.example.com to Service `orders`:80, with `extra` fields on
/// its rule.
fn route_with(extra: Value) -> Value {
    let mut r = route("orders", "gw", "orders", 80);
    if let (Some(rule), Some(extra)) = (r["spec"]["rules"][0].as_object_mut(), extra.as_object()) {
        rule.extend(extra.clone());
    }
    r
}

pub(super) async fn a_route_with_an_unsupported_field_is_not_served(
    ctx: Ctx,
) -> anyhow::Result<()> {
    let _a = backend("198.18.64.91:8080".parse()?, "a").await?;
    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("orders")).await?;
    create::<EndpointSlice>(&ctx, slice("orders-1", "orders", &["198.18.64.91"])).await?;
    let auth = json!({"cache": {"ttl": "10s"}});
    create::<Route>(&ctx, route_with(auth)).await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    let gateway = proxy.addr;

    until_route_accepted(
        &ctx,
        "orders",
        "False",
        "Unsupported",
        Some("spec.rules[0].cache is not supported yet"),
    )
    .await?;
    // Not served in part: the rule asks for a cache the proxy cannot apply.
    stays_404(gateway, "/orders/1").await?;

    // Without the field, the same Route is accepted and served.
    let routes: Api<Route> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    routes
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": route_with(json!({}))["spec"]["rules"]}})),
        )
        .await?;
    eventually("the Route served", Duration::from_secs(10), || async {
        Ok(
            (http_get(gateway, "shop.example.com", "/orders/1").await? == (200, "a".into()))
                .then_some(()),
        )
    })
    .await?;
    until_route_accepted(&ctx, "orders", "True", "Accepted", None).await?;
    Ok(())
}
