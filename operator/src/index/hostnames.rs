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

/// Whether listener hostname `more` takes some of the hosts of listener hostname `than`
/// (`None`: any host) and is more specific: the request for such a host belongs to `more`'s
/// listener when both share a port (the Gateway API's listener isolation).
pub(super) fn more_specific(more: &str, than: Option<&str>) -> bool {
    than.is_none_or(|than| more != than && covers(than, more))
}

/// One contract route's share of a Route: the listeners that serve it for the same hostnames
/// and exclude the same more specific listeners' hostnames.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ServedGroup {
    /// The hostnames served ([`served_on`]), sorted; empty for any host.
    pub hostnames: Vec<String>,
    /// The hostnames of more specific listeners on the same ports, sorted.
    pub excluded: Vec<String>,
    /// The listeners, in the order given.
    pub listeners: Vec<String>,
}

/// The Route's listeners (name, hostname, the more specific hostnames sharing its port)
/// grouped by what the Route is served for on each, in the order given: one group when they
/// agree, as they usually do. A listener whose hostname the Route does not intersect is left
/// out.
pub(super) fn groups_by_served_hostnames<'l>(
    route_hosts: &[Hostname],
    listeners: impl IntoIterator<Item = (&'l str, Option<&'l str>, Vec<String>)>,
) -> Vec<ServedGroup> {
    let mut groups: Vec<ServedGroup> = Vec::new();
    for (name, hostname, mut excluded) in listeners {
        let mut hosts = served_on(route_hosts, hostname);
        if hosts.is_empty() && hostname.is_some() {
            continue;
        }
        hosts.sort();
        excluded.sort();
        excluded.dedup();
        match groups
            .iter_mut()
            .find(|g| g.hostnames == hosts && g.excluded == excluded)
        {
            Some(g) => g.listeners.push(name.to_owned()),
            None => groups.push(ServedGroup {
                hostnames: hosts,
                excluded,
                listeners: vec![name.to_owned()],
            }),
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
        let names = |g: &ServedGroup| (g.hostnames.clone(), g.listeners.clone());
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let groups = groups_by_served_hostnames(
            &[],
            [
                ("l3", Some("*.bar.com"), vec![]),
                ("l4", Some("*.foo.com"), vec![]),
                ("l5", Some("*.bar.com"), vec![]),
            ],
        );
        assert_eq!(
            groups.iter().map(names).collect::<Vec<_>>(),
            [
                (strings(&["*.bar.com"]), strings(&["l3", "l5"])),
                (strings(&["*.foo.com"]), strings(&["l4"])),
            ]
        );
        let one = groups_by_served_hostnames(
            &hosts(&["a.bar.com"]),
            [
                ("l3", Some("*.bar.com"), vec![]),
                ("any", None, vec![]),
                ("l4", Some("*.foo.com"), vec![]),
            ],
        );
        assert_eq!(
            one.iter().map(names).collect::<Vec<_>>(),
            [(strings(&["a.bar.com"]), strings(&["l3", "any"]))]
        );
    }

    #[test]
    fn a_more_specific_listener_is_one_whose_hosts_the_other_covers() {
        assert!(more_specific(
            "abc.foo.example.com",
            Some("*.foo.example.com")
        ));
        assert!(more_specific("*.foo.example.com", Some("*.example.com")));
        assert!(more_specific("*.example.com", None));
        assert!(!more_specific("*.example.com", Some("*.example.com")));
        assert!(!more_specific("*.example.com", Some("*.foo.example.com")));
        assert!(!more_specific("other.org", Some("*.example.com")));
    }
}
