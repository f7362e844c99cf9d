//! One endpoint of a backend and the state kept about it across config reloads: load,
//! latency, failures (outlier detection) and health (active checks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use portico_proxy_api::HealthCheck;

use super::balance::PeakEwma;
use super::outlier::OutlierState;

/// How long an endpoint that refused a connection is passed over while others are healthy: a
/// pod that is shutting down stops listening before every proxy has heard it is gone.
pub const REFUSED_FOR: Duration = Duration::from_secs(1);

/// Load and health of one endpoint, shared across reloads.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Requests in flight to the endpoint.
    pub in_flight: AtomicUsize,
    /// Latency estimate.
    pub ewma: Mutex<PeakEwma>,
    /// Failure history.
    pub outlier: Mutex<OutlierState>,
    /// Active health check results.
    pub health: Health,
    /// When a connection to the endpoint last failed (see [`EndpointStats::refused`]).
    refused_at: RefusedAt,
}

/// A time as milliseconds after a process-wide base, plus one (0: never), so the check on every
/// pick is one atomic load.
#[derive(Debug, Default)]
struct RefusedAt(AtomicU64);

/// The base of [`RefusedAt`] (tokio's clock, so paused-time tests move it).
static BASE: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);

impl EndpointStats {
    /// Notes that a connection to the endpoint could not be opened at `now`.
    pub fn mark_refused(&self, now: tokio::time::Instant) {
        let ms = now.saturating_duration_since(*BASE).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1;
        self.refused_at.0.store(ms, Ordering::Relaxed);
    }

    /// Whether a connection to the endpoint failed within [`REFUSED_FOR`] before `now`.
    pub fn refused(&self, now: tokio::time::Instant) -> bool {
        match self.refused_at.0.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let at = *BASE + Duration::from_millis(at - 1);
                now.saturating_duration_since(at) < REFUSED_FOR
            }
        }
    }
}

/// One endpoint of a backend.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as a URI authority.
    pub authority: Authority,
    /// Ready endpoints get new requests; others do not.
    pub ready: bool,
    /// The mesh identity it must prove (connections to it use mTLS).
    pub identity: Option<Arc<str>>,
    /// Load, latency, failures.
    pub stats: Arc<EndpointStats>,
}

/// An endpoint's health by active checks.
#[derive(Debug, Default)]
pub struct Health {
    unhealthy: AtomicBool,
    /// Consecutive results of the same kind: `(passes, failures)`.
    streak: Mutex<(u32, u32)>,
}

impl Health {
    /// Whether the endpoint failed its checks (and has not passed enough since).
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
    }

    /// Counts one check. Returns the new state when this check changed it: `Some(true)` healthy
    /// again, `Some(false)` unhealthy.
    pub fn record(&self, passed: bool, cfg: &HealthCheck) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(PoisonError::into_inner);
        if passed {
            *streak = (streak.0.saturating_add(1), 0);
        } else {
            *streak = (0, streak.1.saturating_add(1));
        }
        let unhealthy = self.is_unhealthy();
        if unhealthy && streak.0 >= cfg.healthy_threshold {
            self.unhealthy.store(false, Ordering::Relaxed);
            return Some(true);
        }
        if !unhealthy && streak.1 >= cfg.unhealthy_threshold {
            self.unhealthy.store(true, Ordering::Relaxed);
            return Some(false);
        }
        None
    }
}

/// Counts a request as in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl InFlight {
    /// Starts counting.
    pub fn new(ep: &Endpoint) -> Self {
        ep.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(ep.stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
