//! Route rule names: what `Route.spec.rules[].name` changes in a running proxy.

use portico_tests::support::metric;

use super::*;

/// `Route.spec.rules[].name` labels the proxy's request and retry metrics (`rule="…"`), so a
/// route's rules can be told apart on a dashboard (an unnamed rule's label is empty), and names
/// the rule in the Route's status messages. (The
/// access log's `rule` field: `sidecar/tests/config.rs`
/// `binary_reloads_a_changed_file_refuses_a_bad_one_and_drains_on_sigterm`.)
pub(super) async fn rule_names(ctx: Ctx) -> anyhow::Result<()> {
    gateway_on_free_port(&ctx).await?;
    let (_task, _seen) = flaky_service(&ctx, "named", "198.18.65.71").await?;
    let to = json!([{"name": "named", "port": 80}]);
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "shop"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"name": "checkout", "backendRefs": to,
                 "matches": [{"path": {"type": "PathPrefix", "value": "/unavailable"}}],
                 "retry": {"attempts": 1, "retryOn": ["5xx"]}},
                {"name": "catalog", "backendRefs": to,
                 "matches": [{"path": {"type": "PathPrefix", "value": "/catalog"}}]},
                {"name": "legacy", "backendRefs": [{"name": "gone", "port": 80}],
                 "matches": [{"path": {"type": "PathPrefix", "value": "/legacy"}}]},
                {"backendRefs": to}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    // The status names the rule whose backend is missing.
    let wanted = format!("rule \"legacy\": Service {}/gone not found", ctx.namespace);
    eventually(
        "ResolvedRefs naming the rule",
        Duration::from_secs(20),
        || async {
            Ok(route_condition(&ctx, "shop", "ResolvedRefs")
                .await?
                .filter(|c| c.0 == "False" && c.2 == wanted))
        },
    )
    .await?;
    for (path, want) in [("/unavailable", 503), ("/catalog", 200), ("/other", 200)] {
        let (status, _) = http_get(proxy.addr, "any.example.com", path).await?;
        ensure!(status == want, "{path}: {status}");
    }
    let text = proxy.proxy.metrics_text();
    let requests = |rule: &str, class: &str| {
        metric(
            &text,
            "portico_requests_total",
            &[
                "route=\"",
                &format!("rule=\"{rule}\""),
                &format!("status_class=\"{class}\""),
            ],
        )
    };
    ensure!(
        requests("checkout", "5xx") == Some(1.0),
        "checkout's 503 is labelled with its rule:\n{text}"
    );
    ensure!(requests("catalog", "2xx") == Some(1.0), "catalog:\n{text}");
    ensure!(
        requests("", "2xx") == Some(1.0),
        "the unnamed rule:\n{text}"
    );
    ensure!(
        metric(&text, "portico_retries_total", &["rule=\"checkout\""]) == Some(1.0),
        "the retry is labelled with its rule:\n{text}"
    );
    ensure!(
        text.lines()
            .any(|l| l.starts_with("portico_request_duration_seconds_count")
                && l.contains("rule=\"catalog\"")),
        "latency by rule:\n{text}"
    );
    Ok(())
}
