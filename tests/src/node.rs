//! A real Kubernetes worker node made of local processes: containerd (with runc and the CNI
//! bridge plugin), kubelet and kube-proxy, joined to a [`ControlPlane`](crate::cluster).
//!
//! Verified recipe: `shared/REALNODE.md`. The node lives in the caller's network namespace,
//! which [`prepare_network`] lays out (it must be a private one: [`enter_private_network`] or
//! `ip netns add` + `nsenter --net`; never `ip netns exec`, which remounts `/sys` and hides the
//! cgroup hierarchies):
//!
//! ```text
//!  node0 (veth, 198.18.255.1 = node IP and apiserver address, default route: a black hole)
//!  cni0  (bridge, 198.18.128.1) ── pods 198.18.128.0/24, one veth each
//!  kube-proxy iptables: Services 198.19.0.0/16 → pod IPs
//!  CoreDNS on 198.18.255.1:53, behind the Service kube-system/kube-dns (198.19.0.10)
//! ```
//!
//! Everything a node writes lives under its directory, except what the components hard-code
//! (REALNODE.md "Gotchas" 5 and 6); [`teardown`] removes those too and restores the global
//! sysctls kubelet changes. The teardown is driven by files in the node's directory, so the
//! process that stops a node need not be the one that started it (`make cluster-down`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

use crate::cluster::{bin_dir, component, terminate};

/// The node's name.
pub const NODE_NAME: &str = "portico-node";
/// The node's address (on `node0`); kube-apiserver listens and advertises there too.
pub const NODE_IP: &str = "198.18.255.1";
/// Pod addresses (the CNI bridge's subnet).
pub const POD_CIDR: &str = "198.18.128.0/24";
/// The bridge's address, the pods' gateway.
pub const POD_GATEWAY: &str = "198.18.128.1";
/// The cluster DNS Service's address (kubelet's `clusterDNS`); CoreDNS answers behind it.
pub const DNS_SERVICE_IP: &str = "198.19.0.10";
/// The sandbox image every pod runs first; built by `hack/images.sh`.
pub const PAUSE_IMAGE: &str = "localhost/portico/pause:v1";

/// Global sysctls kubelet sets (REALNODE.md, gotcha 6); saved before it starts, restored after.
const KUBELET_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];
/// The environment variable naming the directory of image tarballs (`hack/images.sh`).
pub const IMAGES_ENV: &str = "PORTICO_IMAGES_DIR";
/// Set in the re-executed process by [`enter_private_network`].
const NETNS_ENV: &str = "PORTICO_NODE_NETNS";

/// Re-executes the current program in a new network namespace (through `unshare --net`) unless
/// it already runs in one made this way. Call first thing in `main`, before any thread starts.
///
/// The namespace is private to this process and its children: it disappears with them, and so
/// does every address, route and iptables rule the node adds. `/sys` is not remounted (kubelet,
/// containerd and runc need the host's cgroup hierarchies there).
pub fn enter_private_network() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(NETNS_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let err = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, "1")
        .exec();
    Err(err).context("re-executing in a new network namespace with `unshare --net`")
}

/// Lays out the node's network in the current namespace (see the module doc); safe to call twice.
pub fn prepare_network() -> anyhow::Result<()> {
    if !Path::new("/sys/class/net").exists() {
        bail!("/sys/class/net is missing: cannot set up the node's network");
    }
    run("ip", &["link", "set", "lo", "up"])?;
    let has_node0 = Command::new("ip")
        .args(["link", "show", "node0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !has_node0 {
        // No dummy devices in these kernels (REALNODE.md, gotcha 3): a veth pair whose peer
        // stays here too.
        run(
            "ip",
            &[
                "link", "add", "node0", "type", "veth", "peer", "name", "node0p",
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/32"), "dev", "node0"],
        )?;
        run("ip", &["link", "set", "node0", "up"])?;
        run("ip", &["link", "set", "node0p", "up"])?;
        // kubelet and kube-proxy want a default route; nothing is behind it.
        run("ip", &["route", "replace", "default", "dev", "node0"])?;
    }
    // Pod-to-Service traffic between two pods of the same bridge: the reply is bridged, and
    // only with this does conntrack see it and undo kube-proxy's DNAT (per network namespace).
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
    write_sysctl("net/ipv4/ip_forward", "1")?;
    Ok(())
}

/// What [`teardown`] needs, written to `DIR/node.json` before anything is started.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct State {
    /// kubelet's cgroup root (unique per node, so two nodes on one machine never share one).
    cgroup_root: String,
    /// The CNI network name (libcni caches results under it in `/var/lib/cni/results`).
    cni_network: String,
    /// sysctl path → value before kubelet started.
    sysctls: Vec<(String, String)>,
    /// `(name, pid)` of every process started, in start order.
    pids: Vec<(String, u32)>,
}

/// A running node. [`stop`](RealNode::stop) (or drop) tears it down.
#[derive(Debug)]
pub struct RealNode {
    dir: PathBuf,
    children: Vec<(String, Child)>,
    detached: bool,
}

impl RealNode {
    /// Starts containerd, imports the images of `$PORTICO_IMAGES_DIR`, starts kubelet and
    /// kube-proxy with `kubeconfig`, and waits until the Node is Ready (its not-ready taint
    /// lifted). `ca_cert` is the cluster CA kubelet trusts for client certificates.
    pub async fn start(
        dir: &Path,
        client: &kube::Client,
        kubeconfig: &Path,
        ca_cert: &Path,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let images = images_dir()?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        // Named after the directory that holds the node's (unique per test run; `dev-cluster`).
        let unique = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| {
                n.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "")
            })
            .unwrap_or_default();
        let mut state = State {
            cgroup_root: format!("/portico-{unique}"),
            cni_network: format!("portico-{unique}"),
            ..State::default()
        };
        for s in KUBELET_SYSCTLS {
            state.sysctls.push((s.to_string(), read_sysctl(s)?));
        }
        save_state(&dir, &state)?;
        let mut node = RealNode {
            dir: dir.clone(),
            children: Vec::new(),
            detached: false,
        };
        make_cgroup_root(&state.cgroup_root)?;
        let files = write_configs(&dir, &state, kubeconfig, ca_cert)?;

        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        node.spawn("containerd", &logs, &mut state, |c| {
            c.arg(format!("--config={}", files.containerd.display()))
                .env("PATH", &path);
        })?;
        let socket = dir.join("containerd/containerd.sock");
        crate::support::eventually("containerd's socket", Duration::from_secs(30), || async {
            Ok(socket.exists().then_some(()))
        })
        .await?;
        import_images(&socket, &images)?;

        node.spawn("kubelet", &logs, &mut state, |c| {
            c.args([
                format!("--config={}", files.kubelet.display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", dir.join("kubelet").display()),
                format!("--cert-dir={}", dir.join("kubelet/pki").display()),
                format!(
                    "--volume-plugin-dir={}",
                    dir.join("volume-plugins").display()
                ),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ])
            .env("PATH", &path);
        })?;
        node.spawn("kube-proxy", &logs, &mut state, |c| {
            c.args([
                format!("--config={}", files.kube_proxy.display()),
                "--v=1".into(),
            ])
            .env("PATH", &path);
        })?;
        // Cluster DNS: CoreDNS with its kubernetes plugin, as a process of the node (not a pod:
        // one image less to build), reached by pods at the usual kube-dns Service.
        node.spawn("coredns", &logs, &mut state, |c| {
            c.arg("-conf").arg(&files.corefile);
        })?;
        dns_service(client).await?;
        node.wait_ready(client).await?;
        eprintln!(
            "node {NODE_NAME} Ready {:.1}s after containerd started (state in {})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(node)
    }

    /// The node's directory (configuration, logs, containerd's state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket, for `ctr --address`.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// Leaves the node running; [`teardown`] on its directory stops it later.
    pub fn detach(mut self) {
        self.detached = true;
        self.children.clear();
    }

    /// Stops every pod and process of the node and removes what it left on the host.
    pub fn stop(&mut self) {
        if self.detached {
            return;
        }
        teardown(&self.dir);
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
        self.detached = true;
    }

    fn spawn(
        &mut self,
        name: &str,
        logs: &Path,
        state: &mut State,
        args: impl FnOnce(&mut Command),
    ) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let mut cmd = Command::new(component(name)?);
        args(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        state.pids.push((name.to_string(), child.id()));
        save_state(&self.dir, state)?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.dir.join("logs").join(format!("{name}.log"));
                bail!(
                    "{name} exited with {status}; last lines of its log:\n{}",
                    tail(&log, 20)
                );
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, client: &kube::Client) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check_alive()?;
            if crate::cluster::node_ready(&nodes, NODE_NAME).await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready after 90s; kubelet's log ends:\n{}",
                    tail(&self.dir.join("logs/kubelet.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `kube-dns` Service (no selector) and an EndpointSlice naming the node's CoreDNS.
async fn dns_service(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let params = PatchParams::apply("portico-tests").force();
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]}
    }))?;
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns", &params, &Patch::Apply(&service))
        .await
        .context("creating the kube-dns Service")?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "portico-tests"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": true}}],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns-node", &params, &Patch::Apply(&slice))
        .await
        .context("creating the kube-dns EndpointSlice")?;
    Ok(())
}

/// The directory of image tarballs from `$PORTICO_IMAGES_DIR`, or an error saying how to make it.
pub fn images_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os(IMAGES_ENV)
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{IMAGES_ENV} is not set: a real node needs the image tarballs of `hack/images.sh` \
             (make e2e and make demo build them)"
            )
        })?;
    if !dir.join("images.txt").exists() {
        bail!(
            "{}/images.txt is missing: build the images with `hack/images.sh {} debug`",
            dir.display(),
            dir.display()
        );
    }
    Ok(dir)
}

fn import_images(socket: &Path, images: &Path) -> anyhow::Result<()> {
    let script = crate::harness::repo_root().join("hack/images-import.sh");
    let out = Command::new(&script)
        .arg(socket)
        .arg(images)
        .env("PORTICO_BIN_DIR", bin_dir())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "importing the images of {} failed: {}{}",
            images.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Paths of the configuration files [`write_configs`] writes.
struct Files {
    containerd: PathBuf,
    corefile: PathBuf,
    kubelet: PathBuf,
    kube_proxy: PathBuf,
}

fn write_configs(
    dir: &Path,
    state: &State,
    kubeconfig: &Path,
    ca_cert: &Path,
) -> anyhow::Result<Files> {
    let etc = dir.join("etc");
    let cni_conf = etc.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf)?;
    let d = dir.display();
    let runc = component("runc")?;
    let containerd = etc.join("containerd.toml");
    // Version 3 (containerd 2.x). restrict_oom_score_adj: the VM's bounding set lacks
    // CAP_SYS_RESOURCE (REALNODE.md, gotcha 1). The sandbox image is pinned: never pulled.
    std::fs::write(
        &containerd,
        format!(
            r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{d}/containerd/containerd.sock"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "{cni}"
"#,
            runc = runc.display(),
            cni = cni_conf.display(),
        ),
    )?;
    // hairpinMode: a pod that reaches its own Service gets its own packets back through the
    // bridge.
    std::fs::write(
        cni_conf.join("10-portico.conflist"),
        serde_json::to_string_pretty(&serde_json::json!({
            "cniVersion": "1.0.0",
            "name": state.cni_network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": format!("{d}/cni/ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }))?,
    )?;
    // No cluster DNS here: pods get an empty resolv.conf rather than the host's.
    let resolv = etc.join("resolv.conf");
    std::fs::write(&resolv, "")?;
    let kubelet = etc.join("kubelet.yaml");
    std::fs::write(
        &kubelet,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{d}/containerd/containerd.sock
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
podLogsDir: {d}/pod-logs
address: {NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
clusterDomain: cluster.local
clusterDNS: [{DNS_SERVICE_IP}]
resolvConf: {resolv}
registerNode: true
maxPods: 110
imageGCHighThresholdPercent: 100
evictionHard: {{memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%"}}
protectKernelDefaults: false
makeIPTablesUtilChains: true
serializeImagePulls: false
# A changed Secret reaches mounted volumes at the pod's next sync: every 10 s here instead of
# the default minute, so tests of the identity issuer's rotation wait seconds, not minutes.
syncFrequency: 10s
"#,
            cgroup_root = state.cgroup_root,
            ca = ca_cert.display(),
            resolv = resolv.display(),
        ),
    )?;
    let kube_proxy = etc.join("kube-proxy.yaml");
    // conntrack 0: leave the host's conntrack sysctls alone.
    std::fs::write(
        &kube_proxy,
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
hostnameOverride: {NODE_NAME}
bindAddress: 0.0.0.0
clusterCIDR: {POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = kubeconfig.display(),
        ),
    )?;
    let corefile = etc.join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            r#".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa
        ttl 5
    }}
    cache 5
}}
"#,
            kubeconfig = kubeconfig.display(),
        ),
    )?;
    Ok(Files {
        containerd,
        corefile,
        kubelet,
        kube_proxy,
    })
}

/// The v1 cgroup hierarchies mounted under /sys/fs/cgroup (cgroup v2 is not usable on these
/// machines: REALNODE.md, gotcha 2).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        // Skip comounted symlinks (cpu,cpuacct → cpu). The v2 mount (`unified`, with only the
        // hugetlb controller here) counts: kubelet makes its cgroups there too.
        if p.is_symlink() || !p.join("cgroup.procs").exists() {
            continue;
        }
        out.push(p);
    }
    out
}

fn make_cgroup_root(root: &str) -> anyhow::Result<()> {
    for h in cgroup_hierarchies() {
        let dir = h.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A new cpuset has no CPUs and no memory nodes until given its parent's.
        if h.join("cpuset.cpus").exists() {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(h.join(f))?;
                std::fs::write(dir.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

/// Kills every process left in the cgroup tree `root` and removes its directories, deepest
/// first.
fn remove_cgroup_root(root: &str) {
    for h in cgroup_hierarchies() {
        let top = h.join(root.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        for _ in 0..50 {
            let mut any = false;
            for d in &dirs {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter(|p| *p != 0)
                {
                    any = true;
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            if !any {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Deepest first: a cgroup directory can only be removed once it has no children.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Stops the node whose state is in `dir` and removes everything it left behind: pods (their
/// processes are killed through the node's cgroups), processes by their recorded PIDs, mounts
/// under `dir`, the cgroup tree, the host paths the components hard-code, and the global
/// sysctls kubelet changed (restored). Safe to call twice.
pub fn teardown(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("node.json")) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<State>(&text) else {
        return;
    };
    // kubelet first (it would restart what we stop), then the pods, then containerd.
    let stop = |names: &[&str]| {
        let pids: Vec<u32> = state
            .pids
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, p)| *p)
            .filter(|p| alive(*p))
            .collect();
        for pid in &pids {
            terminate(*pid);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    };
    stop(&["kubelet", "kube-proxy", "coredns"]);
    // Container processes and their shims live in the node's cgroups.
    remove_cgroup_root(&state.cgroup_root);
    stop(&["containerd"]);
    // Shims are not in the pods' cgroups; they are children of containerd's namespace and
    // exit when their container is gone. Ours are the ones whose address is under `dir`.
    kill_shims(dir);
    unmount_under(dir);
    // Host paths the components hard-code (REALNODE.md, gotcha 5): only this node's entries
    // (named by its containers' ids), stale sockets, and the folders left empty.
    let ids = container_ids(dir);
    for id in &ids {
        let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/k8s.io/{id}"));
    }
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            // Each cached result names the pod's network namespace, under `dir`.
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains(&dir.display().to_string()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    remove_stale_sockets("/run/containerd/s");
    remove_stale_sockets("/var/lib/kubelet/device-plugins");
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for empty in [
        "/run/containerd/runc/k8s.io",
        "/run/containerd/runc",
        "/run/containerd/s",
        "/run/containerd",
        "/var/lib/cni/results",
        "/var/lib/cni",
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet",
        "/var/log/containers",
    ] {
        let _ = std::fs::remove_dir(empty);
    }
    for (path, value) in &state.sysctls {
        let _ = write_sysctl(path, value);
    }
    let _ = std::fs::remove_dir_all(dir.join("containerd"));
    let _ = std::fs::remove_dir_all(dir.join("kubelet"));
    let _ = std::fs::remove_file(dir.join("node.json"));
}

/// The ids of the containers and pod sandboxes containerd ran for this node (their task
/// bundles stay in its state directory until that is removed).
fn container_ids(dir: &Path) -> Vec<String> {
    let bundles = dir.join("containerd/state/io.containerd.runtime.v2.task/k8s.io");
    std::fs::read_dir(bundles)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the Unix sockets in `dir` that nothing listens on any more (another node's live
/// sockets stay).
fn remove_stale_sockets(dir: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let is_socket = e.file_type().is_ok_and(|t| t.is_socket());
        if is_socket && std::os::unix::net::UnixStream::connect(e.path()).is_err() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Kills the runc shims serving this node's containerd (their command line names its socket).
fn kill_shims(dir: &Path) {
    let socket = dir.join("containerd/containerd.sock").display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim-runc-v2") && cmdline.contains(&socket) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Unmounts everything mounted below `dir` (overlay root filesystems, network namespaces,
/// volumes), deepest first.
fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", p])
            .stderr(Stdio::null())
            .status();
    }
}

fn save_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    std::fs::write(dir.join("node.json"), serde_json::to_string_pretty(state)?)
        .context("writing node.json")
}

fn read_sysctl(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{path}"))
        .with_context(|| format!("reading sysctl {path}"))?
        .trim()
        .to_string())
}

fn write_sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
        .with_context(|| format!("setting sysctl {path}={value}"))
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
