//! The mesh's Services as a sidecar routes them: by the virtual address an application dialled
//! and by name, each with its attached routes and a catch-all to the Service's own backend. (The
//! identities of meshed endpoints, for applications that dial a pod's address directly, come
//! from the backends: [`Snapshot::meshed_identity`](crate::config::snapshot::Snapshot::meshed_identity).)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use portico_proxy_api::{BackendRef, ProxyConfig, Route, RouteRule};

use super::router::{RouteHit, Router};

/// One service, compiled for routing.
#[derive(Debug)]
pub struct ServiceRoutes {
    /// Service name.
    pub name: Arc<str>,
    /// Its attached routes.
    router: Router,
    /// A catch-all route to the service's backend, for requests no attached route matches.
    fallback: Router,
    /// The backend opaque traffic goes to.
    pub backend: String,
    /// Skip detection.
    pub opaque: bool,
    /// Every backend a connection to the service may use: its own and those of its attached
    /// routes (sorted; what a sidecar subscribes to on demand, see [`crate::mesh::demand`]).
    pub needs: Arc<[Arc<str>]>,
}

/// The services of a config, by virtual address and by name.
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_addr: HashMap<SocketAddr, Arc<ServiceRoutes>>,
    by_name: HashMap<Arc<str>, Arc<ServiceRoutes>>,
}

impl ServiceTable {
    /// Compiles the services of `cfg` (already validated, so addresses parse and regexes
    /// compile), keeping the rate-limit buckets of `old`'s unchanged rules.
    pub fn new(cfg: &ProxyConfig, old: &ServiceTable) -> Result<Self, regex::Error> {
        let mut table = Self::default();
        for s in &cfg.services {
            // Attached routes apply to whatever listener the connection came in on: the service,
            // not the listener, selected them.
            let routes: Vec<Route> = cfg
                .routes
                .iter()
                .filter(|r| s.routes.contains(&r.name))
                .map(|r| Route {
                    listeners: Vec::new(),
                    ..r.clone()
                })
                .collect();
            let mut needs: Vec<Arc<str>> =
                portico_proxy_api::backend_refs(&[], &routes, std::slice::from_ref(s))
                    .map(Arc::from)
                    .collect();
            needs.sort();
            needs.dedup();
            let fallback = Route {
                name: s.name.clone(),
                listeners: Vec::new(),
                hostnames: Vec::new(),
                excluded_hostnames: Vec::new(),
                rules: vec![RouteRule {
                    backends: vec![BackendRef {
                        backend: s.backend.clone(),
                        weight: 1,
                    }],
                    ..RouteRule::default()
                }],
            };
            let mut router = Router::new(&ProxyConfig {
                routes,
                ..ProxyConfig::default()
            })?;
            if let Some(prev) = old.by_name.get(s.name.as_str()) {
                router.keep_buckets(&prev.router);
            }
            let compiled = Arc::new(ServiceRoutes {
                name: s.name.as_str().into(),
                router,
                fallback: Router::new(&ProxyConfig {
                    routes: vec![fallback],
                    ..ProxyConfig::default()
                })?,
                backend: s.backend.clone(),
                opaque: s.opaque,
                needs: needs.into(),
            });
            for a in &s.addresses {
                if let Ok(addr) = a.parse() {
                    table.by_addr.insert(addr, compiled.clone());
                }
            }
            table.by_name.insert(compiled.name.clone(), compiled);
        }
        Ok(table)
    }

    /// The service dialled at `addr`, if any.
    pub fn lookup(&self, addr: SocketAddr) -> Option<&Arc<ServiceRoutes>> {
        self.by_addr.get(&addr)
    }

    /// Service `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<ServiceRoutes>> {
        self.by_name.get(name)
    }

    /// Whether routing the service `name`'s requests looks at their headers.
    pub fn reads_headers(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .is_none_or(|s| s.router.reads_headers() || s.fallback.reads_headers())
    }

    /// The best rule of service `name` for a request: its attached routes first, then the
    /// service's own backend. `None` only when the service is gone from the config.
    pub fn route<'a>(&'a self, name: &str, host: &str, req: &Parts) -> Option<RouteHit<'a>> {
        let s = self.by_name.get(name)?;
        s.router
            .route("", host, req)
            .or_else(|| s.fallback.route("", host, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ServiceTable {
        let cfg: ProxyConfig = serde_yaml::from_str(
            r#"
routes:
  - name: orders-v2
    rules: [{ matches: [{ path: { type: PathPrefix, value: /v2 } }], backends: [{ backend: v2 }] }]
services:
  - { name: orders, addresses: ["198.19.0.10:80", "198.19.0.10:8080"], backend: orders, routes: [orders-v2] }
backends: [{ name: orders }, { name: v2 }]
"#,
        )
        .expect("parses");
        cfg.validate().expect("valid");
        ServiceTable::new(&cfg, &ServiceTable::default()).expect("compiles")
    }

    fn parts(path: &str) -> Parts {
        http::Request::get(path)
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    #[test]
    fn every_address_of_a_service_finds_it() {
        let t = table();
        for a in ["198.19.0.10:80", "198.19.0.10:8080"] {
            let s = t.lookup(a.parse().expect("addr")).expect("found");
            assert_eq!(&*s.name, "orders");
        }
        assert!(t.lookup("198.19.0.10:81".parse().expect("addr")).is_none());
    }

    #[test]
    fn attached_routes_win_and_the_rest_goes_to_the_service_backend() {
        let t = table();
        let hit = t.route("orders", "orders", &parts("/v2/x")).expect("hit");
        assert_eq!(&**hit.route, "orders-v2");
        let hit = t.route("orders", "orders", &parts("/other")).expect("hit");
        assert_eq!(&**hit.route, "orders");
        assert_eq!(hit.rule.rule.backends[0].backend, "orders");
        assert!(t.route("gone", "orders", &parts("/")).is_none());
    }
}
