//! The operator's Prometheus metrics: watch, index and config-stream figures.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set with one `kind` (or `message`) label.
pub type KindLabel = [(&'static str, &'static str); 1];

/// Every metric the operator exports, registered in [`Metrics::registry`].
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `portico_operator_watch_events_total{kind}`: watch events applied to the index.
    pub watch_events: Family<KindLabel, Counter>,
    /// `portico_operator_watch_errors_total{kind}`: watch errors (each followed by a backoff).
    pub watch_errors: Family<KindLabel, Counter>,
    /// `portico_operator_watch_skipped_objects_total{kind}`: objects that failed to decode.
    pub watch_skipped: Family<KindLabel, Counter>,
    /// `portico_operator_index_objects`: objects held by the index.
    pub index_objects: Gauge,
    /// `portico_operator_index_route_updates_total`: RouteTable publications.
    pub index_route_updates: Gauge,
    /// `portico_operator_index_backend_updates_total`: BackendSet publications.
    pub index_backend_updates: Gauge,
    /// `portico_operator_index_update_seconds`: time to apply one event and recompute.
    pub index_update_seconds: Histogram,
    /// `portico_operator_config_streams`: proxies connected now.
    pub config_streams: Gauge,
    /// `portico_operator_config_messages_total{message}`: messages sent to proxies.
    pub config_messages: Family<KindLabel, Counter>,
    /// `portico_operator_config_bytes_total{message}`: bytes of those messages.
    pub config_bytes: Family<KindLabel, Counter>,
    /// `portico_operator_config_auth_failures_total{reason}`: refused connections.
    pub config_auth_failures: Family<KindLabel, Counter>,
    /// `portico_operator_config_streams_revoked_total{reason}`: open streams ended because
    /// their token no longer passed a re-check.
    pub config_streams_revoked: Family<KindLabel, Counter>,
    /// `portico_operator_identity_certificates_total{result}`: workload certificate requests
    /// (`issued`, `refused`, `unauthenticated`, `forbidden`, `bad_request`, `error`).
    pub identity_certificates: Family<KindLabel, Counter>,
    /// `portico_operator_identity_issuer_reloads_total{result}`: changes of the issuer's files
    /// taken (`reloaded`) or refused (`refused`: the previous issuer keeps signing).
    pub identity_issuer_reloads: Family<KindLabel, Counter>,
    /// `portico_operator_status_patches_total{kind}`: status writes.
    pub status_patches: Family<KindLabel, Counter>,
    /// `portico_operator_leader`: 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portico_operator");
        let m = Self {
            registry: Registry::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            watch_skipped: Family::default(),
            index_objects: Gauge::default(),
            index_route_updates: Gauge::default(),
            index_backend_updates: Gauge::default(),
            index_update_seconds: Histogram::new([
                1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5,
            ]),
            config_streams: Gauge::default(),
            config_messages: Family::default(),
            config_bytes: Family::default(),
            config_auth_failures: Family::default(),
            config_streams_revoked: Family::default(),
            identity_certificates: Family::default(),
            identity_issuer_reloads: Family::default(),
            status_patches: Family::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "watch_events",
            "Watch events applied to the index",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors, each followed by a backoff",
            m.watch_errors.clone(),
        );
        registry.register(
            "watch_skipped_objects",
            "Watched objects skipped because they failed to decode",
            m.watch_skipped.clone(),
        );
        registry.register(
            "index_objects",
            "Objects held by the index",
            m.index_objects.clone(),
        );
        registry.register(
            "index_route_updates",
            "RouteTable publications since start",
            m.index_route_updates.clone(),
        );
        registry.register(
            "index_backend_updates",
            "BackendSet publications since start",
            m.index_backend_updates.clone(),
        );
        registry.register(
            "index_update_seconds",
            "Time to apply one watch event and recompute the outputs",
            m.index_update_seconds.clone(),
        );
        registry.register(
            "config_streams",
            "Proxies connected to the config server",
            m.config_streams.clone(),
        );
        registry.register(
            "config_messages",
            "Config messages sent to proxies",
            m.config_messages.clone(),
        );
        registry.register(
            "config_bytes",
            "Bytes of the config messages sent to proxies",
            m.config_bytes.clone(),
        );
        registry.register(
            "config_auth_failures",
            "Config-server requests refused by authentication or authorization",
            m.config_auth_failures.clone(),
        );
        registry.register(
            "config_streams_revoked",
            "Open config streams ended because their token no longer passed a re-check",
            m.config_streams_revoked.clone(),
        );
        registry.register(
            "identity_certificates",
            "Workload certificate requests, by result",
            m.identity_certificates.clone(),
        );
        registry.register(
            "identity_issuer_reloads",
            "Changes of the identity issuer's files, by result (reloaded, refused)",
            m.identity_issuer_reloads.clone(),
        );
        registry.register(
            "status_patches",
            "Status patches written",
            m.status_patches.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease",
            m.leader.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
