//! Active health checks from `ServicePolicy.healthCheck`, against real nginx servers: an
//! endpoint whose health path starts failing gets no more requests (and none fail meanwhile),
//! and gets them again once it passes.

use std::process::Stdio;

use portico_tests::support::metric;

use super::*;

/// One nginx process (no master, no daemon: it dies with the test) serving endpoints. Each
/// answers `/` with its letter, `/healthz` with 200 while the file `healthy` exists in its
/// root (else 503), and `/files/…` from the `files` folder of its root ([`Nginx::root`]) with
/// types by extension (nginx's own gzip is off).
pub(super) struct Nginx {
    dir: PathBuf,
    _child: tokio::process::Child,
}

impl Nginx {
    pub(super) async fn start(dir: PathBuf, endpoints: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(dir, endpoints, "").await
    }

    /// As [`Nginx::start`], with `locations` (nginx `location` blocks) added to every server,
    /// before the catch-all `/`.
    pub(super) async fn start_with(
        dir: PathBuf,
        endpoints: &[(&str, &str)],
        locations: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut servers = String::new();
        for (letter, addr) in endpoints {
            let root = dir.join(letter);
            std::fs::create_dir_all(root.join("files"))?;
            std::fs::write(root.join("healthy"), "ok")?;
            servers.push_str(&format!(
                "server {{ listen {addr}; root {root};\n\
                   location = /healthz {{ try_files /healthy =503; }}\n\
                   location /files/ {{ types {{ application/json json; image/png png; }} }}\n\
                   {locations}\n\
                   location / {{ return 200 \"{letter}\"; }} }}\n",
                root = root.display()
            ));
        }
        let first: SocketAddr = endpoints[0].1.parse()?;
        Self::serve(dir, &servers, first).await
    }

    /// One nginx with `servers` (nginx `server` blocks) in its `http` block, ready once `first`
    /// accepts connections; its pid file, logs and config live in `dir`.
    pub(super) async fn serve(
        dir: PathBuf,
        servers: &str,
        first: SocketAddr,
    ) -> anyhow::Result<Self> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("nginx is not installed (hack/k8s-bins.sh installs Debian's nginx)")?;
        std::fs::create_dir_all(&dir)?;
        let conf = format!(
            "master_process off; daemon off; worker_processes 1;\n\
             pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; {servers} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = tokio::process::Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        eventually("nginx listening", Duration::from_secs(10), || async move {
            Ok(tokio::net::TcpStream::connect(first).await.ok().map(drop))
        })
        .await?;
        Ok(Self { dir, _child: child })
    }

    /// The folder `letter`'s endpoint serves under `/files/`.
    pub(super) fn files(&self, letter: &str) -> PathBuf {
        self.dir.join(letter).join("files")
    }

    /// Makes `letter`'s health path answer 200 (`true`) or 503.
    fn set_healthy(&self, letter: &str, healthy: bool) -> anyhow::Result<()> {
        let file = self.dir.join(letter).join("healthy");
        if healthy {
            std::fs::write(file, "ok")?;
        } else {
            std::fs::remove_file(file)?;
        }
        Ok(())
    }
}

/// `ServicePolicy.healthCheck` (path, interval, timeout, thresholds): the endpoint whose
/// `/healthz` turns 503 stops getting requests within a few intervals, no request fails while
/// it does, the proxy counts the checks and the transition, and the endpoint gets requests again
/// once its health path passes. Prints the detection time (health path fails → last request
/// that reached the endpoint).
pub(super) async fn health_check(ctx: Ctx) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portico-hc-{}", ctx.namespace));
    let nginx = Nginx::start(
        dir.clone(),
        &[("a", "198.18.65.61:8080"), ("b", "198.18.65.62:8080")],
    )
    .await?;
    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("hc")).await?;
    create::<EndpointSlice>(&ctx, slice("hc-1", "hc", &["198.18.65.61", "198.18.65.62"])).await?;
    policy_for(
        &ctx,
        "hc",
        json!({"loadBalancer": {"type": "RoundRobin"}, "healthCheck": {
            "path": "/healthz", "interval": "1s", "timeout": "500ms",
            "unhealthyThreshold": 2, "healthyThreshold": 1
        }}),
    )
    .await?;
    create::<Route>(&ctx, route("hc", "gw", "hc", 80)).await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_backend(&proxy, "the health check in the proxy's config", |b| {
        b.health_check.as_ref().is_some_and(|h| {
            h.path == "/healthz"
                && h.interval.get() == Duration::from_secs(1)
                && h.timeout.get() == Duration::from_millis(500)
                && h.unhealthy_threshold == 2
        })
    })
    .await?;

    let answered_by = |body: String| body.trim().to_owned();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let (status, body) = http_get(proxy.addr, "shop.example.com", "/orders").await?;
        ensure!(status == 200, "healthy endpoints: {status} {body}");
        *seen.entry(answered_by(body)).or_default() += 1;
    }
    ensure!(
        seen.len() == 2,
        "both healthy endpoints should get requests: {seen:?}"
    );

    // b's health path fails from now; b itself still answers `/`.
    nginx.set_healthy("b", false)?;
    let failed_at = Instant::now();
    let mut last_b = None;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        ensure!(
            failed_at.elapsed() < Duration::from_secs(20),
            "b still gets requests 20 s after its health path failed"
        );
        let (status, body) = http_get(proxy.addr, "shop.example.com", "/orders").await?;
        ensure!(
            status == 200,
            "a request failed while b turned unhealthy: {status} {body}"
        );
        if answered_by(body) == "b" {
            last_b = Some(failed_at.elapsed());
            quiet_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!(
        "health check detection (interval 1s, unhealthyThreshold 2): last request to the failing \
         endpoint {:?} after its health path failed",
        last_b.unwrap_or_default()
    );
    let text = proxy.proxy.metrics_text();
    let unhealthy = metric(
        &text,
        "portico_health_transitions_total",
        &["result=\"unhealthy\""],
    );
    ensure!(
        unhealthy == Some(1.0),
        "one endpoint became unhealthy: {unhealthy:?}"
    );
    let failures = metric(&text, "portico_health_checks_total", &["result=\"fail\""]);
    ensure!(
        failures.is_some_and(|n| n >= 2.0),
        "failed checks counted: {failures:?}"
    );

    // Back: b passes once (healthyThreshold 1) and gets requests again.
    nginx.set_healthy("b", true)?;
    eventually(
        "b getting requests again",
        Duration::from_secs(10),
        || async {
            let (_, body) = http_get(proxy.addr, "shop.example.com", "/orders").await?;
            Ok((answered_by(body) == "b").then_some(()))
        },
    )
    .await?;
    let text = proxy.proxy.metrics_text();
    ensure!(
        metric(
            &text,
            "portico_health_transitions_total",
            &["result=\"healthy\""]
        ) == Some(1.0),
        "the endpoint's return is counted"
    );
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
