//! Errors the proxy answers with itself, turned into HTTP responses in exactly one place
//! ([`ProxyError::into_response`]), so every proxy-made answer looks the same to a client: a
//! distinct status, a one-line text body, and `x-portico-error: <reason>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Any boxed error, for bodies and boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used for every request and response the proxy sends.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The header that tells a client (and whoever debugs it) the proxy produced the response.
pub const ERROR_HEADER: &str = "x-portico-error";

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A request the proxy could not forward, and why.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the host, path and other conditions.
    #[error("no route matches this request")]
    NoRoute,
    /// Every endpoint of the backend is not ready or ejected (or there are none).
    #[error("backend {0:?} has no healthy endpoint")]
    NoHealthyEndpoint(Arc<str>),
    /// The backend's connection and pending-request limits are both full.
    #[error("backend {0:?} is at its concurrency limit")]
    Overloaded(Arc<str>),
    /// No response headers within the request or per-try timeout.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection to the endpoint could not be made.
    #[error("could not connect to upstream {0}")]
    Connect(SocketAddr),
    /// The upstream connection broke before the response headers arrived.
    #[error("upstream {0} closed the connection before answering")]
    Reset(SocketAddr),
    /// The upstream answered with a head the proxy cannot relay: not HTTP, bad framing, or
    /// larger than the limits (what was wrong is said).
    #[error("upstream {0} sent a response the proxy cannot relay: {1}")]
    BadResponse(SocketAddr, String),
    /// The request itself is unusable (bad body, bad header...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is larger than the rule allows (its limit in bytes).
    #[error("the request body is larger than this route allows ({0} bytes)")]
    BodyTooLarge(u64),
    /// The rule answers only these methods (an aggregate rule: `GET, HEAD`), sent as `allow`.
    #[error("this route answers {0} only")]
    MethodNotAllowed(&'static str),
    /// Every backend of an aggregate rule failed.
    #[error("every aggregated backend failed")]
    AggregateFailed,
    /// Sidecar inbound: the pod's policy does not let this caller in (the message names the
    /// policy).
    #[error("{0}")]
    Forbidden(String),
    /// Sidecar inbound: the pod's rate limit is spent for this caller.
    #[error("{message}")]
    RateLimited {
        /// Names the policy.
        message: String,
        /// Sent as `retry-after` (whole seconds, rounded up).
        retry_after: Duration,
    },
    /// A rule's rate limit is kept in a store that failed, and the store fails closed.
    #[error("the rate limit cannot be checked: its store is unavailable")]
    RateLimitStoreUnavailable,
}

impl ProxyError {
    /// The status a client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect(_) | Self::Reset(_) | Self::BadResponse(..) | Self::AggregateFailed => {
                StatusCode::BAD_GATEWAY
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimitStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, stable reason: the value of `x-portico-error` and of the access log's `error`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoHealthyEndpoint(_) => "no_healthy_endpoint",
            Self::Overloaded(_) => "overloaded",
            Self::Timeout(_) => "upstream_timeout",
            Self::Connect(_) => "connect_failure",
            Self::Reset(_) => "upstream_reset",
            Self::BadResponse(..) => "bad_response",
            Self::BadRequest(_) => "bad_request",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::AggregateFailed => "aggregate_failed",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::RateLimitStoreUnavailable => "rate_limit_store_unavailable",
        }
    }

    /// The response a client sees.
    pub fn into_response(self) -> Response<Body> {
        let retry_after = match &self {
            // RFC 9110 §10.2.3: delay-seconds, a whole number; rounding down would invite a
            // retry that is refused again.
            Self::RateLimited { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        };
        let mut resp = Response::new(full(format!("{self}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Self::MethodNotAllowed(allow) = self {
            // RFC 9110 §15.5.6: a 405 lists the methods the target answers.
            h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(secs) = retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
