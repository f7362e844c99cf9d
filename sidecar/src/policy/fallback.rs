//! Fallback: what a client gets when a rule's backends fail.
//!
//! ```text
//!  upstream ─► one of onStatus (502, 503, 504 by default), a timeout, no connection,
//!              a reset, no healthy endpoint, overload, an unrelayable answer?
//!     ├─ GET/HEAD with a stored answer within staleFor past its expiry ─► it (x-portico-fallback: stale)
//!     ├─ directResponse ─────────────────────────────────────────────► it (x-portico-fallback: default)
//!     └─ else ───────────────────────────────────────────────────────► the failure as it came
//! ```
//!
//! Stale answers come from the response cache ([`super::cache`]): a rule with `staleFor` keeps
//! its good GET answers there even without a `cache` of its own (fresh for no time, so they are
//! only ever served as fallbacks).

use http::{HeaderValue, Response};
use portico_proxy_api::Fallback;

use super::filters;
use crate::error::{Body, ProxyError};

/// The header that marks a fallback answer: `stale` (a stored answer past its freshness) or
/// `default` (the rule's `directResponse`).
pub const FALLBACK_HEADER: &str = "x-portico-fallback";

/// Whether an upstream result is a failure the rule's fallback masks.
pub fn failed(f: &Fallback, result: &Result<Response<Body>, ProxyError>) -> bool {
    match result {
        Ok(resp) => f.on_status.contains(&resp.status().as_u16()),
        Err(e) => matches!(
            e,
            ProxyError::Timeout(_)
                | ProxyError::Connect(_)
                | ProxyError::Reset(_)
                | ProxyError::NoHealthyEndpoint(_)
                | ProxyError::Overloaded(_)
                | ProxyError::BadResponse(..)
        ),
    }
}

/// The rule's default answer, marked as a fallback.
pub fn default_answer(f: &Fallback) -> Option<Response<Body>> {
    let mut resp = filters::direct(f.direct_response.as_ref()?);
    mark(&mut resp, false);
    Some(resp)
}

/// Marks `resp` as a fallback: a stale stored answer, or the default one.
pub fn mark(resp: &mut Response<Body>, stale: bool) {
    let kind = if stale { "stale" } else { "default" };
    resp.headers_mut()
        .insert(FALLBACK_HEADER, HeaderValue::from_static(kind));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portico_proxy_api::DirectResponse;

    use super::*;
    use crate::error::empty;

    fn fallback(on_status: Vec<u16>) -> Fallback {
        Fallback {
            on_status,
            stale_for: None,
            direct_response: Some(DirectResponse {
                status: 503,
                body: "try later".into(),
                headers: Vec::new(),
            }),
        }
    }

    fn status(code: u16) -> Result<Response<Body>, ProxyError> {
        let mut r = Response::new(empty());
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
        Ok(r)
    }

    #[test]
    fn listed_statuses_timeouts_and_connection_failures_are_masked_others_are_not() {
        let f = fallback(vec![502, 503, 504]);
        assert!(failed(&f, &status(503)));
        assert!(!failed(&f, &status(500)), "not listed");
        assert!(!failed(&f, &status(200)));
        assert!(failed(&fallback(vec![500]), &status(500)), "listed");
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(failed(&f, &Err(ProxyError::Connect(addr))));
        assert!(failed(
            &f,
            &Err(ProxyError::Timeout(Duration::from_secs(1)))
        ));
        assert!(
            !failed(&f, &Err(ProxyError::BodyTooLarge(1))),
            "the client's fault"
        );
    }

    #[test]
    fn the_default_answer_is_the_direct_response_marked_default() {
        let resp = default_answer(&fallback(Vec::new())).expect("a direct response");
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[FALLBACK_HEADER], "default");
        let none = Fallback {
            direct_response: None,
            ..fallback(Vec::new())
        };
        assert!(default_answer(&none).is_none());
    }
}
