//! Opening upstream connections: plain TCP to endpoints outside the mesh, mTLS to meshed ones.
//!
//! ```text
//!  Dest { addr, mesh: None }                 ─► TCP (TCP_NODELAY, connect timeout)
//!  Dest { addr, mesh: Some(certs, identity) } ─► TCP ─► TLS 1.3 as this proxy's identity,
//!                                                       the peer must prove `identity`
//! ```
//!
//! Every pool ([`crate::forward::pool`]) and the opaque TCP forwarder connect through [`connect`], so
//! HTTP/1 (both paths), HTTP/2, gRPC and opaque TCP all ride mTLS to a meshed endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{BoxError, ProxyError};
use crate::mesh::identity;
use crate::mesh::mtls::{MeshProtocol, MeshTls};
use crate::observe::metrics::Handshakes;
use crate::wire::MaybeTls;

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

/// How to reach a peer that must prove `identity`: with the certificate of `store`, if this
/// proxy has one (else in plaintext).
pub fn mesh_dest(store: Option<&identity::Store>, identity: &Arc<str>) -> Option<MeshDest> {
    let store = store?;
    Some(MeshDest {
        tls: store.tls()?,
        identity: identity.clone(),
        handshakes: store.handshakes.clone(),
    })
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

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, timed out, handshake failed).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        source: BoxError,
    },
    /// The connection broke before the response headers arrived.
    #[error("request to {addr}: {source}")]
    Request {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        source: BoxError,
    },
}

impl UpstreamError {
    /// Whether the failure happened while connecting (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// What the client is told: 502 for a connect failure or a broken exchange, but 400 when
    /// the request's own body failed (a malformed or cut-off chunked body), which is the
    /// client's fault and not to be held against the endpoint.
    pub fn to_proxy_error(&self) -> ProxyError {
        match self {
            Self::Connect { addr, .. } => ProxyError::Connect(*addr),
            Self::Request { .. } if self.body_limit_exceeded() => ProxyError::BodyTooLarge(0),
            Self::Request { addr, .. } => match self.request_body_failure() {
                Some(why) => ProxyError::BadRequest(format!("request body: {why}")),
                None => match self.bad_response() {
                    Some(why) => ProxyError::BadResponse(*addr, why),
                    None => ProxyError::Reset(*addr),
                },
            },
        }
    }

    /// Whether the request's body passed its route's limit while it streamed.
    fn body_limit_exceeded(&self) -> bool {
        let Self::Request { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = cause {
            if e.is::<http_body_util::LengthLimitError>() {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// What was wrong with the upstream's response head, when hyper could not parse it.
    fn bad_response(&self) -> Option<String> {
        let Self::Request { source, .. } = self else {
            return None;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = cause {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_parse_too_large() {
                    return Some(crate::wire::codec::response_head_too_large());
                }
                if h.is_parse() || h.is_parse_status() {
                    return Some(h.to_string());
                }
            }
            cause = e.source();
        }
        None
    }

    /// What was wrong with the request's own body, when that is why the request failed.
    fn request_body_failure(&self) -> Option<String> {
        let Self::Request { source, .. } = self else {
            return None;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = cause {
            // hyper's "error from user's Body stream" carries the body's own error; the
            // innermost cause says what was wrong.
            if let Some(h) = e.downcast_ref::<hyper::Error>()
                && h.is_user()
                && let Some(mut inner) = std::error::Error::source(h)
            {
                while let Some(next) = inner.source() {
                    inner = next;
                }
                return Some(inner.to_string());
            }
            cause = e.source();
        }
        None
    }
}

/// A connection a pool can keep idle.
pub(crate) trait Reusable {
    /// `None` if the connection is closed (or otherwise unusable), `Some(false)` if it is still
    /// finishing its previous exchange, `Some(true)` if it can take a request now.
    fn ready(&self) -> Option<bool>;
}
