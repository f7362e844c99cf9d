//! `ReferenceGrant`: the Gateway API's kind (`gateway.networking.k8s.io/v1`) that lets objects
//! of one namespace refer to objects of another.
//!
//! Portico uses the upstream kind rather than one of its own, so users write one grant for
//! Portico and for any Gateway API implementation. Its CRD is vendored unchanged
//! (`crds/gateway.networking.k8s.io_referencegrants.yaml`), not generated: this type is only
//! for reading grants, and is not in [`crate::crds::all`].
//!
//! ```text
//!  Route shop/orders ──backendRef──► Service pay/api
//!                                    ▲
//!  ReferenceGrant pay/from-shop: from {portico.dev, Route, shop} to {"", Service, name?}
//! ```

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group of the Gateway API.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Who may refer to what in the grant's namespace: any `from` may refer to any `to`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "ReferenceGrant",
    plural = "referencegrants",
    namespaced,
    derive = "PartialEq",
    derive = "Default"
)]
pub struct ReferenceGrantSpec {
    /// The objects, by group, kind and namespace, that may refer to the `to` objects.
    pub from: Vec<ReferenceGrantFrom>,
    /// The objects of the grant's namespace that may be referred to.
    pub to: Vec<ReferenceGrantTo>,
}

/// A kind of object in one namespace that a grant trusts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferenceGrantFrom {
    /// API group of the referring kind (`portico.dev` for Portico's Route and Gateway).
    pub group: String,
    /// The referring kind (`Route`, `Gateway`).
    pub kind: String,
    /// The referring object's namespace.
    pub namespace: String,
}

/// A kind of object (or one object) in the grant's namespace that may be referred to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferenceGrantTo {
    /// API group of the referred kind (`""` for Services and Secrets).
    pub group: String,
    /// The referred kind (`Service`, `Secret`).
    pub kind: String,
    /// The one object that may be referred to; absent, every object of that kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
