//! The route table of one Gateway's proxies: its listeners, and each attached Route narrowed to
//! the HTTP listeners it attaches to and the hostnames they share.
//!
//! ```text
//!  Gateway shop/gw ─listeners─► gateway_listeners (TLS read, unusable ones left out)
//!  Routes naming shop/gw ─attached_listeners─► TCP listeners: feed_tcp (first rule's backends)
//!                                              HTTP(S) listeners: contract Route per
//!                                                                 hostname intersection
//! ```
//!
//! A Route is left out when it attaches to nothing, when the contract refuses its content or
//! when it sets a field the proxies do not enforce yet. Status (the `status` module) says why
//! in each case. The Gateway's `defaults` fill in each served rule's missing policies, and its
//! `rateLimitStore` moves every rule's rate limit into the store its replicas share.

use portico_api::gateway::ListenerProtocol;
use portico_proxy_api::{self as contract, RouteTable};

use super::grants::GATEWAY;
use super::{Index, Key, RouteEntry, Wanted, hostnames, listeners, mesh_key, translate};

impl Index {
    /// The route table of Gateway `key`'s proxies (generation 0; the caller stamps it) and the
    /// Service ports it refers to.
    pub(super) fn gateway_routes(&self, key: &Key) -> (RouteTable, Wanted) {
        let candidates = self.routes_by_gateway().remove(key).unwrap_or_default();
        self.gateway_routes_of(key, &candidates)
    }

    /// [`Index::gateway_routes`] with the Routes that name the Gateway (`candidates`) known.
    pub(super) fn gateway_routes_of(&self, key: &Key, candidates: &[Key]) -> (RouteTable, Wanted) {
        if *key == mesh_key() {
            return self.mesh_routes();
        }
        let Some(gw) = self.gateways.get(key) else {
            return Default::default();
        };
        let defaults = gw.spec.defaults.as_ref();
        let cors_default = defaults.and_then(|d| d.cors.as_ref()).map(translate::cors);
        let rate_limit_default = defaults
            .and_then(|d| d.rate_limit.as_ref())
            .and_then(super::inbound::rate_limit);
        let auth_default = defaults.and_then(|d| d.authentication.as_ref()).map(|a| {
            // A Gateway API Gateway's defaults come from a RoutePolicy: that names the Secrets.
            let from = if self.api_gateway_keys.contains(key) {
                super::gateway_api::ROUTE_POLICY
            } else {
                GATEWAY
            };
            self.authentication(from, &key.namespace, a).0
        });
        let mut listeners = self.gateway_listeners(&key.namespace, gw);
        // The served HTTP(S) listeners' ports and hostnames, for listener isolation.
        let http_on_port: Vec<(i32, &str)> = gw
            .spec
            .listeners
            .iter()
            .zip(&listeners)
            .filter(|(l, served)| served.is_some() && l.protocol != ListenerProtocol::TCP)
            .filter_map(|(l, _)| Some((l.port, l.hostname.as_deref()?)))
            .collect();
        let mut wanted = Wanted::new();
        let mut routes = Vec::new();
        let mut ordered: Vec<(&Key, &std::sync::Arc<RouteEntry>)> = candidates
            .iter()
            .filter_map(|k| self.routes.get_key_value(k))
            .collect();
        // The proxies break ties between equally specific matches by config order: the
        // Gateway API's order is the oldest route first, then by namespace and name.
        ordered.sort_by_cached_key(|(rkey, route)| {
            (
                route.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rkey.namespace.clone(),
                route.metadata.name.clone(),
            )
        });
        for (rkey, route) in ordered {
            let attached: Vec<usize> = self
                .attached_listeners(key, gw, route)
                .into_iter()
                .filter(|i| listeners[*i].is_some())
                .collect();
            if attached.is_empty() {
                continue;
            }
            // Each route was checked alone when it arrived, so one invalid Route is dropped
            // without taking the others down; status reports it. A Route with a field the
            // proxies cannot enforce is not served at all (an auth-requiring rule served open
            // would be worse than a 404).
            if route.problem.is_some() {
                continue;
            }
            let (rules, refs) = self.served_rules(rkey, route);
            let mut http_listeners = Vec::new();
            for i in attached {
                let l = &gw.spec.listeners[i];
                if l.protocol == ListenerProtocol::TCP {
                    if let Some(Some(cl)) = listeners.get_mut(i) {
                        listeners::feed_tcp(cl, &rkey.namespace, route, &rules, &mut wanted);
                    }
                } else {
                    http_listeners.push(l);
                }
            }
            if http_listeners.is_empty() || rules.is_empty() {
                continue;
            }
            let mut rules = rules.into_owned();
            // The Gateway's defaults for every rule that has no policy of its own. A rate-limit
            // default gives each rule its own buckets (as a rule's own limit would).
            for (i, rule) in rules.iter_mut().enumerate() {
                if rule.cors.is_none() {
                    rule.cors.clone_from(&cors_default);
                }
                if rule.rate_limit.is_none() {
                    rule.rate_limit.clone_from(&rate_limit_default);
                }
                if rule.authentication.is_none() {
                    rule.authentication.clone_from(&auth_default);
                }
                if let (Some(limit), Some(store)) =
                    (&mut rule.rate_limit, &gw.spec.rate_limit_store)
                {
                    let rule_id = rule.name.clone().unwrap_or_else(|| i.to_string());
                    limit.store = Some(rate_limit_store(store, key, rkey, &rule_id));
                }
            }
            // One contract route per set of hostnames: a Route attached to listeners for
            // different hostnames (`*.bar.com` and `*.foo.com`) is served on each for that
            // listener's names only, and never for the hosts of a more specific listener on
            // the same port (isolation). The first keeps the Route's name (metrics and logs);
            // the rare others add their first listener's.
            let groups = hostnames::groups_by_served_hostnames(
                &route.spec.hostnames,
                http_listeners.iter().map(|l| {
                    let excluded = http_on_port
                        .iter()
                        .filter(|(port, h)| {
                            *port == l.port && hostnames::more_specific(h, l.hostname.as_deref())
                        })
                        .map(|(_, h)| (*h).to_owned())
                        .collect();
                    (l.name.as_str(), l.hostname.as_deref(), excluded)
                }),
            );
            let count = groups.len();
            for (n, g) in groups.into_iter().enumerate() {
                let name = match n {
                    0 => rkey.to_string(),
                    _ => format!("{rkey}#{}", g.listeners[0]),
                };
                // The last (usually the only) group takes the rules; others copy them.
                let rules = if n + 1 == count {
                    std::mem::take(&mut rules)
                } else {
                    rules.clone()
                };
                routes.push(contract::Route {
                    name,
                    listeners: g.listeners,
                    hostnames: g.hostnames,
                    excluded_hostnames: g.excluded,
                    rules,
                });
            }
            wanted.extend(refs.iter().cloned());
        }
        let listeners = listeners::merge_by_port(listeners::served(listeners), &mut routes);
        routes.retain(|r| !r.listeners.is_empty());
        (
            RouteTable {
                generation: 0,
                listeners,
                routes,
                ..RouteTable::default()
            },
            wanted,
        )
    }
}

/// The contract store of a Gateway's `rateLimitStore`, for the limit of rule `rule` (its name,
/// or its position) of Route `route`. The key prefix names all three, so Gateways that share a
/// Redis, and rules that share a Gateway, never share buckets.
pub fn rate_limit_store(
    store: &portico_api::gateway::RateLimitStore,
    gateway: &Key,
    route: &Key,
    rule: &str,
) -> contract::RateLimitStore {
    let redis = &store.redis;
    contract::RateLimitStore {
        address: redis.address.clone(),
        prefix: format!("portico:{gateway}:{route}:{rule}"),
        timeout: redis
            .timeout
            .as_ref()
            .and_then(|t| t.to_std())
            .filter(|t| !t.is_zero())
            .map_or(DEFAULT_STORE_TIMEOUT, contract::Duration),
        fail_open: redis.failure_mode == portico_api::gateway::StoreFailureMode::FailOpen,
    }
}

/// How long a request waits for the rate-limit store unless the Gateway says.
pub const DEFAULT_STORE_TIMEOUT: contract::Duration = contract::Duration::from_millis(50);
