//! The live state of a backend: its endpoints with their load, latency and failure history, its
//! balancer, limiter and connection pools. State that should survive a config reload (latency
//! averages, ejections, warm connections, held limiter slots) is carried over from the previous
//! state of the backend with the same name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portico_proxy_api::{Backend, OutlierDetection};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::forward::balance::{Balancer, PickContext};
pub use crate::forward::endpoint::{Endpoint, EndpointStats, InFlight};
use crate::forward::health::HealthChecker;
use crate::forward::limits::Limiter;
use crate::forward::upstream::Clients;
use crate::observe::metrics::Metrics;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A backend as the data plane uses it.
#[derive(Debug)]
pub struct BackendState {
    /// Backend name.
    pub name: Arc<str>,
    /// The backend as configured.
    pub config: Backend,
    /// Endpoints in config order.
    pub endpoints: Vec<Endpoint>,
    /// Chooses among healthy endpoints.
    pub balancer: Balancer,
    /// Passive health checking policy.
    pub outlier: Option<OutlierDetection>,
    /// Concurrency limits.
    pub limiter: Arc<Limiter>,
    /// Connection pools.
    pub clients: Clients,
    /// The Service's own retry budget (replaces the rules'), kept across reloads that leave
    /// it unchanged.
    pub retry_budget: Option<Arc<crate::policy::retry::RetryBudget>>,
    /// Active health checks, when the backend has them (started once the config is in force).
    pub health: Option<Arc<HealthChecker>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BackendState {
    /// Builds the state for `cfg` (already validated), reusing what it can from `old`.
    pub fn new(cfg: Backend, old: Option<&BackendState>) -> Self {
        let old_stats: HashMap<SocketAddr, Arc<EndpointStats>> = old
            .map(|o| {
                o.endpoints
                    .iter()
                    .map(|e| (e.addr, e.stats.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let endpoints: Vec<Endpoint> = cfg
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr: SocketAddr = e.address.parse().ok()?;
                Some(Endpoint {
                    addr,
                    authority: addr.to_string().parse().ok()?,
                    ready: e.ready,
                    identity: e.identity.as_deref().map(Arc::from),
                    stats: old_stats.get(&addr).cloned().unwrap_or_default(),
                })
            })
            .collect();
        let balancer = Balancer::new(
            &cfg.load_balancer,
            cfg.endpoints.iter().map(|e| (e.address.as_str(), e.weight)),
        );
        let limiter = match old {
            Some(o) if *o.limiter.config() == cfg.limits => o.limiter.clone(),
            _ => Arc::new(Limiter::new(&cfg.limits)),
        };
        let connect_timeout = cfg
            .connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get());
        let idle_timeout = cfg
            .idle_timeout
            .map_or(crate::forward::upstream::IDLE_TIMEOUT, |d| d.get());
        let clients = match old {
            Some(o) if o.clients.fits(cfg.protocol, connect_timeout, idle_timeout) => {
                o.clients.clone()
            }
            _ => Clients::new(cfg.protocol, connect_timeout, idle_timeout),
        };
        let health =
            cfg.health_check
                .as_ref()
                .map(|hc| match old.and_then(|o| o.health.as_ref()) {
                    Some(kept) if kept.config() == hc => kept.clone(),
                    _ => Arc::new(HealthChecker::new(cfg.name.as_str().into(), hc.clone())),
                });
        let retry_budget =
            cfg.retry_budget
                .as_ref()
                .map(|b| match old.and_then(|o| o.retry_budget.as_ref()) {
                    Some(kept) if kept.config() == b => kept.clone(),
                    _ => Arc::new(crate::policy::retry::RetryBudget::of(b)),
                });
        Self {
            name: cfg.name.as_str().into(),
            endpoints,
            balancer,
            outlier: cfg.outlier_detection.clone(),
            limiter,
            clients,
            retry_budget,
            health,
            config: cfg,
        }
    }

    fn healthy(&self, i: usize, now: Instant) -> bool {
        let e = &self.endpoints[i];
        e.ready
            && !(self.health.is_some() && e.stats.health.is_unhealthy())
            && !lock(&e.stats.outlier).is_ejected(now)
    }

    /// Chooses an endpoint for one attempt. An endpoint that just refused a connection is
    /// passed over while another is healthy (and chosen when none is: it may be back).
    pub fn pick(&self, ctx: &PickContext<'_>) -> Result<&Endpoint, ProxyError> {
        let now = Instant::now();
        let cost = |i: usize| {
            let s = &self.endpoints[i].stats;
            let load = s.in_flight.load(Ordering::Relaxed) as f64 + 1.0;
            lock(&s.ewma).rtt_ns(now) * load
        };
        let n = self.endpoints.len();
        let i = self
            .balancer
            .pick(
                n,
                ctx,
                |i| self.healthy(i, now) && !self.endpoints[i].stats.refused(now),
                cost,
            )
            .or_else(|| self.balancer.pick(n, ctx, |i| self.healthy(i, now), cost))
            .ok_or_else(|| ProxyError::NoHealthyEndpoint(self.name.clone()))?;
        Ok(&self.endpoints[i])
    }

    /// Admits one attempt: takes a slot of the backend's concurrency limit (held until the
    /// returned permit drops; the attempt is refused when the waiting room is full too) and
    /// picks the endpoint.
    pub async fn admit(
        &self,
        ctx: &PickContext<'_>,
    ) -> Result<(Option<OwnedSemaphorePermit>, &Endpoint), ProxyError> {
        let permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| ProxyError::Overloaded(self.name.clone()))?;
        Ok((permit, self.pick(ctx)?))
    }

    /// [`record`](Self::record)s an attempt's result, and logs and counts an ejection it causes.
    pub fn report(&self, metrics: &Metrics, ep: &Endpoint, rtt: Option<Duration>, success: bool) {
        if self.record(ep, rtt, success) {
            tracing::warn!(backend = %self.name, endpoint = %ep.addr, "endpoint ejected");
            metrics.ejection(&self.name);
        }
    }

    /// Records the result of one attempt on `ep`: `rtt` when response headers arrived, and
    /// whether it counts as a success for outlier detection. Returns true if `ep` was ejected.
    pub fn record(&self, ep: &Endpoint, rtt: Option<Duration>, success: bool) -> bool {
        let now = Instant::now();
        if let Some(rtt) = rtt {
            lock(&ep.stats.ewma).observe(rtt, now);
        }
        let Some(policy) = &self.outlier else {
            return false;
        };
        let ejected_elsewhere = self
            .endpoints
            .iter()
            .filter(|e| !Arc::ptr_eq(&e.stats, &ep.stats))
            .filter(|e| lock(&e.stats.outlier).is_ejected(now))
            .count();
        lock(&ep.stats.outlier).record(
            policy,
            success,
            now,
            ejected_elsewhere,
            self.endpoints.len(),
        )
    }
}
