//! Sidecar mode: serving connections that iptables (see [`crate::app::init`]) redirected to the
//! proxy. Their original destination, read with `SO_ORIGINAL_DST`, says where they were going:
//!
//! ```text
//!  OUTBOUND  original dst is a Service address ─► opaque service or port? ─► its backend (TCP)
//!                                              └─► detect ─► HTTP: the service's routes
//!                                                        └─► else: its backend (TCP)
//!            a meshed pod's address (an endpoint ──────► that pod, bytes untouched, over mTLS
//!            with an identity, dialled directly)           (ALPN `portico.mesh/tcp`)
//!            anything else ───────────────────────► the original destination, bytes untouched
//!  (on demand, a Service's first connection waits for its backends, and an address no backend
//!   has is looked up once: see [`crate::mesh::demand`])
//!  INBOUND   ─► the port's inbound policy (see [`super::inbound`]) ─► 127.0.0.1:<original port>
//! ```
//!
//! The proxy's own connections leave with its user id, which the iptables rules exempt, so
//! forwarding to the original destination does not loop back here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::detect::{self, Detected};
use crate::pipeline::{ConnInfo, Site};
use crate::shared::Shared;

/// The destination a redirected connection was opened to, from the NAT table
/// (`SO_ORIGINAL_DST`; IPv4 only, like the rules [`crate::app::init`] installs). socket2 wraps the
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
    let mut snap = shared.snapshot.load_full();
    let Some(mut svc) = snap.services.lookup(dst).cloned() else {
        let mut identity = snap.meshed_identity(dst).cloned();
        drop(snap);
        // On demand: a pod dialled directly may back a Service whose backends this proxy does
        // not have; the operator knows.
        if identity.is_none()
            && let Some(demand) = &shared.demand
            && Box::pin(demand.resolve(dst)).await
        {
            identity = shared.snapshot.load().meshed_identity(dst).cloned();
        }
        let mesh = identity.and_then(|identity| shared.mesh_dest(&identity));
        shared
            .metrics
            .intercepted(&listener, None, Detected::Opaque.label());
        match mesh {
            Some(mesh) => {
                let dest = crate::forward::connect::Dest {
                    addr: dst,
                    mesh: Some(mesh),
                };
                Box::pin(super::tcp::mesh_passthrough(stream, dest)).await;
            }
            None => Box::pin(super::tcp::passthrough(stream, dst)).await,
        }
        return;
    };
    // On demand: the Service stays subscribed while this connection is open, and the first
    // connection waits until its backends are here (see `crate::mesh::demand`).
    let _in_use = match &shared.demand {
        Some(demand) => {
            let (in_use, missing) = demand.enter(&svc.name, &svc.needs);
            if missing {
                // Boxed: only first connections wait, the others' tasks stay small.
                Box::pin(demand.wait_for(&svc.needs)).await;
                snap = shared.snapshot.load_full();
                svc = snap.services.lookup(dst).cloned().unwrap_or(svc);
            }
            Some(in_use)
        }
        None => None,
    };
    let detected = detect::protocol(&stream, snap, dst.port(), svc.opaque).await;
    shared
        .metrics
        .intercepted(&listener, Some(&svc.name), detected.label());
    if detected == Detected::Opaque {
        // Load again: detection may have waited across a config swap.
        let backend = shared
            .snapshot
            .load()
            .backends
            .get(svc.backend.as_str())
            .cloned();
        match backend {
            Some(b) => Box::pin(crate::serve::tcp::forward(&shared, b, stream, peer)).await,
            None => tracing::debug!(service = %svc.name, "service backend is gone; closed"),
        }
        return;
    }
    let info = ConnInfo::new(listener, peer, "http", Some(svc.name.clone()));
    // Everything but the HTTP/1.1 fast path is boxed, so its state does not size the task of
    // every HTTP/1.1 connection, idle ones included.
    if detected == Detected::Http1 {
        super::h1::serve(shared, Site::Routed(info), stream.into()).await;
    } else {
        Box::pin(super::hyper::serve_auto(shared, Site::Routed(info), stream)).await;
    }
}

/// Serves one connection accepted on an INBOUND listener: the application listens on the
/// original port on loopback.
pub async fn inbound(shared: Arc<Shared>, listener: Arc<str>, stream: TcpStream, peer: SocketAddr) {
    let Some(dst) = redirected_dst(&stream) else {
        tracing::debug!(listener = %listener, client = %peer, "not a redirected connection; closed");
        return;
    };
    super::inbound::serve(shared, listener, stream, peer, dst).await;
}
