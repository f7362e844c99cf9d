//! The listeners a Gateway's proxies bind, and what feeds a TCP listener.
//!
//! HTTP and HTTPS listeners carry Routes (see the `routes` module). A TCP listener has no
//! request to route by: it forwards each connection to the backends of the first rule of the
//! first Route attached to it, chosen per connection by their weights. A listener that cannot be
//! served is left out of the config rather than making the whole config invalid for the proxy:
//! an HTTPS listener without a usable certificate, a TCP listener no Route feeds. Their status
//! says why.

use kube::ResourceExt;
use portico_api::Gateway;
use portico_api::gateway::ListenerProtocol;
use portico_proxy_api as contract;

use super::{Index, RouteEntry, Wanted, translate};

impl Index {
    /// The contract listener of each listener of `gw` (in namespace `gw_ns`), by listener
    /// index: `None` for an HTTPS listener whose certificate Secret cannot be used.
    pub(super) fn gateway_listeners(
        &self,
        gw_ns: &str,
        gw: &Gateway,
    ) -> Vec<Option<contract::Listener>> {
        gw.spec
            .listeners
            .iter()
            .map(|l| {
                let tls = if l.protocol == ListenerProtocol::HTTPS {
                    Some(self.listener_tls(gw_ns, &gw.name_any(), l).ok()?)
                } else {
                    None
                };
                Some(translate::listener(l, tls))
            })
            .collect()
    }
}

/// Makes TCP listener `listener` forward to the backends of `route`'s first rule (as served:
/// `rules`, where a rule with a refused backend ref has none), unless an earlier Route already
/// feeds it or that rule has no backend; adds the Service ports it then sends to (backend refs
/// only: a TCP listener mirrors nothing) to `wanted`.
pub(super) fn feed_tcp(
    listener: &mut contract::Listener,
    route_ns: &str,
    route: &RouteEntry,
    rules: &[contract::RouteRule],
    wanted: &mut Wanted,
) {
    if !listener.backends.is_empty() {
        return;
    }
    let Some(first) = rules.first().filter(|r| !r.backends.is_empty()) else {
        return;
    };
    listener.backends = first.backends.clone();
    if let Some(r) = route.spec.rules.first() {
        wanted.extend(translate::rule_backend_refs(route_ns, r).take(r.backend_refs.len()));
    }
}

/// The listeners to send: those not left out, except TCP listeners no Route feeds (they would
/// have nowhere to send bytes).
pub(super) fn served(listeners: Vec<Option<contract::Listener>>) -> Vec<contract::Listener> {
    listeners
        .into_iter()
        .flatten()
        .filter(|l| {
            l.protocol != contract::Protocol::Tcp || l.backend.is_some() || !l.backends.is_empty()
        })
        .collect()
}
