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

/// Listeners that share a port become one socket: the first listener of each port keeps its
/// name and the routes of the others are moved onto it (each route is still served only for the
/// hostnames its own listeners allow), and HTTPS listeners add their certificates to its SNI
/// choices. A later listener of another protocol on a taken port is left out (the Gateway API
/// calls it conflicted). Without shared ports, nothing changes.
pub(super) fn merge_by_port(
    listeners: Vec<contract::Listener>,
    routes: &mut [contract::Route],
) -> Vec<contract::Listener> {
    let mut merged: Vec<contract::Listener> = Vec::with_capacity(listeners.len());
    let mut renamed: std::collections::BTreeMap<String, Option<String>> = Default::default();
    for l in listeners {
        let Some(first) = merged.iter_mut().find(|m| m.address == l.address) else {
            merged.push(l);
            continue;
        };
        if first.protocol != l.protocol || first.protocol == contract::Protocol::Tcp {
            renamed.insert(l.name, None);
            continue;
        }
        if let (Some(tls), Some(more)) = (first.tls.as_mut(), l.tls) {
            tls.sni.push(contract::CertificateKey {
                cert: more.cert,
                key: more.key,
            });
            tls.sni.extend(more.sni);
        }
        renamed.insert(l.name, Some(first.name.clone()));
    }
    if renamed.is_empty() {
        return merged;
    }
    for route in routes {
        let mut names: Vec<String> = Vec::new();
        for name in std::mem::take(&mut route.listeners) {
            let name = match renamed.get(&name) {
                Some(Some(to)) => to.clone(),
                Some(None) => continue,
                None => name,
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        route.listeners = names;
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, port: u16, tls: Option<&str>) -> contract::Listener {
        let pem = |t: &str| contract::Pem::Inline {
            inline: t.to_owned(),
        };
        contract::Listener {
            name: name.to_owned(),
            address: format!("0.0.0.0:{port}"),
            protocol: if tls.is_some() {
                contract::Protocol::Https
            } else {
                contract::Protocol::Http
            },
            tls: tls.map(|t| contract::Tls {
                cert: pem(t),
                key: pem(t),
                min_version: Default::default(),
                sni: Vec::new(),
            }),
            backend: None,
            backends: Vec::new(),
        }
    }

    fn route(name: &str, listeners: &[&str]) -> contract::Route {
        contract::Route {
            name: name.to_owned(),
            listeners: listeners.iter().map(|l| (*l).to_owned()).collect(),
            hostnames: Vec::new(),
            excluded_hostnames: Vec::new(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn listeners_sharing_a_port_become_one_socket_with_every_certificate() {
        let mut routes = vec![
            route("a", &["foo"]),
            route("b", &["bar", "foo"]),
            route("c", &["plain"]),
            route("d", &["clash"]),
        ];
        let merged = merge_by_port(
            vec![
                listener("foo", 443, Some("foo-cert")),
                listener("bar", 443, Some("bar-cert")),
                listener("plain", 80, None),
                listener("clash", 443, None),
            ],
            &mut routes,
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].name, "foo");
        assert_eq!(merged[0].tls.as_ref().unwrap().sni.len(), 1);
        assert_eq!(routes[1].listeners, ["foo"]);
        assert_eq!(routes[2].listeners, ["plain"]);
        assert!(
            routes[3].listeners.is_empty(),
            "a conflicted listener serves nothing"
        );
    }
}
