//! Prometheus metrics. Labels are bounded: route, backend and listener names from the config,
//! status class (`2xx`…), reload result — never paths or client addresses. Label values are
//! `Arc<str>` shared with the config, so counting a request allocates nothing.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    /// The rule's name within its route (empty for an unnamed rule).
    rule: Arc<str>,
    backend: Arc<str>,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    rule: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteBackendLabels {
    route: Arc<str>,
    rule: Arc<str>,
    backend: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    route: Arc<str>,
    rule: Arc<str>,
    /// `allowed` (the store fails open) or `refused` (it fails closed).
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterceptLabels {
    listener: Arc<str>,
    service: Arc<str>,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundRefusedLabels {
    port: Arc<str>,
    policy: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthorizationLabels {
    port: Arc<str>,
    policy: Arc<str>,
    /// The caller's SPIFFE ID, or `unauthenticated`: bounded by the mesh's ServiceAccounts
    /// that call this pod.
    client: Arc<str>,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthnLabels {
    route: Arc<str>,
    /// `jwt`, `api_key`, `basic`, or empty when refused.
    method: &'static str,
    /// The API key's entry name or the basic user (both bounded by the config); empty for
    /// JWTs (whose subjects are not) and refusals.
    client: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    backend: Arc<str>,
    result: &'static str,
}

/// Active health checks, by backend and result: `portico_health_checks_total` (`pass`, `fail`)
/// and `portico_health_transitions_total` (`healthy`, `unhealthy`: what an endpoint became).
/// Cheap to clone; clones count together (each probing task holds one).
#[derive(Clone, Debug, Default)]
pub struct HealthMetrics {
    checks: Family<HealthLabels, Counter>,
    transitions: Family<HealthLabels, Counter>,
}

impl HealthMetrics {
    /// Counts one check of an endpoint of `backend`.
    pub fn check(&self, backend: &Arc<str>, passed: bool) {
        let result = if passed { "pass" } else { "fail" };
        self.checks
            .get_or_create(&HealthLabels {
                backend: backend.clone(),
                result,
            })
            .inc();
    }

    /// Counts an endpoint of `backend` becoming healthy (`true`) or unhealthy.
    pub fn transition(&self, backend: &Arc<str>, healthy: bool) {
        let result = if healthy { "healthy" } else { "unhealthy" };
        self.transitions
            .get_or_create(&HealthLabels {
                backend: backend.clone(),
                result,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    route: Arc<str>,
    rule: Arc<str>,
    result: &'static str,
}

/// The response cache and fallbacks, by route and rule: `portico_cache_lookups_total`
/// (`result`: `hit`, `miss`), `portico_cache_stores_total`, `portico_cache_evictions_total`
/// (entries pushed out by the byte cap), `portico_cache_bytes`, and
/// `portico_fallbacks_total` (`result`: `stale`, `default`). Cheap to clone; clones count
/// together (the cache store holds one).
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    lookups: Family<CacheLabels, Counter>,
    stores: Family<RouteLabels, Counter>,
    evictions: Family<RouteLabels, Counter>,
    bytes: Gauge,
    fallbacks: Family<CacheLabels, Counter>,
}

impl CacheMetrics {
    fn labels(route: &Arc<str>, rule: &Arc<str>, result: &'static str) -> CacheLabels {
        CacheLabels {
            route: route.clone(),
            rule: rule.clone(),
            result,
        }
    }

    /// Counts a lookup that found a fresh answer (`hit`) or asked upstream.
    pub fn lookup(&self, route: &Arc<str>, rule: &Arc<str>, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.lookups
            .get_or_create(&Self::labels(route, rule, result))
            .inc();
    }

    /// Counts an answer stored.
    pub fn store(&self, route: &Arc<str>, rule: &Arc<str>) {
        let l = RouteLabels {
            route: route.clone(),
            rule: rule.clone(),
        };
        self.stores.get_or_create(&l).inc();
    }

    /// Counts an answer evicted to make room.
    pub fn eviction(&self, route: &Arc<str>, rule: &Arc<str>) {
        let l = RouteLabels {
            route: route.clone(),
            rule: rule.clone(),
        };
        self.evictions.get_or_create(&l).inc();
    }

    /// Sets the bytes the store holds.
    pub fn set_bytes(&self, bytes: usize) {
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a failure masked with a stale answer (`stale: true`) or the default answer.
    pub fn fallback(&self, route: &Arc<str>, rule: &Arc<str>, stale: bool) {
        let result = if stale { "stale" } else { "default" };
        self.fallbacks
            .get_or_create(&Self::labels(route, rule, result))
            .inc();
    }

    /// Evictions so far, all rules together (for tests).
    pub fn evictions(&self) -> u64 {
        let mut total = 0;
        // `Family` has no iterator; the encoded text is the stable way to read it back.
        let mut registry = Registry::default();
        registry.register("e", "", self.evictions.clone());
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_ok() {
            total = text
                .lines()
                .filter(|l| l.starts_with("e_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
        }
        total
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
    result: &'static str,
}

/// Mesh mTLS handshakes, by direction (`inbound`, `outbound`) and result (`ok`, `error`).
/// Cheap to clone; clones count together. The identity store holds one, so connections made
/// anywhere count in the proxy's metrics.
#[derive(Clone, Debug, Default)]
pub struct Handshakes(Family<HandshakeLabels, Counter>);

impl Handshakes {
    /// Counts one handshake.
    pub fn record(&self, direction: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.0
            .get_or_create(&HandshakeLabels { direction, result })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 250 µs … ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Where one kind of answered request is counted: the route, rule and backend names (by the
/// address of their shared `Arc<str>`, which [`RequestHandles`] keeps alive, so no other name
/// can take it) and the status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct HandleKey {
    route: usize,
    rule: usize,
    backend: usize,
    class: &'static str,
}

/// The counter and histogram of one [`HandleKey`]: clones of the families' own (the same
/// atomics). Counting a request through them builds no labels and hashes no strings: the
/// families' lookups (two per request, SipHash over three names) were 3% of the proxy's
/// instructions per request.
#[derive(Debug)]
struct RequestHandles {
    _names: [Arc<str>; 3],
    count: Counter,
    duration: Histogram,
}

/// Handles kept before the cache starts over (names of configs long gone would otherwise stay).
const MAX_HANDLES: usize = 4096;

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Request counters and histograms by the names' addresses.
    handles: RwLock<HashMap<HandleKey, RequestHandles, fnv::FnvBuildHasher>>,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    retries: Family<RouteBackendLabels, Counter>,
    ejections: Family<BackendLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    intercepted: Family<InterceptLabels, Counter>,
    inbound_refused: Family<InboundRefusedLabels, Counter>,
    authorizations: Family<AuthorizationLabels, Counter>,
    authentications: Family<AuthnLabels, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    config_version: Gauge,
    reloads: Family<ResultLabels, Counter>,
    identity_expiry: Gauge,
    health: HealthMetrics,
    cache: CacheMetrics,
    /// The label value for "none" (no route matched, no backend chosen).
    none: Arc<str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Handshakes::default())
    }
}

impl Metrics {
    /// The metrics, counting mTLS handshakes in `handshakes`.
    pub fn new(handshakes: Handshakes) -> Self {
        let mut registry = Registry::with_prefix("portico");
        let m = Self {
            handles: RwLock::default(),
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            ejections: Family::default(),
            open_connections: Family::default(),
            intercepted: Family::default(),
            inbound_refused: Family::default(),
            authorizations: Family::default(),
            authentications: Family::default(),
            store_errors: Family::default(),
            config_version: Gauge::default(),
            reloads: Family::default(),
            identity_expiry: Gauge::default(),
            health: HealthMetrics::default(),
            cache: CacheMetrics::default(),
            registry: Registry::default(),
            none: Arc::from(""),
        };
        registry.register(
            "requests",
            "Requests answered, by route, rule (its name; empty when unnamed), backend and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers, by route and rule",
            m.durations.clone(),
        );
        registry.register("retries", "Retries sent", m.retries.clone());
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open, by listener",
            m.open_connections.clone(),
        );
        registry.register(
            "intercepted_connections",
            "Redirected connections, by listener, service dialled (empty: none, passed through) \
             and detected protocol",
            m.intercepted.clone(),
        );
        registry.register(
            "inbound_refused",
            "Requests and connections the inbound policy refused, by port, policy and reason \
             (mtls_required, authorization, rate_limit)",
            m.inbound_refused.clone(),
        );
        registry.register(
            "inbound_authorizations",
            "Inbound authorization decisions, by port, policy, caller identity and decision \
             (allow, deny)",
            m.authorizations.clone(),
        );
        registry.register(
            "authentications",
            "Route authentication results, by route, method (jwt, api_key, basic), client (API key \
             name or basic user; empty for JWTs) and result (ok, refused)",
            m.authentications.clone(),
        );
        registry.register(
            "rate_limit_store_errors",
            "Requests whose rate limit could not be checked in its store (Redis failed or was too \
             slow), by route, rule and decision (allowed: the store fails open; refused: closed)",
            m.store_errors.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Mesh mTLS handshakes, by direction (inbound, outbound) and result (ok, error)",
            handshakes.0,
        );
        registry.register(
            "config_version",
            "Generation of the config in force",
            m.config_version.clone(),
        );
        registry.register(
            "config_reloads",
            "Config applies, by result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "identity_expiry_seconds",
            "Seconds until the workload certificate expires (0 without an identity)",
            m.identity_expiry.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks of endpoints, by backend and result (pass, fail)",
            m.health.checks.clone(),
        );
        registry.register(
            "health_transitions",
            "Endpoints that became healthy or unhealthy by active health checks, by backend",
            m.health.transitions.clone(),
        );
        registry.register(
            "cache_lookups",
            "Response cache lookups, by route, rule and result (hit, miss)",
            m.cache.lookups.clone(),
        );
        registry.register(
            "cache_stores",
            "Answers stored in the response cache, by route and rule",
            m.cache.stores.clone(),
        );
        registry.register(
            "cache_evictions",
            "Answers evicted from the response cache to stay under its byte cap, by route and rule",
            m.cache.evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by the response cache (bodies, headers, keys)",
            m.cache.bytes.clone(),
        );
        registry.register(
            "fallbacks",
            "Backend failures masked by a rule's fallback, by route, rule and result (stale, default)",
            m.cache.fallbacks.clone(),
        );
        Self { registry, ..m }
    }

    /// The response cache's counters, for the cache store and the pipeline.
    pub fn cache(&self) -> &CacheMetrics {
        &self.cache
    }

    /// The health check counters, for the probing tasks.
    pub fn health(&self) -> HealthMetrics {
        self.health.clone()
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Counts one answered request; `None` labels are empty.
    pub fn request(
        &self,
        route: Option<&Arc<str>>,
        rule: Option<&Arc<str>>,
        backend: Option<&Arc<str>>,
        status: u16,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or(&self.none);
        let rule = rule.unwrap_or(&self.none);
        let backend = backend.unwrap_or(&self.none);
        let class = status_class(status);
        let key = HandleKey {
            route: Arc::as_ptr(route).cast::<u8>() as usize,
            rule: Arc::as_ptr(rule).cast::<u8>() as usize,
            backend: Arc::as_ptr(backend).cast::<u8>() as usize,
            class,
        };
        let seconds = elapsed.as_secs_f64();
        if let Some(h) = self
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            h.count.inc();
            h.duration.observe(seconds);
            return;
        }
        let h = RequestHandles {
            _names: [route.clone(), rule.clone(), backend.clone()],
            count: self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    rule: rule.clone(),
                    backend: backend.clone(),
                    status_class: class,
                })
                .clone(),
            duration: self
                .durations
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                    rule: rule.clone(),
                })
                .clone(),
        };
        h.count.inc();
        h.duration.observe(seconds);
        let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        if handles.len() >= MAX_HANDLES {
            handles.clear();
        }
        handles.insert(key, h);
    }

    /// Counts one retry.
    pub fn retry(&self, route: &Arc<str>, rule: &Arc<str>, backend: &Arc<str>) {
        self.retries
            .get_or_create(&RouteBackendLabels {
                route: route.clone(),
                rule: rule.clone(),
                backend: backend.clone(),
            })
            .inc();
    }

    /// Counts one ejection.
    pub fn ejection(&self, backend: &Arc<str>) {
        self.ejections
            .get_or_create(&BackendLabels {
                backend: backend.clone(),
            })
            .inc();
    }

    /// Adds `delta` to the open connections of `listener`.
    pub fn connections(&self, listener: &Arc<str>, delta: i64) {
        self.open_connections
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .inc_by(delta);
    }

    /// Counts one connection accepted on an OUTBOUND or INBOUND listener.
    pub fn intercepted(
        &self,
        listener: &Arc<str>,
        service: Option<&Arc<str>>,
        protocol: &'static str,
    ) {
        self.intercepted
            .get_or_create(&InterceptLabels {
                listener: listener.clone(),
                service: service.unwrap_or(&self.none).clone(),
                protocol,
            })
            .inc();
    }

    /// Counts one request or connection refused by an inbound policy.
    pub fn inbound_refused(&self, port: &Arc<str>, policy: &Arc<str>, reason: &'static str) {
        self.inbound_refused
            .get_or_create(&InboundRefusedLabels {
                port: port.clone(),
                policy: policy.clone(),
                reason,
            })
            .inc();
    }

    /// Counts one authorization decision of a guarded port for `client` (its identity).
    pub fn authorization(
        &self,
        port: &Arc<str>,
        policy: &Arc<str>,
        client: &Arc<str>,
        allowed: bool,
    ) {
        self.authorizations
            .get_or_create(&AuthorizationLabels {
                port: port.clone(),
                policy: policy.clone(),
                client: client.clone(),
                decision: if allowed { "allow" } else { "deny" },
            })
            .inc();
    }

    /// Records a route's authentication result: who passed (`None`: refused).
    pub fn authentication(&self, route: &Arc<str>, passed: Option<(&'static str, &Arc<str>)>) {
        let (method, client, result) = match passed {
            Some(("jwt", _)) => ("jwt", self.none.clone(), "ok"),
            Some((method, client)) => (method, client.clone(), "ok"),
            None => ("", self.none.clone(), "refused"),
        };
        self.authentications
            .get_or_create(&AuthnLabels {
                route: route.clone(),
                method,
                client,
                result,
            })
            .inc();
    }

    /// Counts a request whose rate-limit store failed; `let_in`: it fails open.
    pub fn rate_limit_store_error(&self, route: &Arc<str>, rule: Option<&Arc<str>>, let_in: bool) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                route: route.clone(),
                rule: rule.unwrap_or(&self.none).clone(),
                decision: if let_in { "allowed" } else { "refused" },
            })
            .inc();
    }

    /// Records a config apply.
    pub fn reload(&self, ok: bool, generation: Option<u64>) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        if let Some(g) = generation {
            self.config_version
                .set(i64::try_from(g).unwrap_or(i64::MAX));
        }
    }

    /// Seconds until the workload certificate expires (set when `/metrics` is read).
    pub fn set_identity_expiry(&self, seconds_left: i64) {
        self.identity_expiry.set(seconds_left);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, series: &str) -> Option<String> {
        m.encode()
            .lines()
            .find(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn requests_are_counted_by_label_values_whichever_names_carry_them() {
        let m = Metrics::default();
        let (route, rule, backend) = (Arc::from("r"), Arc::from("main"), Arc::from("b"));
        let ms = Duration::from_millis(1);
        m.request(Some(&route), Some(&rule), Some(&backend), 200, ms);
        m.request(Some(&route), Some(&rule), Some(&backend), 204, ms);
        m.request(Some(&route), Some(&rule), Some(&backend), 503, ms);
        // The same values in other allocations (a new config's names): the same series.
        let (route2, rule2, backend2) = (Arc::from("r"), Arc::from("main"), Arc::from("b"));
        m.request(Some(&route2), Some(&rule2), Some(&backend2), 201, ms);
        // Other values: another series.
        m.request(Some(&route), None, None, 404, ms);
        let series = |labels: &str| count(&m, &format!("portico_requests_total{{{labels}}}"));
        assert_eq!(
            series(r#"route="r",rule="main",backend="b",status_class="2xx""#).as_deref(),
            Some("3")
        );
        assert_eq!(
            series(r#"route="r",rule="main",backend="b",status_class="5xx""#).as_deref(),
            Some("1")
        );
        assert_eq!(
            series(r#"route="r",rule="",backend="",status_class="4xx""#).as_deref(),
            Some("1")
        );
        assert_eq!(
            count(
                &m,
                r#"portico_request_duration_seconds_count{route="r",rule="main"}"#
            )
            .as_deref(),
            Some("4")
        );
    }

    #[test]
    fn the_handle_cache_starts_over_when_full_and_counts_stay_whole() {
        let m = Metrics::default();
        let rule: Arc<str> = Arc::from("");
        for i in 0..MAX_HANDLES + 10 {
            let route: Arc<str> = Arc::from(format!("r{}", i % (MAX_HANDLES + 5)));
            m.request(Some(&route), Some(&rule), None, 200, Duration::ZERO);
        }
        let cached = m.handles.read().map(|h| h.len()).unwrap_or_default();
        assert!(cached <= MAX_HANDLES, "{cached} handles kept");
        assert_eq!(
            count(
                &m,
                r#"portico_requests_total{route="r3",rule="",backend="",status_class="2xx"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            count(
                &m,
                r#"portico_requests_total{route="r9",rule="",backend="",status_class="2xx"}"#
            )
            .as_deref(),
            Some("1")
        );
    }
}
