//! Response compression set on Route rules, tried with curl against nginx.

use std::process::Stdio;

use super::health::Nginx;
use super::*;

/// curl GETs `url` with `host` and `accept-encoding: accept` (none when empty); with
/// `decode` it decodes the body (`--compressed`). Returns the `content-encoding` header and the
/// body bytes as received (or decoded).
async fn curl_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    accept: &str,
    decode: bool,
) -> anyhow::Result<(String, Vec<u8>)> {
    let mut cmd = tokio::process::Command::new("curl");
    // The response head goes to stderr, the body to stdout.
    cmd.args([
        "-s",
        "-f",
        "-D",
        "/dev/stderr",
        "-H",
        &format!("host: {host}"),
    ]);
    if decode {
        cmd.arg("--compressed");
    }
    // An empty value makes curl send no accept-encoding at all.
    cmd.args(["-H", &format!("accept-encoding: {accept}")]);
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("curl (hack/k8s-bins.sh installs it)")?;
    ensure!(out.status.success(), "curl {path}: {:?}", out.status);
    let head = String::from_utf8_lossy(&out.stderr).to_string();
    let encoding = head
        .lines()
        .find_map(|l| l.strip_prefix("content-encoding: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((encoding, out.stdout))
}

/// `Route.spec.rules[].compression` (`encodings`, `minBytes`): a 16 KB JSON document from nginx
/// reaches curl compressed with the encoding curl asked for (zstd, br, gzip) and decodes to the
/// same bytes; the rule's order decides among equals; a document under `minBytes`, a PNG, a
/// client that accepts none, and a rule without compression get the bytes as nginx sent them.
pub(super) async fn compression(ctx: Ctx) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portico-gz-{}", ctx.namespace));
    let nginx = Nginx::start(dir.clone(), &[("a", "198.18.65.101:8080")]).await?;
    let files = nginx.files("a");
    let doc: String = (0..400)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}},"))
        .collect();
    let doc = format!("[{}{{}}]", doc);
    ensure!(doc.len() > 16_000, "the document is {} bytes", doc.len());
    std::fs::write(files.join("data.json"), &doc)?;
    std::fs::write(files.join("small.json"), "{\"small\":true}")?;
    std::fs::write(files.join("image.png"), doc.as_bytes())?;

    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("docs")).await?;
    create::<EndpointSlice>(&ctx, slice("docs-1", "docs", &["198.18.65.101"])).await?;
    let to = json!([{"name": "docs", "port": 80}]);
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "docs"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/files"}}],
                 "compression": {"encodings": ["br", "gzip", "zstd"], "minBytes": 100},
                 "backendRefs": to},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/plain"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                     "type": "ReplacePrefixMatch", "replacePrefixMatch": "/files"}}}],
                 "backendRefs": to}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "compression in the proxy's config", |r| {
        r.compression.as_ref().is_some_and(|c| c.min_bytes == 100)
    })
    .await?;
    let host = "any.example.com";
    for enc in ["zstd", "br", "gzip"] {
        let (got, raw) = curl_get(proxy.addr, host, "/files/data.json", enc, false).await?;
        ensure!(got == enc, "asked for {enc}, got {got:?}");
        ensure!(
            raw.len() * 4 < doc.len(),
            "{enc}: {} bytes for a {}-byte document",
            raw.len(),
            doc.len()
        );
        let (_, decoded) = curl_get(proxy.addr, host, "/files/data.json", enc, true).await?;
        ensure!(
            decoded == doc.as_bytes(),
            "{enc} does not decode to the document"
        );
        eprintln!("compression: {enc} {} → {} bytes", doc.len(), raw.len());
    }
    // Equal preference: the rule's order (br first).
    let (got, _) = curl_get(
        proxy.addr,
        host,
        "/files/data.json",
        "gzip, zstd, br",
        false,
    )
    .await?;
    ensure!(got == "br", "the rule's order should pick br, got {got:?}");
    for (path, accept, why) in [
        ("/files/small.json", "gzip", "under minBytes"),
        ("/files/image.png", "gzip", "not a compressible type"),
        ("/files/data.json", "", "the client accepts no encoding"),
        ("/plain/data.json", "gzip", "a rule without compression"),
    ] {
        let (got, _) = curl_get(proxy.addr, host, path, accept, false).await?;
        ensure!(got.is_empty(), "{why}: compressed with {got:?}");
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
