//! The mesh-wide config of sidecar proxies: every Service with a cluster IP, recognised by its
//! virtual addresses (ClusterIP:port), the Routes attached to Services, and every backend.
//!
//! ```text
//!  Service shop/orders 198.19.0.10:80 ──► contract Service "shop/orders:80"
//!                                            addresses ["198.19.0.10:80"]
//!                                            backend "shop/orders:80", routes [Routes with a
//!                                            Service parent shop/orders (port 80 or any)]
//! ```
//!
//! Every sidecar gets the same config (as kube-proxy gives every node every Service); the
//! listeners (INBOUND / OUTBOUND) are the proxy's own, from its flags.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use portico_api::policy::ServiceProtocol;
use portico_api::route::ParentKind;
use portico_proxy_api::{self as contract, RouteTable};

use super::{Index, Key, ServicePort, Wanted, translate};

/// A Route attached to a Service parent.
struct ServiceRoute {
    /// The Service port the Route applies to; `None` for every port.
    port: Option<i32>,
    /// The Route's contract name.
    route: String,
}

/// Routes attached to Services, by Service.
type Attached = BTreeMap<Key, Vec<ServiceRoute>>;

/// The key the mesh config is published under. No Gateway has an empty name.
pub fn mesh_key() -> Key {
    Key::default()
}

impl Index {
    pub(super) fn mesh_routes(&self) -> (RouteTable, Wanted) {
        let mut wanted = Wanted::new();
        let mut routes = Vec::new();
        let mut attached: Attached = BTreeMap::new();
        for (rkey, route) in &self.routes {
            let parents: Vec<_> = route
                .spec
                .parent_refs
                .iter()
                .filter(|p| p.kind == ParentKind::Service)
                .collect();
            if parents.is_empty() || route.problem.is_some() || route.rules.is_empty() {
                continue;
            }
            let name = rkey.to_string();
            let (rules, refs) = self.served_rules(rkey, route);
            routes.push(contract::Route {
                name: name.clone(),
                listeners: Vec::new(),
                hostnames: route.spec.hostnames.iter().map(|h| h.0.clone()).collect(),
                excluded_hostnames: Vec::new(),
                rules: rules.into_owned(),
            });
            wanted.extend(refs.iter().cloned());
            for p in parents {
                let service = Key::new(p.namespace.as_deref().unwrap_or(&rkey.namespace), &p.name);
                attached.entry(service).or_default().push(ServiceRoute {
                    port: p.port,
                    route: name.clone(),
                });
            }
        }
        let mut services = Vec::new();
        let mut vips = BTreeSet::new();
        for (skey, svc) in &self.services {
            let Some(spec) = &svc.spec else {
                continue;
            };
            let ips: Vec<IpAddr> = spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            let opaque = self
                .policy_for(skey)
                .is_some_and(|p| p.spec.protocol == Some(ServiceProtocol::Opaque));
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let addresses: Vec<String> = ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, number).to_string())
                    .filter(|a| vips.insert(a.clone()))
                    .collect();
                if addresses.is_empty() {
                    continue;
                }
                let backend = translate::backend_name(&skey.namespace, &skey.name, port.port);
                wanted.insert(ServicePort::new(&skey.namespace, &skey.name, port.port));
                let routes = attached
                    .get(skey)
                    .map(|rs| {
                        rs.iter()
                            .filter(|r| r.port.is_none_or(|p| p == port.port))
                            .map(|r| r.route.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                services.push(contract::Service {
                    name: backend.clone(),
                    addresses,
                    backend,
                    routes,
                    opaque,
                });
            }
        }
        (
            RouteTable {
                generation: 0,
                listeners: Vec::new(),
                routes,
                services,
                ..RouteTable::default()
            },
            wanted,
        )
    }
}
