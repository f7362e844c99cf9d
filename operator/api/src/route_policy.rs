//! `RoutePolicy`: the API-gateway policies of a Portico Route rule (authentication, rate limit,
//! CORS, cache, fallback), attached to the Gateway API's HTTPRoutes, GRPCRoutes and Gateways the
//! way the Gateway API's policy attachment does it: a policy object with `targetRefs`.
//!
//! ```text
//!  RoutePolicy shop/keys ──targetRefs──► HTTPRoute shop/app (every rule, or the rule named
//!                                        by sectionName)
//!                       └──targetRefs──► Gateway shop/web (a default for every rule of every
//!                                        route on it; authentication, rateLimit, cors only)
//! ```
//!
//! A rule takes each policy from the most specific policy that sets it: one targeting its rule,
//! then one targeting its route, then one targeting its Gateway. Of two policies with the same
//! target, the older (then the one first by name) applies and the other reports `Conflicted`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Authentication, Cors, RateLimit};
use crate::route::{Cache, Fallback};

/// Desired state of a RoutePolicy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "RoutePolicy",
    plural = "routepolicies",
    shortname = "rtpol",
    category = "portico",
    namespaced,
    status = "RoutePolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".spec.targetRefs[*].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.authentication) || has(self.rateLimit) || has(self.cors) || has(self.cache) || has(self.fallback)",
     "message": "a RoutePolicy must set at least one policy besides targetRefs"},
    {"rule": "!(has(self.cache) || has(self.fallback)) || self.targetRefs.all(t, t.kind != 'Gateway')",
     "message": "cache and fallback apply to routes, not to a Gateway", "fieldPath": ".targetRefs"}
]))]
pub struct RoutePolicySpec {
    /// The Gateway API objects, in the policy's namespace, it applies to.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<RoutePolicyTarget>,
    /// Authentication required before a request is routed (see `Route.spec.rules[]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Request rate limit per client, header value or rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// CORS: preflights answered by the proxy, allowed origins marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Response caching (routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// Masking backend failures with a stale or default answer (routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// One object a RoutePolicy applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.kind != 'Gateway' || !has(self.sectionName)",
     "message": "sectionName names a rule of a route; a Gateway is targeted whole", "fieldPath": ".sectionName"}
]))]
pub struct RoutePolicyTarget {
    /// `gateway.networking.k8s.io`.
    pub group: TargetGroup,
    /// `HTTPRoute`, `GRPCRoute` or `Gateway`.
    pub kind: TargetKind,
    /// The object's name (in the policy's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// With a route: the name of the one rule the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// The API group of a RoutePolicy target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetGroup {
    /// The Gateway API.
    #[default]
    #[serde(rename = "gateway.networking.k8s.io")]
    GatewayApi,
}

/// The kind of a RoutePolicy target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    /// An HTTPRoute.
    #[default]
    HTTPRoute,
    /// A GRPCRoute.
    GRPCRoute,
    /// A Gateway (of a Portico GatewayClass).
    Gateway,
}

/// Observed state of a RoutePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutePolicyStatus {
    /// `Accepted`: every target exists and no older policy holds it (`TargetNotFound`,
    /// `Conflicted` name the ones that do not apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
