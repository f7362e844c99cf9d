//! The response cache and fallback around a request's attempts (hyper's path; the fast path
//! hands caching and fallback rules to it):
//!
//! ```text
//!  lookup ─► fresh ─────────────────────────────────────────► hit
//!         ├► an identical request is upstream ─► its answer ─► hit   (or on our own if it had none)
//!         └► lead ─► attempts ─► failure? ─► stale answer / default answer (shared with waiters)
//!                              └► storable? ─► body read up to maxBodyBytes ─► stored, shared ─► miss
//! ```
//!
//! The policy itself (what is storable, for how long, the store and its LRU, what counts as a
//! failure) is in [`crate::policy::cache`] and [`crate::policy::fallback`]; this module runs it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderValue, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{Forward, log};
use crate::error::{Body, BoxError, ProxyError, full};
use crate::policy::cache::{self, CACHE_HEADER, Entry, Key, Lookup, Use};
use crate::policy::fallback;
use crate::shared::Shared;
use crate::wire::headers as http_rules;

/// What the cache and fallback do for one request, decided before its headers go upstream.
pub(crate) struct Plan {
    /// The request's key, when it may read or write the store.
    key: Option<Key>,
    use_: Use,
    head: bool,
}

impl Plan {
    /// The plan for a request of `fwd`'s rule whose head (as it goes upstream) is `parts`;
    /// `None` when the rule neither caches nor falls back.
    pub(crate) fn new(fwd: &Forward<'_>, parts: &Parts, upgrade: bool) -> Option<Self> {
        let rule = fwd.hit.rule;
        let stages = &rule.stages;
        if stages.cache.is_none() && stages.fallback.is_none() {
            return None;
        }
        let use_ = if upgrade || !stages.keeps_answers() {
            Use::Bypass
        } else {
            cache::request_use(&parts.method, &parts.headers, stages.cache.is_some())
        };
        let key = (use_ != Use::Bypass).then(|| {
            let host = log::request_host(&parts.uri, &parts.headers);
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let vary = stages.cache.as_ref().map_or(&[][..], |c| &c.vary_headers);
            Key::new(rule.cache_scope, host, target, &parts.headers, vary)
        });
        Some(Self {
            key,
            use_,
            head: parts.method == http::Method::HEAD,
        })
    }
}

/// Answers a request through the cache and fallback of its rule: `upstream` runs only when no
/// stored or shared answer serves it.
pub(crate) async fn serve(
    shared: &Shared,
    fwd: &Forward<'_>,
    plan: Plan,
    upstream: impl Future<Output = Result<Response<Body>, ProxyError>>,
) -> Result<Response<Body>, ProxyError> {
    let stages = &fwd.hit.rule.stages;
    let (route, rule) = (fwd.hit.route, &fwd.hit.rule.name);
    let metrics = shared.metrics.cache();
    let caches = stages.cache.is_some();
    let mut leader = None;
    if let (Use::Full, Some(key)) = (&plan.use_, &plan.key) {
        // A HEAD may be answered from a stored GET, but leads nothing: its answer has no body.
        match shared.cache.lookup(key, Instant::now(), !plan.head) {
            Lookup::Fresh(entry) => {
                metrics.lookup(route, rule, true);
                return Ok(marked(entry.response(Instant::now(), plan.head), "hit"));
            }
            Lookup::Wait(waiter) => {
                if let Some(answer) = waiter.answer().await {
                    metrics.lookup(route, rule, true);
                    let mut resp = answer.entry.response(Instant::now(), plan.head);
                    if answer.stale {
                        fallback::mark(&mut resp, true);
                        metrics.fallback(route, rule, true);
                    }
                    return Ok(marked(resp, "hit"));
                }
            }
            Lookup::Lead(l) => leader = Some(l),
            Lookup::Miss => {}
        }
        metrics.lookup(route, rule, false);
    }
    let result = upstream.await;

    if let Some(f) = &stages.fallback
        && fallback::failed(f, &result)
    {
        if let Some(key) = &plan.key
            && let Some(entry) = shared.cache.stale(key, Instant::now())
        {
            metrics.fallback(route, rule, true);
            if let Some(l) = &leader {
                l.share(cache::Answer {
                    entry: entry.clone(),
                    stale: true,
                });
            }
            let mut resp = entry.response(Instant::now(), plan.head);
            fallback::mark(&mut resp, true);
            return Ok(label(resp, caches, &plan));
        }
        if let Some(resp) = fallback::default_answer(f) {
            metrics.fallback(route, rule, false);
            return Ok(label(resp, caches, &plan));
        }
    }
    let resp = result?;
    let resp = match plan.key.as_ref().filter(|_| !plan.head) {
        Some(key) => keep(shared, fwd, key, leader.as_ref(), resp).await,
        None => resp,
    };
    Ok(label(resp, caches, &plan))
}

/// Stores a GET's upstream answer if it may be stored (and shares it with the requests waiting
/// for it); returns the answer for the client, its body read into memory when it was stored.
async fn keep(
    shared: &Shared,
    fwd: &Forward<'_>,
    key: &Key,
    leader: Option<&cache::Leader<'_>>,
    resp: Response<Body>,
) -> Response<Body> {
    let stages = &fwd.hit.rule.stages;
    let vary = stages.cache.as_ref().map_or(&[][..], |c| &c.vary_headers);
    if !cache::storable(resp.status(), resp.headers(), vary) {
        return resp;
    }
    let fresh_for = stages.cache.as_ref().map_or(Duration::ZERO, |c| {
        cache::freshness(resp.headers(), c.ttl.get())
    });
    let stale_for = stages
        .fallback
        .as_ref()
        .and_then(|f| f.stale_for)
        .map_or(Duration::ZERO, |d| d.get());
    if fresh_for.is_zero() && stale_for.is_zero() {
        return resp;
    }
    let max = stages
        .cache
        .as_ref()
        .map_or(cache::DEFAULT_BODY_BYTES, |c| c.max_body_bytes);
    let (mut parts, body) = resp.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Response::from_parts(parts, body);
    }
    let bytes = match read_up_to(body, max).await {
        Ok(bytes) => bytes,
        // Too big (or trailers, or a broken body): the client gets it as it comes.
        Err(body) => return Response::from_parts(parts, body),
    };
    http_rules::strip_hop_by_hop(&mut parts.headers, false);
    let entry = Arc::new(Entry::new(
        parts.status,
        parts.headers.clone(),
        bytes.clone(),
        Instant::now(),
        (fresh_for, stale_for),
        (fwd.hit.route, &fwd.hit.rule.name),
    ));
    shared.cache.insert(key.clone(), entry.clone());
    if let Some(l) = leader {
        l.share(cache::Answer {
            entry,
            stale: false,
        });
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, full(bytes))
}

/// Labels an answer that did not come from the store: `miss` when the cache was asked,
/// `bypass` when the request may not use it; nothing on a rule without `cache`.
fn label(resp: Response<Body>, caches: bool, plan: &Plan) -> Response<Body> {
    if !caches {
        return resp;
    }
    let value = if plan.use_ == Use::Full {
        "miss"
    } else {
        "bypass"
    };
    marked(resp, value)
}

fn marked(mut resp: Response<Body>, value: &'static str) -> Response<Body> {
    resp.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(value));
    resp
}

/// The whole body if it ends within `max` bytes with no trailers; else a body that gives what
/// was read and then the rest, as the client would have had it.
async fn read_up_to(mut body: Body, max: u64) -> Result<Bytes, Body> {
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0u64;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let more = match frame.data_ref() {
                    Some(d) => {
                        len += d.len() as u64;
                        len <= max
                    }
                    None => false,
                };
                read.push_back(frame);
                if !more {
                    return Err(Replayed {
                        read,
                        error: None,
                        rest: Some(body),
                    }
                    .boxed_unsync());
                }
            }
            Some(Err(e)) => {
                return Err(Replayed {
                    read,
                    error: Some(e),
                    rest: None,
                }
                .boxed_unsync());
            }
        }
    }
    let mut out = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or_default());
    for f in read {
        if let Ok(d) = f.into_data() {
            out.extend_from_slice(&d);
        }
    }
    Ok(out.freeze())
}

/// A body whose first frames were read already: those, then the error met or the rest.
struct Replayed {
    read: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<Body>,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}
