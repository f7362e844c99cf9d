//! Sidecar mode: serving connections that iptables (see [`crate::init`]) redirected to the
//! proxy. Their original destination, read with `SO_ORIGINAL_DST`, says where they were going:
//!
//! ```text
//!  OUTBOUND  original dst is a Service address ─► opaque service or port? ─► its backend (TCP)
//!                                              └─► detect ─► HTTP: the service's routes
//!                                                        └─► else: its backend (TCP)
//!            a meshed pod's address (an endpoint ──────► that pod, bytes untouched, over mTLS
//!            with an identity, dialled directly)           (ALPN `portico.mesh/tcp`)
//!            anything else ───────────────────────► the original destination, bytes untouched
//!  INBOUND   ─► the port's inbound policy (see [`crate::inbound`]) ─► 127.0.0.1:<original port>
//! ```
//!
//! The proxy's own connections leave with its user id, which the iptables rules exempt, so
//! forwarding to the original destination does not loop back here.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use portico_proxy_api::{BackendRef, ProxyConfig, Route, RouteRule};
use tokio::net::TcpStream;

use crate::Shared;
use crate::detect::{self, Detected};
use crate::proxy::ConnInfo;
use crate::router::{RouteHit, Router};

/// Time allowed to connect to an original destination or to the application.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
}

/// The services of a config, by virtual address and by name, and the identities of meshed
/// endpoints by address.
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_addr: HashMap<SocketAddr, Arc<ServiceRoutes>>,
    by_name: HashMap<Arc<str>, Arc<ServiceRoutes>>,
    /// An app that dials a pod's address rather than a Service's (a StatefulSet peer, a
    /// headless Service) reaches it over mTLS too when the address is a meshed endpoint.
    meshed: HashMap<SocketAddr, Arc<str>>,
}

impl ServiceTable {
    /// Compiles the services of `cfg` (already validated, so addresses parse and regexes
    /// compile).
    pub fn new(cfg: &ProxyConfig) -> Result<Self, regex::Error> {
        let mut table = Self::default();
        for s in &cfg.services {
            // Attached routes apply to whatever listener the connection came in on: the service,
            // not the listener, selected them.
            let routes = cfg
                .routes
                .iter()
                .filter(|r| s.routes.contains(&r.name))
                .map(|r| Route {
                    listeners: Vec::new(),
                    ..r.clone()
                })
                .collect();
            let fallback = Route {
                name: s.name.clone(),
                listeners: Vec::new(),
                hostnames: Vec::new(),
                rules: vec![RouteRule {
                    backends: vec![BackendRef {
                        backend: s.backend.clone(),
                        weight: 1,
                    }],
                    ..RouteRule::default()
                }],
            };
            let compiled = Arc::new(ServiceRoutes {
                name: s.name.as_str().into(),
                router: Router::new(&ProxyConfig {
                    routes,
                    ..ProxyConfig::default()
                })?,
                fallback: Router::new(&ProxyConfig {
                    routes: vec![fallback],
                    ..ProxyConfig::default()
                })?,
                backend: s.backend.clone(),
                opaque: s.opaque,
            });
            for a in &s.addresses {
                if let Ok(addr) = a.parse() {
                    table.by_addr.insert(addr, compiled.clone());
                }
            }
            table.by_name.insert(compiled.name.clone(), compiled);
        }
        for ep in cfg.backends.iter().flat_map(|b| &b.endpoints) {
            if let (Some(identity), Ok(addr)) = (&ep.identity, ep.address.parse()) {
                table.meshed.insert(addr, identity.as_str().into());
            }
        }
        Ok(table)
    }

    /// The identity of the meshed endpoint at `addr`, if it is one.
    pub fn meshed_identity(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        self.meshed.get(&addr)
    }

    /// The service dialled at `addr`, if any.
    pub fn lookup(&self, addr: SocketAddr) -> Option<&Arc<ServiceRoutes>> {
        self.by_addr.get(&addr)
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

/// The destination a redirected connection was opened to, from the NAT table
/// (`SO_ORIGINAL_DST`; IPv4 only, like the rules [`crate::init`] installs). socket2 wraps the
/// `getsockopt` call, so no `unsafe` is needed here.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let addr = socket2::SockRef::from(stream).original_dst_v4()?;
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// The original destination of a connection that really was redirected. A connection made
/// straight to the listener has none (or, with conntrack loaded, the listener's own address);
/// forwarding it there would loop, so it is refused.
fn redirected_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let dst = original_dst(stream).ok()?;
    let local = stream.local_addr().ok()?;
    (dst != local).then_some(dst)
}

/// Serves one connection accepted on an OUTBOUND listener.
pub async fn outbound(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some(dst) = redirected_dst(&stream) else {
        tracing::debug!(listener = %listener, client = %peer, "not a redirected connection; closed");
        return;
    };
    let snap = shared.snapshot.load_full();
    let Some(svc) = snap.services.lookup(dst).cloned() else {
        let mesh = snap
            .services
            .meshed_identity(dst)
            .and_then(|identity| shared.mesh_dest(identity));
        drop(snap);
        shared
            .metrics
            .intercepted(&listener, None, Detected::Opaque.label());
        match mesh {
            Some(mesh) => {
                let dest = crate::connect::Dest {
                    addr: dst,
                    mesh: Some(mesh),
                };
                Box::pin(mesh_passthrough(stream, dest)).await;
            }
            None => Box::pin(passthrough(stream, dst)).await,
        }
        return;
    };
    let detected = detect::protocol(&stream, snap, dst.port(), svc.opaque).await;
    shared
        .metrics
        .intercepted(&listener, Some(&svc.name), detected.label());
    if detected == Detected::Opaque {
        // Load again: detection may have waited across a config swap.
        let backend = shared.snapshot.load().backends.get(&svc.backend).cloned();
        match backend {
            Some(b) => Box::pin(crate::tcp::forward(&shared, b, stream, peer)).await,
            None => tracing::debug!(service = %svc.name, "service backend is gone; closed"),
        }
        return;
    }
    let info = ConnInfo::new(listener, peer, "http", Some(svc.name.clone()));
    // Everything but the HTTP/1.1 fast path is boxed, so its state does not size the task of
    // every HTTP/1.1 connection, idle ones included.
    if detected == Detected::Http1 {
        crate::h1::serve(shared, crate::h1::Site::Routed(info), stream.into()).await;
    } else {
        Box::pin(crate::server::serve_http(shared, info, stream)).await;
    }
}

/// Serves one connection accepted on an INBOUND listener: the application listens on the
/// original port on loopback.
pub async fn inbound(shared: Arc<Shared>, listener: Arc<str>, stream: TcpStream, peer: SocketAddr) {
    let Some(dst) = redirected_dst(&stream) else {
        tracing::debug!(listener = %listener, client = %peer, "not a redirected connection; closed");
        return;
    };
    crate::inbound::serve(shared, listener, stream, peer, dst).await;
}

/// Copies bytes both ways between `client` and `dst` until either side closes.
pub(crate) async fn passthrough<S>(mut client: S, dst: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Ok(Err(e)) => tracing::debug!(destination = %dst, error = %e, "connect failed"),
        Err(_) => tracing::debug!(destination = %dst, "connect timed out"),
    }
}

/// Copies bytes both ways between `client` and a meshed pod, over mTLS as opaque TCP.
async fn mesh_passthrough(mut client: TcpStream, dest: crate::connect::Dest) {
    let connected =
        crate::connect::connect(&dest, CONNECT_TIMEOUT, crate::mtls::MeshProtocol::Opaque).await;
    match connected {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => tracing::debug!(destination = %dest.addr, error = %e, "mesh connect failed"),
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
        ServiceTable::new(&cfg).expect("compiles")
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
