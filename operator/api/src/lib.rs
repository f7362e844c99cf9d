//! Rust types of Portico's custom resources, group `portico.dev`, version `v1alpha1`.
//!
//! These types are the single source of truth for the CRDs: `portico-crdgen` writes
//! `crds/*.yaml` and the Helm chart's copy from them, and `make crds-check` fails when the
//! committed YAML is stale. Validation lives in the schema itself (bounds, enums, patterns and
//! CEL `x-kubernetes-validations` rules), so the apiserver rejects an invalid object at admission
//! with a message that names the field.
//!
//! ```text
//!   Gateway ◄──parentRefs── Route ──backendRefs──► Service ◄──targetRef── ServicePolicy
//!  (listeners)             (rules)                 (k8s)                 (how to call it)
//! ```
//!
//! Cross-namespace references need a `ReferenceGrant` (the `grant` module): the Gateway API's
//! kind, read but not defined here (its CRD is vendored, not generated).

pub mod common;
pub mod crds;
pub mod gateway;
pub mod gateway_api;
pub mod grant;
pub mod policy;
pub mod route;
pub mod route_policy;

pub use common::{Duration, GROUP, VERSION};
pub use gateway::{Gateway, GatewaySpec, GatewayStatus};
pub use grant::{ReferenceGrant, ReferenceGrantSpec};
pub use policy::{ServicePolicy, ServicePolicySpec, ServicePolicyStatus};
pub use route::{Route, RouteSpec, RouteStatus};
pub use route_policy::{RoutePolicy, RoutePolicySpec, RoutePolicyStatus};
