//! Sidecar mode, INBOUND: connections to the pod, redirected here by iptables, go to the
//! application on `127.0.0.1:<original port>` under the port's [inbound
//! policy](crate::inbound_policy).
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

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
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
use crate::inbound_policy::{Caller, Refusal};
use crate::mtls::{self, Hello, MeshProtocol};
use crate::upstream::Clients;

/// Time allowed to connect to the application.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The request header that tells the application who called (a mesh caller's SPIFFE ID).
pub static CLIENT_IDENTITY: HeaderName = HeaderName::from_static("x-portico-client-identity");

/// One inbound connection, as its requests see it.
#[derive(Debug)]
pub struct Conn {
    pub(crate) client: SocketAddr,
    /// `client`'s IP as a header value, formatted once for `X-Forwarded-For`.
    pub(crate) client_ip: http::HeaderValue,
    /// The caller's verified mesh identity (mTLS), if it has one.
    identity: Option<Arc<str>>,
    /// The identity as a label and a header value, formatted once.
    caller: Arc<str>,
    identity_header: Option<HeaderValue>,
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

    fn caller(&self) -> Caller<'_> {
        Caller {
            ip: self.client.ip(),
            identity: self.identity.as_deref(),
        }
    }

    /// Tells the application who called: the verified identity, or nothing (a header of the
    /// same name from a plaintext caller is removed).
    pub(crate) fn identify(&self, headers: &mut http::HeaderMap) {
        match &self.identity_header {
            Some(v) => {
                headers.insert(CLIENT_IDENTITY.clone(), v.clone());
            }
            None => {
                headers.remove(&CLIENT_IDENTITY);
            }
        }
    }
}

/// The port's inbound policy in force now decides on a request: if it may pass, the pools to
/// the application; if not, the refusal (its response is a 403 or 429), already logged and
/// counted.
pub(crate) fn admit(
    shared: &Shared,
    conn: &Conn,
    method: &http::Method,
    path: &str,
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
    check(
        shared,
        &snap.inbound,
        conn.port,
        &conn.caller(),
        &conn.caller,
        Some((method, path, headers)),
    )
    .map_err(ProxyError::from)?;
    Ok(clients)
}

/// The metrics label of a caller without an identity: one allocation for the process, not one
/// per plaintext connection.
static UNAUTHENTICATED: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("unauthenticated"));

/// Checks a request (or, with `request` None, a new opaque connection) against the policies in
/// force, counting the decision and any refusal.
fn check(
    shared: &Shared,
    policies: &crate::inbound_policy::InboundPolicies,
    port: u16,
    caller: &Caller<'_>,
    label: &Arc<str>,
    request: Option<(&http::Method, &str, &http::HeaderMap)>,
) -> Result<(), Refusal> {
    match policies.check(port, caller, request) {
        Ok(policy) => {
            if let Some(p) = policy.filter(|p| p.has_authorization()) {
                shared
                    .metrics
                    .authorization(&p.port, &p.policy, label, true);
            }
            Ok(())
        }
        Err(refusal) => {
            let policy = policies.port(port);
            let (port_label, policy_label) = match policy {
                Some(p) => (p.port.clone(), p.policy.clone()),
                // A refusal on a port without a policy (a strict pod's unlisted port): rare.
                None => (Arc::from(port.to_string()), Arc::from("")),
            };
            if matches!(refusal, Refusal::Unauthorized { .. }) {
                shared
                    .metrics
                    .authorization(&port_label, &policy_label, label, false);
            }
            tracing::info!(port, policy = %policy_label, caller = %caller.label(), reason = refusal.reason(), "{refusal}");
            shared
                .metrics
                .inbound_refused(&port_label, &policy_label, refusal.reason());
            Err(refusal)
        }
    }
}

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
        Box::pin(crate::intercept::passthrough(stream, app)).await;
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
        Box::pin(crate::intercept::passthrough(stream, app)).await;
        return;
    }
    let Some(conn) = Conn::new(listener, client, None, dst) else {
        return;
    };
    if detected == Detected::Http1 {
        crate::h1::serve(shared, crate::h1::Site::Inbound(conn), stream.into()).await;
    } else {
        // Boxed: hyper's state would otherwise size every HTTP/1.1 connection's task.
        Box::pin(serve_http(shared, conn, stream)).await;
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
        crate::intercept::passthrough(stream, app).await;
        return;
    }
    let Some(conn) = Conn::new(listener, client, Some(peer), dst) else {
        return;
    };
    if protocol == MeshProtocol::Http1 {
        crate::h1::serve(
            shared,
            crate::h1::Site::Inbound(conn),
            crate::h1::ClientStream::Tls(stream),
        )
        .await;
    } else {
        serve_http(shared, conn, stream).await;
    }
}

impl Conn {
    fn new(
        listener: Arc<str>,
        client: SocketAddr,
        identity: Option<Arc<str>>,
        dst: SocketAddr,
    ) -> Option<Arc<Self>> {
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port()));
        let backend: Arc<str> = Arc::from(app.to_string());
        let Ok(authority) = http::uri::Authority::try_from(&*backend) else {
            // `IP:PORT` is always a valid authority; nothing to serve if it somehow is not.
            tracing::debug!(%app, "the app's address is not an authority");
            return None;
        };
        Some(Arc::new(Self {
            client,
            // An IP address is always a valid header value.
            client_ip: http::HeaderValue::from_str(&client.ip().to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            caller: identity.clone().unwrap_or_else(|| UNAUTHENTICATED.clone()),
            identity_header: identity
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok()),
            identity,
            port: dst.port(),
            app,
            authority,
            route: listener,
            backend,
        }))
    }
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
    let resp = match admit(
        &shared,
        &conn,
        req.method(),
        req.uri().path(),
        req.headers(),
    ) {
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
    conn.identify(&mut parts.headers);
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
    let app = crate::connect::Dest::plain(conn.app);
    let (mut resp, lease) = upstream.send(&app, up).await.map_err(|e| {
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
