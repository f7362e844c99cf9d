//! Local rate limiting: a token bucket per key (client address, header value, or one for all),
//! kept as GCRA (the generic cell rate algorithm), which stores one instant per key instead of
//! a token count and a refill time.
//!
//! ```text
//!  interval = period / requests        tolerance = interval × burst
//!  tat      = "theoretical arrival time" of the key's next request (now when unknown)
//!  request at now:  next = max(tat, now) + interval
//!                   next - now <= tolerance ? let in, tat = next : refuse, retry after the excess
//! ```
//!
//! A key whose `tat` has passed holds a full bucket, exactly like a key never seen, so it can be
//! forgotten without changing any decision: that is how idle buckets are evicted. Memory is
//! bounded by a cap on the number of keys; when the cap is reached and nothing is idle, new keys
//! share one overflow bucket, so a caller who sprays distinct keys is still limited (together
//! with the other newcomers) rather than let through.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Keys tracked at most per limiter (about 32 bytes each).
pub const MAX_KEYS: usize = 16_384;
/// How often idle buckets are swept out while there is room.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a full table may be swept (a sweep is a pass over every key).
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A request over the limit, and when the next one would be let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry after {0:?}")]
pub struct RateLimited(pub Duration);

/// What is left of a bucket after a request took its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests that would pass now, after this one.
    pub remaining: u64,
    /// How long until the bucket is full again.
    pub full_in: Duration,
}

/// What a bucket is chosen by. Keys are hashed with a per-limiter random key, so the table
/// holds fixed-size entries whatever the header values, and nobody can aim at another caller's
/// bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// One bucket for everything.
    Global,
    /// A client address.
    Ip(std::net::IpAddr),
    /// A header's value (`None`: requests without the header share one bucket).
    Value(Option<&'a [u8]>),
}

/// Token buckets, one per key.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    max_keys: usize,
    hasher: RandomState,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    tat: HashMap<u64, Instant>,
    /// Shared by the keys that found the table full.
    overflow: Option<Instant>,
    last_sweep: Instant,
}

impl RateLimiter {
    /// `requests` per `period`, bursts up to `burst` (both at least 1).
    pub fn new(requests: u64, period: Duration, burst: u64) -> Self {
        Self::with_max_keys(requests, period, burst, MAX_KEYS)
    }

    /// As [`RateLimiter::new`], tracking at most `max_keys` keys.
    pub fn with_max_keys(requests: u64, period: Duration, burst: u64, max_keys: usize) -> Self {
        let requests = u32::try_from(requests.max(1)).unwrap_or(u32::MAX);
        let burst = u32::try_from(burst.max(1)).unwrap_or(u32::MAX);
        let interval = period / requests;
        Self {
            interval,
            tolerance: interval.saturating_mul(burst),
            max_keys,
            hasher: RandomState::new(),
            state: Mutex::new(Buckets {
                tat: HashMap::new(),
                overflow: None,
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: Key<'_>) -> Result<(), RateLimited> {
        self.take(key).map(|_| ())
    }

    /// How long until a refused request's bucket is full again, `retry_after` being what
    /// [`RateLimited`] said.
    pub fn full_in(&self, retry_after: Duration) -> Duration {
        (retry_after + self.tolerance).saturating_sub(self.interval)
    }

    /// The bucket's size: the most requests let in at once.
    pub fn capacity(&self) -> u64 {
        self.tolerance
            .as_nanos()
            .div_ceil(self.interval.as_nanos().max(1)) as u64
    }

    /// As [`RateLimiter::check`], saying what is left of the bucket when the request passes.
    pub fn take(&self, key: Key<'_>) -> Result<Quota, RateLimited> {
        let now = Instant::now();
        let hash = match key {
            Key::Global => 0,
            Key::Ip(ip) => self.hash((1u8, ip)),
            Key::Value(v) => self.hash((2u8, v)),
        };
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let full = s.tat.len() >= self.max_keys;
        let every = if full {
            FULL_SWEEP_INTERVAL
        } else {
            SWEEP_INTERVAL
        };
        if now >= s.last_sweep + every {
            s.tat.retain(|_, tat| *tat > now);
            if s.overflow.is_some_and(|t| t <= now) {
                s.overflow = None;
            }
            s.last_sweep = now;
        }
        let room = s.tat.len() < self.max_keys;
        let slot = if room || s.tat.contains_key(&hash) {
            s.tat.entry(hash).or_insert(now)
        } else {
            s.overflow.get_or_insert(now)
        };
        let next = (*slot).max(now) + self.interval;
        let wait = next - now;
        if wait > self.tolerance {
            return Err(RateLimited(wait - self.tolerance));
        }
        *slot = next;
        let left = self.tolerance - wait;
        Ok(Quota {
            remaining: (left.as_nanos() / self.interval.as_nanos().max(1)) as u64,
            full_in: wait,
        })
    }

    fn hash(&self, v: impl Hash) -> u64 {
        self.hasher.hash_one(v)
    }

    /// Keys tracked now (tests, and to see that idle ones go).
    pub fn keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tat
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const A: Key<'static> = Key::Ip(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Key<'static> = Key::Ip(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_requests_wait_for_the_refill() {
        // 10 per second = one every 100 ms, bursts of 3.
        let rl = RateLimiter::new(10, Duration::from_secs(1), 3);
        for _ in 0..3 {
            assert_eq!(rl.check(A), Ok(()));
        }
        assert_eq!(rl.check(A), Err(RateLimited(Duration::from_millis(100))));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(rl.check(A), Err(RateLimited(Duration::from_millis(60))));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(rl.check(A), Ok(()), "one token refilled");
        assert!(rl.check(A).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            assert_eq!(rl.check(A), Ok(()), "refills up to the burst, not beyond");
        }
        assert!(rl.check(A).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_its_own_bucket() {
        let rl = RateLimiter::new(1, Duration::from_secs(60), 1);
        assert_eq!(rl.check(A), Ok(()));
        assert!(rl.check(A).is_err());
        assert_eq!(rl.check(B), Ok(()));
        assert_eq!(rl.check(Key::Value(Some(b"alice"))), Ok(()));
        assert!(rl.check(Key::Value(Some(b"alice"))).is_err());
        assert_eq!(rl.check(Key::Value(Some(b"bob"))), Ok(()));
        assert_eq!(rl.check(Key::Value(None)), Ok(()));
        assert!(
            rl.check(Key::Value(None)).is_err(),
            "no header: one shared bucket"
        );
        assert_eq!(rl.check(Key::Global), Ok(()));
        assert!(rl.check(Key::Global).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_forgotten() {
        let rl = RateLimiter::new(1, Duration::from_secs(1), 1);
        for i in 0..100u8 {
            rl.check(Key::Ip(IpAddr::from([10, 0, 1, i]))).unwrap();
        }
        assert_eq!(rl.keys(), 100);
        tokio::time::advance(SWEEP_INTERVAL).await;
        rl.check(A).unwrap();
        assert_eq!(rl.keys(), 1, "only the key just seen is left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_sends_new_keys_to_one_shared_bucket() {
        let rl = RateLimiter::with_max_keys(1, Duration::from_secs(60), 1, 2);
        rl.check(A).unwrap();
        rl.check(B).unwrap();
        assert_eq!(rl.check(Key::Value(Some(b"c"))), Ok(()), "first newcomer");
        assert!(
            rl.check(Key::Value(Some(b"d"))).is_err(),
            "second newcomer shares the overflow bucket"
        );
        assert_eq!(rl.keys(), 2, "the table does not grow past its cap");
        // Once the tracked keys are idle, a sweep makes room again.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(rl.check(Key::Value(Some(b"d"))), Ok(()));
        assert_eq!(rl.keys(), 1);
    }
}
