//! `portico-bench-control-plane`: the real `portico-operator` binary against a real control plane
//! at scale, measured from the outside.
//!
//! ```text
//!  etcd + kube-apiserver + … ◄── N Services, N EndpointSlices × E endpoints, one probe slice
//!          │ watch
//!          ▼
//!  portico-operator (release binary, its own process) ──► C mesh streams (/v1/mesh/config)
//!          ▲                                                   │ each scans its lines for a
//!  bench: rewrites the probe slice K times ───────────────────┘ marker address, reports arrival
//! ```
//!
//! Reports the operator's resident memory (VmRSS), CPU seconds per change (utime+stime over the
//! K changes), the time for one change to reach one stream (p50/p99) and all C streams
//! (p50/p99/max). Each change is written only after the previous one reached every stream.
//!
//! Must run inside the any-IP network namespace (`hack/in-netns.sh`). Scale with
//! `PORTICO_BENCH_SERVICES` (1000), `PORTICO_BENCH_ENDPOINTS` (per Service, 10),
//! `PORTICO_BENCH_CLIENTS` (50), `PORTICO_BENCH_CHANGES` (200); the operator binary is
//! `PORTICO_OPERATOR_BIN` (default `$CARGO_TARGET_DIR/release/portico-operator`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portico_tests::cluster::{self, ControlPlane, free_port};
use portico_tests::support::config_server_get;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::sync::{mpsc, watch};

const NS: &str = "bench";

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let services = env_usize("PORTICO_BENCH_SERVICES", 1000)?;
    let endpoints = env_usize("PORTICO_BENCH_ENDPOINTS", 10)?;
    let clients = env_usize("PORTICO_BENCH_CLIENTS", 50)?;
    let changes = env_usize("PORTICO_BENCH_CHANGES", 200)?;
    ensure!(
        endpoints <= 250 && services <= 60_000 && clients >= 1 && changes >= 1,
        "at most 250 endpoints per Service and 60,000 Services; at least one client and change"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let operator_bin = match std::env::var_os("PORTICO_OPERATOR_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("release/portico-operator"),
    };
    ensure!(
        operator_bin.exists(),
        "{} not found: build it with `cargo build --release -p portico-operator` or set PORTICO_OPERATOR_BIN",
        operator_bin.display()
    );
    cluster::require_any_ip_namespace()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = cluster::unique_dir(&root.join("target/e2e"), "bench-control-plane")?;
    let mut plane = runtime.block_on(ControlPlane::start(&dir))?;
    let result = runtime.block_on(bench(
        &plane,
        &root,
        &operator_bin,
        Scale {
            services,
            endpoints,
            clients,
            changes,
        },
    ));
    plane.stop();
    result
}

#[derive(Clone, Copy, Debug)]
struct Scale {
    services: usize,
    endpoints: usize,
    clients: usize,
    changes: usize,
}

/// The operator process, killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(
    plane: &ControlPlane,
    root: &Path,
    operator_bin: &Path,
    scale: Scale,
) -> anyhow::Result<()> {
    let client = plane.client().await?;
    portico_tests::crds::install(&client, &plane.kubeconfig, &root.join("crds")).await?;
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;

    let started = Instant::now();
    populate(&client, scale).await?;
    eprintln!(
        "created {} Services with {} endpoints each in {:?}",
        scale.services,
        scale.endpoints,
        started.elapsed()
    );

    let tls_dir = plane.dir().join("bench-operator");
    std::fs::create_dir_all(&tls_dir)?;
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (cert, key) = (tls_dir.join("tls.crt"), tls_dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let log = std::fs::File::create(tls_dir.join("operator.log"))?;
    let op = Operator(
        Command::new(operator_bin)
            .args(["--kubeconfig".as_ref(), plane.kubeconfig.as_os_str()])
            .args([
                "--namespace",
                NS,
                "--lease-namespace",
                NS,
                "--identity",
                "bench",
            ])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--config-addr", &config.to_string()])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--config-tls-cert".as_ref(), cert.as_os_str()])
            .args(["--config-tls-key".as_ref(), key.as_os_str()])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", operator_bin.display()))?,
    );
    let pid = op.0.id();
    let ready_from = Instant::now();
    loop {
        if let Ok(200) = admin_status(admin, "/ready").await {
            break;
        }
        ensure!(
            ready_from.elapsed() < Duration::from_secs(120),
            "the operator was not ready within 120s; see {}",
            tls_dir.join("operator.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "operator ready (all watches listed) {:?} after start",
        ready_from.elapsed()
    );

    let token = token(&client).await?;
    let ca = ck.cert.der().clone();
    let (target_tx, target_rx) = watch::channel::<Option<(usize, String)>>(None);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let (full_tx, mut full_rx) = mpsc::unbounded_channel::<usize>();
    for id in 0..scale.clients {
        let body = open_stream(config, &ca, &token).await?;
        tokio::spawn(read_stream(
            id,
            body,
            target_rx.clone(),
            seen_tx.clone(),
            full_tx.clone(),
        ));
    }
    let connected = Instant::now();
    for _ in 0..scale.clients {
        tokio::time::timeout(Duration::from_secs(60), full_rx.recv())
            .await
            .context("a stream sent no full state within 60s")?;
    }
    eprintln!(
        "{} streams connected and have the full state after {:?}",
        scale.clients,
        connected.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid)?;
    let cpu_before = cpu_seconds(pid)?;

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let mut one = Vec::with_capacity(scale.changes);
    let mut all = Vec::with_capacity(scale.changes);
    for change in 0..scale.changes {
        let address = format!("198.18.{}.{}", 160 + change / 250, 1 + change % 250);
        let marker = format!("\"{address}:8080\"");
        target_tx.send_replace(Some((change, marker)));
        let written = Instant::now();
        let probe = slice("probe-a", "probe", &[address]);
        slices
            .patch(
                "probe-a",
                &PatchParams::apply("portico-bench").force(),
                &Patch::Apply(&probe),
            )
            .await?;
        let mut arrivals = Vec::with_capacity(scale.clients);
        while arrivals.len() < scale.clients {
            let (client_id, seen_change, at) =
                tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                    .await
                    .with_context(|| format!("change {change} did not reach every stream in 30s"))?
                    .context("every stream ended")?;
            if seen_change == change {
                arrivals.push((client_id, at));
            }
        }
        let first_client = arrivals
            .iter()
            .find(|(c, _)| *c == 0)
            .map(|(_, at)| *at - written)
            .context("client 0 missing")?;
        let last = arrivals.iter().map(|(_, at)| *at - written).max();
        one.push(first_client);
        all.push(last.unwrap_or_default());
    }
    let cpu = cpu_seconds(pid)? - cpu_before;
    let rss_after = rss_kib(pid)?;
    drop(op);

    one.sort();
    all.sort();
    let pct =
        |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "control plane at scale: {} Services × {} endpoints ({} endpoints), {} mesh streams, {} changes, release operator binary",
        scale.services,
        scale.endpoints,
        scale.services * scale.endpoints,
        scale.clients,
        scale.changes
    );
    println!(
        "  operator RSS: {:.1} MiB with every stream connected, {:.1} MiB after the changes",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!(
        "  operator CPU per change: {:.1} ms (user+system over {} changes, {} streams each)",
        cpu * 1000.0 / scale.changes as f64,
        scale.changes,
        scale.clients
    );
    println!(
        "  EndpointSlice write → one stream: p50 {:?}, p99 {:?} (includes the apiserver write)",
        pct(&one, 0.50),
        pct(&one, 0.99)
    );
    println!(
        "  EndpointSlice write → all {} streams: p50 {:?}, p99 {:?}, max {:?}",
        scale.clients,
        pct(&all, 0.50),
        pct(&all, 0.99),
        all[all.len() - 1]
    );
    Ok(())
}

/// One EndpointSlice of Service `service` with `addresses` on port 8080.
fn slice(name: &str, service: &str, addresses: &[String]) -> serde_json::Value {
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "portico-bench"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// Services `svc-0…` (selectorless, port 80 → 8080), a slice of `endpoints` each, and Service
/// `probe` whose slice the changes rewrite.
async fn populate(client: &kube::Client, scale: Scale) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = (0..scale.services)
        .map(|i| format!("svc-{i}"))
        .chain(["probe".to_owned()])
        .collect();
    let results: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(names.into_iter().enumerate())
            .map(|(i, name)| {
                let (services, slices) = (services.clone(), slices.clone());
                async move {
                    let svc: Service = serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name},
                        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                    }))?;
                    services.create(&PostParams::default(), &svc).await?;
                    let addresses: Vec<String> = if name == "probe" {
                        vec!["198.18.159.1".to_owned()]
                    } else {
                        // 198.18.64.0 – 198.18.159.255 holds 24,576 addresses; reuse is harmless here.
                        (0..scale.endpoints)
                            .map(|e| {
                                let n = (i * scale.endpoints + e) % (96 * 256);
                                format!("198.18.{}.{}", 64 + n / 256, n % 256)
                            })
                            .collect()
                    };
                    let s: EndpointSlice =
                        serde_json::from_value(slice(&format!("{name}-a"), &name, &addresses))?;
                    slices.create(&PostParams::default(), &s).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    results.into_iter().collect()
}

/// A token of ServiceAccount `bench-client` for audience `portico`.
async fn token(client: &kube::Client) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench-client"}
    }))?;
    api.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["portico"], "expirationSeconds": 3600}
    }))?;
    api.create_token_request("bench-client", &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest without status")?
        .token
        .context("TokenRequest without token")
}

async fn admin_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")
}

/// `GET /v1/mesh/config` over HTTP/2 + TLS: the response body.
async fn open_stream(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    token: &str,
) -> anyhow::Result<hyper::body::Incoming> {
    let (resp, send) = config_server_get(addr, ca, "/v1/mesh/config", Some(token)).await?;
    if !resp.status().is_success() {
        bail!("the mesh stream was refused: {}", resp.status());
    }
    // The connection lives as long as the body is read.
    tokio::spawn(async move {
        let _keep = send;
        std::future::pending::<()>().await
    });
    Ok(resp.into_body())
}

/// Reads one stream like a proxy would take its lines, without decoding them: reports once it
/// has the full state (two lines), then every line that holds the current change's marker.
async fn read_stream(
    id: usize,
    mut body: hyper::body::Incoming,
    target: watch::Receiver<Option<(usize, String)>>,
    seen: mpsc::UnboundedSender<(usize, usize, Instant)>,
    full: mpsc::UnboundedSender<usize>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = 0;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        let scan_from = buf.len();
        buf.extend_from_slice(&data);
        if !buf[scan_from..].contains(&b'\n') {
            continue;
        }
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            lines += 1;
            if lines == 2 {
                let _ = full.send(id);
            }
            let current = target.borrow().clone();
            if let Some((change, marker)) = current
                && line.windows(marker.len()).any(|w| w == marker.as_bytes())
            {
                let _ = seen.send((id, change, at));
            }
        }
    }
}

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// User plus system CPU time of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("no utime/stime in /proc/PID/stat")?;
    Ok(ticks as f64 / clock_ticks() as f64)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on every common Linux).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}
