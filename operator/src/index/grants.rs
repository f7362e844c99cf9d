//! Cross-namespace references and the ReferenceGrants that permit them, as in the Gateway API:
//! a reference from an object in namespace A to an object in namespace B is followed only when a
//! ReferenceGrant in B trusts A's kind from A (`from`) for B's kind, or that one name (`to`).
//!
//! ```text
//!  Route shop/orders ──backendRef──► Service pay/api     followed when pay holds a grant
//!                                                        from {portico.dev, Route, shop}
//!                                                        to   {"", Service, name: api | none}
//! ```
//!
//! A reference within one namespace needs no grant. Without a grant, the reference is refused
//! (`ResolvedRefs=False`, reason [`REF_NOT_PERMITTED`]); a grant added or deleted recomputes
//! everything, like any other non-endpoint change.

use std::borrow::Cow;

use portico_api::ReferenceGrant;
use portico_proxy_api as contract;

use super::{Index, Key, RouteEntry, ServicePort, Wanted};

/// The condition reason of a reference no ReferenceGrant permits (the Gateway API's word).
pub(super) const REF_NOT_PERMITTED: &str = "RefNotPermitted";

/// A kind, by API group and name (`""` is the core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupKind {
    /// API group.
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
}

impl std::fmt::Display for GroupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.kind)
        } else {
            write!(f, "{}/{}", self.group, self.kind)
        }
    }
}

/// Portico's Route, as a grant's `from` names it.
pub(super) const ROUTE: GroupKind = GroupKind {
    group: portico_api::GROUP,
    kind: "Route",
};
/// Portico's Gateway, as a grant's `from` names it.
pub(super) const GATEWAY: GroupKind = GroupKind {
    group: portico_api::GROUP,
    kind: "Gateway",
};
/// A core Service, as a grant's `to` names it.
pub(super) const SERVICE: GroupKind = GroupKind {
    group: "",
    kind: "Service",
};
/// A core Secret, as a grant's `to` names it.
pub(super) const SECRET: GroupKind = GroupKind {
    group: "",
    kind: "Secret",
};

/// One reference: an object of kind `from` in namespace `from_namespace` names the object `to`
/// (namespace and name) of kind `to_kind`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reference<'a> {
    /// The referring kind.
    pub from: GroupKind,
    /// The referring object's namespace.
    pub from_namespace: &'a str,
    /// The referred kind.
    pub to_kind: GroupKind,
    /// The referred object.
    pub to: &'a Key,
}

impl Reference<'_> {
    /// Whether the reference leaves its namespace (and so needs a grant).
    pub fn crosses_namespaces(&self) -> bool {
        self.from_namespace != self.to.namespace
    }

    /// Why the reference is refused, naming the grant it needs, e.g. `Service other/pay needs a
    /// ReferenceGrant in namespace other from portico.dev/Route in shop`.
    pub fn refusal(&self) -> String {
        format!(
            "{} {} needs a ReferenceGrant in namespace {} from {} in {}",
            self.to_kind.kind, self.to, self.to.namespace, self.from, self.from_namespace
        )
    }
}

/// Whether `grant` (which must live in the referred object's namespace) permits `r`.
fn permits(grant: &ReferenceGrant, r: &Reference<'_>) -> bool {
    let from = grant.spec.from.iter().any(|f| {
        f.group == r.from.group && f.kind == r.from.kind && f.namespace == r.from_namespace
    });
    let to = grant.spec.to.iter().any(|t| {
        t.group == r.to_kind.group
            && t.kind == r.to_kind.kind
            && t.name.as_ref().is_none_or(|n| *n == r.to.name)
    });
    from && to
}

impl Index {
    /// Whether reference `r` may be followed: always within a namespace, else when a
    /// ReferenceGrant in the referred object's namespace permits it.
    pub(super) fn permitted(&self, r: &Reference<'_>) -> bool {
        if !r.crosses_namespaces() {
            return true;
        }
        self.grants
            .range(Key::new(&r.to.namespace, "")..)
            .take_while(|(k, _)| k.namespace == r.to.namespace)
            .any(|(_, g)| permits(g, r))
    }

    /// Whether a route of kind `from` in `route_ns` may send to Service port `sp`.
    pub(super) fn route_may_use(&self, from: GroupKind, route_ns: &str, sp: &ServicePort) -> bool {
        sp.namespace == route_ns
            || self.permitted(&Reference {
                from,
                from_namespace: route_ns,
                to_kind: SERVICE,
                to: &sp.service_key(),
            })
    }

    /// The rules of Route `rkey` to send to proxies, and the Service ports they send to, with
    /// the backend refs no grant permits refused (see [`RouteEntry::served`]).
    pub(super) fn served_rules<'a>(
        &self,
        rkey: &Key,
        route: &'a RouteEntry,
    ) -> (Cow<'a, [contract::RouteRule]>, Cow<'a, Wanted>) {
        // A Gateway API route's rule answers 500 for a Service (or port) that does not exist
        // too, as the Gateway API asks; a Portico Route's waits for it (503, no endpoints).
        let (mut rules, refs) = route.served(&rkey.namespace, |sp| {
            self.route_may_use(route.origin, &rkey.namespace, sp)
                && (!route.is_api() || self.service_has_port(sp))
        });
        // Authentication reads Secrets, which change apart from the Route: resolved here, on
        // every recompute, not when the Route arrived.
        for (i, rule) in route.spec.rules.iter().enumerate() {
            if let Some(a) = &rule.authentication {
                let (auth, _) = self.authentication(route.credentials_from(), &rkey.namespace, a);
                if let Some(r) = rules.to_mut().get_mut(i) {
                    r.authentication = Some(auth);
                }
            }
        }
        (rules, refs)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grant(from: serde_json::Value, to: serde_json::Value) -> ReferenceGrant {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"namespace": "pay", "name": "g"},
            "spec": {"from": from, "to": to}
        }))
        .unwrap()
    }

    fn route_to(service: &Key) -> Reference<'_> {
        Reference {
            from: ROUTE,
            from_namespace: "shop",
            to_kind: SERVICE,
            to: service,
        }
    }

    #[test]
    fn a_grant_permits_only_its_from_kind_namespace_and_its_to_kind_and_name() {
        let api = Key::new("pay", "api");
        let from_shop = json!([{"group": "portico.dev", "kind": "Route", "namespace": "shop"}]);
        let any_service = json!([{"group": "", "kind": "Service"}]);
        assert!(permits(
            &grant(from_shop.clone(), any_service.clone()),
            &route_to(&api)
        ));
        let only_api = json!([{"group": "", "kind": "Service", "name": "api"}]);
        assert!(permits(
            &grant(from_shop.clone(), only_api),
            &route_to(&api)
        ));
        let only_db = json!([{"group": "", "kind": "Service", "name": "db"}]);
        assert!(!permits(
            &grant(from_shop.clone(), only_db),
            &route_to(&api)
        ));
        let secrets = json!([{"group": "", "kind": "Secret"}]);
        assert!(!permits(&grant(from_shop, secrets), &route_to(&api)));
        let from_gateways =
            json!([{"group": "portico.dev", "kind": "Gateway", "namespace": "shop"}]);
        assert!(!permits(
            &grant(from_gateways, any_service.clone()),
            &route_to(&api)
        ));
        let from_elsewhere = json!([{"group": "portico.dev", "kind": "Route", "namespace": "x"}]);
        assert!(!permits(
            &grant(from_elsewhere, any_service.clone()),
            &route_to(&api)
        ));
        let httproutes = json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}]);
        assert!(!permits(&grant(httproutes, any_service), &route_to(&api)));
    }

    #[test]
    fn a_refusal_names_the_grant_it_needs() {
        let pay = Key::new("other", "pay");
        assert_eq!(
            route_to(&pay).refusal(),
            "Service other/pay needs a ReferenceGrant in namespace other from portico.dev/Route in shop"
        );
    }
}
