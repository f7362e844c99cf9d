//! Connection pools to a backend's endpoints, one per protocol the backend speaks, all with
//! keep-alive, TCP_NODELAY, a connect timeout and mTLS to meshed endpoints
//! ([`crate::forward::connect`]): HTTP/1.1 through [`H1Pool`] and the fast path's [`TcpPool`], HTTP/2
//! through [`H2Pool`] (one multiplexed connection per endpoint).

use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use portico_proxy_api::UpstreamProtocol;

use crate::error::Body;
use crate::forward::connect::Dest;
use crate::forward::connect::UpstreamError;
use crate::forward::pool::{H1Pool, H2Pool, Lease, TcpPool};

/// How long an idle upstream connection is kept for reuse, unless the backend says otherwise.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; a burst opens more, but they are not all kept (each
/// holds buffers), as nginx's `keepalive` does.
const MAX_IDLE_PER_ENDPOINT: usize = 128;

/// The pools of one backend.
#[derive(Clone, Debug)]
pub struct Clients {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    h1: Option<H1Pool>,
    h2: Option<H2Pool>,
    /// Raw connections for the HTTP/1.1 fast path; present whenever an HTTP/1.1 request to
    /// this backend goes upstream as HTTP/1.1.
    tcp: Option<TcpPool>,
}

/// The pool chosen for one request.
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a> {
    /// HTTP/1.1: requests carry an origin-form URI (`/path?query`).
    Http1(&'a H1Pool),
    /// HTTP/2: requests carry an absolute URI.
    Http2(&'a H2Pool),
}

impl Upstream<'_> {
    /// The HTTP version requests are sent with.
    pub fn version(&self) -> Version {
        match self {
            Self::Http1(_) => Version::HTTP_11,
            Self::Http2(_) => Version::HTTP_2,
        }
    }

    /// Sends `req` to the endpoint `dest`. The lease, if any, must live as long as the response
    /// body is read: it gives the connection back to the pool when dropped.
    pub async fn send(
        self,
        dest: &Dest,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        match self {
            Self::Http1(pool) => pool.send(dest, req).await.map(|(r, l)| (r, Some(l))),
            Self::Http2(pool) => pool.send(dest, req).await.map(|r| (r, None)),
        }
    }
}

impl Clients {
    /// Pools for `protocol`; `Auto` gets both. Idle connections are closed after
    /// `idle_timeout`.
    pub fn new(
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let wants_h1 = matches!(protocol, UpstreamProtocol::Http1 | UpstreamProtocol::Auto);
        let wants_h2 = matches!(protocol, UpstreamProtocol::Http2 | UpstreamProtocol::Auto);
        Self {
            protocol,
            connect_timeout,
            idle_timeout,
            h1: wants_h1.then(|| H1Pool::new(connect_timeout, idle_timeout, MAX_IDLE_PER_ENDPOINT)),
            h2: wants_h2.then(|| H2Pool::new(connect_timeout, idle_timeout)),
            tcp: wants_h1
                .then(|| TcpPool::new(connect_timeout, idle_timeout, MAX_IDLE_PER_ENDPOINT)),
        }
    }

    /// Whether these pools fit a backend with this protocol and these timeouts (then they are
    /// kept across a config reload, and so are their warm connections).
    pub fn fits(
        &self,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> bool {
        self.protocol == protocol
            && self.connect_timeout == connect_timeout
            && self.idle_timeout == idle_timeout
    }

    /// Time allowed to connect to an endpoint.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The raw connection pool the HTTP/1.1 fast path uses for an HTTP/1.1 request without
    /// upgrade; `None` when such a request goes upstream as HTTP/2.
    pub fn fast_h1(&self) -> Option<&TcpPool> {
        self.tcp.as_ref()
    }

    /// The pool to use for a request that arrived as `downstream`.
    /// Upgrades always go over HTTP/1.1: that is the only version with `Upgrade`.
    pub fn select(&self, downstream: Version, upgrade: bool) -> Upstream<'_> {
        let h2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => downstream == Version::HTTP_2 && !upgrade,
        };
        match (h2, &self.h1, &self.h2) {
            (true, _, Some(c)) => Upstream::Http2(c),
            (_, Some(p), _) => Upstream::Http1(p),
            (_, None, Some(c)) => Upstream::Http2(c),
            (_, None, None) => unreachable!("Clients::new always builds one pool"),
        }
    }
}
