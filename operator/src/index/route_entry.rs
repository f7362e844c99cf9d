//! A Route as the index keeps it: translated to contract rules once, when it arrives, with the
//! Service ports it sends to and what would keep it from being served (a value the contract
//! refuses, a field the proxies do not enforce yet).

use portico_api::Route;
use portico_proxy_api::{self as contract, ProxyConfig};

use super::{Key, ServicePort, Wanted, empty_backend, translate, unsupported};

/// A Route with its translation, done once when it arrives rather than on every recompute.
pub(crate) struct RouteEntry {
    route: Route,
    /// The contract rules.
    pub(super) rules: Vec<contract::RouteRule>,
    /// Every Service port the rules send to (backends and mirrors).
    pub(super) refs: Wanted,
    /// Why the contract refuses the Route, if it does.
    pub(super) problem: Option<String>,
    /// The unsupported fields it sets (see the `unsupported` module): it is then not served.
    pub(super) unsupported: Vec<String>,
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
                rules: rules.clone(),
            },
            &refs,
        );
        let unsupported = unsupported::route_fields(&route.spec);
        Self {
            route,
            rules,
            refs,
            problem,
            unsupported,
        }
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
