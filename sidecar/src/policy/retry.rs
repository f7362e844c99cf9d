//! Retries: which failures are retried, how long to wait, and the budget that keeps retries
//! from multiplying the load on a backend that is already failing.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::{Method, StatusCode};
use portico_proxy_api::{RetryOn, RetryPolicy};
use rand::Rng;
use tokio::time::Instant;

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made.
    Connect,
    /// The connection broke before response headers.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// The response had this status.
    Status(StatusCode),
    /// A trailers-only gRPC response carried this `grpc-status`.
    Grpc(u32),
}

/// Does `policy` retry `failure`?
pub fn retries(policy: &RetryPolicy, failure: Failure) -> bool {
    policy.retry_on.iter().any(|on| match (on, failure) {
        (RetryOn::FiveXx, Failure::Status(s)) => s.is_server_error(),
        (RetryOn::FiveXx | RetryOn::GatewayError, Failure::Connect | Failure::Reset) => true,
        (RetryOn::FiveXx | RetryOn::GatewayError, Failure::Timeout) => true,
        (RetryOn::GatewayError, Failure::Status(s)) => {
            matches!(s.as_u16(), 502..=504)
        }
        (RetryOn::ConnectFailure, Failure::Connect) => true,
        (RetryOn::Reset, Failure::Reset) => true,
        (RetryOn::RetriableGrpc, Failure::Grpc(code)) => policy.grpc_status_codes.contains(&code),
        (RetryOn::RetriableStatusCodes, Failure::Status(s)) => {
            policy.status_codes.contains(&s.as_u16())
        }
        _ => false,
    })
}

/// May requests with this method be retried under `policy`?
pub fn method_allowed(policy: &RetryPolicy, method: &Method) -> bool {
    policy.methods.iter().any(|m| m == method.as_str())
}

/// The wait before retry number `n` (0 for the first retry): full jitter over
/// `[0, min(max, base·2ⁿ)]`.
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let cap = policy
        .backoff
        .base
        .get()
        .saturating_mul(1u32 << n.min(16))
        .min(policy.backoff.max.get());
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// A retry budget: in each window, retries may reach `ratio` × requests + `min_per_second` ×
/// window length. One budget per route rule, shared by all its requests.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_window: f64,
    /// Retries are counted against the requests of the current window.
    window: Duration,
    state: Mutex<Window>,
    /// The settings it was made from.
    config: portico_proxy_api::RetryBudget,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// A budget with the policy's ratio and floor.
    pub fn new(policy: &RetryPolicy) -> Self {
        Self::of(&policy.budget)
    }

    /// A budget with these settings.
    pub fn of(budget: &portico_proxy_api::RetryBudget) -> Self {
        let window = budget.window.get().max(Duration::from_millis(1));
        Self {
            ratio: budget.ratio,
            window,
            min_per_window: f64::from(budget.min_per_second) * window.as_secs_f64(),
            state: Mutex::new(Window {
                start: Instant::now(),
                requests: 0,
                retries: 0,
            }),
            config: budget.clone(),
        }
    }

    /// The settings this budget was made from (a reload with the same ones keeps its counts).
    pub fn config(&self) -> &portico_proxy_api::RetryBudget {
        &self.config
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(w.start) >= self.window {
            *w = Window {
                start: now,
                requests: 0,
                retries: 0,
            };
        }
        w
    }

    /// Counts one original request (it earns the budget `ratio` of a retry).
    pub fn deposit(&self) {
        self.window().requests += 1;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut w = self.window();
        let allowed = self.min_per_window + self.ratio * w.requests as f64;
        if (w.retries as f64) < allowed.floor() {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn gateway_error_retries_502_to_504_and_transport_failures_only() {
        let p = policy("{ attempts: 2, retryOn: [gateway-error] }");
        assert!(retries(&p, Failure::Status(StatusCode::BAD_GATEWAY)));
        assert!(retries(&p, Failure::Status(StatusCode::GATEWAY_TIMEOUT)));
        assert!(!retries(
            &p,
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)
        ));
        assert!(retries(&p, Failure::Connect) && retries(&p, Failure::Reset));
        let p = policy("{ attempts: 2, retryOn: [5xx] }");
        assert!(retries(
            &p,
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)
        ));
    }

    #[test]
    fn grpc_codes_are_retried_only_when_listed() {
        let p = policy("{ attempts: 2, retryOn: [retriable-grpc], grpcStatusCodes: [14] }");
        assert!(retries(&p, Failure::Grpc(14)));
        assert!(!retries(&p, Failure::Grpc(13)));
    }

    #[test]
    fn listed_status_codes_are_retried_as_written_4xx_included() {
        let p =
            policy("{ attempts: 2, retryOn: [retriable-status-codes], statusCodes: [409, 503] }");
        assert!(retries(&p, Failure::Status(StatusCode::CONFLICT)));
        assert!(retries(
            &p,
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE)
        ));
        assert!(!retries(&p, Failure::Status(StatusCode::NOT_FOUND)));
        assert!(!retries(
            &p,
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)
        ));
        assert!(!retries(&p, Failure::Connect));
    }

    #[test]
    fn only_idempotent_methods_by_default() {
        let p = policy("{ attempts: 2 }");
        assert!(method_allowed(&p, &Method::GET) && method_allowed(&p, &Method::PUT));
        assert!(!method_allowed(&p, &Method::POST));
        let p = policy("{ attempts: 2, methods: [POST] }");
        assert!(method_allowed(&p, &Method::POST));
    }

    #[test]
    fn backoff_stays_within_the_growing_cap() {
        let p = policy("{ attempts: 5, backoff: { base: 10ms, max: 35ms } }");
        for _ in 0..100 {
            assert!(backoff(&p, 0) <= Duration::from_millis(10));
            assert!(backoff(&p, 1) <= Duration::from_millis(20));
            assert!(backoff(&p, 4) <= Duration::from_millis(35));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_traffic_plus_floor_and_refills_each_window() {
        let p = policy("{ attempts: 2, budget: { ratio: 0.2, minPerSecond: 0 } }");
        let b = RetryBudget::new(&p);
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw() && b.withdraw());
        assert!(!b.withdraw(), "20% of 10 requests is 2 retries");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.withdraw(), "a new window starts empty");
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw() && !b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_window_is_the_configured_one() {
        let p = policy("{ attempts: 2, budget: { ratio: 1.0, minPerSecond: 0, window: 2s } }");
        let b = RetryBudget::new(&p);
        b.deposit();
        assert!(b.withdraw() && !b.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        b.deposit();
        assert!(
            b.withdraw(),
            "still the same 2 s window: two requests, two retries"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!b.withdraw(), "a new window after 2 s starts empty");
    }
}
