//! `portico-bench-control-plane`: the real `portico-operator` binary against a real control plane
//! at scale, measured from the outside.
//!
//! ```text
//!  etcd + kube-apiserver + … ◄── N Services, N EndpointSlices × E endpoints, one probe slice
//!          │ watch
//!          ▼
//!  portico-operator (release binary, its own process) ──► C sidecar streams, one per pod
//!          ▲                                              (/v1/mesh/pods/bench/client-N/config,
//!          │                                              C pods on kwok, pod-bound tokens),
//!          │                                              each subscribed on demand to S
//!  bench: 1. rewrites the probe slice K times,            Services and the probe
//!            one at a time (every stream uses it)
//!         2. rewrites random Services' slices at R per second for D s
//! ```
//!
//! Each change puts a marker address of its own into the Service's endpoints; every stream
//! decodes its backend updates and notes when each marker first came. Only the streams that
//! use the changed Service are counted. Reports the operator's resident memory (VmRSS), CPU
//! seconds per change (utime+stime), the bytes it sent per change (its `config_bytes_total`) in
//! all and per interested stream, and the
//! time from each EndpointSlice write to the first, each and every interested stream (p50/p99/
//! max), for the one-at-a-time changes and under churn.
//!
//! Must run inside the any-IP network namespace (`hack/in-netns.sh`). Scale with
//! `PORTICO_BENCH_SERVICES` (1000), `PORTICO_BENCH_ENDPOINTS` (per Service, 10),
//! `PORTICO_BENCH_CLIENTS` (1000), `PORTICO_BENCH_SUBSCRIBE` (Services per stream, 10; 0: every
//! Service, as before on-demand), `PORTICO_BENCH_CHANGES` (100), `PORTICO_BENCH_CHURN_RATE`
//! (changes per second, 100), `PORTICO_BENCH_CHURN_SECONDS` (60), `PORTICO_BENCH_UPDATES` (1:
//! backend updates; 0: whole sets, as an older proxy); the operator binary is
//! `PORTICO_OPERATOR_BIN` (default `$CARGO_TARGET_DIR/release/portico-operator`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portico_tests::cluster::{self, ControlPlane, free_port};
use portico_tests::support::config_server_get_with;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::sync::mpsc;

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
    let clients = env_usize("PORTICO_BENCH_CLIENTS", 1000)?;
    let changes = env_usize("PORTICO_BENCH_CHANGES", 100)?;
    let churn_rate = env_usize("PORTICO_BENCH_CHURN_RATE", 100)?;
    let churn_seconds = env_usize("PORTICO_BENCH_CHURN_SECONDS", 60)?;
    let updates = env_usize("PORTICO_BENCH_UPDATES", 1)? == 1;
    let subscribe = env_usize("PORTICO_BENCH_SUBSCRIBE", 10)?;
    ensure!(
        endpoints <= 250 && services <= 60_000 && clients >= 1 && (1..=6000).contains(&changes),
        "at most 250 endpoints per Service and 60,000 Services; at least one client; 1–6,000 changes"
    );
    ensure!(
        churn_rate * churn_seconds <= 12_000 && churn_rate <= 1000,
        "at most 12,000 churn changes, at most 1,000 per second"
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
            churn_rate,
            churn_seconds,
            updates,
            subscribe,
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
    churn_rate: usize,
    churn_seconds: usize,
    updates: bool,
    /// Services each stream subscribes to on demand; 0: every Service (mesh-wide).
    subscribe: usize,
}

impl Scale {
    /// Whether stream `client` subscribes to Service `svc-{service}` (`None`: the probe, which
    /// every stream uses).
    fn interested(&self, client: usize, service: Option<usize>) -> bool {
        match service {
            Some(s) if self.subscribe > 0 && self.updates => {
                (s + self.services - (client * self.subscribe) % self.services) % self.services
                    < self.subscribe
            }
            _ => true,
        }
    }

    /// The backend names stream `client` subscribes to, probe included.
    fn subscriptions(&self, client: usize) -> Vec<String> {
        (0..self.subscribe)
            .map(|j| {
                format!(
                    "{NS}/svc-{}:80",
                    (client * self.subscribe + j) % self.services
                )
            })
            .chain([format!("{NS}/probe:80")])
            .collect()
    }
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
        if let Ok((200, _)) = admin_request(admin, "/ready").await {
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

    let started = Instant::now();
    let pods = sidecar_pods(&client, scale.clients).await?;
    eprintln!(
        "{} sidecar pods Running (kwok) with pod-bound tokens in {:?}",
        scale.clients,
        started.elapsed()
    );
    let ca = ck.cert.der().clone();
    let arrivals: Vec<Arrivals> = (0..scale.clients).map(|_| Arrivals::default()).collect();
    let (full_tx, mut full_rx) = mpsc::unbounded_channel::<usize>();
    let on_demand = scale.updates && scale.subscribe > 0;
    for (id, log) in arrivals.iter().enumerate() {
        let names = on_demand.then(|| scale.subscriptions(id).join(","));
        let (pod, token) = &pods[id];
        let path = format!("/v1/mesh/pods/{NS}/{pod}/config");
        let body = open_stream(config, &ca, &path, token, scale.updates, names.as_deref()).await?;
        tokio::spawn(read_stream(body, log.clone(), full_tx.clone()));
    }
    let connected = Instant::now();
    for _ in 0..scale.clients {
        tokio::time::timeout(Duration::from_secs(120), full_rx.recv())
            .await
            .context("a stream sent no full state within 120s")?;
    }
    eprintln!(
        "{} streams connected and have the full state after {:?}",
        scale.clients,
        connected.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid)?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);

    // 1. One change at a time: each waits until every stream has it.
    let before = Sample::take(pid, admin).await?;
    let mut one_at_a_time = Vec::with_capacity(scale.changes);
    for change in 0..scale.changes {
        let address = marker(change);
        let written = Instant::now();
        let probe = slice("probe-a", "probe", std::slice::from_ref(&address));
        slices
            .patch(
                "probe-a",
                &PatchParams::apply("portico-bench").force(),
                &Patch::Apply(&probe),
            )
            .await?;
        let marker = format!("{address}:8080");
        let deadline = Instant::now() + Duration::from_secs(30);
        while arrivals.iter().any(|a| a.at(&marker).is_none()) {
            ensure!(
                Instant::now() < deadline,
                "change {change} did not reach every stream in 30s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        one_at_a_time.push(Change {
            written,
            marker,
            service: None,
        });
    }
    let after = Sample::take(pid, admin).await?;
    let sequential = Report::of(&scale, &one_at_a_time, &arrivals, &before, &after);

    // 2. Churn: changes to random Services at a fixed rate, not waiting for one another.
    let total = scale.churn_rate * scale.churn_seconds;
    let before = Sample::take(pid, admin).await?;
    let mut written = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / scale.churn_rate.max(1) as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    for change in 0..total {
        tick.tick().await;
        let service = (change * 7919) % scale.services;
        let mut addresses = addresses(service, scale.endpoints);
        let address = marker(scale.changes + change);
        if let Some(first) = addresses.first_mut() {
            *first = address.clone();
        } else {
            addresses.push(address.clone());
        }
        let name = format!("svc-{service}");
        let body = slice(&format!("{name}-a"), &name, &addresses);
        let slices = slices.clone();
        written.push((address, service, Instant::now()));
        writes.spawn(async move {
            slices
                .patch(
                    &format!("{name}-a"),
                    &PatchParams::apply("portico-bench").force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(drop)
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    let write_span = before.at.elapsed();
    let mut churned = Vec::with_capacity(total);
    for (address, service, at) in written {
        churned.push(Change {
            written: at,
            marker: format!("{address}:8080"),
            service: Some(service),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = |c: &Change| {
        arrivals
            .iter()
            .enumerate()
            .any(|(i, a)| scale.interested(i, c.service) && a.at(&c.marker).is_none())
    };
    while churned.iter().rev().take(50).any(missing) {
        ensure!(
            Instant::now() < deadline,
            "the churn did not reach every interested stream within 60s of its end"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = Sample::take(pid, admin).await?;
    let churn = Report::of(&scale, &churned, &arrivals, &before, &after);
    let rss_after = rss_kib(pid)?;
    drop(op);

    println!(
        "control plane at scale: {} Services × {} endpoints ({} endpoints), {} sidecar streams {}, operator binary {}",
        scale.services,
        scale.endpoints,
        scale.services * scale.endpoints,
        scale.clients,
        if on_demand {
            format!(
                "each subscribed on demand to {} Services and the probe, with backend updates",
                scale.subscribe
            )
        } else if scale.updates {
            "with every Service's backends, asking for backend updates".to_owned()
        } else {
            "with every Service's backends as whole sets (as an older proxy)".to_owned()
        },
        operator_bin.display()
    );
    println!(
        "  operator RSS: {:.1} MiB with every stream connected, {:.1} MiB after the changes",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    sequential.print(
        &format!("{} changes one at a time", scale.changes),
        scale.clients,
    );
    churn.print(
        &format!(
            "churn: {} changes at {}/s for {}s (writes took {:.1}s)",
            total,
            scale.churn_rate,
            scale.churn_seconds,
            write_span.as_secs_f64()
        ),
        scale.clients,
    );
    Ok(())
}

/// The address that marks change `n` (198.18.200.1 on: apart from the Services' own).
fn marker(n: usize) -> String {
    format!("198.18.{}.{}", 200 + n / 250, 1 + n % 250)
}

/// The `endpoints` addresses of Service `svc-{i}` (198.18.128.0 – 198.18.199.255 holds 18,432;
/// reuse is harmless here): outside kwok's pod addresses (198.18.64.0/18), so no client pod
/// looks like an endpoint of a Service, and below the markers.
fn addresses(i: usize, endpoints: usize) -> Vec<String> {
    (0..endpoints)
        .map(|e| {
            let n = (i * endpoints + e) % (72 * 256);
            format!("198.18.{}.{}", 128 + n / 256, n % 256)
        })
        .collect()
}

/// One change: when its EndpointSlice write started, and the endpoint address that marks it.
struct Change {
    written: Instant,
    marker: String,
    /// The Service changed (`None`: the probe).
    service: Option<usize>,
}

/// The operator's counters at one moment.
struct Sample {
    at: Instant,
    cpu: f64,
    bytes: f64,
}

impl Sample {
    async fn take(pid: u32, admin: SocketAddr) -> anyhow::Result<Self> {
        let (_, text) = admin_request(admin, "/metrics").await?;
        let bytes = text
            .lines()
            .filter(|l| l.starts_with("portico_operator_config_bytes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Ok(Self {
            at: Instant::now(),
            cpu: cpu_seconds(pid)?,
            bytes,
        })
    }
}

/// What one phase measured.
struct Report {
    changes: usize,
    cpu: f64,
    bytes: f64,
    /// Streams that use the changed Service, summed over the changes.
    interested: usize,
    /// Write → the first interested stream, per change.
    one: Vec<Duration>,
    /// Write → the last stream, per change.
    all: Vec<Duration>,
    /// Write → each stream, per change and stream.
    each: Vec<Duration>,
}

impl Report {
    fn of(
        scale: &Scale,
        changes: &[Change],
        arrivals: &[Arrivals],
        before: &Sample,
        after: &Sample,
    ) -> Self {
        let mut report = Report {
            changes: changes.len(),
            cpu: after.cpu - before.cpu,
            bytes: after.bytes - before.bytes,
            interested: 0,
            one: Vec::new(),
            all: Vec::new(),
            each: Vec::new(),
        };
        let logs: Vec<HashMap<String, Instant>> = arrivals.iter().map(Arrivals::snapshot).collect();
        for c in changes {
            let mut last = Duration::ZERO;
            let mut first = None;
            for (i, log) in logs.iter().enumerate() {
                if !scale.interested(i, c.service) {
                    continue;
                }
                report.interested += 1;
                let Some(at) = log.get(&c.marker) else {
                    continue;
                };
                let d = at.saturating_duration_since(c.written);
                first.get_or_insert(d);
                report.each.push(d);
                last = last.max(d);
            }
            report.all.push(last);
            report.one.extend(first);
        }
        report.one.sort();
        report.all.sort();
        report.each.sort();
        report
    }

    fn print(&self, what: &str, clients: usize) {
        let pct = |v: &[Duration], p: f64| {
            v.get(((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1)
                .copied()
                .unwrap_or_default()
        };
        let n = self.changes.max(1) as f64;
        println!("  {what}:");
        let interested = self.interested as f64 / n;
        println!(
            "    operator CPU per change: {:.2} ms; bytes sent per change: {:.0} in all, {:.0} per \
             interested stream ({:.1} of {clients} streams use the changed Service)",
            self.cpu * 1000.0 / n,
            self.bytes / n,
            self.bytes / n / interested.max(1.0),
            interested
        );
        println!(
            "    write → one interested stream: p50 {:?}, p99 {:?}; → each: p50 {:?}, p99 {:?}",
            pct(&self.one, 0.50),
            pct(&self.one, 0.99),
            pct(&self.each, 0.50),
            pct(&self.each, 0.99),
        );
        println!(
            "    write → every interested stream: p50 {:?}, p99 {:?}, max {:?} (includes the apiserver write)",
            pct(&self.all, 0.50),
            pct(&self.all, 0.99),
            self.all.last().copied().unwrap_or_default()
        );
    }
}

/// When each marker address first came on one stream.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<String, Instant>>>);

impl Arrivals {
    fn note(&self, at: Instant, backends: &[portico_proxy_api::Backend]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for e in backends.iter().flat_map(|b| &b.endpoints) {
            if e.address.starts_with("198.18.2") {
                map.entry(e.address.clone()).or_insert(at);
            }
        }
    }

    /// When `marker` came.
    fn at(&self, marker: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(marker)
            .copied()
    }

    fn snapshot(&self) -> HashMap<String, Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
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
                        addresses(i, scale.endpoints)
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

/// Pods `client-0` … `client-{n-1}` of ServiceAccount `bench-client` on the kwok node (Running,
/// running nothing), and for each a token for audience `portico` bound to it, as the kubelet
/// projects one into a sidecar: what a pod's config stream is authorized with.
async fn sidecar_pods(client: &kube::Client, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench-client"}
    }))?;
    accounts.create(&PostParams::default(), &sa).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let created: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("client-{i}"), "labels": {"app": "bench-client"}},
                    "spec": {"nodeName": cluster::NODE_NAME, "serviceAccountName": "bench-client",
                             "containers": [{"name": "app", "image": "app:1"}]}
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<()>>()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let uids: HashMap<String, String> = loop {
        let list = pods.list(&Default::default()).await?;
        let running: HashMap<String, String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| Some((p.metadata.name.clone()?, p.metadata.uid.clone()?)))
            .collect();
        if running.len() >= n {
            break running;
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} pods Running after 300s",
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let tokens: Vec<anyhow::Result<(String, String)>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let accounts = accounts.clone();
            let name = format!("client-{i}");
            let uid = uids.get(&name).cloned().unwrap_or_default();
            async move {
                let request: TokenRequest = serde_json::from_value(json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": ["portico"], "expirationSeconds": 3600,
                             "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                "name": name, "uid": uid}}
                }))?;
                let token = accounts
                    .create_token_request("bench-client", &PostParams::default(), &request)
                    .await?
                    .status
                    .context("TokenRequest without status")?
                    .token
                    .context("TokenRequest without token")?;
                anyhow::Ok((name, token))
            }
        })
        // In order: stream i is pod client-i's.
        .buffered(16)
        .collect()
        .await;
    tokens.into_iter().collect()
}

/// The status and body of `GET path` from the operator's admin server.
async fn admin_request(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    // Chunked or not, the metric lines read the same (chunk sizes are lines of their own).
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}

/// `GET path` (a pod's stream) over HTTP/2 + TLS (asking for backend updates if `updates`):
/// the response body.
async fn open_stream(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    path: &str,
    token: &str,
    updates: bool,
    on_demand: Option<&str>,
) -> anyhow::Result<hyper::body::Incoming> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    match on_demand {
        Some(names) => {
            headers.push((
                portico_proxy_api::FEATURES_HEADER,
                "backend-updates, on-demand",
            ));
            headers.push((portico_proxy_api::SUBSCRIBE_HEADER, names));
        }
        None if updates => headers.push((
            portico_proxy_api::FEATURES_HEADER,
            portico_proxy_api::BACKEND_UPDATES,
        )),
        None => {}
    }
    let (resp, send) = config_server_get_with(addr, ca, path, Some(token), &headers).await?;
    if !resp.status().is_success() {
        bail!("the stream {path} was refused: {}", resp.status());
    }
    // The connection lives as long as the body is read.
    tokio::spawn(async move {
        let _keep = send;
        std::future::pending::<()>().await
    });
    Ok(resp.into_body())
}

/// Reads one stream: decodes each backend message (whole sets only while small: the first,
/// mesh-wide one is skipped) and notes when each marker address came; reports once the full
/// state (route table, backends, the pod's inbound policy: three lines) is in.
async fn read_stream(
    mut body: hyper::body::Incoming,
    log: Arrivals,
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
            if lines == 3 {
                let _ = full.send(0);
            }
            if lines <= 2 && line.len() > 64 * 1024 {
                continue;
            }
            match portico_proxy_api::ConfigMessage::from_line(&line) {
                Ok(portico_proxy_api::ConfigMessage::BackendSet(b)) => log.note(at, &b.backends),
                Ok(portico_proxy_api::ConfigMessage::BackendUpdate(u)) => log.note(at, &u.backends),
                _ => {}
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
