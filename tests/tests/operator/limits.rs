//! Request limits set on Route rules, tried with curl.

use std::process::Stdio;

use super::*;

/// curl POSTs `body_len` bytes (`--data-binary`, so with `content-length`, or chunked) to
/// `url` with `host`; returns the status and the `x-portico-error` header.
async fn curl_post(
    addr: SocketAddr,
    host: &str,
    path: &str,
    body_len: usize,
    chunked: bool,
) -> anyhow::Result<(u16, String)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-D", "-", "--data-binary", "@-"])
        .args(["-H", &format!("host: {host}")])
        // No `Expect: 100-continue` (curl sends it for bigger bodies): the limit is what is
        // tried here.
        .args(["-H", "expect:"]);
    if chunked {
        cmd.args(["-H", "transfer-encoding: chunked"]);
    }
    let mut child = cmd
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("curl (hack/k8s-bins.sh installs it)")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&vec![b'x'; body_len]).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("curl: no status in {head:?}"))?;
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("x-portico-error: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((status, error))
}

/// `Route.spec.rules[].maxRequestBodyBytes`: curl's bodies over the limit get 413
/// `body_too_large` (declared with `content-length`, or chunked), bodies within it reach the
/// backend; another rule of the same Route without a limit takes the big body.
pub(super) async fn body_limit(ctx: Ctx) -> anyhow::Result<()> {
    gateway_on_free_port(&ctx).await?;
    let (_task, seen) = flaky_service(&ctx, "uploads", "198.18.65.81").await?;
    let to = json!([{"name": "uploads", "port": 80}]);
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "limits"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/small"}}],
                 "maxRequestBodyBytes": 1024, "backendRefs": to},
                {"backendRefs": to}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "the limit in the proxy's config", |r| {
        r.max_request_body_bytes == Some(1024)
    })
    .await?;
    use std::sync::atomic::Ordering;
    for (path, len, chunked, want) in [
        ("/small", 1024, false, (200, "")),
        ("/small", 1025, false, (413, "body_too_large")),
        ("/small", 4096, true, (413, "body_too_large")),
        ("/big", 20_000, false, (200, "")),
    ] {
        let before = seen.requests.load(Ordering::SeqCst);
        let got = curl_post(proxy.addr, "any.example.com", path, len, chunked).await?;
        ensure!(
            got.0 == want.0 && got.1 == want.1,
            "{path} with {len} bytes (chunked: {chunked}): {got:?}, want {want:?}"
        );
        let reached = seen.requests.load(Ordering::SeqCst) > before;
        ensure!(
            reached == (want.0 == 200) || chunked,
            "{path} {len}: a refused declared body must not reach the backend"
        );
    }
    Ok(())
}
