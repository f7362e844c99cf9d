//! The sidecar's INBOUND requests: the port's inbound policy decides on each one
//! ([`admit`]), then it goes to the pod's application as it came, with the hop-by-hop rules,
//! `X-Forwarded-For`, and the caller's verified identity in `x-portico-client-identity` (removed
//! from plaintext requests, so it cannot be forged). Connections are accepted and classified by
//! [`crate::serve::inbound`]; hyper's requests are handled here ([`handle`]), the fast path's by
//! [`crate::serve::h1`] with the same [`admit`].

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use portico_proxy_api::UpstreamProtocol;

use crate::error::{Body, BoxError, ProxyError};
use crate::forward::upstream::Clients;
use crate::policy::ids;
use crate::policy::inbound::{Caller, Refusal};
use crate::shared::Shared;
use crate::wire::headers;

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
        shared.metrics.request(
            Some(&self.route),
            None,
            Some(&self.backend),
            status,
            elapsed,
        );
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            ip: self.client.ip(),
            identity: self.identity.as_deref(),
        }
    }

    /// Prepares a request's headers for the application, on either request path: this hop's
    /// request ID and trace context, the hop-by-hop rules, `X-Forwarded-For`, and who called.
    pub(crate) fn to_app(&self, h: &mut http::HeaderMap, upgrade: bool) {
        ids::stamp(h);
        headers::strip_hop_by_hop(h, upgrade);
        headers::add_forwarded(h, &self.client_ip, "http");
        self.identify(h);
    }

    /// Tells the application who called: the verified identity, or nothing (a header of the
    /// same name from a plaintext caller is removed).
    fn identify(&self, headers: &mut http::HeaderMap) {
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
                crate::forward::upstream::IDLE_TIMEOUT,
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
pub(crate) static UNAUTHENTICATED: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("unauthenticated"));

/// Checks a request (or, with `request` None, a new opaque connection) against the policies in
/// force, counting the decision and any refusal.
pub(crate) fn check(
    shared: &Shared,
    policies: &crate::policy::inbound::InboundPolicies,
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

impl Conn {
    /// One connection from `client` (with its verified mesh identity, if any) to the
    /// application port of `dst`.
    pub(crate) fn new(
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

/// Checks one request against the policy in force now and forwards it to the application.
pub(crate) async fn handle(
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
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    conn.to_app(&mut parts.headers, upgrade);
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
        super::attempts::upstream_request(&parts, headers, &conn.authority, upstream.version(), {
            body.map_err(BoxError::from).boxed_unsync()
        })?;
    let app = crate::forward::connect::Dest::plain(conn.app);
    let (mut resp, lease) = upstream.send(&app, up).await.map_err(|e| {
        tracing::debug!(app = %conn.app, error = %e, "request to the app failed");
        e.to_proxy_error()
    })?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_side) = client_upgrade {
        let app_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(crate::pipeline::tunnel(client_side, app_side));
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
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
