//! Rate limits shared by several proxies: the buckets of [`super::ratelimit`] kept in Redis, so
//! every replica of a gateway takes from the same budget.
//!
//! Each request runs one Lua script in Redis. It is the same GCRA as the local limiter (one
//! stored instant per key, the "theoretical arrival time"), read and written atomically by the
//! script, with Redis's own clock (`TIME`), so the replicas' clocks never matter:
//!
//! ```text
//!  proxy A ─┐  EVALSHA gcra 1 <prefix>:<bucket> <interval µs> <tolerance µs>
//!  proxy B ─┼────────────────────────────────────────────────────────────────► Redis
//!  proxy C ─┘  ◄── {1, remaining, wait µs} (let in)  |  {0, retry after µs} (refused)
//! ```
//!
//! The key expires when the bucket is full again (a key that is gone reads as a full bucket),
//! so Redis holds only the buckets in use. Header values are hashed (SHA-256) into the key: keys
//! have a fixed length whatever clients send, and the header's value is not stored in Redis.
//!
//! When Redis fails or answers too late the store's `fail_open` decides: let the request in, or
//! refuse it with `503`. Either way the request's outcome records it (counted as
//! `portico_rate_limit_store_errors_total`), and the error is logged at most every 10 seconds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portico_proxy_api::{RateLimit, RateLimitStore};

use super::ratelimit::{Key, Quota, RateLimited};
use super::redis::{Client, RedisError, Reply};

/// The GCRA, in microseconds. `KEYS[1]`: the bucket; `ARGV`: interval and tolerance (µs).
/// Returns `{1, remaining, wait}` when the request is let in, `{0, retry_after}` when refused.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat + interval - now
if wait > tolerance then
  return {0, wait - tolerance}
end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.ceil(wait / 1000))
return {1, math.floor((tolerance - wait) / interval), wait}
";

/// How often a failing store is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A rule's buckets kept in Redis.
#[derive(Debug)]
pub struct StoreLimiter {
    client: Client,
    prefix: String,
    interval_us: u64,
    tolerance_us: u64,
    /// Let requests through when Redis fails.
    pub fail_open: bool,
    /// The script's SHA-1, for `EVALSHA`.
    sha: String,
    /// When the last failure was logged (seconds since the limiter was made, plus one; 0: never).
    logged: AtomicU64,
    born: tokio::time::Instant,
}

impl StoreLimiter {
    /// The limiter for `limit`, counted in `store`.
    pub fn new(limit: &RateLimit, store: &RateLimitStore) -> Self {
        let requests = u32::try_from(limit.requests.max(1)).unwrap_or(u32::MAX);
        let burst = u32::try_from(limit.burst.max(1)).unwrap_or(u32::MAX);
        let interval = limit.period.get() / requests;
        let interval_us = (interval.as_micros() as u64).max(1);
        Self {
            client: Client::new(&store.address, store.timeout.get()),
            prefix: store.prefix.clone(),
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst)),
            fail_open: store.fail_open,
            sha: sha1_hex(SCRIPT.as_bytes()),
            logged: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }
    }

    /// The bucket's size: the most requests let in at once.
    pub fn capacity(&self) -> u64 {
        self.tolerance_us.div_ceil(self.interval_us)
    }

    /// How long until a refused request's bucket is full again, `retry_after` being what
    /// [`RateLimited`] said.
    pub fn full_in(&self, retry_after: Duration) -> Duration {
        (retry_after + Duration::from_micros(self.tolerance_us))
            .saturating_sub(Duration::from_micros(self.interval_us))
    }

    /// The Redis key of `key`'s bucket.
    pub fn bucket(&self, key: Key<'_>) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 72);
        k.push_str(&self.prefix);
        match key {
            Key::Global => k.push_str(":all"),
            Key::Ip(ip) => {
                let _ = write!(k, ":ip:{ip}");
            }
            Key::Value(None) => k.push_str(":h"),
            Key::Value(Some(v)) => {
                k.push_str(":h:");
                let d = ring::digest::digest(&ring::digest::SHA256, v);
                hex(d.as_ref(), &mut k);
            }
        }
        k
    }

    /// Takes one token from `key`'s bucket in Redis. The outer error is Redis's (the caller
    /// applies `fail_open`); it has been logged when due.
    pub async fn take(&self, key: Key<'_>) -> Result<Result<Quota, RateLimited>, RedisError> {
        let result = self.run(&self.bucket(key)).await;
        if let Err(e) = &result {
            self.log(e);
        }
        result
    }

    async fn run(&self, bucket: &str) -> Result<Result<Quota, RateLimited>, RedisError> {
        let interval = self.interval_us.to_string();
        let tolerance = self.tolerance_us.to_string();
        let args = [bucket.as_bytes(), interval.as_bytes(), tolerance.as_bytes()];
        let by_sha = [&[b"EVALSHA", self.sha.as_bytes(), b"1"][..], &args].concat();
        let reply = match self.client.call(&by_sha).await {
            // Redis restarted or was flushed since the script was last sent: EVAL sends it
            // whole, and Redis caches it for the next EVALSHA.
            Err(RedisError::Server(_, e)) if e.starts_with("NOSCRIPT") => {
                let whole = [&[b"EVAL", SCRIPT.as_bytes(), b"1"][..], &args].concat();
                self.client.call(&whole).await?
            }
            r => r?,
        };
        let protocol = || RedisError::Protocol(self.client.address().to_owned());
        let Reply::Array(Some(items)) = reply else {
            return Err(protocol());
        };
        let n = |i: usize| match items.get(i) {
            Some(Reply::Integer(v)) => u64::try_from(*v).map_err(|_| protocol()),
            _ => Err(protocol()),
        };
        Ok(if n(0)? == 1 {
            Ok(Quota {
                remaining: n(1)?,
                full_in: Duration::from_micros(n(2)?),
            })
        } else {
            Err(RateLimited(Duration::from_micros(n(1)?)))
        })
    }

    /// Logs a failure unless one was logged less than [`LOG_EVERY`] ago.
    fn log(&self, e: &RedisError) {
        let now = self.born.elapsed().as_secs() + 1;
        let last = self.logged.load(Ordering::Relaxed);
        if (last == 0 || now >= last + LOG_EVERY.as_secs())
            && self
                .logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let decision = if self.fail_open {
                "letting requests through"
            } else {
                "refusing requests"
            };
            tracing::warn!(error = %e, prefix = %self.prefix, "rate-limit store failed; {decision}");
        }
    }
}

fn sha1_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let mut s = String::with_capacity(40);
    hex(d.as_ref(), &mut s);
    s
}

fn hex(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_proxy_api::RateLimitKey;

    fn limiter() -> StoreLimiter {
        let limit = RateLimit {
            requests: 10,
            period: portico_proxy_api::Duration::from_secs(1),
            burst: 3,
            key: RateLimitKey::Global,
            store: None,
        };
        let store = RateLimitStore {
            address: "127.0.0.1:1".into(),
            prefix: "portico:gw/web:route/api:0".into(),
            timeout: portico_proxy_api::Duration::from_millis(50),
            fail_open: true,
        };
        StoreLimiter::new(&limit, &store)
    }

    #[test]
    fn buckets_are_named_by_prefix_and_key_with_header_values_hashed() {
        let l = limiter();
        assert_eq!(l.bucket(Key::Global), "portico:gw/web:route/api:0:all");
        assert_eq!(
            l.bucket(Key::Ip([10, 0, 0, 1].into())),
            "portico:gw/web:route/api:0:ip:10.0.0.1"
        );
        assert_eq!(l.bucket(Key::Value(None)), "portico:gw/web:route/api:0:h");
        let alice = l.bucket(Key::Value(Some(b"alice")));
        assert_eq!(alice.len(), "portico:gw/web:route/api:0:h:".len() + 64);
        assert!(!alice.contains("alice"), "the value itself is not stored");
        assert_ne!(alice, l.bucket(Key::Value(Some(b"bob"))));
    }

    #[test]
    fn capacity_and_refill_match_the_local_limiter() {
        let l = limiter();
        let local = super::super::ratelimit::RateLimiter::new(10, Duration::from_secs(1), 3);
        assert_eq!(l.capacity(), local.capacity());
        let wait = Duration::from_millis(40);
        assert_eq!(l.full_in(wait), local.full_in(wait));
        // The SHA-1 `EVALSHA` names the script by (as Redis's `SCRIPT LOAD` would answer).
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_not_a_decision() {
        let l = limiter();
        let e = l.take(Key::Global).await.expect_err("nothing listens");
        assert!(
            matches!(e, RedisError::Io(..) | RedisError::Timeout(..)),
            "{e}"
        );
    }
}
