//! One request's trip through the proxy, the same for every transport:
//!
//! ```text
//! request ─► route ─► request stages ─┬─► answer (redirect, direct response)
//!                     (in rule order)  ├─► aggregate: every backend at once ─► merged JSON ─► client
//!                                      └─► backend by weight ─► mirrors ─► attempts ─► response stages ─► client
//!                                                                          ▲      │   (in rule order)
//!                                                                          └ retry┘ (policy, budget, backoff,
//!                                                                                    request and per-try timeouts)
//! ```
//!
//! [`plan`] routes a request and runs its rule's request stages ([`crate::policy::stages`]);
//! [`attempts::AttemptPolicy::run`] makes the attempts; [`Forward::response_headers`] runs the
//! response stages; [`cached`] puts the rule's response cache and fallback around the attempts
//! (hyper's path only). hyper's path ([`handle`]) and the fast HTTP/1 path
//! ([`crate::serve::h1`]) both go through these; they differ only in how bytes move.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HOST, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico_proxy_api::{BackendRef, RetryPolicy};
use rand::Rng;

use crate::config::snapshot::Snapshot;
use crate::error::{Body, ProxyError, empty};
use crate::forward::backend::BackendState;
use crate::forward::body::RequestBody;
use crate::policy::stages::RequestView;
use crate::policy::{compress, cors, ids, retry};
use crate::route::router::RouteHit;
use crate::shared::Shared;
use crate::wire::headers as http_rules;
use crate::wire::raw;

pub use crate::forward::body::MAX_REPLAY_BODY;

mod aggregate;
pub mod attempts;
mod cached;
pub mod inbound;
mod log;
mod mirror;

pub(crate) use aggregate::Aggregated;
use attempts::{AttemptPolicy, Attempts};
pub(crate) use log::{Outcome, RequestLog};
pub(crate) use mirror::mirror;

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
        None,
    );
    let mut out = Outcome::default();
    let resp = match route_and_forward(&shared, &conn, req, &mut out).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.reason());
            tracing::debug!(error = %e, listener = %conn.listener, "request failed");
            let mut resp = e.into_response();
            out.mark(&mut resp);
            resp
        }
    };
    log.finish(&shared, &conn, resp.status().as_u16(), &out);
    Ok(resp)
}

/// What routing and a rule's request stages decided for a request.
pub(crate) enum Plan<'a> {
    /// The proxy answers itself (redirect, direct response).
    Answer(Response<Body>),
    /// The request goes upstream.
    Forward(Forward<'a>),
    /// The request goes to each of the rule's aggregated backends; the proxy merges the answers.
    Aggregate(Aggregated<'a>),
    /// Asked for by the HTTP/1 fast path only: the rule needs hyper's path (response stages
    /// such as cache or compression, or an upstream the fast path does not speak). Decided
    /// before any request stage runs, so hyper's path runs them once (a rate limit counts the
    /// request once).
    HandOff,
}

/// A request to forward: its rule, backend, and the backends it is mirrored to.
pub(crate) struct Forward<'a> {
    /// The route and rule that matched.
    pub(crate) hit: RouteHit<'a>,
    /// The backend chosen by weight.
    pub(crate) backend: Arc<BackendState>,
    /// The backends this request is copied to (drawn by the rule's mirror stages).
    pub(crate) mirrors: Vec<Arc<BackendState>>,
    /// The request's allowed CORS origin, marked on the response.
    pub(crate) cors_origin: Option<HeaderValue>,
    /// The rate-limit bucket's size and what the request left of it, marked on the answer.
    pub(crate) quota: Option<(u64, crate::policy::ratelimit::Quota)>,
    /// A request forwarded from its parsed fields ([`RawHead`]): what the proxy sets on it.
    /// `None`: the request's header map is what goes upstream.
    pub(crate) raw: Option<raw::Stamp>,
}

/// A request head the HTTP/1 fast path kept as parsed fields, without a header map
/// ([`crate::wire::raw`]).
#[derive(Clone, Copy)]
pub(crate) struct RawHead<'b> {
    /// The fields.
    pub(crate) fields: &'b raw::Fields,
    /// The bytes they were parsed from.
    pub(crate) buf: &'b bytes::Bytes,
}

impl RawHead<'_> {
    /// Builds the request's header map, for a request that needs one after all.
    fn into_headers(self, parts: &mut Parts) -> Result<(), ProxyError> {
        parts.headers = self
            .fields
            .header_map(self.buf)
            .map_err(|e| ProxyError::BadRequest(e.to_owned()))?;
        Ok(())
    }
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

    /// Applies the hop-by-hop rules and the rule's response stages to response headers.
    pub(crate) fn response_headers(&self, headers: &mut HeaderMap, upgrade: bool) {
        http_rules::strip_hop_by_hop(headers, upgrade);
        let stages = &self.hit.rule.stages;
        stages.on_response(headers);
        if let Some(c) = &stages.cors {
            cors::mark(c, self.cors_origin.as_ref(), headers);
        }
        if let Some((capacity, quota)) = self.quota {
            crate::policy::stages::mark_quota(headers, capacity, quota);
        }
    }

    /// Whether the rule's response stages change responses.
    pub(crate) fn edits_responses(&self) -> bool {
        self.hit.rule.stages.edits_responses()
    }

    /// Sends the request's copies to the mirror backends (each forgotten once sent).
    pub(crate) fn send_mirrors(
        &self,
        shared: &Arc<Shared>,
        parts: &Parts,
        body: &bytes::Bytes,
        client: SocketAddr,
    ) {
        for backend in &self.mirrors {
            mirror(shared, backend.clone(), parts, body.clone(), client);
        }
    }
}

/// Routes a request and runs its rule's request stages on `parts`: the headers and URI are then
/// those to send upstream (hop-by-hop headers gone, `X-Forwarded-*` and `Host` set).
///
/// It waits only for a rule whose rate limit is kept in a store (Redis); for every other
/// request it completes without yielding. With `fast`, the caller is the HTTP/1 fast path: a
/// rule it cannot serve is [`Plan::HandOff`], before its stages run.
///
/// `raw`: the fast path's request whose header map was not built. It stays that way when
/// nothing looks at the headers (routing, the rule's stages, its backends' balancers): then
/// the [`Forward`] carries the fields and what the proxy sets on them. Otherwise the map is
/// built first.
pub(crate) async fn plan<'a>(
    snap: &'a Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    mut raw: Option<RawHead<'_>>,
    upgrade: bool,
    fast: bool,
    out: &mut Outcome,
) -> Result<Plan<'a>, ProxyError> {
    let routing_reads_headers = match &conn.service {
        Some(svc) => snap.services.reads_headers(svc),
        None => snap.router.reads_headers(),
    };
    if let Some(r) = raw.take_if(|_| routing_reads_headers) {
        r.into_headers(parts)?;
    }
    // Stamped before routing either way: the proxy's own answers name the request too.
    let stamped = match raw {
        Some(r) => {
            let stamped = ids::stamp_raw(r.fields.request_id(r.buf), r.fields.traceparent(r.buf));
            out.ids = Some(stamped.ids.clone());
            Some(stamped)
        }
        None => {
            out.ids = Some(ids::stamp(&mut parts.headers));
            None
        }
    };
    // The host as a reference-counted handle on the request's own bytes (no copy): the view
    // below edits the parts while routing and stages read it.
    let authority = parts.uri.authority().cloned();
    let host_field = match (&authority, &raw) {
        (None, None) => parts.headers.get(HOST).cloned(),
        _ => None,
    };
    let host = match (&authority, &raw) {
        (Some(a), _) => a.as_str(),
        (None, Some(r)) => r.fields.host(r.buf),
        (None, None) => host_field
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let hit = match &conn.service {
        Some(svc) => snap.services.route(svc, host, parts),
        None => snap.router.route(&conn.listener, host, parts),
    }
    .ok_or(ProxyError::NoRoute)?;
    if fast && !fast_path_serves(snap, &hit) {
        return Ok(Plan::HandOff);
    }
    out.route = Some(hit.route.clone());
    out.rule = hit.rule.named();
    if let (Some(r), Some(stamped)) = (raw, stamped) {
        // No request stage looks at the request and it is not an aggregation: it goes as it
        // came unless its backend's balancer hashes on a header (then the backend is drawn
        // again below, by the same weights).
        if hit.rule.stages.forwards_as_is() && hit.rule.rule.aggregate.is_none() {
            let backend = pick_backend(snap, &hit.rule.rule.backends)?;
            if !backend.balancer.reads_headers() {
                return Ok(forward_as_is(conn, hit, backend, r, stamped, out));
            }
        }
        // The headers are needed after all: the map gets the IDs the request already has.
        r.into_headers(parts)?;
        stamped.apply(&mut parts.headers);
    }

    let mut view = RequestView {
        host_changed: parts.headers.get(HOST).is_none(),
        parts: &mut *parts,
        scheme: conn.scheme,
        host: host.into(),
        matched_prefix: hit.matched_prefix,
        mirrors: Vec::new(),
        cors_origin: None,
        client: conn.client.ip(),
        principal: None,
        quota: None,
        store_failure: None,
    };
    let answer = hit.rule.stages.on_request(&mut view).await;
    out.principal = view.principal.take();
    out.store_failure = view.store_failure;
    // A preflight is answered before authentication: only the stage's 401 is a refusal.
    out.unauthenticated = hit.rule.stages.auth.is_some()
        && out.principal.is_none()
        && answer
            .as_ref()
            .is_some_and(|a| a.status() == StatusCode::UNAUTHORIZED);
    if out.unauthenticated {
        out.error = Some("unauthenticated");
    }
    if let Some(answer) = answer {
        return Ok(Plan::Answer(answer));
    }
    let mirrors = view
        .mirrors
        .iter()
        .filter_map(|name| snap.backends.get(name).cloned())
        .collect();
    let cors_origin = view.cors_origin.take();
    let quota = view.quota;

    http_rules::strip_hop_by_hop(&mut parts.headers, upgrade);
    http_rules::add_forwarded(&mut parts.headers, &conn.client_ip, conn.scheme);

    if let Some(spec) = &hit.rule.rule.aggregate {
        let agg = Aggregated::new(snap, hit, spec, &parts.method, cors_origin)?;
        return Ok(Plan::Aggregate(agg));
    }
    let backend = pick_backend(snap, &hit.rule.rule.backends)?;
    out.backend = Some(backend.name.clone());
    Ok(Plan::Forward(Forward {
        hit,
        backend,
        mirrors,
        cors_origin,
        quota,
        raw: None,
    }))
}

/// [`plan`] for a request that goes upstream from its parsed fields to `backend`, with the IDs
/// [`ids::stamp_raw`] gave it: `X-Forwarded-*` are worked out as
/// [`http_rules::add_forwarded`] sets them in a header map, and all of these are written after
/// the client's fields ([`raw::Fields::write_request`]).
fn forward_as_is<'a>(
    conn: &ConnInfo,
    hit: RouteHit<'a>,
    backend: Arc<BackendState>,
    r: RawHead<'_>,
    stamped: ids::Stamped,
    out: &mut Outcome,
) -> Plan<'a> {
    let stamp = raw::Stamp {
        request_id: stamped.new_request_id().copied(),
        traceparent: stamped.traceparent,
        drop_tracestate: stamped.restarted,
        forwarded_for: http_rules::forwarded_for(r.fields.forwarded_for(r.buf), &conn.client_ip),
        scheme: conn.scheme,
    };
    out.backend = Some(backend.name.clone());
    Plan::Forward(Forward {
        hit,
        backend,
        mirrors: Vec::new(),
        cors_origin: None,
        quota: None,
        raw: Some(stamp),
    })
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
    let fwd = match plan(&snap, conn, &mut parts, None, upgrade, false, out).await? {
        Plan::Answer(resp) => return Ok(resp),
        Plan::Aggregate(agg) => return agg.respond(shared, &parts, conn.client, out).await,
        Plan::Forward(f) => f,
        // Only the fast path (`fast`) is handed off; this is hyper's path.
        Plan::HandOff => return Err(ProxyError::NoRoute),
    };
    // Chosen now: the request's headers move into the attempt below.
    let compression = fwd.hit.rule.stages.compression.as_ref().and_then(|c| {
        let encoding = compress::negotiate(&parts.headers, c)?;
        Some((encoding, c, parts.method == http::Method::HEAD))
    });
    let mut resp = match cached::Plan::new(&fwd, &parts, upgrade) {
        Some(plan) => {
            let upstream = attempts(shared, conn, &fwd, parts, body, upgrade, out);
            cached::serve(shared, &fwd, plan, upstream).await?
        }
        None => attempts(shared, conn, &fwd, parts, body, upgrade, out).await?,
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_side) = client_upgrade {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_side, upstream_side));
    }
    fwd.response_headers(resp.headers_mut(), switching);
    if let Some((encoding, cfg, head)) = compression {
        resp = compress::apply(resp, encoding, cfg, head);
    }
    Ok(resp)
}

/// Sends a request upstream under its rule's attempt policy (mirrors, retries, timeouts).
async fn attempts(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    fwd: &Forward<'_>,
    mut parts: Parts,
    body: Incoming,
    upgrade: bool,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let policy = AttemptPolicy::new(fwd, &parts.method, upgrade);
    let mut body = if policy.may_retry() || !fwd.mirrors.is_empty() {
        RequestBody::buffer(body).await?
    } else if http_body::Body::is_end_stream(&body) {
        // No body: replayable for free, so a refused connection can be tried again.
        RequestBody::Buffered(bytes::Bytes::new())
    } else {
        RequestBody::Streaming(Some(body))
    };
    if let Some(bytes) = body.replayable() {
        fwd.send_mirrors(shared, &parts, bytes, conn.client);
    }
    let replayable = body.replayable().is_some();

    // A request that cannot be sent again is sent once: its headers move into that attempt
    // instead of being copied.
    let mut headers = (!replayable).then(|| std::mem::take(&mut parts.headers));
    let attempts = Attempts {
        shared,
        backend: &fwd.backend,
        parts: &parts,
        client: conn.client,
        upgrade,
        per_try: policy.per_try(),
    };
    let limit = fwd.hit.rule.stages.body_limit;
    let attempt = || {
        let body = body.take(limit).unwrap_or_else(empty);
        attempts.once(body, headers.take())
    };
    let failure = |r: &Response<Body>| attempts::response_failure(r.status(), r.headers());
    policy
        .run(shared, fwd, out, replayable, attempt, failure)
        .await
        .map_err(|e| match e {
            // The limit is the rule's; the connection layer only saw it passed.
            ProxyError::BodyTooLarge(_) => ProxyError::BodyTooLarge(limit.unwrap_or_default()),
            e => e,
        })
}

/// Whether the HTTP/1 fast path can serve a request of `hit`'s rule: no response stages that
/// need hyper's path, and every backend the rule may pick spoken over the fast path's pools.
fn fast_path_serves(snap: &Snapshot, hit: &RouteHit<'_>) -> bool {
    let rule = &hit.rule;
    rule.stages.fast_path()
        && (rule.rule.aggregate.is_some()
            || rule.rule.backends.iter().all(|b| {
                snap.backends
                    .get(b.backend.as_str())
                    .is_none_or(|s| s.clients.fast_h1().is_some())
            }))
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
        .get(chosen.backend.as_str())
        .cloned()
        .ok_or_else(|| ProxyError::NoHealthyEndpoint(chosen.backend.as_str().into()))
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
