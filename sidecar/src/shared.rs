//! The state every connection and request of a proxy shares: the config in force, metrics,
//! the workload identity, and the signals for readiness and shutdown.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::snapshot;
use crate::forward::connect;
use crate::mesh::identity;
use crate::observe::metrics;
use crate::policy::cache;

/// State shared by every connection and request.
#[derive(Debug)]
pub struct Shared {
    /// The config in force.
    pub snapshot: ArcSwap<snapshot::Snapshot>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Whether access log lines are written.
    pub access_log: bool,
    /// True once a config is applied and its listeners are bound.
    pub ready: AtomicBool,
    /// Turns true when connections should finish and close.
    pub shutdown: watch::Sender<bool>,
    /// Open client connections.
    pub active: watch::Sender<usize>,
    /// The workload certificate, when the proxy has an identity.
    pub identity: Option<Arc<identity::Store>>,
    /// The response cache every caching rule shares (one byte cap per proxy).
    pub cache: cache::Store,
    /// A sidecar's backends on demand (see [`crate::mesh::demand`]).
    pub demand: Option<Arc<crate::mesh::demand::Demand>>,
}

impl Shared {
    /// The state of a proxy that has no config yet.
    /// `cache_max_bytes` caps the response cache.
    pub(crate) fn new(
        access_log: bool,
        identity: Option<Arc<identity::Store>>,
        cache_max_bytes: usize,
        demand: Option<Arc<crate::mesh::demand::Demand>>,
    ) -> Self {
        let metrics = metrics::Metrics::new(
            identity
                .as_ref()
                .map(|s| s.handshakes.clone())
                .unwrap_or_default(),
        );
        Self {
            snapshot: ArcSwap::from_pointee(snapshot::Snapshot::default()),
            cache: cache::Store::new(cache_max_bytes, metrics.cache().clone()),
            metrics,
            access_log,
            ready: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            active: watch::channel(0).0,
            identity,
            demand,
        }
    }
}

impl Shared {
    /// Where a connection to `ep` goes: with mTLS when the endpoint is meshed and this proxy
    /// has an identity, else in plaintext.
    pub(crate) fn dest(&self, ep: &crate::forward::backend::Endpoint) -> connect::Dest {
        connect::Dest {
            addr: ep.addr,
            mesh: ep.identity.as_ref().and_then(|i| self.mesh_dest(i)),
        }
    }

    /// How to reach a peer that must prove `identity`: with this proxy's certificate, if it
    /// has one.
    pub(crate) fn mesh_dest(&self, identity: &Arc<str>) -> Option<connect::MeshDest> {
        connect::mesh_dest(self.identity.as_deref(), identity)
    }
}
