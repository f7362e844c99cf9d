//! The command line of `portico-proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use portico_proxy_api::Duration;

use crate::{Options, Proxy, reload};

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
    #[arg(long, env = "PORTICO_CONFIG")]
    pub config: PathBuf,
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
        let cfg = reload::load(&config)?;
        let options = Options {
            admin_addr: Some(admin_addr),
            access_log,
        };
        let proxy = Proxy::start(cfg, options)
            .await
            .context("the initial config was refused")?;
        tracing::info!(
            listeners = ?proxy.listener_addresses(),
            admin = %admin_addr,
            workers,
            "portico-proxy ready"
        );
        let watcher = tokio::spawn(reload::watch(proxy.clone(), config, reload_interval.get()));
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
