//! A running proxy: [`Proxy::start`] binds a config's listeners and serves them,
//! [`Proxy::apply`] swaps in a new config, [`Proxy::shutdown`] drains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portico_proxy_api::{BackendUpdate, ProxyConfig};
use tokio::sync::watch;

use crate::config::snapshot::{self, ApplyError};
use crate::forward::health::ProbeContext;
use crate::mesh::identity;
use crate::serve::{admin, inbound, listeners};
use crate::shared::Shared;

/// How to run a proxy besides its config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Admin server address; none runs no admin server.
    pub admin_addr: Option<SocketAddr>,
    /// Write JSON access log lines to stdout.
    pub access_log: bool,
    /// The workload certificate (shown by the admin server).
    pub identity: Option<Arc<identity::Store>>,
    /// The response cache's byte cap; [`crate::policy::cache::DEFAULT_MAX_BYTES`] when `None`.
    pub cache_max_bytes: Option<usize>,
    /// A sidecar's backends on demand: connections to a Service wait for its backends.
    pub demand: Option<Arc<crate::mesh::demand::Demand>>,
}

/// A running proxy. Cheap to clone; all clones control the same proxy.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<listeners::Listeners>,
    addresses: Mutex<HashMap<String, SocketAddr>>,
    admin_addr: Option<SocketAddr>,
    admin_stop: watch::Sender<bool>,
}

impl Proxy {
    /// The workload identity's store, when the proxy has one.
    pub fn identity(&self) -> Option<Arc<identity::Store>> {
        self.inner.shared.identity.clone()
    }

    /// Validates `config`, binds its listeners (and the admin server) and starts serving.
    pub async fn start(config: ProxyConfig, options: Options) -> Result<Self, StartError> {
        let shared = Arc::new(Shared::new(
            options.access_log,
            options.identity.clone(),
            options
                .cache_max_bytes
                .unwrap_or(crate::policy::cache::DEFAULT_MAX_BYTES),
            options.demand.clone(),
        ));
        let (admin_stop, admin_stopped) = watch::channel(false);
        let admin_addr = match options.admin_addr {
            Some(addr) => {
                let sock = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| StartError::Admin { addr, error })?;
                let local = sock.local_addr().ok();
                tokio::spawn(admin::serve(shared.clone(), sock, admin_stopped));
                local
            }
            None => None,
        };
        let proxy = Self {
            inner: Arc::new(Inner {
                shared,
                listeners: Default::default(),
                addresses: Default::default(),
                admin_addr,
                admin_stop,
            }),
        };
        proxy.apply(config).await?;
        proxy.inner.shared.ready.store(true, Ordering::Release);
        Ok(proxy)
    }

    /// Replaces the config. An invalid config, unusable certificate or unbindable address is
    /// refused with an error naming the element, and the running config keeps serving. Requests
    /// in flight finish under the config they started with.
    pub async fn apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        let shared = &self.inner.shared;
        let generation = config.generation;
        let result = async {
            let mut listeners = self.inner.listeners.lock().await;
            // Validating and compiling a large config takes a while (regexes, route tables,
            // certificates): on a blocking thread, so the runtime's threads keep serving (with
            // `--workers 1` there is only one).
            let old = shared.snapshot.load_full();
            let snap = tokio::task::spawn_blocking(move || snapshot::Snapshot::build(config, &old))
                .await
                .map_err(|e| ApplyError::Compile(e.to_string()))??;
            let pending = listeners.prepare(&snap.config).await?;
            let cfg = snap.config.clone();
            let snap = Arc::new(snap);
            shared.snapshot.store(snap.clone());
            start_health_checks(shared, snap.backends.values());
            listeners.commit(shared, pending, &cfg);
            *self
                .inner
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = listeners.addresses();
            Ok(())
        }
        .await;
        shared
            .metrics
            .reload(result.is_ok(), result.is_ok().then_some(generation));
        result
    }

    /// Applies backends that changed to the config in force: only they are rebuilt (their
    /// endpoints keep their load, latency and ejection state; their pools stay warm), routes
    /// and everything else are shared with the config in force. A bad backend, or the removal
    /// of one that is still used, is refused and the config in force keeps serving.
    pub async fn apply_backends(&self, update: BackendUpdate) -> Result<(), ApplyError> {
        let shared = &self.inner.shared;
        let generation = update.generation;
        // Serialized with whole applies, which hold the same lock.
        let _listeners = self.inner.listeners.lock().await;
        let old = shared.snapshot.load_full();
        let names: Vec<String> = update.backends.iter().map(|b| b.name.clone()).collect();
        let result = old.with_update(update).map(|snap| {
            let snap = Arc::new(snap);
            shared.snapshot.store(snap.clone());
            let updated = names.iter().filter_map(|n| snap.backends.get(n.as_str()));
            start_health_checks(shared, updated);
        });
        shared
            .metrics
            .reload(result.is_ok(), result.is_ok().then_some(generation));
        result
    }

    /// The Services of the config in force.
    pub(crate) fn services(&self) -> Arc<crate::route::services::ServiceTable> {
        self.inner.shared.snapshot.load().services.clone()
    }

    /// Counts a config that was refused before it reached [`Proxy::apply`] (unreadable file).
    pub fn count_refused(&self) {
        self.inner.shared.metrics.reload(false, None);
    }

    /// The bound address of a listener (useful when it was configured with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addresses().get(name).copied()
    }

    /// Bound addresses of all listeners.
    pub fn listener_addresses(&self) -> HashMap<String, SocketAddr> {
        self.inner
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admin server's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// The config in force (with the backend updates applied since the last whole config).
    pub fn config(&self) -> ProxyConfig {
        self.inner.shared.snapshot.load().full_config()
    }

    /// Metrics in Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.inner.shared.metrics.encode()
    }

    /// Serves `stream` as if the INBOUND listener `listener` had accepted it with original
    /// destination `original_dst`: for embedders that learn the destination another way than
    /// `SO_ORIGINAL_DST` (TPROXY), and for tests, which have no iptables to redirect with.
    pub async fn serve_inbound(
        &self,
        listener: &str,
        stream: tokio::net::TcpStream,
        original_dst: SocketAddr,
    ) {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let shared = self.inner.shared.clone();
        inbound::serve(shared, listener.into(), stream, peer, original_dst).await;
    }

    /// Stops accepting, asks open connections to finish their requests and close, and waits up
    /// to `deadline` for them. Returns true if every connection closed in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let shared = &self.inner.shared;
        shared.ready.store(false, Ordering::Release);
        self.inner.listeners.lock().await.stop_all();
        shared.shutdown.send_replace(true);
        let mut active = shared.active.subscribe();
        let drained = tokio::time::timeout(deadline, active.wait_for(|n| *n == 0))
            .await
            .is_ok();
        self.inner.admin_stop.send_replace(true);
        drained
    }
}

/// Starts the active health checks of `backends`, now in force (each endpoint's probe runs
/// once; a config that was refused never probes).
fn start_health_checks<'a>(
    shared: &Shared,
    backends: impl Iterator<Item = &'a Arc<crate::forward::backend::BackendState>>,
) {
    let ctx = ProbeContext {
        identity: shared.identity.clone(),
        metrics: shared.metrics.health(),
    };
    for backend in backends {
        if let Some(checker) = &backend.health {
            checker.start(&backend.endpoints, &ctx);
        }
    }
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin address could not be bound.
    #[error("admin server: cannot bind {addr}: {error}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The OS error (shown in the message, so not also a `source()`: anyhow's "Caused by"
        /// would list it twice).
        error: std::io::Error,
    },
    /// The initial config was refused.
    #[error(transparent)]
    Config(#[from] ApplyError),
}
