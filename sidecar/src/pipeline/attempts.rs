//! Attempts: a request is sent, and sent again while its rule's retry policy and the retry
//! budget allow it, within the rule's request timeout. The loop is written once
//! ([`AttemptPolicy::run`]) and both request paths run it; what one attempt is — hyper's client
//! here ([`Attempts`]), the fast path's own exchange on a pooled socket — is the path's, and
//! each applies the per-try timeout to its attempt and reports the endpoint's result.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use portico_proxy_api::RetryPolicy;
use tokio::time::Instant;

use super::{Forward, Outcome};
use crate::error::{Body, ProxyError};
use crate::forward::backend::{BackendState, Endpoint, InFlight};
use crate::forward::balance::PickContext;
use crate::forward::body::Guarded;
use crate::policy::retry::{self, Failure, RetryBudget};
use crate::shared::Shared;

/// How a request's attempts are made: its rule's timeouts, its retry policy (when the request
/// may be retried at all) and the budget its retries draw from.
pub(crate) struct AttemptPolicy<'a> {
    overall: Option<Duration>,
    per_try: Option<Duration>,
    retry: Option<&'a RetryPolicy>,
    budget: Option<&'a RetryBudget>,
}

impl<'a> AttemptPolicy<'a> {
    /// The policy for a request that `fwd` forwards. The request counts in the retry budget
    /// (the Service's when its ServicePolicy sets one, else the rule's).
    pub(crate) fn new(fwd: &'a Forward<'a>, method: &http::Method, upgrade: bool) -> Self {
        let rule = fwd.hit.rule;
        let budget = fwd.backend.retry_budget.as_deref().or(rule.budget.as_ref());
        if let Some(b) = budget {
            b.deposit();
        }
        let timeouts = &rule.rule.timeouts;
        Self {
            overall: timeouts.request.map(|d| d.get()),
            per_try: timeouts.per_try.map(|d| d.get()),
            retry: fwd.retry(method, upgrade),
            budget,
        }
    }

    /// Whether a failed attempt may be followed by another (the body must then be kept).
    pub(crate) fn may_retry(&self) -> bool {
        self.retry.is_some()
    }

    /// The time one attempt may take to the response head.
    pub(crate) fn per_try(&self) -> Option<Duration> {
        self.per_try
    }

    /// Makes attempts until one is kept: a success, a failure the policy does not retry, or
    /// the last one the policy, the budget or the body (`replayable`) allows. All of them
    /// within the request timeout. `failure` says whether a response is a failure the policy
    /// may retry.
    pub(crate) async fn run<R, F, Fut>(
        &self,
        shared: &Shared,
        fwd: &Forward<'_>,
        out: &mut Outcome,
        replayable: bool,
        mut attempt: F,
        failure: impl Fn(&R) -> Option<Failure>,
    ) -> Result<R, ProxyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, ProxyError>>,
    {
        let count_retry = || {
            shared
                .metrics
                .retry(fwd.hit.route, &fwd.hit.rule.name, &fwd.backend.name);
        };
        // Most requests: one attempt, no deadline. No loop or timer state to carry.
        if self.retry.is_none() && self.overall.is_none() {
            out.attempts = 1;
            let result = attempt().await;
            if !(replayable && refused(&result)) {
                return result;
            }
            // Nothing reached the upstream: safe to send again, whatever the method, and the
            // balancer now passes over the endpoint that refused.
            drop(result);
            count_retry();
            out.attempts = 2;
            return attempt().await;
        }
        let attempts = async {
            let mut retries_done = 0u32;
            let mut refusal_retry = replayable;
            loop {
                out.attempts += 1;
                let result = attempt().await;
                let failed = match &result {
                    Ok(r) => failure(r),
                    Err(e) => error_failure(e),
                };
                let policy_retries = match (self.retry, failed) {
                    (Some(policy), Some(failed)) => {
                        retries_done < policy.attempts
                            && replayable
                            && retry::retries(policy, failed)
                    }
                    _ => false,
                };
                if !policy_retries {
                    // The one free attempt after a refused connection (see above).
                    if refusal_retry && refused(&result) {
                        refusal_retry = false;
                        drop(result);
                        count_retry();
                        continue;
                    }
                    return result;
                }
                if !self.budget.is_none_or(|b| b.withdraw()) {
                    return result;
                }
                drop(result);
                count_retry();
                if let Some(policy) = self.retry {
                    tokio::time::sleep(retry::backoff(policy, retries_done)).await;
                }
                retries_done += 1;
            }
        };
        match self.overall {
            Some(t) => tokio::time::timeout(t, attempts)
                .await
                .map_err(|_| ProxyError::Timeout(t))?,
            None => attempts.await,
        }
    }
}

/// Whether an attempt failed because its connection could not be opened: the request never
/// left the proxy.
fn refused<R>(result: &Result<R, ProxyError>) -> bool {
    matches!(result, Err(ProxyError::Connect(_)))
}

/// The retryable failure an error is, if it is one.
fn error_failure(e: &ProxyError) -> Option<Failure> {
    match e {
        ProxyError::Connect(_) => Some(Failure::Connect),
        ProxyError::Reset(_) => Some(Failure::Reset),
        ProxyError::Timeout(_) => Some(Failure::Timeout),
        _ => None,
    }
}

/// A failure a retry policy may retry in a response head: a 4xx or 5xx (the policy decides
/// which), or a trailers-only gRPC error (the only gRPC status visible before the body, which
/// is streamed and never buffered).
pub(crate) fn response_failure(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
    if status.is_client_error() || status.is_server_error() {
        return Some(Failure::Status(status));
    }
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    (code != 0).then_some(Failure::Grpc(code))
}

/// One attempt through hyper's clients: everything it needs but the body.
pub(crate) struct Attempts<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) backend: &'a Arc<BackendState>,
    pub(crate) parts: &'a Parts,
    pub(crate) client: SocketAddr,
    pub(crate) upgrade: bool,
    pub(crate) per_try: Option<Duration>,
}

impl Attempts<'_> {
    /// One attempt on one endpoint, with the request's headers if given, else a copy of them.
    pub(crate) async fn once(
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
                if matches!(err, ProxyError::Connect(_)) {
                    ep.stats.mark_refused(Instant::now());
                }
                // A client's broken or oversized body (400, 413) is nothing to hold against
                // the endpoint.
                if !matches!(err, ProxyError::BadRequest(_) | ProxyError::BodyTooLarge(_)) {
                    self.record(ep, None, false);
                }
                Err(err)
            }
        }
    }

    fn record(&self, ep: &Endpoint, rtt: Option<Duration>, ok: bool) {
        self.backend.report(&self.shared.metrics, ep, rtt, ok);
    }
}

/// The `:authority` of a request to an HTTP/2 upstream: the request's `Host` (the client's, or
/// what a filter rewrote it to), which leaves the headers, as virtual hosts upstream expect;
/// the endpoint's address only when there is none. A `Host` next to a different `:authority`
/// is a malformed request (RFC 9113 §8.3.1): nginx answers it with 400.
fn h2_authority(headers: &mut HeaderMap, endpoint: &http::uri::Authority) -> http::uri::Authority {
    headers
        .remove(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| endpoint.clone())
}

/// The request sent upstream: HTTP/1.1 gets the origin-form URI the client sent (no new URI is
/// built), HTTP/2 an absolute URI whose authority becomes `:authority` ([`h2_authority`]). The
/// connection is chosen by the endpoint's address, never by the URI.
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
    let mut headers = headers;
    if version == Version::HTTP_2 {
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(h2_authority(&mut headers, authority));
    }
    uri.path_and_query = Some(pq);
    let uri = http::Uri::from_parts(uri).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    // hyper's HTTP/1.1 client assumes a GET or HEAD of unknown length has no body and drops
    // it. Such a request only comes from an HTTP/2 client that left its stream open; its body
    // is streamed on, chunked, as for any other method.
    if version != Version::HTTP_2
        && matches!(parts.method, http::Method::GET | http::Method::HEAD)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(http::header::CONTENT_LENGTH)
    {
        headers.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /v1/items?x=1` with `host`, as it would go to `version` upstream at 10.0.0.7:8080.
    fn to_upstream(host: Option<&'static str>, version: Version) -> Request<Body> {
        let mut b = Request::get("/v1/items?x=1");
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        let parts = b.body(()).unwrap().into_parts().0;
        let ep = http::uri::Authority::from_static("10.0.0.7:8080");
        upstream_request(&parts, parts.headers.clone(), &ep, version, Body::default()).unwrap()
    }

    #[test]
    fn an_http2_upstream_gets_the_request_s_host_as_authority_and_no_host_header() {
        let req = to_upstream(Some("api.example.com"), Version::HTTP_2);
        assert_eq!(req.uri().to_string(), "http://api.example.com/v1/items?x=1");
        assert!(req.headers().get(http::header::HOST).is_none());
        // No Host at all: the endpoint's address is the authority.
        let req = to_upstream(None, Version::HTTP_2);
        assert_eq!(req.uri().to_string(), "http://10.0.0.7:8080/v1/items?x=1");
    }

    #[test]
    fn an_http1_upstream_keeps_the_host_header_and_an_origin_form_target() {
        let req = to_upstream(Some("api.example.com"), Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/v1/items?x=1");
        assert_eq!(req.headers()[http::header::HOST], "api.example.com");
    }
}
