//! Active health checks: each proxy probes every endpoint of a backend that has a
//! `healthCheck` with `GET <path>`, and the balancer skips an endpoint while it is unhealthy.
//!
//! ```text
//!  every interval ±10% (per endpoint, so checks spread out)
//!    GET path ─► 200–399 within timeout ─► pass ─► healthyThreshold passes in a row   ─► healthy
//!             └► else (refused, reset, timeout, other status) ─► unhealthyThreshold fails ─► unhealthy
//! ```
//!
//! An endpoint starts healthy: Kubernetes readiness already vouched for it, and its first check
//! runs within a tenth of the interval. Health lives in the endpoint's [`EndpointStats`], which
//! survive config reloads, so a reload neither forgets an unhealthy endpoint nor restarts its
//! count. One task probes one endpoint; it holds only weak references and ends when a reload
//! removes the endpoint or changes the backend's check (the new [`HealthChecker`] starts its
//! own). Checkers are started for a config only once it is in force ([`HealthChecker::start`]),
//! so a config that is refused never probes anything. A meshed endpoint is probed over mTLS as
//! this proxy's identity, like its requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use portico_proxy_api::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::{Endpoint, EndpointStats};
use super::connect::{self, Dest};
use crate::mesh::identity;
use crate::mesh::mtls::MeshProtocol;
use crate::observe::metrics::HealthMetrics;

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

/// The active health checks of one backend, for one `healthCheck` config.
#[derive(Debug)]
pub struct HealthChecker {
    backend: Arc<str>,
    cfg: HealthCheck,
    /// The endpoints that have a probing task, by address, with the stats that task updates.
    probing: Mutex<HashMap<SocketAddr, Weak<EndpointStats>>>,
}

/// What a probe needs besides its checker: who this proxy is (for meshed endpoints) and where
/// to count.
#[derive(Clone, Debug)]
pub struct ProbeContext {
    /// This proxy's workload identity, if it has one.
    pub identity: Option<Arc<identity::Store>>,
    /// Health check counters.
    pub metrics: HealthMetrics,
}

impl HealthChecker {
    /// A checker for `backend` with `cfg`; nothing runs until [`start`](Self::start).
    pub fn new(backend: Arc<str>, cfg: HealthCheck) -> Self {
        Self {
            backend,
            cfg,
            probing: Mutex::default(),
        }
    }

    /// The config this checker runs.
    pub fn config(&self) -> &HealthCheck {
        &self.cfg
    }

    /// Starts a probing task for each endpoint that has none. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>, endpoints: &[Endpoint], ctx: &ProbeContext) {
        let mut probing = self.probing.lock().unwrap_or_else(PoisonError::into_inner);
        for ep in endpoints {
            let running = probing
                .get(&ep.addr)
                .and_then(Weak::upgrade)
                .is_some_and(|s| Arc::ptr_eq(&s, &ep.stats));
            if running {
                continue;
            }
            probing.insert(ep.addr, Arc::downgrade(&ep.stats));
            let mut addr = ep.addr;
            if let Some(port) = self.cfg.port {
                addr.set_port(port);
            }
            let mut dest = Dest::plain(addr);
            if let Some(id) = &ep.identity {
                dest.mesh = connect::mesh_dest(ctx.identity.as_deref(), id);
            }
            tokio::spawn(probe_loop(
                Arc::downgrade(self),
                Arc::downgrade(&ep.stats),
                ep.addr,
                dest,
                ctx.metrics.clone(),
            ));
        }
    }
}

/// Probes one endpoint until its checker or its stats are gone.
async fn probe_loop(
    checker: Weak<HealthChecker>,
    stats: Weak<EndpointStats>,
    endpoint: SocketAddr,
    dest: Dest,
    metrics: HealthMetrics,
) {
    let first = checker.upgrade().map(|c| c.cfg.interval.get() / 10);
    let mut wait = jittered(first.unwrap_or_default());
    loop {
        tokio::time::sleep(wait).await;
        let (Some(c), Some(s)) = (checker.upgrade(), stats.upgrade()) else {
            if let Some(c) = checker.upgrade() {
                let mut probing = c.probing.lock().unwrap_or_else(PoisonError::into_inner);
                if probing.get(&endpoint).is_some_and(|w| w.ptr_eq(&stats)) {
                    probing.remove(&endpoint);
                }
            }
            return;
        };
        let cfg = c.cfg.clone();
        let backend = c.backend.clone();
        // Not held across the probe: a reload that drops them ends this task at the next turn.
        drop((c, s));
        let passed = probe(&dest, &cfg).await;
        metrics.check(&backend, passed);
        let Some(s) = stats.upgrade() else {
            return;
        };
        match s.health.record(passed, &cfg) {
            Some(true) => {
                tracing::info!(%backend, %endpoint, "endpoint passes its health checks again");
                metrics.transition(&backend, true);
            }
            Some(false) => {
                tracing::warn!(%backend, %endpoint, path = %cfg.path, "endpoint fails its health checks; no requests until it passes");
                metrics.transition(&backend, false);
            }
            None => {}
        }
        wait = jittered(cfg.interval.get());
    }
}

/// `d` ± 10%, so that the checks of many endpoints and proxies do not line up.
fn jittered(d: Duration) -> Duration {
    let tenth = d / 10;
    if tenth.is_zero() {
        return d;
    }
    let spread = rand::random_range(0..=2 * tenth.as_micros() as u64);
    d - tenth + Duration::from_micros(spread)
}

/// One check: `GET path` over a new connection; a status 200–399 within the timeout passes.
pub async fn probe(dest: &Dest, cfg: &HealthCheck) -> bool {
    let timeout = cfg.timeout.get();
    let check = async {
        let mut conn = connect::connect(dest, timeout, MeshProtocol::Http1)
            .await
            .ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portico-health-check\r\nConnection: close\r\n\r\n",
            cfg.path, dest.addr
        );
        conn.write_all(request.as_bytes()).await.ok()?;
        conn.flush().await.ok()?;
        // The status line is all a check needs: `HTTP/1.x NNN`.
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head).ok()?;
        let status: u16 = line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
        Some((200..400).contains(&status))
    };
    tokio::time::timeout(timeout, check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            port: None,
            interval: portico_proxy_api::Duration::from_secs(10),
            timeout: portico_proxy_api::Duration::from_secs(1),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    #[test]
    fn thresholds_count_results_in_a_row() {
        let h = Health::default();
        let c = cfg(2, 3);
        assert_eq!(h.record(false, &c), None);
        assert_eq!(h.record(false, &c), None);
        assert_eq!(h.record(true, &c), None, "a pass breaks the failure streak");
        assert_eq!(h.record(false, &c), None);
        assert_eq!(h.record(false, &c), None);
        assert_eq!(h.record(false, &c), Some(false));
        assert!(h.is_unhealthy());
        assert_eq!(h.record(false, &c), None, "no second transition");
        assert_eq!(h.record(true, &c), None);
        assert_eq!(h.record(true, &c), Some(true));
        assert!(!h.is_unhealthy());
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_probe_passes_on_2xx_and_3xx_and_fails_otherwise() {
        use tokio::net::TcpListener;
        for (answer, passes) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            ("HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n", true),
            (
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            ("garbage", false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.expect("read");
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                s.write_all(answer.as_bytes()).await.expect("write");
                req
            });
            assert_eq!(
                probe(&Dest::plain(addr), &cfg(1, 1)).await,
                passes,
                "{answer}"
            );
            let req = server.await.expect("server");
            assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        }
        // Nothing listening: a failure, not a hang.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        assert!(!probe(&Dest::plain(addr), &cfg(1, 1)).await);
    }
}
