//! A Route as the index keeps it: translated to contract rules once, when it arrives, with the
//! Service ports it sends to and what would keep it from being served (a value the contract
//! refuses, a field the proxies do not enforce yet). What is served of it also depends on the
//! ReferenceGrants of the moment ([`RouteEntry::served`]), so that part is not kept.

use std::borrow::Cow;
use std::collections::BTreeSet;

use portico_api::Route;
use portico_api::gateway_api::{ApiParentRef, ApiRouteStatus};
use portico_proxy_api::{self as contract, ProxyConfig};

use super::gateway_api::ApiRoute;
use super::grants::{GroupKind, ROUTE};
use super::{Key, ServicePort, Wanted, empty_backend, translate};

/// A Route with its translation, done once when it arrives rather than on every recompute.
pub(crate) struct RouteEntry {
    route: Route,
    /// The contract rules.
    pub(super) rules: Vec<contract::RouteRule>,
    /// Every Service port the rules send to (backends, aggregated backends and mirrors).
    pub(super) refs: Wanted,
    /// Why the contract refuses the Route, if it does (or, for a Gateway API route, what of it
    /// Portico's model cannot express).
    pub(super) problem: Option<String>,
    /// The route's kind: Portico's Route, or the Gateway API's HTTPRoute or GRPCRoute.
    pub(super) origin: GroupKind,
    /// A Gateway API route's parent refs as written, one per `spec.parent_refs` entry.
    pub(super) api_parents: Vec<ApiParentRef>,
    /// A Gateway API route's backend refs of kinds Portico cannot send to.
    pub(super) invalid_kinds: Vec<String>,
    /// A Gateway API route's status as on the object.
    pub(super) api_status: Option<ApiRouteStatus>,
}

impl RouteEntry {
    pub(super) fn new(key: &Key, route: Route) -> Self {
        let rules: Vec<contract::RouteRule> = route
            .spec
            .rules
            .iter()
            .map(|r| translate::rule(&key.namespace, r))
            .collect();
        let refs: Wanted = route
            .spec
            .rules
            .iter()
            .flat_map(|r| translate::rule_backend_refs(&key.namespace, r))
            .collect();
        let problem = route_problem(
            &contract::Route {
                name: key.to_string(),
                listeners: Vec::new(),
                hostnames: route.spec.hostnames.iter().map(|h| h.0.clone()).collect(),
                excluded_hostnames: Vec::new(),
                rules: rules.clone(),
            },
            &refs,
        );
        Self {
            route,
            rules,
            refs,
            problem,
            origin: ROUTE,
            api_parents: Vec::new(),
            invalid_kinds: Vec::new(),
            api_status: None,
        }
    }

    /// A Gateway API route, translated (see the `gateway_api` module), under index key `key`.
    pub(super) fn from_api(key: &Key, origin: GroupKind, t: ApiRoute) -> Self {
        let mut entry = Self::new(key, t.route);
        if !t.unsupported.is_empty() {
            entry.problem = Some(t.unsupported.join("; "));
        }
        entry.origin = origin;
        entry.api_parents = t.parents;
        entry.invalid_kinds = t.invalid_kinds;
        entry.api_status = t.status;
        entry
    }

    /// The kind that names the credential Secrets of the route's rules, for grants: the Route
    /// itself, or for a Gateway API route the RoutePolicy its authentication came from.
    pub(super) fn credentials_from(&self) -> GroupKind {
        if self.is_api() {
            super::gateway_api::ROUTE_POLICY
        } else {
            ROUTE
        }
    }

    /// Whether the route is one of the Gateway API's kinds.
    pub(super) fn is_api(&self) -> bool {
        self.origin != ROUTE
    }
}

/// The body of the answer of a rule whose backend ref no ReferenceGrant permits. It names no
/// Service: the client may be outside the cluster; the Route's status says which ref and grant.
pub(super) const NOT_PERMITTED_BODY: &str = "backend reference not permitted (no ReferenceGrant)\n";

impl RouteEntry {
    /// The rules to send to proxies and the Service ports they send to, given which Service ports
    /// the Route may refer to (`permitted`; see the `grants` module). A rule with a refused
    /// backend ref (or aggregated backend) answers 500 itself, as the Gateway API asks, rather than sending a share of
    /// its requests to a Service it may not use; a refused mirror is dropped from its rule.
    /// Without refusals (the common case) the stored rules are lent, not copied.
    pub(super) fn served(
        &self,
        namespace: &str,
        permitted: impl Fn(&ServicePort) -> bool,
    ) -> (Cow<'_, [contract::RouteRule]>, Cow<'_, Wanted>) {
        let refused: BTreeSet<String> = self
            .refs
            .iter()
            .filter(|sp| !permitted(sp))
            .map(ServicePort::backend_name)
            .collect();
        if refused.is_empty() {
            return (Cow::Borrowed(&self.rules), Cow::Borrowed(&self.refs));
        }
        let mut rules = self.rules.clone();
        let mut wanted = Wanted::new();
        for (rule, spec) in rules.iter_mut().zip(&self.route.spec.rules) {
            let aggregates_refused = rule
                .aggregate
                .iter()
                .flat_map(|a| &a.backends)
                .any(|b| refused.contains(&b.backend));
            if aggregates_refused || rule.backends.iter().any(|b| refused.contains(&b.backend)) {
                rule.backends.clear();
                rule.aggregate = None;
                rule.filters = vec![contract::Filter::DirectResponse(contract::DirectResponse {
                    status: 500,
                    body: NOT_PERMITTED_BODY.to_owned(),
                    headers: vec![contract::Header {
                        name: "content-type".to_owned(),
                        value: "text/plain".to_owned(),
                    }],
                })];
                // Nothing is forwarded, so nothing is retried.
                rule.retry = None;
                continue;
            }
            rule.filters.retain(|f| {
                !matches!(f, contract::Filter::RequestMirror(m) if refused.contains(&m.backend))
            });
            wanted.extend(
                translate::rule_backend_refs(namespace, spec)
                    .filter(|sp| !refused.contains(&sp.backend_name())),
            );
        }
        (Cow::Owned(rules), Cow::Owned(wanted))
    }
}

impl std::ops::Deref for RouteEntry {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

/// Why the contract would refuse `route`, if it would. The route is checked alone, without
/// listeners, with empty backends for its references: only its own content is judged.
fn route_problem(route: &contract::Route, refs: &Wanted) -> Option<String> {
    let cfg = ProxyConfig {
        routes: vec![contract::Route {
            listeners: Vec::new(),
            ..route.clone()
        }],
        backends: refs
            .iter()
            .map(|sp: &ServicePort| empty_backend(sp.backend_name()))
            .collect(),
        ..ProxyConfig::default()
    };
    cfg.validate().err().map(|e| e.to_string())
}
