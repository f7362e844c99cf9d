//! Hostname intersection between listeners and Routes, as in the Gateway API: a listener takes
//! a Route when some request host could match both, and the Route is served for the
//! intersection only.

use std::collections::BTreeSet;

use portico_api::gateway::{Listener, ListenerProtocol};
use portico_api::route::Hostname;

/// Whether a listener hostname and a route hostname can both match some request host.
/// `*.example.com` covers any name with at least one more label.
pub fn hostnames_intersect(a: &str, b: &str) -> bool {
    fn covers(wild: &str, name: &str) -> bool {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    }
    a == b || covers(a, b) || covers(b, a)
}

/// Whether `listener` takes a Route with `route_hosts`: a TCP listener or one without a
/// hostname takes any, a Route without hostnames goes anywhere, else one must intersect.
pub(super) fn listener_takes(listener: &Listener, route_hosts: &[Hostname]) -> bool {
    match (&listener.hostname, listener.protocol) {
        (_, ListenerProtocol::TCP) | (None, _) => true,
        (Some(h), _) => {
            route_hosts.is_empty() || route_hosts.iter().any(|rh| hostnames_intersect(h, &rh.0))
        }
    }
}

/// The hostnames a Route is served for on listeners with `listener_hosts` (`None`: a listener
/// without hostname). Without hostnames of its own the Route takes the listeners' one hostname
/// when they agree on it, else matches any host; with hostnames, only those some listener takes
/// are kept.
pub(super) fn served_hostnames(
    route_hosts: &[Hostname],
    listener_hosts: &BTreeSet<Option<&str>>,
) -> Vec<String> {
    if route_hosts.is_empty() {
        return match listener_hosts.iter().next() {
            Some(Some(h)) if listener_hosts.len() == 1 => vec![(*h).to_owned()],
            _ => Vec::new(),
        };
    }
    route_hosts
        .iter()
        .map(|h| h.0.clone())
        .filter(|h| {
            listener_hosts
                .iter()
                .any(|lh| lh.is_none_or(|lh| hostnames_intersect(lh, h)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hostnames_cover_subdomains_only() {
        assert!(hostnames_intersect("*.example.com", "api.example.com"));
        assert!(hostnames_intersect("api.example.com", "*.example.com"));
        assert!(hostnames_intersect("*.a.example.com", "*.example.com"));
        assert!(!hostnames_intersect("*.example.com", "example.com"));
        assert!(!hostnames_intersect("api.example.com", "web.example.com"));
    }
}
