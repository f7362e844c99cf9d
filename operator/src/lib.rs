//! Portico's control plane.
//!
//! ```text
//!  watch ──► index ──► server (config streams to proxies)     read path: every replica
//!              ├─────► status  ┐
//!              └─────► gateway ┴─ only while lease says so     write path: the Lease holder
//!  admin: /live /ready /metrics
//! ```

pub mod admin;
pub mod admission;
pub mod auth;
pub mod gateway;
pub mod identity;
pub mod index;
pub mod lease;
pub mod metrics;
pub mod server;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The operator's flags (each also readable from the environment variable shown in `--help`).
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "portico-operator", version, about = "Portico's control plane")]
pub struct Args {
    /// Kubeconfig file; default: in-cluster config, then `~/.kube/config`.
    #[arg(long, env = "PORTICO_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (repeat or comma-separate); default: all.
    #[arg(long = "namespace", env = "PORTICO_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Log filter, e.g. `info` or `portico_operator=debug`.
    #[arg(long, env = "PORTICO_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(long, value_enum, env = "PORTICO_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Admin server address: /live, /ready, /metrics.
    #[arg(long, env = "PORTICO_ADMIN_ADDR", default_value = "0.0.0.0:9902")]
    pub admin_addr: SocketAddr,
    /// Config server address (HTTPS, HTTP/2).
    #[arg(long, env = "PORTICO_CONFIG_ADDR", default_value = "0.0.0.0:8443")]
    pub config_addr: SocketAddr,
    /// Config server certificate chain (PEM).
    #[arg(long, env = "PORTICO_CONFIG_TLS_CERT")]
    pub config_tls_cert: PathBuf,
    /// Config server private key (PEM).
    #[arg(long, env = "PORTICO_CONFIG_TLS_KEY")]
    pub config_tls_key: PathBuf,
    /// Quiet time after each config message, in milliseconds, during which further changes are
    /// coalesced (at least 50 µs per open stream: 50 ms at 1,000). A lone change is never
    /// delayed.
    #[arg(long, env = "PORTICO_CONFIG_DEBOUNCE_MS", default_value_t = 20)]
    pub config_debounce_ms: u64,
    /// How often the token of an open config stream is checked again with a TokenReview
    /// (also when the token expires, if sooner); a stream whose token no longer passes ends.
    #[arg(long, env = "PORTICO_TOKEN_RECHECK_INTERVAL", default_value = "5m")]
    pub token_recheck_interval: portico_proxy_api::Duration,
    /// Image of the gateway proxies.
    #[arg(
        long,
        env = "PORTICO_PROXY_IMAGE",
        default_value = "ghcr.io/portico-dev/portico-proxy:latest"
    )]
    pub proxy_image: String,
    /// Config server URL given to gateway proxies.
    #[arg(
        long,
        env = "PORTICO_CONTROL_PLANE_URL",
        default_value = "https://portico-operator.portico-system.svc:8443"
    )]
    pub control_plane_url: String,
    /// CA certificate(s) (PEM) that verify the config server, handed to gateway proxies;
    /// default: the `--config-tls-cert` file itself (right for a self-signed certificate).
    #[arg(long, env = "PORTICO_CONFIG_TLS_CA")]
    pub config_tls_ca: Option<PathBuf>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "portico-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PORTICO_LEASE_NAME", default_value = "portico-operator")]
    pub lease_name: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "PORTICO_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// This replica's identity in the Lease; default: host name, pid and a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The admission webhooks: server address and TLS, and how injected sidecars look.
    #[command(flatten)]
    pub admission: admission::AdmissionArgs,
    /// Workload identities: the issuer of proxies' certificates.
    #[command(flatten)]
    pub identity_issuer: identity::IdentityArgs,
    /// The mTLS mode of meshed pods in namespaces without a `portico.dev/mtls-mode`
    /// annotation: `strict` refuses plaintext callers (HTTP probes excepted).
    #[arg(
        long,
        env = "PORTICO_MTLS_MODE",
        value_enum,
        default_value = "permissive"
    )]
    pub mtls_mode: MtlsModeArg,
}

/// `--mtls-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MtlsModeArg {
    /// Meshed pods take mTLS and plaintext callers.
    Permissive,
    /// Meshed pods take mTLS callers only.
    Strict,
}

/// Installs the global tracing subscriber (once per process; later calls are ignored).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container logs are files (`kubectl logs`).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match &kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portico-operator".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Runs the operator until one of its parts fails (which is then the error). Logging must be
/// set up by the caller ([`init_logging`]); dropping the future stops every task (as a crash
/// would: the Lease is not released).
pub async fn run(args: Args) -> anyhow::Result<()> {
    run_until(args, std::future::pending()).await
}

/// Like [`run`], but also stops cleanly when `shutdown` completes: every task ends, then the
/// Lease is released if this replica holds it, so another replica takes over at once.
pub async fn run_until(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Args {
        kubeconfig,
        namespaces,
        log_level: _,
        log_format: _,
        admin_addr,
        config_addr,
        config_tls_cert,
        config_tls_key,
        config_debounce_ms,
        token_recheck_interval,
        proxy_image,
        control_plane_url,
        config_tls_ca,
        lease_namespace,
        lease_name,
        lease_duration_secs,
        identity,
        admission,
        identity_issuer,
        mtls_mode,
    } = args;
    let token_recheck = token_recheck_interval.get();
    anyhow::ensure!(
        !token_recheck.is_zero(),
        "--token-recheck-interval must be above zero (e.g. 5m)"
    );
    let client = client(kubeconfig).await?;
    watch::check_crds(&client).await?;
    let tls = server::tls_acceptor(&config_tls_cert, &config_tls_key)?;
    let issuer_files = match identity_issuer.files()? {
        Some(files) => Some((files.load()?, files)),
        None => None,
    };
    let (issuer, issuer_files) = match issuer_files {
        Some(((issuer, loaded), files)) => (
            Some(Arc::new(identity::source::IssuerSource::new(issuer))),
            Some((files, loaded)),
        ),
        None => (None, None),
    };
    let ca_file = config_tls_ca.unwrap_or_else(|| config_tls_cert.clone());
    let ca_pem = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("reading the config-server CA {}", ca_file.display()))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding the admin address {admin_addr}"))?;
    let config_listener = TcpListener::bind(config_addr)
        .await
        .with_context(|| format!("binding the config-server address {config_addr}"))?;
    // Bound before anything runs, like the other listeners, so a taken port fails the start.
    let webhook = match admission.webhook_addr {
        Some(addr) => {
            let cert = admission
                .webhook_tls_cert
                .as_ref()
                .unwrap_or(&config_tls_cert);
            let key = admission
                .webhook_tls_key
                .as_ref()
                .unwrap_or(&config_tls_key);
            let tls = admission::tls_acceptor(cert, key)?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the webhook address {addr}"))?;
            Some((listener, tls))
        }
        None => None,
    };
    let identity = identity.unwrap_or_else(default_identity);
    tracing::info!(%identity, %admin_addr, %config_addr, namespaces = ?namespaces, "starting");

    let metrics = Arc::new(metrics::Metrics::new());
    let index: watch::SharedIndex =
        Arc::new(Mutex::new(index::Index::with_mesh(index::MeshSettings {
            trust_domain: identity_issuer.trust_domain.clone(),
            identities: issuer.is_some(),
            mtls: match mtls_mode {
                MtlsModeArg::Permissive => portico_proxy_api::MtlsMode::Permissive,
                MtlsModeArg::Strict => portico_proxy_api::MtlsMode::Strict,
            },
        })));
    let (statuses, gateway_specs) = {
        let index = index.lock().unwrap_or_else(|p| p.into_inner());
        (index.statuses(), index.gateway_specs())
    };
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let readiness = watch::spawn(
        &mut tasks,
        &client,
        &namespaces,
        index.clone(),
        metrics.clone(),
    );
    tasks.spawn(admin::serve(
        admin_listener,
        readiness.clone(),
        metrics.clone(),
    ));
    let config_server = server::ConfigServer::new(
        client.clone(),
        index.clone(),
        readiness.clone(),
        metrics.clone(),
        Duration::from_millis(config_debounce_ms),
        token_recheck,
    )
    .with_issuer(issuer.clone());
    if let (Some(source), Some((files, loaded))) = (issuer, issuer_files) {
        tasks.spawn(source.follow(
            files,
            loaded,
            identity::source::RELOAD_INTERVAL,
            metrics.clone(),
        ));
    }
    tasks.spawn(config_server.serve(config_listener, tls));
    if let Some((listener, tls)) = webhook {
        let webhooks = admission::Webhooks {
            client: client.clone(),
            inject: admission::inject::InjectConfig {
                image: proxy_image.clone(),
                control_plane_url: control_plane_url.clone(),
                ca_pem: ca_pem.clone(),
                log_level: admission.proxy_log_level,
                cpu_request: admission.proxy_cpu_request,
                memory_request: admission.proxy_memory_request,
                memory_limit: admission.proxy_memory_limit,
                trust_domain: identity_issuer.trust_domain.clone(),
            },
            fail_closed: admission.inject_fail_closed,
        };
        tasks.spawn(async move { Ok(webhooks.serve(listener, tls).await?) });
    }

    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let lease_config = lease::LeaseConfig {
        namespace: lease_namespace,
        name: lease_name,
        identity: identity.clone(),
        duration: Duration::from_secs(lease_duration_secs.max(1)),
    };
    let leading = leader_rx.clone();
    tasks.spawn(lease::run(
        client.clone(),
        lease_config.clone(),
        leader_tx,
        metrics.clone(),
    ));
    // The write path starts only once the index is complete, so a new leader never "fixes"
    // statuses from a half-listed world.
    let write_path = {
        let client = client.clone();
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        async move {
            readiness.wait().await;
            tokio::try_join!(
                status::run(
                    client.clone(),
                    identity,
                    statuses,
                    leader_rx.clone(),
                    metrics
                ),
                gateway::run(
                    client,
                    gateway::ProxySettings {
                        image: proxy_image,
                        control_plane_url,
                        ca_pem,
                        trust_domain: identity_issuer.trust_domain.clone(),
                    },
                    gateway_specs,
                    leader_rx,
                ),
            )?;
            anyhow::Ok(())
        }
    };
    tasks.spawn(write_path);
    let result = tokio::select! {
        ended = tasks.join_next() => match ended {
            Some(Ok(Ok(()))) | None => Err(anyhow::anyhow!("an operator task ended unexpectedly")),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("an operator task panicked")),
        },
        () = shutdown => Ok(()),
    };
    tasks.shutdown().await;
    if *leading.borrow() {
        lease::release(client, &lease_config).await;
    }
    result
}

/// Runs the operator until SIGTERM or SIGINT, then stops cleanly (see [`run_until`]).
pub async fn run_until_signal(args: Args) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
    };
    run_until(args, signal).await
}
