//! The command line of `portico-proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use portico_proxy_api::Duration;

use crate::{Options, Proxy, control, reload};

/// Portico's data plane proxy, configured from a file that is re-read when it changes.
#[derive(Debug, Parser)]
#[command(
    name = "portico-proxy",
    version,
    after_help = "In a meshed pod's init container: `portico-proxy init` installs the iptables \
                  redirection (see `portico-proxy init --help`)."
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
    /// proxy asks for the mesh config (sidecar mode).
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
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s")]
    pub reload_interval: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "15s")]
    pub drain_timeout: Duration,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
        log_format,
        log_level,
        access_log,
        workers,
        reload_interval,
        drain_timeout,
    } = args;
    let filter = tracing_subscriber::EnvFilter::try_new(&log_level)
        .with_context(|| format!("--log-level {log_level:?}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        };
        let (proxy, watcher) = match (config, control_plane, token_file) {
            (Some(config), _, _) => {
                let cfg = reload::load(&config)?;
                let proxy = Proxy::start(cfg, options)
                    .await
                    .context("the initial config was refused")?;
                let every = reload_interval.get();
                let watcher = tokio::spawn(reload::watch(proxy.clone(), config, every));
                (proxy, watcher)
            }
            (None, Some(url), Some(token_file)) => {
                let ca_pem = match (ca_file, control_plane_ca) {
                    (Some(file), _) => control::read(&file)?,
                    (None, Some(pem)) => pem.into_bytes(),
                    (None, None) => anyhow::bail!(
                        "--control-plane needs the config server's CA: --ca-file or PORTICO_CONTROL_PLANE_CA"
                    ),
                };
                let cp = control::ControlPlane {
                    url,
                    gateway,
                    token_file,
                    ca_pem,
                    extra_listeners: Vec::new(),
                };
                tracing::info!(control_plane = %cp.url, gateway = ?cp.gateway, "waiting for the first config");
                let (cfg, session) = control::first_config(&cp).await;
                let proxy = Proxy::start(cfg, options)
                    .await
                    .context("the first config from the control plane was refused")?;
                let watcher = tokio::spawn(control::follow(proxy.clone(), cp, session));
                (proxy, watcher)
            }
            _ => anyhow::bail!("give --config, or --control-plane with --token-file"),
        };
        tracing::info!(
            listeners = ?proxy.listener_addresses(),
            admin = %admin_addr,
            workers,
            "portico-proxy ready"
        );
        wait_for_signal().await?;
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

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
