//! A real Kubernetes control plane made of local processes: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, with fresh certificates, and either kwok (a fake
//! node for many pods that run nothing) or a real kubelet node ([`crate::node`]).
//!
//! With kwok it must run inside a network namespace where 198.18.0.0/15 is routed to `lo`
//! (`hack/in-netns.sh` makes one): Kubernetes rejects loopback addresses for pod IPs,
//! EndpointSlices and the advertise address, while test traffic may only stay on this machine.
//! With a real node it must run in a private network namespace of its own
//! ([`crate::node::enter_private_network`]), which the node lays out.
//!
//! ```text
//!  etcd ◄── kube-apiserver ◄── controller-manager (endpointslice, deployment, …)
//!                ▲      ▲───── kube-scheduler
//!                └──────────── kwok (fake node "kwok-node-0", pods Running with 198.18.x IPs)
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs::{self, CertFiles};
use crate::node::{self, RealNode};

/// Which node the control plane gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    /// kwok's fake node: pods are Running with an address and run nothing (scale tests, and
    /// tests that run Portico's processes locally).
    Kwok,
    /// A real kubelet node (containerd, runc, CNI bridge, kube-proxy): pods run.
    Real,
}

/// The network every pod, node and Service address comes from; routed to `lo` in the namespace.
pub const ANY_IP_RANGE: &str = "198.18.0.0/15";
/// ClusterIPs.
pub const SERVICE_RANGE: &str = "198.19.0.0/16";
/// The first ClusterIP: the `kubernetes` Service.
pub const KUBERNETES_SERVICE_IP: &str = "198.19.0.1";
/// kube-apiserver's advertise address.
pub const ADVERTISE_ADDRESS: &str = "198.18.0.1";
/// The kwok node's address.
pub const NODE_IP: &str = "198.18.0.2";
/// Pod addresses handed out by kwok (the fake node's podCIDR).
pub const POD_CIDR: &str = "198.18.64.0/18";
/// Name of the fake node.
pub const NODE_NAME: &str = "kwok-node-0";

/// Where the Go-built components live: `$PORTICO_BIN_DIR`, else `~/.cache/portico/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTICO_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/portico/bin")
}

/// The path of one component, or an error that says how to build it.
pub fn component(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the Kubernetes components with `hack/k8s-bins.sh` (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// Fails unless this process runs in a namespace where 198.18.0.0/15 is local.
pub fn require_any_ip_namespace() -> anyhow::Result<()> {
    TcpListener::bind((Ipv4Addr::new(198, 18, 0, 1), 0))
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind 198.18.0.1 ({e}): this must run inside a network namespace with \
             `ip route add local {ANY_IP_RANGE} dev lo`; use hack/in-netns.sh (make test does)"
            )
        })
}

/// Creates and returns a new directory `parent/prefix-<unique>`; the suffix comes from the clock
/// and creation is exclusive, so concurrent runs (even with equal PIDs in separate PID
/// namespaces) never share one.
pub fn unique_dir(parent: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = parent.join(format!("{prefix}-{nanos:x}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

/// A TCP port free on every address now, for something this process binds later. It lies
/// below the kernel's ephemeral range (32768–60999 by default): a port from that range (what
/// binding port 0 gives) can be taken by any outgoing connection before the later bind, and was
/// in CI. Ports are handed out in turn from a per-process random start, so two tests of one
/// process never get the same one.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let _ = NEXT.compare_exchange(u32::MAX, seed % COUNT, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + n)?;
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {FIRST}–{}", FIRST + COUNT - 1)
}

/// One child process of the control plane.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
}

/// A running control plane. Dropping it stops every process and removes its files, unless it
/// was [`detach`](ControlPlane::detach)ed.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    data_dir: PathBuf,
    procs: Vec<Proc>,
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The apiserver's address.
    pub apiserver: SocketAddr,
    /// Certificate files, including the CA key for signing webhook certificates.
    pub certs: CertFiles,
    keep_files: bool,
    /// The real node, when there is one.
    node: Option<RealNode>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with state
    /// under `dir`, creates the fake node and waits until it is Ready.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, Nodes::Kwok).await
    }

    /// Starts the control plane with the given kind of node and waits until the node is Ready.
    pub async fn start_with(dir: &Path, nodes: Nodes) -> anyhow::Result<Self> {
        let advertise = match nodes {
            Nodes::Kwok => {
                require_any_ip_namespace()?;
                ADVERTISE_ADDRESS
            }
            Nodes::Real => {
                node::prepare_network()?;
                // Pods reach the apiserver at the `kubernetes` Service, whose endpoint is the
                // advertise address: the node's own, as on a one-node kubeadm cluster.
                node::NODE_IP
            }
        };
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        // etcd's data stays inside this plane's own directory: a name in a shared place such as
        // /dev/shm could collide with another run's (PIDs repeat across PID namespaces).
        // `--unsafe-no-fsync` keeps it as fast as tmpfs for tests.
        let data_dir = dir.join("etcd");
        let sans = [
            "localhost",
            "127.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            KUBERNETES_SERVICE_IP,
            advertise,
        ];
        let certs = certs::generate(&dir.join("pki"), &sans)?;
        let mut plane = ControlPlane {
            dir: dir.clone(),
            data_dir: data_dir.clone(),
            procs: Vec::new(),
            kubeconfig: dir.join("kubeconfig"),
            apiserver: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            certs,
            keep_files: false,
            node: None,
        };
        write_kubeconfig(&plane.kubeconfig, plane.apiserver, &plane.certs)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        plane.spawn("etcd", &logs, |c| {
            c.args([
                "--name=portico",
                &format!("--data-dir={}", data_dir.display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=portico=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]);
        })?;

        let c = plane.certs.clone();
        let apiserver_port = plane.apiserver.port();
        plane.spawn("kube-apiserver", &logs, |cmd| {
            match nodes {
                // No endpoints for the `kubernetes` Service: nothing runs in pods.
                Nodes::Kwok => cmd.args([
                    "--bind-address=127.0.0.1".to_string(),
                    "--endpoint-reconciler-type=none".into(),
                    "--authorization-mode=RBAC".into(),
                ]),
                // Pods call the apiserver through its Service (kube-proxy → the node IP); it
                // calls kubelets (logs, exec) at their InternalIP with the admin certificate.
                Nodes::Real => cmd.args([
                    "--bind-address=0.0.0.0".to_string(),
                    "--authorization-mode=Node,RBAC".into(),
                    "--kubelet-preferred-address-types=InternalIP".into(),
                    format!("--kubelet-client-certificate={}", c.admin_cert.display()),
                    format!("--kubelet-client-key={}", c.admin_key.display()),
                ]),
            };
            cmd.args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                format!("--secure-port={apiserver_port}"),
                format!("--advertise-address={advertise}"),
                format!("--tls-cert-file={}", c.apiserver_cert.display()),
                format!("--tls-private-key-file={}", c.apiserver_key.display()),
                format!("--client-ca-file={}", c.ca_cert.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", c.sa_pub.display()),
                format!("--service-account-signing-key-file={}", c.sa_key.display()),
                format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                "--allow-privileged=true".into(),
                "--enable-aggregator-routing=true".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ]);
        })?;
        let client = plane.client().await?;
        wait_ready(&client, &mut plane).await?;

        let kc = plane.kubeconfig.display().to_string();
        // Both controllers: admin kubeconfig for everything, no leader election (one replica),
        // their own serving port on loopback.
        let common = |port: u16| {
            [
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--v=1".into(),
            ]
        };
        let kcm_common = common(free_port()?);
        plane.spawn("kube-controller-manager", &logs, |cmd| {
            cmd.args(kcm_common).args([
                "--controllers=endpointslice-controller,endpointslice-mirroring-controller,\
                 endpoints-controller,deployment-controller,replicaset-controller,\
                 garbage-collector-controller,namespace-controller,serviceaccount-controller,\
                 serviceaccount-token-controller,job-controller,statefulset-controller,\
                 daemonset-controller,disruption-controller,\
                 root-ca-certificate-publisher-controller,ttl-after-finished-controller"
                    .into(),
                format!("--service-account-private-key-file={}", c.sa_key.display()),
                format!("--root-ca-file={}", c.ca_cert.display()),
                "--use-service-account-credentials=false".into(),
            ]);
        })?;
        let scheduler_common = common(free_port()?);
        plane.spawn("kube-scheduler", &logs, |cmd| {
            cmd.args(scheduler_common);
        })?;
        if nodes == Nodes::Real {
            let node = RealNode::start(
                &dir.join("node"),
                &client,
                &plane.kubeconfig,
                &plane.certs.ca_cert,
            )
            .await?;
            plane.node = Some(node);
            eprintln!(
                "control plane and node ready in {:.1}s (apiserver https://{}, state in {})",
                started.elapsed().as_secs_f64(),
                plane.apiserver,
                plane.dir.display()
            );
            return Ok(plane);
        }
        let stages = component("kwok-stages.yaml")?;
        // kwok v0.8.0 has been seen to crash once while starting (a panic in its node
        // controller's CEL stage setup, pkg/utils/cel/environment.go; the next start was fine).
        // That is kwok's bug, not what a test is about, so it gets three tries; the log of a
        // crashed try is kept as kwok.N.log.
        for attempt in 1..=3 {
            let kwok_port = free_port()?;
            plane.spawn("kwok", &logs, |cmd| {
                cmd.args([
                    format!("--kubeconfig={kc}"),
                    format!("--config={}", stages.display()),
                    "--manage-all-nodes=false".into(),
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                    format!("--cidr={POD_CIDR}"),
                    format!("--node-ip={NODE_IP}"),
                    format!("--server-address=127.0.0.1:{kwok_port}"),
                ]);
            })?;
            if attempt == 1 {
                create_node(&client).await?;
            }
            match wait_node_ready(&client, &mut plane).await {
                Ok(()) => break,
                Err(e) if attempt < 3 && plane.reap("kwok") => {
                    eprintln!(
                        "kwok crashed while starting (try {attempt} of 3), starting it again"
                    );
                    std::fs::rename(
                        logs.join("kwok.log"),
                        logs.join(format!("kwok.{attempt}.log")),
                    )
                    .with_context(|| format!("keeping the log of the crashed kwok: {e:#}"))?;
                }
                Err(e) => return Err(e),
            }
        }
        eprintln!(
            "control plane ready in {:.1}s (apiserver https://{}, state in {})",
            started.elapsed().as_secs_f64(),
            plane.apiserver,
            plane.dir.display()
        );
        Ok(plane)
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The directory holding certificates, kubeconfig and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's data directory (on tmpfs where available).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Leaves the processes running and the files in place; returns `(name, pid)` pairs so a
    /// later `down` can stop them.
    pub fn detach(mut self) -> Vec<(&'static str, u32)> {
        self.keep_files = true;
        if let Some(node) = self.node.take() {
            node.detach();
        }
        let pids = self.procs.iter().map(|p| (p.name, p.child.id())).collect();
        self.procs.clear();
        pids
    }

    /// Stops every process (SIGTERM, then SIGKILL after a grace period) and removes the state.
    pub fn stop(&mut self) {
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        for proc in self.procs.iter().rev() {
            terminate(proc.child.id());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for proc in self.procs.iter_mut().rev() {
            while Instant::now() < deadline && matches!(proc.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(proc.child.try_wait(), Ok(None)) {
                let _ = proc.child.kill();
            }
            let _ = proc.child.wait();
        }
        self.procs.clear();
        // A detached plane keeps running: its etcd data stays until `down` removes it.
        if self.keep_files {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if !self.keep_files && std::env::var_os("PORTICO_KEEP_CLUSTER_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        logs: &Path,
        args: impl FnOnce(&mut Command),
    ) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let mut cmd = Command::new(component(name)?);
        args(&mut cmd);
        // Own process group: a Ctrl-C aimed at the test runner must not race our teardown.
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    /// Forgets the component `name` if it has exited; whether it had.
    fn reap(&mut self, name: &str) -> bool {
        let before = self.procs.len();
        self.procs
            .retain_mut(|p| p.name != name || !matches!(p.child.try_wait(), Ok(Some(_))));
        self.procs.len() != before
    }

    /// Fails with the tail of a component's log when it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for proc in &mut self.procs {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = self.dir.join("logs").join(format!("{}.log", proc.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} exited with {status}; last lines of its log:\n{}",
                    proc.name,
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends SIGTERM through `kill(1)`: std has no safe way to send a signal other than SIGKILL.
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn write_kubeconfig(path: &Path, server: SocketAddr, certs: &CertFiles) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: portico
  cluster:
    server: https://{server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: portico
  context: {{cluster: portico, user: admin}}
current-context: portico
",
        ca = certs.ca_cert.display(),
        cert = certs.admin_cert.display(),
        key = certs.admin_key.display(),
    );
    std::fs::write(path, text)?;
    Ok(())
}

async fn wait_ready(client: &kube::Client, plane: &mut ControlPlane) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        plane.check_alive()?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(body) => bail!("kube-apiserver not ready after 90s: {body}"),
            Err(e) => bail!("kube-apiserver not ready after 90s: {e}"),
        }
    }
}

async fn create_node(client: &kube::Client) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "zone-a"
            }
        },
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "addresses": [{"type": "InternalIP", "address": NODE_IP}]
        }
    }))?;
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating the kwok node"),
    }
}

/// Whether node `name` exists and reports Ready; once it does, the taints the apiserver puts on
/// new nodes are lifted. (The node-lifecycle controller would lift them, but it also evicts the
/// pods of nodes whose heartbeats lag, so it does not run here.)
pub(crate) async fn node_ready(nodes: &Api<Node>, name: &str) -> anyhow::Result<bool> {
    let Some(node) = nodes.get_opt(name).await? else {
        return Ok(false);
    };
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        let patch = serde_json::json!({"spec": {"taints": null}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(ready)
}

async fn wait_node_ready(client: &kube::Client, plane: &mut ControlPlane) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        plane.check_alive()?;
        if node_ready(&nodes, NODE_NAME).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {NODE_NAME} not Ready after 60s: is kwok running? see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
