//! Endpoints of one Service port, from its EndpointSlices.
//!
//! - Ready endpoints take traffic.
//! - Serving-but-terminating endpoints are used only when no endpoint is ready, so a rollout of
//!   the last pods drains instead of failing (the same rule kube-proxy applies).
//! - Not-ready endpoints get nothing and are not sent.
//!
//! The port is found through the slice's own ports, by the Service port's *name*: the
//! EndpointSlice controller writes one slice port per Service port, named like it, with named
//! target ports already resolved per pod. So a named `targetPort: http` that is 8080 on some pods
//! and 9090 on others resolves correctly slice by slice.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_proxy_api::Endpoint;

/// The endpoints of Service port `port` across `slices`, sorted by address, without duplicates
/// (during slice re-sharding an endpoint can briefly appear in two slices).
pub fn endpoints<'a>(
    port: &ServicePort,
    slices: impl Iterator<Item = &'a EndpointSlice> + Clone,
) -> Vec<Endpoint> {
    let wanted = port.name.as_deref().unwrap_or_default();
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == wanted)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let set = if is_ready && !is_terminating {
                &mut ready
            } else if is_serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            for ip in &ep.addresses {
                let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let address = std::net::SocketAddr::new(ip, number).to_string();
                set.insert((address, ep.zone.clone()));
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    let mut seen = BTreeSet::new();
    chosen
        .into_iter()
        .filter(|(a, _)| seen.insert(a.clone()))
        .map(|(address, zone)| Endpoint {
            address,
            ready: true,
            weight: 1,
            zone,
            identity: None,
        })
        .collect()
}
