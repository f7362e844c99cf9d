//! Attachment: which listeners of a Gateway a Route's parent ref attaches to, or why it does
//! not (the reason and message of the Route's `Accepted` condition).
//!
//! A parent ref narrows the Gateway's listeners three times, each with its own reason when
//! nothing is left: by `sectionName` (`NoMatchingParent`), by the listeners' `allowedRoutes`
//! (`NotAllowedByListeners`), by hostname intersection (`NoMatchingListenerHostname`).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use portico_api::Gateway;
use portico_api::gateway::{Listener, RouteNamespaces};
use portico_api::route::{ParentKind, ParentReference};

use super::{Index, Key, RouteEntry, gateway_api, hostnames};

/// The outcome of one parent ref against one Gateway.
pub(super) enum Attachment {
    /// Attached to these listeners (indexes into the Gateway's listeners).
    Attached(Vec<usize>),
    /// Not attached; `reason` and `message` are the Route's `Accepted` condition's.
    Rejected {
        /// CamelCase reason, e.g. `NotAllowedByListeners`.
        reason: &'static str,
        /// What did not match, naming the Gateway or namespace.
        message: String,
    },
}

impl Index {
    /// Whether `route`'s namespace may attach to `listener` of `gw`.
    fn namespace_allowed(&self, gw: &Gateway, listener: &Listener, route_ns: &str) -> bool {
        let gw_key = Key::of(gw);
        if self.api_gateway_keys.contains(&gw_key) {
            return self.api_namespace_allowed(&gw_key, &listener.name, route_ns);
        }
        let allowed = listener.allowed_routes.clone().unwrap_or_default();
        match allowed.from {
            RouteNamespaces::Same => gw.namespace().as_deref() == Some(route_ns),
            RouteNamespaces::All => true,
            RouteNamespaces::Selector => {
                let Some(ns) = self.namespaces.get(route_ns) else {
                    return false;
                };
                let labels = ns.labels();
                allowed
                    .selector
                    .unwrap_or_default()
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            }
        }
    }

    /// Whether a Gateway API listener allows routes from `route_ns`: `Same`, `All`, or a
    /// `Selector` with labels and expressions.
    fn api_namespace_allowed(&self, gw_key: &Key, listener: &str, route_ns: &str) -> bool {
        let Some(l) = self
            .api_gateways
            .get(gw_key)
            .and_then(|e| e.listener(listener))
        else {
            return false;
        };
        let namespaces = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.clone())
            .unwrap_or_default();
        match namespaces.from.as_deref().unwrap_or("Same") {
            "All" => true,
            "Selector" => self
                .namespaces
                .get(route_ns)
                .is_some_and(|ns| namespaces.selector.unwrap_or_default().matches(ns.labels())),
            _ => gw_key.namespace == route_ns,
        }
    }

    /// Whether a listener of `gw` takes routes of `route`'s kind: a Portico Gateway takes
    /// Portico Routes; a Gateway API listener takes its `allowedRoutes.kinds` (by default
    /// HTTPRoute and GRPCRoute).
    fn kind_allowed(&self, gw_key: &Key, listener: &Listener, route: &RouteEntry) -> bool {
        if !self.api_gateway_keys.contains(gw_key) {
            return !route.is_api();
        }
        self.api_gateways
            .get(gw_key)
            .and_then(|e| e.listener(&listener.name))
            .is_some_and(|l| gateway_api::listener_kinds(l).contains(&route.origin))
    }

    /// Whether `parent` of `route` names Gateway `gw_key` of the route's own API: a Portico
    /// Route's Gateway parents are Portico Gateways, a Gateway API route's are the Gateway
    /// API's.
    pub(super) fn parent_names(
        &self,
        route: &RouteEntry,
        parent: &ParentReference,
        route_ns: &str,
        gw_key: &Key,
    ) -> bool {
        parent.kind == ParentKind::Gateway
            && parent.name == gw_key.name
            && parent.namespace.as_deref().unwrap_or(route_ns) == gw_key.namespace
            && route.is_api() == self.api_gateway_keys.contains(gw_key)
    }

    /// Which listeners (by index) of `gw` one parent ref of `route` attaches to, or why none.
    pub(super) fn attach(
        &self,
        gw: &Gateway,
        route: &RouteEntry,
        parent: &ParentReference,
    ) -> Attachment {
        let route_ns = route.namespace().unwrap_or_default();
        let gw_key = Key::of(gw);
        let by_section: Vec<usize> = gw
            .spec
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| p == l.port))
            .map(|(i, _)| i)
            .collect();
        if by_section.is_empty() {
            return Attachment::Rejected {
                reason: "NoMatchingParent",
                message: format!(
                    "Gateway {}/{} has no listener {:?}",
                    gw.namespace().unwrap_or_default(),
                    gw.name_any(),
                    parent.section_name.as_deref().unwrap_or_default()
                ),
            };
        }
        let allowed: Vec<usize> = by_section
            .into_iter()
            .filter(|i| self.namespace_allowed(gw, &gw.spec.listeners[*i], &route_ns))
            .filter(|i| self.kind_allowed(&gw_key, &gw.spec.listeners[*i], route))
            .collect();
        if allowed.is_empty() {
            return Attachment::Rejected {
                reason: "NotAllowedByListeners",
                message: format!(
                    "no listener of Gateway {} allows Routes from namespace {route_ns}",
                    gw.name_any()
                ),
            };
        }
        let matching: Vec<usize> = allowed
            .into_iter()
            .filter(|i| hostnames::listener_takes(&gw.spec.listeners[*i], &route.spec.hostnames))
            .collect();
        if matching.is_empty() {
            return Attachment::Rejected {
                reason: "NoMatchingListenerHostname",
                message: "no listener hostname matches the Route's hostnames".to_owned(),
            };
        }
        Attachment::Attached(matching)
    }

    /// The listener indexes of `gw` that `route` attaches to, over all its parent refs.
    pub(super) fn attached_listeners(
        &self,
        gw_key: &Key,
        gw: &Gateway,
        route: &RouteEntry,
    ) -> BTreeSet<usize> {
        let route_ns = route.namespace().unwrap_or_default();
        route
            .spec
            .parent_refs
            .iter()
            .filter(|p| self.parent_names(route, p, &route_ns, gw_key))
            .filter_map(|p| match self.attach(gw, route, p) {
                Attachment::Attached(ls) => Some(ls),
                Attachment::Rejected { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// The Routes that name each Gateway as a parent, in Route order: a full recompute then
    /// looks at each Gateway's own Routes only, not at every Route for every Gateway.
    pub(super) fn routes_by_gateway(&self) -> BTreeMap<Key, Vec<Key>> {
        let mut map: BTreeMap<Key, Vec<Key>> = BTreeMap::new();
        for (rkey, route) in &self.routes {
            let parents: BTreeSet<Key> = route
                .spec
                .parent_refs
                .iter()
                .filter(|p| p.kind == ParentKind::Gateway)
                .map(|p| Key::new(p.namespace.as_deref().unwrap_or(&rkey.namespace), &p.name))
                .collect();
            for parent in parents {
                map.entry(parent).or_default().push(rkey.clone());
            }
        }
        map
    }
}
