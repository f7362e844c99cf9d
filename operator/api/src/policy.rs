//! `ServicePolicy`: how everyone talks to one Kubernetes Service — load balancing, outlier
//! detection, health checks, retry budget, connection limits, protocol — and who may call it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, RateLimit};

/// Desired state of a ServicePolicy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "ServicePolicy",
    plural = "servicepolicies",
    shortname = "svcpol",
    category = "portico",
    namespaced,
    status = "ServicePolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.protocol) || has(self.loadBalancer) || has(self.outlierDetection) || has(self.healthCheck) || has(self.retryBudget) || has(self.connection) || has(self.authorization) || has(self.rateLimit) || has(self.mtls)",
     "message": "a ServicePolicy must set at least one policy besides targetRef"},
    {"rule": "!has(self.protocol) || self.protocol != 'Opaque' || (!has(self.retryBudget) && !has(self.healthCheck))",
     "message": "retryBudget and HTTP healthCheck do not apply to an Opaque service", "fieldPath": ".protocol"}
]))]
pub struct ServicePolicySpec {
    /// The Service this policy applies to, in the policy's namespace.
    pub target_ref: PolicyTargetReference,
    /// The protocol the Service speaks. Defaults to detection (HTTP/1, HTTP/2, else opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ServiceProtocol>,
    /// How an endpoint is chosen for each request or connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Passive health: eject endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checks sent by the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Caps retries to a share of live traffic so retries never amplify an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Connection limits and timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionPolicy>,
    /// Which workloads may call the Service (enforced by its sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Inbound rate limit, enforced by the Service's sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Whether the Service's pods take plaintext callers. Without it, the namespace's
    /// `portico.dev/mtls-mode` annotation decides, else the mesh default (chart value
    /// `mesh.mtlsMode`, `Permissive` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
}

/// Mutual TLS between the Service's callers and its pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// `Strict`: only meshed callers (mTLS) are let in; plaintext connections are closed
    /// (the kubelet's HTTP probes excepted). `Permissive`: both.
    pub mode: MtlsMode,
}

/// Whether plaintext callers are let in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MtlsMode {
    /// mTLS and plaintext callers.
    #[default]
    Permissive,
    /// mTLS callers only.
    Strict,
}

/// The target of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target: the core group, written as an empty string.
    #[serde(default)]
    #[schemars(length(max = 0))]
    pub group: String,
    /// Only `Service` is supported.
    #[serde(default)]
    pub kind: TargetKind,
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kind of a policy target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    /// A Kubernetes Service.
    #[default]
    Service,
}

/// The protocol of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceProtocol {
    /// HTTP/1.1.
    HTTP1,
    /// HTTP/2 (prior knowledge).
    HTTP2,
    /// gRPC over HTTP/2.
    GRPC,
    /// Opaque TCP: no detection, bytes pass through (e.g. Postgres, Redis, AMQP, MySQL).
    Opaque,
}

/// Load-balancing settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.type == 'ConsistentHash') == has(self.consistentHash)",
     "message": "consistentHash must be set for type ConsistentHash, and only then", "fieldPath": ".consistentHash"}
]))]
pub struct LoadBalancer {
    /// `PeakEWMA` (power of two choices over latency; the default), `RoundRobin`, or
    /// `ConsistentHash`.
    #[serde(rename = "type", default)]
    pub type_: LoadBalancerType,
    /// What the hash is computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    /// Power of two random choices, weighted by peak-EWMA latency.
    #[default]
    PeakEWMA,
    /// Each endpoint in turn.
    RoundRobin,
    /// The same key goes to the same endpoint; removing one of N endpoints moves about 1/N of
    /// the keys.
    ConsistentHash,
}

/// The input of a consistent hash: exactly one of header, cookie and sourceIP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.header), has(self.cookie), has(self.sourceIP) && self.sourceIP].filter(x, x).size() == 1",
     "message": "set exactly one of header, cookie and sourceIP"}
]))]
pub struct ConsistentHash {
    /// Hash this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Hash this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    /// Hash the client address.
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Outlier detection (circuit breaking per endpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (5xx or connection errors) that eject an endpoint. Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// First ejection time; it grows with each further ejection. Defaults to 30s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Longest ejection time. Defaults to 300s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
    /// Largest share of endpoints ejected at once, 0–100. Defaults to 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
}

/// Active HTTP health checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.timeout) || duration(self.timeout) < (has(self.interval) ? duration(self.interval) : duration('10s'))",
     "message": "timeout must be shorter than interval (10s when not set)", "fieldPath": ".timeout"}
]))]
pub struct HealthCheck {
    /// Path requested with GET (a status 200–399 passes).
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[!-~]*$"))]
    pub path: String,
    /// Port to check; defaults to the serving port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Time between checks. Defaults to 10s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time a check may take. Defaults to 1s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Successes that mark an endpoint healthy again. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<i32>,
    /// Failures that mark an endpoint unhealthy. Defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<i32>,
}

/// Retry budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed as a percentage of live requests, 0–100. Defaults to 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
    /// Retries always allowed per second, whatever the traffic. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub min_retries_per_second: Option<i32>,
    /// Window over which requests are counted. Defaults to 10s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Connection limits and timeouts towards the Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPolicy {
    /// Most open connections per proxy to the Service; further requests queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: Option<i32>,
    /// Most requests queued for a connection; beyond it the proxy answers 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_pending_requests: Option<i32>,
    /// Time to establish a connection. Defaults to 1s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Idle connections are closed after this. Defaults to 90s. A duration such as `10s`, `1m30s` or `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// Inbound authorization by client identity: the caller's ServiceAccount, proven by the
/// workload certificate its proxy presents in the mesh mTLS handshake (never its address).
/// `defaultAction: Allow` lets in any meshed caller; `allowUnauthenticated` adds callers
/// outside the mesh (plaintext).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.defaultAction == 'Allow' || (has(self.allowedServiceAccounts) && size(self.allowedServiceAccounts) > 0) || (has(self.allowUnauthenticated) && self.allowUnauthenticated)",
     "message": "defaultAction Deny with no allowedServiceAccounts rejects every caller; list the callers to allow", "fieldPath": ".allowedServiceAccounts"}
]))]
pub struct Authorization {
    /// What happens to callers not listed. Defaults to `Deny`.
    #[serde(default)]
    pub default_action: AuthorizationAction,
    /// ServiceAccounts that may call the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_service_accounts: Vec<ServiceAccountRef>,
    /// Allow callers without a mesh identity (outside the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated: Option<bool>,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum AuthorizationAction {
    Allow,
    #[default]
    Deny,
}

/// A ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount; `*` for any in the namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; defaults to the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Observed state of a ServicePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicyStatus {
    /// `Accepted`, with reasons `TargetNotFound` or `Conflicted` when false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}
