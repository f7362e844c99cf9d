//! The HTTP request path: route, apply filters, forward with timeouts and retries, answer.
//!
//! ```text
//! request ─► router ─► filters ─► pick backend (weights) ─► attempt ─┬─► response filters ─► client
//!                     (redirect/direct answer here)        ▲        │
//!                                                          └ retry ◄┘ (policy, budget, backoff)
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico_proxy_api::{BackendRef, Filter, HeaderModifier, RetryPolicy};
use rand::Rng;
use tokio::time::Instant;

use crate::config::snapshot::Snapshot;
use crate::error::{Body, ProxyError, empty, full};
use crate::forward::backend::{BackendState, InFlight};
use crate::forward::balance::PickContext;
use crate::forward::body::{Guarded, RequestBody};
use crate::observe::accesslog;
use crate::policy::retry::{Failure, RetryBudget};
use crate::policy::{filters, retry};
use crate::route::router::RouteHit;
use crate::shared::Shared;
use crate::wire::headers as http_rules;

pub use crate::forward::body::MAX_REPLAY_BODY;

pub mod inbound;

/// Whose requests a client connection carries: which pipeline its requests go through.
pub enum Site {
    /// A listener's routes (gateway listeners; the sidecar's OUTBOUND, by the service dialled).
    Routed(ConnInfo),
    /// The pod's own application, under the port's inbound policy (the sidecar's INBOUND).
    Inbound(Arc<inbound::Conn>),
}

impl Site {
    /// The client's address.
    pub(crate) fn client(&self) -> SocketAddr {
        match self {
            Self::Routed(info) => info.client,
            Self::Inbound(conn) => conn.client,
        }
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Listener name.
    pub listener: Arc<str>,
    /// Client address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Sidecar mode: the service the client dialled, whose routes apply instead of the
    /// listener's.
    pub service: Option<Arc<str>>,
    /// The client IP as a header value, formatted once per connection rather than for every
    /// request's `X-Forwarded-For`.
    pub client_ip: HeaderValue,
}

impl ConnInfo {
    /// Facts about a connection from `client`.
    pub fn new(
        listener: Arc<str>,
        client: SocketAddr,
        scheme: &'static str,
        service: Option<Arc<str>>,
    ) -> Self {
        let ip = client.ip().to_string();
        Self {
            listener,
            client,
            scheme,
            service,
            // An IP address is always a valid header value.
            client_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
        }
    }
}

/// What the access log and metrics learn while a request is handled.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) route: Option<Arc<str>>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'static str>,
}

/// A request's facts for the access log and metrics, taken before the request is consumed.
pub(crate) struct RequestLog {
    start: Instant,
    method: http::Method,
    version: Version,
    host: String,
    path: String,
}

impl RequestLog {
    /// Starts timing a request. Host and path are copied only when access logs are on.
    pub(crate) fn new(
        shared: &Shared,
        parts_method: &http::Method,
        version: Version,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Self {
        let (host, path) = if shared.access_log {
            (request_host(uri, headers).to_owned(), uri.path().to_owned())
        } else {
            Default::default()
        };
        Self {
            start: Instant::now(),
            method: parts_method.clone(),
            version,
            host,
            path,
        }
    }

    /// Counts the answered request in the metrics and writes its access log line.
    pub(crate) fn finish(self, shared: &Shared, conn: &ConnInfo, status: u16, out: &Outcome) {
        let elapsed = self.start.elapsed();
        shared
            .metrics
            .request(out.route.as_ref(), out.backend.as_ref(), status, elapsed);
        if shared.access_log {
            accesslog::write(&accesslog::Entry {
                ts_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                listener: &conn.listener,
                client: conn.client,
                method: self.method.as_str(),
                host: &self.host,
                path: &self.path,
                version: format!("{:?}", self.version),
                status,
                route: out.route.as_deref(),
                backend: out.backend.as_deref(),
                attempts: out.attempts,
                error: out.error,
                duration_ms: accesslog::millis(elapsed),
            });
        }
    }
}

/// Handles one request; never fails (errors become responses).
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let log = RequestLog::new(
        &shared,
        req.method(),
        req.version(),
        req.uri(),
        req.headers(),
    );
    let mut out = Outcome::default();
    let resp = match route_and_forward(&shared, &conn, req, &mut out).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.reason());
            tracing::debug!(error = %e, listener = %conn.listener, "request failed");
            e.into_response()
        }
    };
    log.finish(&shared, &conn, resp.status().as_u16(), &out);
    Ok(resp)
}

fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// What routing and a rule's request filters decided for a request.
pub(crate) enum Plan<'a> {
    /// The proxy answers itself (redirect, direct response).
    Answer(Response<Body>),
    /// The request goes upstream.
    Forward(Forward<'a>),
}

/// A request to forward: its rule, backend, and what to do with the response.
pub(crate) struct Forward<'a> {
    /// The route and rule that matched.
    pub(crate) hit: RouteHit<'a>,
    /// The backend chosen by weight.
    pub(crate) backend: Arc<BackendState>,
    /// Response header filters, applied in order.
    pub(crate) response_mods: Vec<&'a HeaderModifier>,
    /// Mirror filters that may copy this request: `(backend, percent)`. The fast path leaves
    /// requests with any to hyper's path, which draws the sample once per request.
    pub(crate) mirrors: Vec<(&'a str, u32)>,
}

impl Forward<'_> {
    /// The retry policy that applies to this request, if any.
    pub(crate) fn retry(&self, method: &http::Method, upgrade: bool) -> Option<&RetryPolicy> {
        self.hit
            .rule
            .rule
            .retry
            .as_ref()
            .filter(|p| p.attempts > 0 && !upgrade && retry::method_allowed(p, method))
    }

    /// Applies the hop-by-hop rules and the rule's response filters to response headers.
    pub(crate) fn response_headers(&self, headers: &mut HeaderMap, upgrade: bool) {
        http_rules::strip_hop_by_hop(headers, upgrade);
        for m in &self.response_mods {
            filters::modify_headers(m, headers);
        }
    }
}

/// Routes a request and applies its rule's request filters to `parts`: the headers and URI are
/// then those to send upstream (hop-by-hop headers gone, `X-Forwarded-*` and `Host` set).
pub(crate) fn plan<'a>(
    snap: &'a Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    upgrade: bool,
    out: &mut Outcome,
) -> Result<Plan<'a>, ProxyError> {
    let mut host = request_host(&parts.uri, &parts.headers).to_owned();
    let mut host_changed = parts.headers.get(HOST).is_none();
    let hit = match &conn.service {
        Some(svc) => snap.services.route(svc, &host, parts),
        None => snap.router.route(&conn.listener, &host, parts),
    }
    .ok_or(ProxyError::NoRoute)?;
    out.route = Some(hit.route.clone());
    let rule = &hit.rule.rule;

    let mut response_mods: Vec<&HeaderModifier> = Vec::new();
    let mut mirrors: Vec<(&str, u32)> = Vec::new();
    for f in &rule.filters {
        match f {
            Filter::RequestRedirect(r) => {
                return Ok(Plan::Answer(filters::redirect(
                    r,
                    conn.scheme,
                    &host,
                    &parts.uri,
                    hit.matched_prefix,
                )));
            }
            Filter::DirectResponse(d) => return Ok(Plan::Answer(filters::direct(d))),
            Filter::RequestHeaderModifier(m) => filters::modify_headers(m, &mut parts.headers),
            Filter::ResponseHeaderModifier(m) => response_mods.push(m),
            Filter::UrlRewrite(u) => {
                if let Some(h) = filters::rewrite_url(u, &mut parts.uri, hit.matched_prefix) {
                    host = h;
                    host_changed = true;
                }
            }
            Filter::RequestMirror(m) if m.percent > 0 => mirrors.push((&m.backend, m.percent)),
            Filter::RequestMirror(_) => {}
        }
    }

    http_rules::strip_hop_by_hop(&mut parts.headers, upgrade);
    http_rules::add_forwarded(&mut parts.headers, &conn.client_ip, conn.scheme);
    // HTTP/1 upstreams need `Host`; an HTTP/2 client sent `:authority` instead.
    if host_changed && let Ok(h) = HeaderValue::from_str(&host) {
        parts.headers.insert(HOST, h);
    }

    let backend = pick_backend(snap, &rule.backends)?;
    out.backend = Some(backend.name.clone());
    Ok(Plan::Forward(Forward {
        hit,
        backend,
        response_mods,
        mirrors,
    }))
}

/// Whether this request is among the `percent` share mirrored (drawn per request).
fn mirrored(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::random_range(0..100) < percent)
}

async fn route_and_forward(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let snap: Arc<Snapshot> = shared.snapshot.load_full();
    let upgrade = req.version() == Version::HTTP_11 && http_rules::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let fwd = match plan(&snap, conn, &mut parts, upgrade, out)? {
        Plan::Answer(resp) => return Ok(resp),
        Plan::Forward(f) => f,
    };
    let hit = fwd.hit;
    let rule = &hit.rule.rule;
    let retry = fwd.retry(&parts.method, upgrade);
    // The Service's budget when its ServicePolicy sets one, else the rule's.
    let budget = fwd
        .backend
        .retry_budget
        .as_deref()
        .or(hit.rule.budget.as_ref());
    if let Some(budget) = budget {
        budget.deposit();
    }
    let mirrors: Vec<&str> = fwd
        .mirrors
        .iter()
        .filter(|(_, percent)| mirrored(*percent))
        .map(|(name, _)| *name)
        .collect();
    let mut body = if retry.is_some() || !mirrors.is_empty() {
        RequestBody::buffer(body).await?
    } else {
        RequestBody::Streaming(Some(body))
    };
    if let Some(bytes) = body.replayable() {
        for name in &mirrors {
            if let Some(b) = snap.backends.get(*name) {
                mirror(shared, b.clone(), &parts, bytes.clone(), conn.client);
            }
        }
    }

    // A request that cannot be retried is sent once: its headers move into that attempt
    // instead of being copied.
    let headers = retry.is_none().then(|| std::mem::take(&mut parts.headers));
    let attempts = Attempts {
        shared,
        route: hit.route,
        backend: &fwd.backend,
        parts: &parts,
        client: conn.client,
        upgrade,
        per_try: rule.timeouts.per_try.map(|d| d.get()),
        retry,
        budget,
    };
    let forwarded = attempts.run(&mut body, headers, out);
    let mut resp = match rule.timeouts.request {
        Some(t) => tokio::time::timeout(t.get(), forwarded)
            .await
            .map_err(|_| ProxyError::Timeout(t.get()))??,
        None => forwarded.await?,
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_side) = client_upgrade {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_side, upstream_side));
    }
    fwd.response_headers(resp.headers_mut(), switching);
    Ok(resp)
}

/// Chooses a backend by weight.
pub(crate) fn pick_backend(
    snap: &Snapshot,
    refs: &[BackendRef],
) -> Result<Arc<BackendState>, ProxyError> {
    let total: u64 = refs.iter().map(|r| u64::from(r.weight)).sum();
    let mut ticket = if refs.len() > 1 && total > 0 {
        rand::rng().random_range(0..total)
    } else {
        0
    };
    let chosen = refs
        .iter()
        .find(|r| {
            if ticket < u64::from(r.weight) {
                true
            } else {
                ticket -= u64::from(r.weight);
                false
            }
        })
        .or(refs.first())
        .ok_or(ProxyError::NoRoute)?;
    snap.backends
        .get(&chosen.backend)
        .cloned()
        .ok_or_else(|| ProxyError::NoHealthyEndpoint(chosen.backend.as_str().into()))
}

/// Everything needed to make attempts for one request.
struct Attempts<'a> {
    shared: &'a Arc<Shared>,
    route: &'a Arc<str>,
    backend: &'a Arc<BackendState>,
    parts: &'a Parts,
    client: SocketAddr,
    upgrade: bool,
    per_try: Option<Duration>,
    retry: Option<&'a RetryPolicy>,
    budget: Option<&'a RetryBudget>,
}

impl Attempts<'_> {
    /// Makes attempts until one succeeds or the policy says stop. `headers`, when given, are
    /// the request's headers to move into the first attempt (then there is no retry).
    async fn run(
        &self,
        body: &mut RequestBody,
        mut headers: Option<HeaderMap>,
        out: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        let mut retries_done = 0u32;
        loop {
            let req_body = body.take().unwrap_or_else(empty);
            out.attempts = retries_done + 1;
            let result = self.once(req_body, headers.take()).await;
            let failure = match &result {
                Ok(resp) => response_failure(resp),
                Err(ProxyError::Connect(_)) => Some(Failure::Connect),
                Err(ProxyError::Reset(_)) => Some(Failure::Reset),
                Err(ProxyError::Timeout(_)) => Some(Failure::Timeout),
                Err(_) => None,
            };
            let (Some(policy), Some(failure)) = (self.retry, failure) else {
                return result;
            };
            let budget_ok = || self.budget.is_none_or(|b| b.withdraw());
            if retries_done >= policy.attempts
                || body.replayable().is_none()
                || !retry::retries(policy, failure)
                || !budget_ok()
            {
                return result;
            }
            drop(result);
            self.shared.metrics.retry(self.route, &self.backend.name);
            tokio::time::sleep(retry::backoff(policy, retries_done)).await;
            retries_done += 1;
        }
    }

    /// One attempt on one endpoint, with the request's headers if given, else a copy of them.
    async fn once(
        &self,
        body: Body,
        headers: Option<HeaderMap>,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = self.backend;
        let ctx = PickContext {
            headers: headers.as_ref().unwrap_or(&self.parts.headers),
            client_ip: self.client.ip(),
        };
        let (permit, ep) = backend.admit(&ctx).await?;
        let upstream = backend.clients.select(self.parts.version, self.upgrade);
        let headers = headers.unwrap_or_else(|| self.parts.headers.clone());
        let req = upstream_request(self.parts, headers, &ep.authority, upstream.version(), body)?;
        let in_flight = InFlight::new(ep);
        let start = Instant::now();
        let dest = self.shared.dest(ep);
        let sent = upstream.send(&dest, req);
        let result = match self.per_try {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(r) => r,
                Err(_) => {
                    self.record(ep, None, false);
                    return Err(ProxyError::Timeout(t));
                }
            },
            None => sent.await,
        };
        match result {
            Ok((resp, lease)) => {
                let ok = !resp.status().is_server_error();
                self.record(ep, Some(start.elapsed()), ok);
                let (p, b) = resp.into_parts();
                let body = Guarded::new(b, (permit, in_flight, lease));
                Ok(Response::from_parts(p, body.boxed_unsync()))
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "upstream request failed");
                let err = e.to_proxy_error();
                // A client's broken body (400) is nothing to hold against the endpoint.
                if !matches!(err, ProxyError::BadRequest(_)) {
                    self.record(ep, None, false);
                }
                Err(err)
            }
        }
    }

    fn record(&self, ep: &crate::forward::backend::Endpoint, rtt: Option<Duration>, ok: bool) {
        self.backend.report(&self.shared.metrics, ep, rtt, ok);
    }
}

/// A failure a retry policy may retry in a response: a 4xx or 5xx (the policy decides which), or
/// a trailers-only gRPC error (the only gRPC status visible before the body, which is streamed
/// and never buffered).
fn response_failure(resp: &Response<Body>) -> Option<Failure> {
    if resp.status().is_client_error() || resp.status().is_server_error() {
        return Some(Failure::Status(resp.status()));
    }
    let code = resp
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (code != 0).then_some(Failure::Grpc(code))
}

/// The request sent upstream: HTTP/1.1 gets the origin-form URI the client sent (no new URI is
/// built), HTTP/2 an absolute URI naming the endpoint (hyper-util's pool key; `:authority` comes
/// from it).
pub(crate) fn upstream_request(
    parts: &Parts,
    headers: HeaderMap,
    authority: &http::uri::Authority,
    version: Version,
    body: Body,
) -> Result<Request<Body>, ProxyError> {
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    if version == Version::HTTP_2 {
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
    }
    uri.path_and_query = Some(pq);
    let uri = http::Uri::from_parts(uri).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Sends a copy of a request to another backend and forgets it: never awaited by the main
/// request, errors only logged.
fn mirror(
    shared: &Arc<Shared>,
    backend: Arc<BackendState>,
    parts: &Parts,
    body: Bytes,
    client: SocketAddr,
) {
    let shared = shared.clone();
    let mut parts_copy = {
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r.into_parts().0
    };
    tokio::spawn(async move {
        let Ok(_permit) = backend.limiter.acquire().await else {
            return;
        };
        let ctx = PickContext {
            headers: &parts_copy.headers,
            client_ip: client.ip(),
        };
        let Ok(ep) = backend.pick(&ctx) else {
            return;
        };
        let upstream = backend.clients.select(parts_copy.version, false);
        let headers = std::mem::take(&mut parts_copy.headers);
        let version = upstream.version();
        let Ok(req) = upstream_request(&parts_copy, headers, &ep.authority, version, full(body))
        else {
            return;
        };
        match upstream.send(&shared.dest(ep), req).await {
            Ok((resp, _lease)) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(backend = %backend.name, error = %e, "mirror failed"),
        }
    });
}

/// Copies bytes both ways between an upgraded client connection and upstream connection.
pub(crate) async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut c = TokioIo::new(client);
    let mut u = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
}

#[cfg(test)]
mod tests {
    use super::mirrored;

    #[test]
    fn mirror_percent_draws_that_share() {
        assert!((0..1000).all(|_| mirrored(100)));
        assert!((0..1000).all(|_| !mirrored(0)));
        let hits = (0..10_000).filter(|_| mirrored(25)).count();
        // Binomial(10000, 0.25): sd 43; ±10 sd.
        assert!((2_070..=2_930).contains(&hits), "{hits}");
    }
}
