//! `Gateway`: an entry point into the cluster. The operator runs a proxy Deployment and a
//! Service for each Gateway; Routes attach to its listeners.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Authentication, Cors, Duration, RateLimit, SecretObjectReference};

/// Desired state of a Gateway: its listeners, how it is deployed, and defaults for the Routes
/// attached to it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "Gateway",
    plural = "gateways",
    shortname = "pgw",
    category = "portico",
    namespaced,
    status = "GatewayStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.addresses[0].value"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.listeners.all(l1, self.listeners.exists_one(l2, l1.name == l2.name))",
     "message": "listener names must be unique", "fieldPath": ".listeners"},
    {"rule": "self.listeners.all(l1, self.listeners.exists_one(l2, l1.port == l2.port && (has(l1.hostname) ? l1.hostname : '') == (has(l2.hostname) ? l2.hostname : '')))",
     "message": "listeners must have unique port and hostname combinations", "fieldPath": ".listeners"},
    {"rule": "self.listeners.all(l1, self.listeners.all(l2, l1.port != l2.port || (l1.protocol == 'TCP') == (l2.protocol == 'TCP')))",
     "message": "a TCP listener cannot share its port with an HTTP or HTTPS listener", "fieldPath": ".listeners"}
]))]
pub struct GatewaySpec {
    /// The listeners: one per port (and hostname) the Gateway accepts traffic on.
    #[schemars(length(min = 1, max = 64))]
    pub listeners: Vec<Listener>,
    /// Number of proxy replicas. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Type of the Service that exposes the listeners. Defaults to `ClusterIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<GatewayServiceType>,
    /// The proxies' access log: one JSON line per request on the proxy containers' stdout
    /// (`kubectl logs`). On when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<GatewayAccessLog>,
    /// Policies applied to every Route attached to this Gateway unless the Route sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<GatewayDefaults>,
    /// Where the rate limits of this Gateway's Routes are counted. Absent, each proxy replica
    /// keeps its own buckets (N replicas let in up to N times a limit); set, every replica takes
    /// from one budget kept in the store.
    // Boxed: every watched object is an `Object` enum as large as its largest variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_store: Option<Box<RateLimitStore>>,
}

/// A store of rate-limit buckets shared by a Gateway's proxy replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStore {
    /// A Redis server (standalone; no password, no TLS): each request runs one atomic script
    /// there, with Redis's clock.
    pub redis: RedisStore,
}

/// A Redis server that keeps rate-limit buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.timeout) || (duration(self.timeout) > duration('0s') && duration(self.timeout) <= duration('10s'))",
     "message": "timeout must be longer than 0s and at most 10s", "fieldPath": ".timeout"}
]))]
pub struct RedisStore {
    /// The server, `host:port` (`redis.cache.svc.cluster.local:6379`, `10.0.0.5:6379`,
    /// `[fd00::5]:6379`); the port is 1 to 65535, so the proxies never refuse the config.
    #[schemars(
        length(min = 3, max = 261),
        regex(
            pattern = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
        )
    )]
    pub address: String,
    /// What a request gets when Redis fails or answers later than `timeout`: `FailOpen` (the
    /// default) lets it through unlimited, `FailClosed` answers `503`. Either way the proxy
    /// counts it in `portico_rate_limit_store_errors_total`.
    #[serde(default)]
    pub failure_mode: StoreFailureMode,
    /// How long a request waits for Redis, connecting included. Defaults to `50ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// What a request gets when the rate-limit store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StoreFailureMode {
    /// Let the request through: an outage of Redis does not take the routes down.
    #[default]
    FailOpen,
    /// Answer `503`: no request passes unless its limit was checked.
    FailClosed,
}

/// One port the Gateway listens on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.protocol != 'HTTPS' || (has(self.tls) && size(self.tls.certificateRefs) > 0)",
     "message": "HTTPS listeners need tls.certificateRefs", "fieldPath": ".tls"},
    {"rule": "self.protocol == 'HTTPS' || !has(self.tls)",
     "message": "tls applies only to HTTPS listeners", "fieldPath": ".tls"},
    {"rule": "self.protocol != 'TCP' || !has(self.hostname)",
     "message": "hostname does not apply to TCP listeners", "fieldPath": ".hostname"}
]))]
pub struct Listener {
    /// Name of the listener, unique within the Gateway; Routes select it with `sectionName`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Port the proxy listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Protocol spoken on the port.
    pub protocol: ListenerProtocol,
    /// Only requests for this host (exact, or `*.example.com`) are accepted on the listener;
    /// unset accepts any host. Not used by TCP listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub hostname: Option<String>,
    /// TLS settings of an HTTPS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Which namespaces may attach Routes. Defaults to the Gateway's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// The protocol of a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c).
    #[default]
    HTTP,
    /// HTTP over TLS, with ALPN for HTTP/2.
    HTTPS,
    /// Opaque TCP: bytes are forwarded to the Route's backend unchanged.
    TCP,
}

/// TLS termination settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.certificateRefs.all(r, !has(r.key))",
     "message": "certificateRefs[].key has no meaning here: the certificate and key are the Secret's tls.crt and tls.key",
     "fieldPath": ".certificateRefs"}
]))]
pub struct ListenerTls {
    /// Secrets of type `kubernetes.io/tls` with the certificate chain and key; the first one
    /// whose names match the client's SNI is served.
    #[schemars(length(min = 1, max = 8))]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Lowest TLS version accepted. Defaults to 1.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Which namespaces may attach Routes to a listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.from == 'Selector' ? has(self.selector) : !has(self.selector)",
     "message": "selector must be set when from is Selector, and only then", "fieldPath": ".selector"}
]))]
pub struct AllowedRoutes {
    /// `Same` (the Gateway's namespace), `All`, or `Selector`.
    #[serde(default)]
    pub from: RouteNamespaces,
    /// Labels a Route's namespace must carry, with `from: Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<std::collections::BTreeMap<String, String>>,
}

/// Where attached Routes may live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouteNamespaces {
    /// Only the Gateway's namespace.
    #[default]
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match `selector`.
    Selector,
}

/// Type of the Service in front of the gateway proxies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GatewayServiceType {
    /// A cluster-internal virtual IP.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer, where the cluster provides one.
    LoadBalancer,
}

/// The access log of a Gateway's proxies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAccessLog {
    /// `false` turns the access log off (it is on by default).
    pub enabled: bool,
}

/// Policies inherited by every attached Route rule that does not set its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDefaults {
    /// Authentication required on every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Rate limit applied per route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// CORS answered on every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// Observed state of a Gateway, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// `Accepted` (the spec is valid) and `Programmed` (the proxies run it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
    /// Addresses the Gateway is reachable at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub addresses: Vec<GatewayAddress>,
    /// Per-listener status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub listeners: Vec<ListenerStatus>,
}

/// An address of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}

/// Status of one listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Number of Routes attached to this listener.
    pub attached_routes: i32,
    /// `Accepted`, `Programmed`, `ResolvedRefs` for the listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}
