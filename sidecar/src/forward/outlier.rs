//! Passive outlier detection: an endpoint that fails `consecutiveFailures` times in a row is
//! ejected (gets no new requests). The n-th ejection lasts n × `baseEjectionTime`, capped at
//! `maxEjectionTime`, so a flapping endpoint stays out longer each time. At most
//! `maxEjectedPercent` of a backend's endpoints are out at once: when everything fails, the
//! fault is more likely ours or shared, and ejecting everyone would turn errors into a total
//! outage.

use portico_proxy_api::OutlierDetection;
use tokio::time::Instant;

/// Failure bookkeeping of one endpoint.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl OutlierState {
    /// Is the endpoint out of rotation at `now`?
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// How many times the endpoint has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records one result. `ejected_elsewhere` is how many other endpoints of the backend are
    /// currently ejected and `total` how many endpoints it has. Returns true if this result
    /// ejected the endpoint.
    pub fn record(
        &mut self,
        policy: &OutlierDetection,
        success: bool,
        now: Instant,
        ejected_elsewhere: usize,
        total: usize,
    ) -> bool {
        if success {
            self.consecutive = 0;
            return false;
        }
        if self.is_ejected(now) {
            // A request that started before the ejection; it says nothing new.
            return false;
        }
        self.consecutive += 1;
        if self.consecutive < policy.consecutive_failures {
            return false;
        }
        let allowed = total * policy.max_ejected_percent as usize / 100;
        if ejected_elsewhere + 1 > allowed {
            return false;
        }
        self.ejections += 1;
        self.consecutive = 0;
        let time = policy
            .base_ejection_time
            .get()
            .saturating_mul(self.ejections)
            .min(policy.max_ejection_time.get());
        self.ejected_until = Some(now + time);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_proxy_api::Duration;
    use std::time::Duration as D;

    fn policy() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejected_percent: 100,
        }
    }

    fn fail_n(s: &mut OutlierState, n: u32) -> bool {
        let mut ejected = false;
        for _ in 0..n {
            ejected |= s.record(&policy(), false, Instant::now(), 0, 2);
        }
        ejected
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let mut s = OutlierState::default();
        assert!(!fail_n(&mut s, 2));
        assert!(fail_n(&mut s, 1));
        assert!(s.is_ejected(Instant::now()));
        tokio::time::advance(D::from_secs(10)).await;
        assert!(!s.is_ejected(Instant::now()));

        assert!(fail_n(&mut s, 3));
        tokio::time::advance(D::from_secs(19)).await;
        assert!(s.is_ejected(Instant::now()), "second ejection lasts 20s");
        tokio::time::advance(D::from_secs(1)).await;
        assert!(!s.is_ejected(Instant::now()));

        assert!(fail_n(&mut s, 3));
        tokio::time::advance(D::from_secs(25)).await;
        assert!(
            !s.is_ejected(Instant::now()),
            "third ejection is capped at 25s"
        );
        assert_eq!(s.ejections(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let mut s = OutlierState::default();
        fail_n(&mut s, 2);
        s.record(&policy(), true, Instant::now(), 0, 2);
        assert!(!fail_n(&mut s, 2));
        assert!(fail_n(&mut s, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejected_percent_caps_ejections() {
        let mut p = policy();
        p.max_ejected_percent = 50;
        let mut s = OutlierState::default();
        for _ in 0..3 {
            assert!(!s.record(&p, false, Instant::now(), 1, 2));
        }
        assert!(!s.is_ejected(Instant::now()));
    }
}
