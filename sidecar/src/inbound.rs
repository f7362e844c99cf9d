//! Sidecar mode, INBOUND: connections to the pod, redirected here by iptables, go to the
//! application on `127.0.0.1:<original port>` under the port's [inbound policy](crate::inbound_policy).
//!
//! ```text
//!  port without a policy ──────────────────────────────► app, bytes untouched (no sniffing)
//!  port with a policy ─► detect ─► HTTP/1 or HTTP/2 ─► each request checked ─► app (same version)
//!                                │                     └─ refused: 403 / 429 from the proxy
//!                                └► opaque ─► connection checked once ─► app
//!                                                                   └─ refused: closed
//! ```
//!
//! A refused opaque connection is closed before the proxy connects to the application, so not
//! a byte reaches it. Ports in `interception.opaquePorts` are never sniffed here either.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portico_proxy_api::UpstreamProtocol;
use tokio::net::TcpStream;

use crate::Shared;
use crate::detect::{self, Detected};
use crate::error::{Body, BoxError, ProxyError};
use crate::http_rules;
use crate::inbound_policy::{PortPolicy, Refusal};
use crate::upstream::Clients;

/// Time allowed to connect to the application.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One inbound connection, as its requests see it.
#[derive(Debug)]
pub struct Conn {
    pub(crate) client: SocketAddr,
    /// `client`'s IP as a header value, formatted once for `X-Forwarded-For`.
    pub(crate) client_ip: http::HeaderValue,
    port: u16,
    pub(crate) app: SocketAddr,
    /// `app` as the upstream authority, formatted once per connection.
    authority: http::uri::Authority,
    /// Labels of `portico_requests_total`: the listener as the route, the app port as the
    /// backend (bounded by the pod's ports).
    route: Arc<str>,
    backend: Arc<str>,
}

impl Conn {
    /// Counts one answered request in `portico_requests_total` and the latency histogram.
    pub(crate) fn record(&self, shared: &Shared, status: u16, elapsed: Duration) {
        shared
            .metrics
            .request(Some(&self.route), Some(&self.backend), status, elapsed);
    }
}

/// The port's inbound policy in force now decides on a request: if it may pass, the pools to
/// the application; if not, the refusal (its response is a 403 or 429), already logged and
/// counted.
pub(crate) fn admit(
    shared: &Shared,
    conn: &Conn,
    headers: &http::HeaderMap,
) -> Result<Clients, ProxyError> {
    let snap = shared.snapshot.load();
    let clients = snap
        .app_clients
        .get_or_init(|| {
            Clients::new(
                UpstreamProtocol::Auto,
                APP_CONNECT_TIMEOUT,
                crate::upstream::IDLE_TIMEOUT,
            )
        })
        .clone();
    if let Some(p) = snap.inbound.port(conn.port)
        && let Err(refusal) = p.check(conn.client.ip(), Some(headers))
    {
        refused(shared, p, &refusal);
        return Err(ProxyError::from(refusal));
    }
    Ok(clients)
}

/// Serves one INBOUND connection whose original destination was `dst`.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
) {
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port()));
    let snap = shared.snapshot.load_full();
    if snap.inbound.port(dst.port()).is_none() {
        drop(snap);
        shared
            .metrics
            .intercepted(&listener, None, Detected::Opaque.label());
        Box::pin(crate::intercept::passthrough(stream, app)).await;
        return;
    }
    let detected = detect::protocol(&stream, snap, dst.port(), false).await;
    shared
        .metrics
        .intercepted(&listener, None, detected.label());
    if detected == Detected::Opaque {
        // Load again: detection may have waited across a config swap.
        let policy = shared.snapshot.load().inbound.port(dst.port()).cloned();
        if let Some(p) = policy
            && let Err(refusal) = p.check(client.ip(), None)
        {
            refused(&shared, &p, &refusal);
            return;
        }
        Box::pin(crate::intercept::passthrough(stream, app)).await;
        return;
    }
    let backend: Arc<str> = Arc::from(app.to_string());
    let Ok(authority) = http::uri::Authority::try_from(&*backend) else {
        // `IP:PORT` is always a valid authority; nothing to serve if it somehow is not.
        tracing::debug!(%app, "the app's address is not an authority");
        return;
    };
    let conn = Arc::new(Conn {
        client,
        // An IP address is always a valid header value.
        client_ip: http::HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or(http::HeaderValue::from_static("unknown")),
        port: dst.port(),
        app,
        authority,
        route: listener,
        backend,
    });
    if detected == Detected::Http1 {
        crate::h1::serve(shared, crate::h1::Site::Inbound(conn), stream.into()).await;
    } else {
        // Boxed: hyper's state would otherwise size every HTTP/1.1 connection's task.
        Box::pin(serve_http(shared, conn, stream)).await;
    }
}

fn refused(shared: &Shared, p: &PortPolicy, refusal: &Refusal) {
    tracing::debug!(port = %p.port, policy = %p.policy, reason = refusal.reason(), "{refusal}");
    shared
        .metrics
        .inbound_refused(&p.port, &p.policy, refusal.reason());
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 with hyper until the client closes or a shutdown
/// asks the connection to finish gracefully: HTTP/2 connections, and HTTP/1 ones from their
/// first request that the fast path ([`crate::h1`]) leaves to hyper.
pub(crate) async fn serve_http<I>(shared: Arc<Shared>, conn: Arc<Conn>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.subscribe();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| Box::pin(handle(shared.clone(), conn.clone(), req)))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Answers a client that shut its sending side after the request.
    builder.http1().timer(TokioTimer::new()).half_close(true);
    builder.http2().timer(TokioTimer::new());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "inbound connection ended with an error");
            }
        }
        () = async { drop(shutdown.wait_for(|s| *s).await) } => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}

/// Checks one request against the policy in force now and forwards it to the application.
async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = std::time::Instant::now();
    let resp = match admit(&shared, &conn, req.headers()) {
        Err(refused) => refused.into_response(),
        Ok(clients) => match forward(&clients, &conn, req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, app = %conn.app, "inbound request failed");
                e.into_response()
            }
        },
    };
    conn.record(&shared, resp.status().as_u16(), start.elapsed());
    Ok(resp)
}

/// Sends a request to the application in the version it arrived in (an upgrade over
/// HTTP/1.1), with the hop-by-hop rules of [`http_rules`].
async fn forward(
    clients: &Clients,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11 && http_rules::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    http_rules::strip_hop_by_hop(&mut parts.headers, upgrade);
    http_rules::add_forwarded(&mut parts.headers, &conn.client_ip, "http");
    // An HTTP/2 caller sent `:authority` instead of Host; the app may route on it.
    if !parts.headers.contains_key(HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(h) = a.as_str().parse()
    {
        parts.headers.insert(HOST, h);
    }
    let upstream = clients.select(parts.version, upgrade);
    let headers = std::mem::take(&mut parts.headers);
    let up =
        crate::proxy::upstream_request(&parts, headers, &conn.authority, upstream.version(), {
            body.map_err(BoxError::from).boxed_unsync()
        })?;
    let (mut resp, lease) = upstream.send(conn.app, up).await.map_err(|e| {
        tracing::debug!(app = %conn.app, error = %e, "request to the app failed");
        e.to_proxy_error()
    })?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_side) = client_upgrade {
        let app_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(crate::proxy::tunnel(client_side, app_side));
    }
    let (mut parts, body) = resp.into_parts();
    http_rules::strip_hop_by_hop(&mut parts.headers, switching);
    // The pooled connection goes back to the pool only once the body has been read: the
    // closure owns the lease, and the body owns the closure.
    Ok(Response::from_parts(
        parts,
        body.map_err(move |e| {
            let _lease = &lease;
            BoxError::from(e)
        })
        .boxed_unsync(),
    ))
}
