//! Opening upstream connections: plain TCP to endpoints outside the mesh, mTLS to meshed ones.
//!
//! ```text
//!  Dest { addr, mesh: None }                 ─► TCP (TCP_NODELAY, connect timeout)
//!  Dest { addr, mesh: Some(certs, identity) } ─► TCP ─► TLS 1.3 as this proxy's identity,
//!                                                       the peer must prove `identity`
//! ```
//!
//! Every pool ([`crate::pool`]) and the opaque TCP forwarder connect through [`connect`], so
//! HTTP/1 (both paths), HTTP/2, gRPC and opaque TCP all ride mTLS to a meshed endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::BoxError;
use crate::h1::MaybeTls;
use crate::metrics::Handshakes;
use crate::mtls::{MeshProtocol, MeshTls};
use crate::pool::{Reusable, UpstreamError};

/// Where a connection goes.
#[derive(Clone, Debug)]
pub struct Dest {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Set for a meshed endpoint when this proxy has an identity: connect with mTLS.
    pub mesh: Option<MeshDest>,
}

impl Dest {
    /// A plaintext destination.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, mesh: None }
    }
}

/// How to reach a meshed endpoint.
#[derive(Clone, Debug)]
pub struct MeshDest {
    /// This proxy's certificate configs in force.
    pub tls: Arc<MeshTls>,
    /// The identity the endpoint must prove.
    pub identity: Arc<str>,
    /// Handshake counters.
    pub handshakes: Handshakes,
}

/// An upstream connection: plain TCP, or mTLS to a meshed endpoint.
pub type Stream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

/// Opens a connection to `dest` within `timeout` (TCP and, when meshed, the TLS handshake)
/// for `protocol` (the ALPN of a mesh connection).
pub async fn connect(
    dest: &Dest,
    timeout: Duration,
    protocol: MeshProtocol,
) -> Result<Stream, UpstreamError> {
    let addr = dest.addr;
    let connect_error = |source: BoxError| UpstreamError::Connect { addr, source };
    let open = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| connect_error(e.into()))?;
        // Small requests and responses must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let Some(mesh) = &dest.mesh else {
            return Ok(Stream::Plain(tcp));
        };
        match mesh.tls.connect(tcp, &mesh.identity, protocol).await {
            Ok(tls) => {
                mesh.handshakes.record("outbound", true);
                Ok(Stream::Tls(Box::new(tls)))
            }
            Err(e) => {
                mesh.handshakes.record("outbound", false);
                tracing::info!(endpoint = %addr, identity = %mesh.identity, error = %e, "mTLS handshake failed");
                Err(connect_error(
                    format!("mTLS with {}: {e}", mesh.identity).into(),
                ))
            }
        }
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| connect_error("connect timed out".into()))?
}

impl Reusable for Stream {
    /// An idle connection has nothing to read: if the runtime saw it become readable (the
    /// upstream closed it, or sent bytes nobody asked for) it is not reused. This looks at the
    /// readiness the runtime already has, so it costs no system call. (Mesh servers send no
    /// session tickets, so an idle mTLS connection is quiet too.)
    fn ready(&self) -> Option<bool> {
        let mut cx = Context::from_waker(Waker::noop());
        self.tcp()
            .poll_read_ready(&mut cx)
            .is_pending()
            .then_some(true)
    }
}
