//! Connection pools to a backend's endpoints, one per protocol the backend speaks, all with
//! keep-alive, TCP_NODELAY and a connect timeout: HTTP/1.1 through Portico's own [`H1Pool`]
//! (the hot path), HTTP/2 through hyper-util's pooling client (one multiplexed connection per
//! endpoint, so its per-request overhead matters less).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_proxy_api::UpstreamProtocol;

use crate::error::Body;
use crate::pool::{H1Pool, Lease, TcpPool, UpstreamError};

/// A pooled HTTP/2 client.
pub type HttpClient = Client<HttpConnector, Body>;

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
    h2: Option<HttpClient>,
    /// Raw connections for the HTTP/1.1 fast path; present whenever an HTTP/1.1 request to
    /// this backend goes upstream as HTTP/1.1.
    tcp: Option<TcpPool>,
}

/// The pool chosen for one request.
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a> {
    /// HTTP/1.1: requests carry an origin-form URI (`/path?query`).
    Http1(&'a H1Pool),
    /// HTTP/2: requests carry an absolute URI (the pool key of hyper-util's client).
    Http2(&'a HttpClient),
}

impl Upstream<'_> {
    /// The HTTP version requests are sent with.
    pub fn version(&self) -> Version {
        match self {
            Self::Http1(_) => Version::HTTP_11,
            Self::Http2(_) => Version::HTTP_2,
        }
    }

    /// Sends `req` to the endpoint `addr`. The lease, if any, must live as long as the response
    /// body is read: it gives the connection back to the pool when dropped.
    pub async fn send(
        self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        match self {
            Self::Http1(pool) => pool.send(addr, req).await.map(|(r, l)| (r, Some(l))),
            Self::Http2(client) => match client.request(req).await {
                Ok(r) => Ok((r, None)),
                Err(e) if e.is_connect() => Err(UpstreamError::Connect {
                    addr,
                    source: e.into(),
                }),
                Err(e) => Err(UpstreamError::Request {
                    addr,
                    source: e.into(),
                }),
            },
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
            h2: wants_h2.then(|| build_h2(connect_timeout, idle_timeout)),
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

fn build_h2(connect_timeout: Duration, idle_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        // The proxy sets Host itself, from the client's request.
        .set_host(false)
        .build(connector)
}
