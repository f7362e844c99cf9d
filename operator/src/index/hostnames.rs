//! Hostname intersection between listeners and Routes, as in the Gateway API: a listener takes
//! a Route when some request host could match both, and the Route is served for the
//! intersection only.

use portico_api::gateway::{Listener, ListenerProtocol};
use portico_api::route::Hostname;

/// Whether a listener hostname and a route hostname can both match some request host.
/// `*.example.com` covers any name with at least one more label.
pub fn hostnames_intersect(a: &str, b: &str) -> bool {
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

/// Whether wildcard hostname `wild` (`*.example.com`) covers `name`, which must then have at
/// least one more label (a wildcard covers a longer wildcard too).
fn covers(wild: &str, name: &str) -> bool {
    wild.strip_prefix('*')
        .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
}

/// The hostnames a Route with `route_hosts` is served for on a listener with hostname
/// `listener` (`None`: the listener takes any host): the intersection, each name the more
/// specific of the pair that matches (a route's `*.example.com` on a listener for
/// `api.example.com` is served for `api.example.com` only, and the other way round). Empty
/// means any host; a listener with a hostname never gives that, so a Route without hostnames
/// takes the listener's.
pub(super) fn served_on(route_hosts: &[Hostname], listener: Option<&str>) -> Vec<String> {
    let Some(lh) = listener else {
        return route_hosts.iter().map(|h| h.0.clone()).collect();
    };
    if route_hosts.is_empty() {
        return vec![lh.to_owned()];
    }
    let mut hosts: Vec<String> = Vec::new();
    for rh in route_hosts.iter().map(|h| h.0.as_str()) {
        let served = if rh == lh || covers(lh, rh) {
            rh
        } else if covers(rh, lh) {
            lh
        } else {
            continue;
        };
        if !hosts.iter().any(|h| h == served) {
            hosts.push(served.to_owned());
        }
    }
    hosts
}

/// The Route's listeners grouped by the hostnames it is served for on each ([`served_on`]),
/// in the order of `listeners`: one group when they agree, as they usually do. A listener
/// whose hostname the Route does not intersect is left out.
pub(super) fn groups_by_served_hostnames<'l>(
    route_hosts: &[Hostname],
    listeners: impl IntoIterator<Item = (&'l str, Option<&'l str>)>,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut groups: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (name, hostname) in listeners {
        let mut hosts = served_on(route_hosts, hostname);
        if hosts.is_empty() && hostname.is_some() {
            continue;
        }
        hosts.sort();
        match groups.iter_mut().find(|(h, _)| *h == hosts) {
            Some((_, names)) => names.push(name.to_owned()),
            None => groups.push((hosts, vec![name.to_owned()])),
        }
    }
    groups
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

    fn hosts(names: &[&str]) -> Vec<Hostname> {
        names.iter().map(|h| Hostname((*h).to_owned())).collect()
    }

    #[test]
    fn a_route_is_served_for_the_more_specific_name_of_each_intersecting_pair() {
        let route = hosts(&["*.specific.com", "exact.io", "other.org"]);
        assert_eq!(
            served_on(&route, Some("very.specific.com")),
            ["very.specific.com"]
        );
        assert_eq!(served_on(&route, Some("*.io")), ["exact.io"]);
        assert_eq!(served_on(&route, Some("*.com")), ["*.specific.com"]);
        assert!(served_on(&route, Some("nothing.net")).is_empty());
        assert_eq!(
            served_on(&route, None),
            ["*.specific.com", "exact.io", "other.org"]
        );
        // Without hostnames of its own a Route takes the listener's; on a listener without one,
        // any host.
        assert_eq!(served_on(&[], Some("*.bar.com")), ["*.bar.com"]);
        assert!(served_on(&[], None).is_empty());
    }

    #[test]
    fn listeners_that_serve_a_route_for_different_names_are_grouped_apart() {
        let groups = groups_by_served_hostnames(
            &[],
            [
                ("l3", Some("*.bar.com")),
                ("l4", Some("*.foo.com")),
                ("l5", Some("*.bar.com")),
            ],
        );
        assert_eq!(
            groups,
            [
                (
                    vec!["*.bar.com".to_owned()],
                    vec!["l3".to_owned(), "l5".to_owned()]
                ),
                (vec!["*.foo.com".to_owned()], vec!["l4".to_owned()]),
            ]
        );
        let one = groups_by_served_hostnames(
            &hosts(&["a.bar.com"]),
            [
                ("l3", Some("*.bar.com")),
                ("any", None),
                ("l4", Some("*.foo.com")),
            ],
        );
        assert_eq!(
            one,
            [(
                vec!["a.bar.com".to_owned()],
                vec!["l3".to_owned(), "any".to_owned()]
            )]
        );
    }
}
