//! Connection pools to a backend's endpoints: hyper-util's pooling client with keep-alive,
//! TCP_NODELAY and a connect timeout, one pool per protocol the backend speaks.

use std::time::Duration;

use http::Version;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_proxy_api::UpstreamProtocol;

use crate::error::Body;

/// A pooled HTTP client.
pub type HttpClient = Client<HttpConnector, Body>;

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; a burst opens more, but they are not all kept (each
/// holds buffers), as nginx's `keepalive` does.
const MAX_IDLE_PER_ENDPOINT: usize = 128;

/// The pools of one backend.
#[derive(Clone, Debug)]
pub struct Clients {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    h1: Option<HttpClient>,
    h2: Option<HttpClient>,
}

impl Clients {
    /// Pools for `protocol`; `Auto` gets both.
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Self {
        let wants_h1 = matches!(protocol, UpstreamProtocol::Http1 | UpstreamProtocol::Auto);
        let wants_h2 = matches!(protocol, UpstreamProtocol::Http2 | UpstreamProtocol::Auto);
        Self {
            protocol,
            connect_timeout,
            h1: wants_h1.then(|| build(false, connect_timeout)),
            h2: wants_h2.then(|| build(true, connect_timeout)),
        }
    }

    /// Whether these pools fit a backend with this protocol and timeout (then they are kept
    /// across a config reload, and so are their warm connections).
    pub fn fits(&self, protocol: UpstreamProtocol, connect_timeout: Duration) -> bool {
        self.protocol == protocol && self.connect_timeout == connect_timeout
    }

    /// Time allowed to connect to an endpoint.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The client and HTTP version to use for a request that arrived as `downstream`.
    /// Upgrades always go over HTTP/1.1: that is the only version with `Upgrade`.
    pub fn select(&self, downstream: Version, upgrade: bool) -> (&HttpClient, Version) {
        let h2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => downstream == Version::HTTP_2 && !upgrade,
        };
        match (h2, &self.h1, &self.h2) {
            (true, _, Some(c)) => (c, Version::HTTP_2),
            (_, Some(c), _) => (c, Version::HTTP_11),
            (_, None, Some(c)) => (c, Version::HTTP_2),
            (_, None, None) => unreachable!("Clients::new always builds one pool"),
        }
    }
}

fn build(h2: bool, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2)
        // The proxy sets Host itself, from the client's request.
        .set_host(false)
        .build(connector)
}
