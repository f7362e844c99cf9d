//! Sidecar mode, INBOUND: connections to the pod, redirected here by iptables, go to the
//! application on `127.0.0.1:<original port>` under the port's [inbound
//! policy](crate::policy::inbound).
//!
//! ```text
//!  ClientHello offering portico.mesh/* ─► mTLS terminated: caller = its certificate's identity
//!     └─ ALPN h1 / h2 ─► each request checked ─► app (plaintext, same version)
//!     └─ ALPN tcp ─────► connection checked once ─► app
//!  anything else (plaintext): caller has no identity
//!     port Strict (not probed) ─────────────────────────► closed
//!     port without a policy ────────────────────────────► app, bytes untouched (no sniffing)
//!     port with a policy ─► detect ─► HTTP/1 or HTTP/2 ─► each request checked ─► app
//!                                   └► opaque ─► connection checked once ─► app
//!  refused: 403 / 429 from the proxy, or the connection closed
//! ```
//!
//! A refused opaque connection is closed before the proxy connects to the application, so not
//! a byte reaches it. The application sees a mesh caller's identity in the
//! `x-portico-client-identity` request header (removed from plaintext requests, so it cannot
//! be forged).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::detect::{self, Detected};
use super::hyper::serve_auto;
use super::tcp::passthrough;
use crate::mesh::mtls::{self, Hello, MeshProtocol};
use crate::pipeline::Site;
use crate::pipeline::inbound::{Conn, UNAUTHENTICATED, check};
use crate::policy::inbound::Caller;
use crate::shared::Shared;
use crate::wire::ClientStream;

/// Serves one INBOUND connection whose original destination was `dst`.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
) {
    // A meshed caller speaks first: its ClientHello offers a mesh protocol.
    if let Some(tls) = shared.identity.as_ref().and_then(|s| s.tls()) {
        let timeout = shared
            .snapshot
            .load()
            .config
            .interception
            .detect_timeout()
            .get();
        if mtls::peek_hello(&stream, timeout).await == Hello::Mesh {
            let handshakes = shared.identity.as_ref().map(|s| s.handshakes.clone());
            match tls.accept(stream).await {
                Ok(accepted) => {
                    if let Some(h) = handshakes {
                        h.record("inbound", true);
                    }
                    Box::pin(serve_mesh(shared, listener, accepted, client, dst)).await;
                }
                Err(e) => {
                    if let Some(h) = handshakes {
                        h.record("inbound", false);
                    }
                    tracing::info!(%client, error = %e, "inbound mTLS handshake failed");
                }
            }
            return;
        }
    }
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port()));
    let snap = shared.snapshot.load_full();
    let port = dst.port();
    let strict = snap.inbound.strict(port);
    if snap.inbound.port(port).is_none() && !strict {
        drop(snap);
        shared
            .metrics
            .intercepted(&listener, None, Detected::Opaque.label());
        Box::pin(passthrough(stream, app)).await;
        return;
    }
    let anonymous = UNAUTHENTICATED.clone();
    let caller = Caller {
        ip: client.ip(),
        identity: None,
    };
    if strict && !snap.inbound.probed(port) {
        // Nothing a plaintext caller sends can pass: close without reading.
        let _ = check(&shared, &snap.inbound, port, &caller, &anonymous, None);
        return;
    }
    let detected = detect::protocol(&stream, snap, port, false).await;
    shared
        .metrics
        .intercepted(&listener, None, detected.label());
    if detected == Detected::Opaque {
        // Load again: detection may have waited across a config swap.
        let snap = shared.snapshot.load();
        if check(&shared, &snap.inbound, port, &caller, &anonymous, None).is_err() {
            return;
        }
        drop(snap);
        Box::pin(passthrough(stream, app)).await;
        return;
    }
    let Some(conn) = Conn::new(listener, client, None, dst) else {
        return;
    };
    if detected == Detected::Http1 {
        super::h1::serve(shared, Site::Inbound(conn), stream.into()).await;
    } else {
        // Boxed: hyper's state would otherwise size every HTTP/1.1 connection's task.
        Box::pin(serve_auto(shared, Site::Inbound(conn), stream)).await;
    }
}

/// Serves a terminated mesh connection: the protocol is the one ALPN negotiated.
async fn serve_mesh(
    shared: Arc<Shared>,
    listener: Arc<str>,
    accepted: mtls::Accepted,
    client: SocketAddr,
    dst: SocketAddr,
) {
    let mtls::Accepted {
        stream,
        protocol,
        peer,
    } = accepted;
    shared
        .metrics
        .intercepted(&listener, None, protocol.label());
    let port = dst.port();
    if protocol == MeshProtocol::Opaque {
        let caller = Caller {
            ip: client.ip(),
            identity: Some(&peer),
        };
        let snap = shared.snapshot.load();
        if check(&shared, &snap.inbound, port, &caller, &peer, None).is_err() {
            return;
        }
        drop(snap);
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        passthrough(stream, app).await;
        return;
    }
    let Some(conn) = Conn::new(listener, client, Some(peer), dst) else {
        return;
    };
    if protocol == MeshProtocol::Http1 {
        super::h1::serve(shared, Site::Inbound(conn), ClientStream::Tls(stream)).await;
    } else {
        serve_auto(shared, Site::Inbound(conn), stream).await;
    }
}
