//! The command line of `portico-proxy`, in four forms:
//!
//! ```text
//!  portico-proxy init ...                 the init container: install iptables redirection
//!  portico-proxy sidecar ...              a meshed pod's proxy (what the webhook injects)
//!  portico-proxy gateway ...              a Gateway's proxy
//!  portico-proxy --config FILE | --control-plane URL [--gateway ns/name] ...   (the first form)
//! ```
//!
//! Each form is one clap struct that its `run` destructures, so a new flag must be handled.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use portico_proxy_api::{Duration, Listener, Protocol, gateway_proxy_name, spiffe_id};

use crate::app::control;
use crate::app::reload;
use crate::mesh::identity;
use crate::mesh::operator::{self, ControlPlane, Stream};
use crate::runtime::{Options, Proxy};

/// Runs `portico-proxy` with this command line (program name first).
pub fn main(argv: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let argv: Vec<OsString> = argv.into_iter().collect();
    // The subcommands share the image, not the flags; the first form has no subcommand, so
    // dispatch by hand rather than make clap's subcommand and top-level flags coexist.
    let rest = || argv.iter().skip(1).cloned();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("init") => crate::app::init::run(crate::app::init::InitArgs::parse_from(rest())),
        Some("sidecar") => run_sidecar(SidecarArgs::parse_from(rest())),
        Some("gateway") => run_gateway(GatewayArgs::parse_from(rest())),
        _ => run(Args::parse_from(argv)),
    }
}

/// Portico's data plane proxy, configured from a file that is re-read when it changes.
#[derive(Debug, Parser)]
#[command(
    name = "portico-proxy",
    version,
    after_help = "Subcommands: `portico-proxy sidecar` (a meshed pod's proxy), `portico-proxy \
                  gateway` (a Gateway's proxy), `portico-proxy init` (the init container's \
                  iptables redirection); each has its own --help."
)]
pub struct Args {
    /// Config file (YAML or JSON, `apiVersion: portico.dev/proxy/v1`).
    #[arg(
        long,
        env = "PORTICO_CONFIG",
        required_unless_present = "control_plane"
    )]
    pub config: Option<PathBuf>,
    /// Take the config from the operator's config server instead of a file, e.g.
    /// `https://portico-operator.portico-system.svc:8443` (see the `control` module).
    #[arg(
        long,
        env = "PORTICO_CONTROL_PLANE",
        conflicts_with = "config",
        requires = "token_file"
    )]
    pub control_plane: Option<http::Uri>,
    /// With `--control-plane`: the Gateway this proxy serves (`namespace/name`); without it the
    /// proxy follows the older mesh-wide stream (sidecars use `portico-proxy sidecar`).
    #[arg(long, env = "PORTICO_GATEWAY")]
    pub gateway: Option<String>,
    /// With `--control-plane`: the ServiceAccount token file (audience `portico`).
    #[arg(long, env = "PORTICO_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With `--control-plane`: the config server's CA certificate file (PEM).
    #[arg(long, env = "PORTICO_CA_FILE", conflicts_with = "control_plane_ca")]
    pub ca_file: Option<PathBuf>,
    /// With `--control-plane`: the config server's CA certificate itself (PEM text).
    #[arg(long, env = "PORTICO_CONTROL_PLANE_CA", hide_env_values = true)]
    pub control_plane_ca: Option<String>,
    /// Address of the admin server (/live, /ready, /metrics, /config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s")]
    pub reload_interval: Duration,
    /// The mesh's trust domain (with `--gateway`: the proxy asks for the identity
    /// `spiffe://<trust-domain>/ns/<ns>/sa/portico-gateway-<name>`).
    #[arg(long, env = "PORTICO_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// With `--config`: a static workload certificate (PEM chain, leaf first, whose
    /// `spiffe://` URI SAN is the identity), so the proxy speaks mesh mTLS without an operator.
    /// Read at start.
    #[arg(
        long,
        requires_all = ["config", "identity_key", "trust_anchors"],
        conflicts_with = "control_plane"
    )]
    pub identity_cert: Option<PathBuf>,
    /// With `--identity-cert`: its private key (PEM).
    #[arg(long, requires = "identity_cert")]
    pub identity_key: Option<PathBuf>,
    /// With `--identity-cert`: the roots peers' certificates must chain to (PEM).
    #[arg(long, requires = "identity_cert")]
    pub trust_anchors: Option<PathBuf>,
    /// Logs, workers, drain.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags every long-running form shares.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `portico_proxy=debug`.
    #[arg(long, env = "PORTICO_LOG", default_value = "info")]
    pub log_level: String,
    /// Write a JSON access log line per request to stdout.
    #[arg(long)]
    pub access_log: bool,
    /// Runtime threads; 1 runs everything on one thread. Default: the number of CPUs.
    #[arg(long)]
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "15s")]
    pub drain_timeout: Duration,
    /// The response cache's memory cap in bytes, for all rules together (least recently used
    /// answers are evicted beyond it).
    #[arg(long, env = "PORTICO_CACHE_MAX_BYTES", default_value_t = crate::policy::cache::DEFAULT_MAX_BYTES)]
    pub cache_max_bytes: usize,
}

/// The config server and the proxy's credentials for it.
#[derive(Debug, clap::Args)]
pub struct ControlPlaneArgs {
    /// The operator's config server, e.g. `https://portico-operator.portico-system.svc:8443`.
    #[arg(long, env = "PORTICO_CONTROL_PLANE")]
    pub control_plane: http::Uri,
    /// The ServiceAccount token file (audience `portico`), re-read on every reconnect.
    #[arg(long, env = "PORTICO_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The config server's CA certificate file (PEM); wins over PORTICO_CONTROL_PLANE_CA.
    #[arg(long, env = "PORTICO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The config server's CA certificate itself (PEM text).
    #[arg(long, env = "PORTICO_CONTROL_PLANE_CA", hide_env_values = true)]
    pub control_plane_ca: Option<String>,
    /// The mesh's trust domain: the proxy asks for `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, env = "PORTICO_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

impl ControlPlaneArgs {
    fn into_control_plane(self, stream: Stream) -> anyhow::Result<ControlPlane> {
        let Self {
            control_plane,
            token_file,
            ca_file,
            control_plane_ca,
            trust_domain: _,
        } = self;
        let ca_pem = ca_pem(ca_file, control_plane_ca)?;
        Ok(ControlPlane {
            url: control_plane,
            stream,
            token_file,
            ca_pem,
            identity: None,
            extra_listeners: Vec::new(),
            demand: None,
        })
    }
}

/// The identity of Gateway `ns/name`'s proxies: the ServiceAccount the operator makes for them.
fn gateway_identity(trust_domain: &str, gateway: &str) -> Option<String> {
    let (ns, name) = gateway.split_once('/')?;
    Some(spiffe_id(trust_domain, ns, &gateway_proxy_name(name)))
}

/// `portico-proxy sidecar`: the proxy of one meshed pod. It owns its INBOUND and OUTBOUND
/// listeners and follows its pod's config (mesh routes, endpoints, inbound policy).
#[derive(Debug, Parser)]
#[command(name = "portico-proxy sidecar", version)]
pub struct SidecarArgs {
    /// Config server and credentials (the token must be bound to this pod).
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
    /// The pod this proxy serves (the downward API's `metadata.name`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: String,
    /// The pod's IP (logged; the operator knows it from the Pod).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// The pod's ServiceAccount (logged; the operator reads it from the token).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Where iptables sends connections to the pod (`portico-proxy init --inbound-port`).
    #[arg(long, default_value = "0.0.0.0:4143")]
    pub inbound_addr: SocketAddr,
    /// Where iptables sends the app's connections (`portico-proxy init --outbound-port`).
    #[arg(long, default_value = "127.0.0.1:4140")]
    pub outbound_addr: SocketAddr,
    /// Address of the admin server (/live, /ready, /metrics, /config).
    #[arg(long, default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,
    /// Logs, workers, drain.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `portico-proxy gateway`: the proxy of one Gateway (the same as the first form's
/// `--control-plane URL --gateway ns/name`).
#[derive(Debug, Parser)]
#[command(name = "portico-proxy gateway", version)]
pub struct GatewayArgs {
    /// Config server and credentials.
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
    /// The Gateway this proxy serves, `namespace/name`.
    #[arg(long, env = "PORTICO_GATEWAY")]
    pub gateway: String,
    /// Address of the admin server (/live, /ready, /metrics, /config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// Logs, workers, drain.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The sidecar's own listeners, added to every config from the operator.
pub fn sidecar_listeners(inbound: SocketAddr, outbound: SocketAddr) -> Vec<Listener> {
    let listener = |name: &str, address: SocketAddr, protocol| Listener {
        name: name.to_owned(),
        address: address.to_string(),
        protocol,
        tls: None,
        backend: None,
        backends: Vec::new(),
    };
    vec![
        listener("outbound", outbound, Protocol::Outbound),
        listener("inbound", inbound, Protocol::Inbound),
    ]
}

/// Runs a sidecar until SIGTERM or SIGINT, then drains.
pub fn run_sidecar(args: SidecarArgs) -> anyhow::Result<()> {
    let SidecarArgs {
        control_plane,
        pod_name,
        pod_namespace,
        pod_ip,
        service_account,
        inbound_addr,
        outbound_addr,
        admin_addr,
        run,
    } = args;
    let trust_domain = control_plane.trust_domain.clone();
    let mut cp = control_plane.into_control_plane(Stream::Pod {
        namespace: pod_namespace.clone(),
        name: pod_name.clone(),
    })?;
    cp.identity = service_account
        .as_deref()
        .map(|sa| spiffe_id(&trust_domain, &pod_namespace, sa));
    cp.extra_listeners = sidecar_listeners(inbound_addr, outbound_addr);
    // A sidecar receives the backends of the Services its application uses, as it uses them.
    cp.demand = Some(Arc::default());
    run.serve(admin_addr, move |options| async move {
        tracing::info!(
            pod = %format!("{pod_namespace}/{pod_name}"),
            pod_ip = pod_ip.as_deref().unwrap_or(""),
            service_account = service_account.as_deref().unwrap_or(""),
            "sidecar starting"
        );
        follow_control_plane(cp, options).await
    })
}

/// Runs a gateway proxy until SIGTERM or SIGINT, then drains.
pub fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let GatewayArgs {
        control_plane,
        gateway,
        admin_addr,
        run,
    } = args;
    let identity = gateway_identity(&control_plane.trust_domain, &gateway);
    let mut cp = control_plane.into_control_plane(Stream::Gateway(gateway))?;
    cp.identity = identity;
    run.serve(admin_addr, move |options| follow_control_plane(cp, options))
}

/// Runs the proxy until SIGTERM or SIGINT, then drains.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        config,
        control_plane,
        gateway,
        token_file,
        ca_file,
        control_plane_ca,
        admin_addr,
        reload_interval,
        trust_domain,
        identity_cert,
        identity_key,
        trust_anchors,
        run,
    } = args;
    let static_identity = match (identity_cert, identity_key, trust_anchors) {
        (Some(cert), Some(key), Some(anchors)) => Some(
            identity::from_files(&cert, &key, &anchors)
                .context("loading the workload certificate")?,
        ),
        _ => None,
    };
    match (config, control_plane, token_file) {
        (Some(config), _, _) => run.serve(admin_addr, move |mut options| async move {
            if let Some(certified) = static_identity {
                tracing::info!(identity = %certified.identity, "static workload certificate");
                let store = Arc::new(identity::Store::default());
                store.set(certified)?;
                options.identity = Some(store);
            }
            let cfg = reload::load(&config)?;
            let proxy = Proxy::start(cfg, options)
                .await
                .context("the initial config was refused")?;
            let every = reload_interval.get();
            let watcher = tokio::spawn(reload::watch(proxy.clone(), config, every));
            Ok(Some((proxy, watcher)))
        }),
        (None, Some(url), Some(token_file)) => {
            let identity = gateway
                .as_deref()
                .and_then(|g| gateway_identity(&trust_domain, g));
            let stream = gateway.map_or(Stream::Mesh, Stream::Gateway);
            let cp = ControlPlane {
                url,
                stream,
                token_file,
                ca_pem: ca_pem(ca_file, control_plane_ca)?,
                identity,
                extra_listeners: Vec::new(),
                demand: None,
            };
            run.serve(admin_addr, move |options| follow_control_plane(cp, options))
        }
        _ => anyhow::bail!("give --config, or --control-plane with --token-file"),
    }
}

fn ca_pem(file: Option<PathBuf>, pem: Option<String>) -> anyhow::Result<Vec<u8>> {
    Ok(match (file, pem) {
        (Some(file), _) => operator::read(&file)?,
        (None, Some(pem)) => pem.into_bytes(),
        (None, None) => anyhow::bail!(
            "--control-plane needs the config server's CA: --ca-file or PORTICO_CONTROL_PLANE_CA"
        ),
    })
}

/// A started proxy and the task that keeps its config current.
type Started = Option<(Proxy, tokio::task::JoinHandle<()>)>;

/// Waits for the first config from the control plane, starts the proxy with it and follows
/// the stream. The proxy (and its admin server) only starts with a config, so `/ready` cannot
/// answer yes before one arrived.
async fn follow_control_plane(cp: ControlPlane, mut options: Options) -> anyhow::Result<Started> {
    // The identity first: a proxy is not ready before it has its certificate.
    let mut renewal = None;
    if let Some(name) = cp.identity.clone() {
        tracing::info!(identity = %name, "asking the operator for a workload certificate");
        let requester = identity::Requester::new(name)?;
        match identity::obtain(&cp, &requester).await {
            Some(first) => {
                tracing::info!(identity = %first.identity, "workload certificate received");
                let store = Arc::new(identity::Store::default());
                store.set(first)?;
                options.identity = Some(store.clone());
                renewal = Some(tokio::spawn(identity::renew(cp.clone(), requester, store)));
            }
            None => {
                tracing::info!("the operator issues no workload identities; running without one")
            }
        }
    }
    options.demand = cp.demand.clone();
    tracing::info!(control_plane = %cp.url, path = %cp.stream.path(), "waiting for the first config");
    let (cfg, session) = control::first_config(&cp).await;
    let proxy = Proxy::start(cfg, options)
        .await
        .context("the first config from the control plane was refused")?;
    // Renewal lives as long as the stream's task: aborting that (at shutdown) drops the guard.
    let renewal = renewal.map(AbortOnDrop);
    let stream = control::follow(proxy.clone(), cp, session);
    let watcher = tokio::spawn(async move {
        let _renewal = renewal;
        stream.await;
    });
    Ok(Some((proxy, watcher)))
}

/// A task aborted when this handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RunArgs {
    /// Sets up logs and the runtime, starts the proxy with `start`, and serves until SIGTERM or
    /// SIGINT (also while `start` still waits for a first config), then drains.
    fn serve<F, Fut>(self, admin_addr: SocketAddr, start: F) -> anyhow::Result<()>
    where
        F: FnOnce(Options) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Started>>,
    {
        let Self {
            log_format,
            log_level,
            access_log,
            workers,
            drain_timeout,
            cache_max_bytes,
        } = self;
        let filter = tracing_subscriber::EnvFilter::try_new(&log_level)
            .with_context(|| format!("--log-level {log_level:?}"))?;
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only on a terminal: container logs are files (`kubectl logs`).
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        match log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().init(),
        }

        let workers = workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let runtime = if workers <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
        }
        .context("starting the runtime")?;

        runtime.block_on(async move {
            let options = Options {
                admin_addr: Some(admin_addr),
                access_log,
                identity: None,
                cache_max_bytes: Some(cache_max_bytes),
                demand: None,
            };
            let mut signals = Signals::new()?;
            let started = tokio::select! {
                started = start(options) => started?,
                () = signals.recv() => None,
            };
            let Some((proxy, watcher)) = started else {
                tracing::info!("stopped before a config arrived");
                return Ok(());
            };
            tracing::info!(
                listeners = ?proxy.listener_addresses(),
                admin = %admin_addr,
                workers,
                "portico-proxy ready"
            );
            signals.recv().await;
            watcher.abort();
            tracing::info!(deadline = %drain_timeout, "draining");
            if proxy.shutdown(drain_timeout.get()).await {
                tracing::info!("drained");
            } else {
                tracing::warn!("drain deadline passed with connections still open");
            }
            Ok(())
        })
    }
}

/// SIGTERM and SIGINT, installed before anything waits so that neither is missed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
