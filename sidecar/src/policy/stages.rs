//! A route rule's policies as one ordered pipeline of stages, compiled once per config: the
//! request stages run in the order the rule lists its filters, before the request goes upstream
//! (a stage may answer instead: a redirect, a direct response); the response stages run on the
//! response head before it goes to the client.
//!
//! Both request paths run the same stages — the fast HTTP/1 path on the head it parsed, hyper's
//! path on its request — so a policy is written once, as a stage here, for every transport. A
//! stage that needs a response body rather than its head (compression, the cache, fallback)
//! says so with [`Stages::fast_path`], and the fast path hands such requests to hyper.

use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response};
use portico_proxy_api::{
    Cache, Compression, Cors, DirectResponse, Fallback, Filter, HeaderModifier, Mirror, Redirect,
    RouteRule, UrlRewrite,
};

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use portico_proxy_api::{RateLimit, RateLimitKey};

use super::authn::{Authenticator, Principal};
use super::limit_store::StoreLimiter;
use super::ratelimit::{Key, Quota, RateLimited, RateLimiter};
use super::{cors, filters};
use crate::error::{Body, ProxyError};

/// One request-side policy.
#[derive(Debug)]
pub enum RequestStage {
    /// Edits the request's headers.
    ModifyHeaders(HeaderModifier),
    /// Rewrites the request's host and path.
    RewriteUrl(UrlRewrite),
    /// Answers with a redirect to the request's URL with parts replaced.
    Redirect(Redirect),
    /// Answers with a fixed response.
    Respond(DirectResponse),
    /// Copies a share of requests to another backend (drawn here, sent once the request goes
    /// upstream).
    Mirror(Mirror),
    /// Refuses a request whose declared body is larger than this many bytes (a body of unknown
    /// length is held to it as it streams: see [`Stages::body_limit`]).
    BodyLimit(u64),
}

/// One response-side policy.
#[derive(Debug)]
pub enum ResponseStage {
    /// Edits the response's headers.
    ModifyHeaders(HeaderModifier),
}

/// A rule's stages, in order.
#[derive(Debug, Default)]
pub struct Stages {
    /// Run on the request, in order; the first that answers ends the request side.
    pub request: Vec<RequestStage>,
    /// Run on the response head, in order.
    pub response: Vec<ResponseStage>,
    /// The request body limit, for bodies whose length is not declared.
    pub body_limit: Option<u64>,
    /// Response compression: a stage on the response body (see [`super::compress`]).
    pub compression: Option<Compression>,
    /// CORS: preflights answered first, allowed origins marked on answers ([`super::cors`]).
    pub cors: Option<Cors>,
    /// Authentication, after a CORS preflight and before everything else.
    pub auth: Option<Authenticator>,
    /// The rule's token buckets, after authentication.
    pub rate_limit: Option<RuleLimit>,
    /// The response cache ([`super::cache`]).
    pub cache: Option<Cache>,
    /// What masks backend failures ([`super::fallback`]).
    pub fallback: Option<Fallback>,
}

/// A rule's rate limit and its buckets (carried over to the next config while the limit stays
/// the same: see [`Stages::keep_buckets`]).
#[derive(Debug)]
pub struct RuleLimit {
    /// The limit as configured.
    pub config: RateLimit,
    /// Its buckets.
    pub buckets: Buckets,
}

/// Where a rule's buckets are kept.
#[derive(Clone, Debug)]
pub enum Buckets {
    /// In this proxy, its own.
    Local(Arc<RateLimiter>),
    /// In a store shared with the other proxies.
    Store(Arc<StoreLimiter>),
}

/// The rate-limit store failed for a request, and what was done about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The request went on (`fail_open`).
    LetIn,
    /// The request was refused with `503`.
    Refused,
}

/// What a request stage decided.
#[derive(Debug)]
pub enum Step {
    /// Go on with the next stage (then upstream).
    Next,
    /// Answer the client with this response; nothing goes upstream.
    Answer(Response<Body>),
}

/// A request as request stages see it: `'p` is the request's, `'s` the config's.
#[derive(Debug)]
pub struct RequestView<'p, 's> {
    /// Method, URI and headers, edited in place.
    pub parts: &'p mut Parts,
    /// The connection's scheme (`http` or `https`), for redirects.
    pub scheme: &'static str,
    /// The host the request is for (from the URI's authority or `Host`), rewritten by stages.
    pub host: Cow<'p, str>,
    /// `Host` must be (re)written upstream: a stage changed the host, or the client sent
    /// `:authority` and no `Host`.
    pub host_changed: bool,
    /// The path prefix the rule matched, for `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'s str>,
    /// The backends this request is mirrored to (drawn by the mirror stages).
    pub mirrors: Vec<&'s str>,
    /// The request's origin, when the rule's CORS policy allows it (its answer is marked).
    pub cors_origin: Option<HeaderValue>,
    /// The client's address, for rate limits keyed by it.
    pub client: IpAddr,
    /// Who the request was authenticated as.
    pub principal: Option<Principal>,
    /// What is left of the rate-limit bucket the request took from (marked on its answer).
    pub quota: Option<(u64, Quota)>,
    /// The rate-limit store failed for this request.
    pub store_failure: Option<StoreFailure>,
}

impl Stages {
    /// The stages of a rule, in order: its body limit first (nothing else should run for a
    /// request that is refused anyway), then its filters in the order the rule lists them.
    /// Mirrors of 0% are dropped: they never copy anything.
    pub fn compile(rule: &RouteRule) -> Self {
        let mut stages = Self {
            body_limit: rule.max_request_body_bytes,
            compression: rule.compression.clone(),
            cors: rule.cors.clone(),
            auth: rule.authentication.as_ref().map(Authenticator::compile),
            rate_limit: rule.rate_limit.as_ref().map(|rl| RuleLimit {
                config: rl.clone(),
                buckets: match &rl.store {
                    None => Buckets::Local(Arc::new(RateLimiter::new(
                        rl.requests,
                        rl.period.get(),
                        rl.burst,
                    ))),
                    Some(store) => Buckets::Store(Arc::new(StoreLimiter::new(rl, store))),
                },
            }),
            cache: rule.cache.clone(),
            fallback: rule.fallback.clone(),
            ..Self::default()
        };
        if let Some(limit) = rule.max_request_body_bytes {
            stages.request.push(RequestStage::BodyLimit(limit));
        }
        let filters = &rule.filters;
        for f in filters {
            match f {
                Filter::RequestHeaderModifier(m) => {
                    stages.request.push(RequestStage::ModifyHeaders(m.clone()));
                }
                Filter::ResponseHeaderModifier(m) => {
                    stages
                        .response
                        .push(ResponseStage::ModifyHeaders(m.clone()));
                }
                Filter::UrlRewrite(u) => stages.request.push(RequestStage::RewriteUrl(u.clone())),
                Filter::RequestRedirect(r) => {
                    stages.request.push(RequestStage::Redirect(r.clone()))
                }
                Filter::DirectResponse(d) => stages.request.push(RequestStage::Respond(d.clone())),
                Filter::RequestMirror(m) if m.percent > 0 => {
                    stages.request.push(RequestStage::Mirror(m.clone()));
                }
                Filter::RequestMirror(_) => {}
            }
        }
        stages
    }

    /// Whether no request stage reads or edits the request (no filter, mirror, body limit,
    /// CORS, authentication or rate limit): then the request goes upstream as it came, with
    /// only the fields every hop sets ([`crate::wire::raw`]).
    pub fn forwards_as_is(&self) -> bool {
        self.request.is_empty()
            && self.cors.is_none()
            && self.auth.is_none()
            && self.rate_limit.is_none()
    }

    /// Whether the fast HTTP/1 path can run these stages: it relays the response's body bytes
    /// as they are, so a stage that rewrites the body (compression), keeps it (the cache, a
    /// fallback's stale answers) or replaces the answer (fallback) runs on hyper's path.
    pub fn fast_path(&self) -> bool {
        self.compression.is_none() && self.cache.is_none() && self.fallback.is_none()
    }

    /// Whether the rule keeps answers in the response cache: to serve them fresh (`cache`) or
    /// as stale fallbacks (`fallback.staleFor`).
    pub fn keeps_answers(&self) -> bool {
        self.cache.is_some()
            || self
                .fallback
                .as_ref()
                .is_some_and(|f| f.stale_for.is_some())
    }

    /// Runs the request stages in order; `Some` is the answer of the stage that answered.
    /// Nothing here waits unless the rule's rate limit is kept in a store.
    pub async fn on_request<'s>(&'s self, req: &mut RequestView<'_, 's>) -> Option<Response<Body>> {
        // A CORS preflight is the proxy's to answer, before anything else the rule does.
        if let Some(c) = &self.cors {
            if let Some(answer) = cors::preflight(c, &req.parts.method, &req.parts.headers) {
                return Some(answer);
            }
            req.cors_origin = cors::origin_to_mark(c, &req.parts.headers);
        }
        if let Some(answer) = self.admit(req).await {
            let mut resp = answer;
            if let Some(c) = &self.cors {
                cors::mark(c, req.cors_origin.as_ref(), resp.headers_mut());
            }
            return Some(resp);
        }
        for stage in &self.request {
            if let Step::Answer(mut resp) = stage.apply(req) {
                if let Some(c) = &self.cors {
                    cors::mark(c, req.cors_origin.as_ref(), resp.headers_mut());
                }
                return Some(resp);
            }
        }
        if req.host_changed
            && let Ok(h) = HeaderValue::from_str(&req.host)
        {
            // HTTP/1 upstreams need `Host`; an HTTP/2 client sent `:authority` instead.
            req.parts.headers.insert(HOST, h);
        }
        None
    }

    /// Authentication, then the rate limit: `Some` is the refusal.
    async fn admit(&self, req: &mut RequestView<'_, '_>) -> Option<Response<Body>> {
        if let Some(auth) = &self.auth {
            match auth.check(&mut req.parts.headers) {
                Ok(who) => req.principal = Some(who),
                Err(failures) => return Some(auth.answer(&failures)),
            }
        }
        let rl = self.rate_limit.as_ref()?;
        let key = match &rl.config.key {
            // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
            RateLimitKey::ClientIp => Key::Ip(req.client.to_canonical()),
            RateLimitKey::Global => Key::Global,
            RateLimitKey::Header { name } => Key::Value(
                req.parts
                    .headers
                    .get(name.as_str())
                    .map(HeaderValue::as_bytes),
            ),
        };
        let (capacity, taken) = match &rl.buckets {
            Buckets::Local(limiter) => (limiter.capacity(), limiter.take(key)),
            // Boxed: the wait for Redis does not grow every request's future.
            Buckets::Store(store) => match Box::pin(store.take(key)).await {
                Ok(taken) => (store.capacity(), taken),
                Err(_) if store.fail_open => {
                    req.store_failure = Some(StoreFailure::LetIn);
                    return None;
                }
                Err(_) => {
                    req.store_failure = Some(StoreFailure::Refused);
                    return Some(ProxyError::RateLimitStoreUnavailable.into_response());
                }
            },
        };
        match taken {
            Ok(quota) => {
                req.quota = Some((capacity, quota));
                None
            }
            Err(limited) => {
                let mut resp = ProxyError::RateLimited {
                    message: "rate limit exceeded".into(),
                    retry_after: limited.0,
                }
                .into_response();
                let quota = Quota {
                    remaining: 0,
                    full_in: rl.full_in(limited),
                };
                mark_quota(resp.headers_mut(), capacity, quota);
                Some(resp)
            }
        }
    }

    /// Takes the buckets of `old` (the same rule in the previous config) when its limit is the
    /// same, so a config change does not hand every client a fresh burst (and a store's open
    /// connections are kept).
    pub fn keep_buckets(&mut self, old: &Stages) {
        if let (Some(new), Some(old)) = (&mut self.rate_limit, &old.rate_limit)
            && new.config == old.config
        {
            new.buckets = old.buckets.clone();
        }
    }

    /// Runs the response stages in order on a response's headers.
    pub fn on_response(&self, headers: &mut HeaderMap) {
        for stage in &self.response {
            stage.apply(headers);
        }
    }

    /// Whether any response stage would change a response.
    pub fn edits_responses(&self) -> bool {
        !self.response.is_empty() || self.cors.is_some() || self.rate_limit.is_some()
    }
}

impl RuleLimit {
    /// How long until a refused request's bucket is full again.
    fn full_in(&self, limited: RateLimited) -> std::time::Duration {
        match &self.buckets {
            Buckets::Store(store) => store.full_in(limited.0),
            Buckets::Local(limiter) => limiter.full_in(limited.0),
        }
    }
}

/// The `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers, the separate-fields form
/// most clients read): the bucket's size, what is left, and seconds until it is full.
pub fn mark_quota(headers: &mut HeaderMap, capacity: u64, quota: Quota) {
    let reset = quota.full_in.as_secs() + u64::from(quota.full_in.subsec_nanos() > 0);
    headers.insert("ratelimit-limit", HeaderValue::from(capacity));
    headers.insert("ratelimit-remaining", HeaderValue::from(quota.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset));
}

impl RequestStage {
    /// Applies this stage to a request.
    pub fn apply<'s>(&'s self, req: &mut RequestView<'_, 's>) -> Step {
        match self {
            Self::ModifyHeaders(m) => filters::modify_headers(m, &mut req.parts.headers),
            Self::RewriteUrl(u) => {
                if let Some(h) = filters::rewrite_url(u, &mut req.parts.uri, req.matched_prefix) {
                    req.host = h.into();
                    req.host_changed = true;
                }
            }
            Self::Redirect(r) => {
                return Step::Answer(filters::redirect(
                    r,
                    req.scheme,
                    &req.host,
                    &req.parts.uri,
                    req.matched_prefix,
                ));
            }
            Self::Respond(d) => return Step::Answer(filters::direct(d)),
            Self::Mirror(m) => {
                if drawn(m.percent) {
                    req.mirrors.push(&m.backend);
                }
            }
            Self::BodyLimit(limit) => {
                let declared = req
                    .parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if declared.is_some_and(|n| n > *limit) {
                    return Step::Answer(ProxyError::BodyTooLarge(*limit).into_response());
                }
            }
        }
        Step::Next
    }
}

impl ResponseStage {
    /// Applies this stage to a response's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            Self::ModifyHeaders(m) => filters::modify_headers(m, headers),
        }
    }
}

/// Whether this request is among the `percent` share (drawn per request).
fn drawn(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::random_range(0..100) < percent)
}

#[cfg(test)]
mod tests {
    use portico_proxy_api::Header;

    use super::*;

    #[test]
    fn mirror_percent_draws_that_share() {
        assert!((0..1000).all(|_| drawn(100)));
        assert!((0..1000).all(|_| !drawn(0)));
        let hits = (0..10_000).filter(|_| drawn(25)).count();
        // Binomial(10000, 0.25): sd 43; ±10 sd.
        assert!((2_070..=2_930).contains(&hits), "{hits}");
    }

    fn set(name: &str, value: &str) -> HeaderModifier {
        HeaderModifier {
            set: vec![Header {
                name: name.into(),
                value: value.into(),
            }],
            ..HeaderModifier::default()
        }
    }

    #[tokio::test]
    async fn stages_run_in_the_order_the_rule_lists_them_and_an_answer_ends_the_request_side() {
        let filters = vec![
            Filter::RequestHeaderModifier(set("x-step", "one")),
            Filter::RequestHeaderModifier(set("x-step", "two")),
            Filter::DirectResponse(DirectResponse {
                status: 418,
                body: String::new(),
                headers: Vec::new(),
            }),
            Filter::RequestHeaderModifier(set("x-step", "three")),
            Filter::ResponseHeaderModifier(set("x-resp", "a")),
            Filter::RequestMirror(Mirror {
                backend: "never".into(),
                percent: 0,
            }),
        ];
        let stages = Stages::compile(&RouteRule {
            filters,
            ..RouteRule::default()
        });
        assert_eq!(stages.request.len(), 4, "a 0% mirror is no stage");
        let mut parts = http::Request::get("/")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let mut view = RequestView {
            parts: &mut parts,
            scheme: "http",
            host: "h".into(),
            host_changed: false,
            matched_prefix: None,
            mirrors: Vec::new(),
            cors_origin: None,
            client: IpAddr::from([127, 0, 0, 1]),
            principal: None,
            quota: None,
            store_failure: None,
        };
        let answer = stages
            .on_request(&mut view)
            .await
            .expect("the direct response answers");
        assert_eq!(answer.status(), 418);
        assert_eq!(
            parts.headers["x-step"], "two",
            "stages after the answer do not run"
        );
        let mut headers = HeaderMap::new();
        stages.on_response(&mut headers);
        assert_eq!(headers["x-resp"], "a");
    }
}
