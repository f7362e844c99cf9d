//! Endpoint choice. Only healthy endpoints (ready and not ejected) are candidates.
//!
//! - `P2cEwma` (default): pick two at random, take the one with the lower
//!   peak-EWMA latency × (requests in flight + 1). Cheap, needs no coordination, and steers
//!   away from slow or overloaded endpoints quickly because latency peaks count at once while
//!   improvements decay in.
//! - `RoundRobin`: each endpoint in turn, as many turns as its weight.
//! - `ConsistentHash`: a ring of virtual nodes (160 per unit of weight) placed by hashing the
//!   endpoint address, so it does not depend on list order; a key goes to the first healthy
//!   endpoint clockwise from its hash. Removing one of N endpoints only moves the keys it owned,
//!   about 1/N.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use portico_proxy_api::{HashOn, LoadBalancer};
use rand::Rng;
use tokio::time::Instant;

/// Virtual nodes per unit of endpoint weight on the hash ring.
const VNODES: u32 = 160;
/// The decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint that has not answered yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// What a balancer may look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// Request headers (for header and cookie hashing).
    pub headers: &'a HeaderMap,
    /// The client address (for client-IP hashing).
    pub client_ip: IpAddr,
}

/// A configured balancer over a fixed endpoint list.
#[derive(Debug)]
pub enum Balancer {
    /// Power of two choices over peak EWMA.
    P2c,
    /// Weighted round robin.
    RoundRobin {
        /// Endpoint indices, each repeated by weight.
        schedule: Vec<usize>,
        /// Next position in `schedule`.
        next: AtomicUsize,
    },
    /// Consistent hashing.
    Hash {
        /// Where the key comes from.
        on: HashOn,
        /// The ring.
        ring: HashRing,
    },
}

impl Balancer {
    /// Whether picking looks at the request's headers (hashing on a header or a cookie).
    pub fn reads_headers(&self) -> bool {
        matches!(
            self,
            Self::Hash {
                on: HashOn::Header { .. } | HashOn::Cookie { .. },
                ..
            }
        )
    }

    /// A balancer for endpoints given as `(address, weight)`.
    pub fn new<'a>(lb: &LoadBalancer, endpoints: impl Iterator<Item = (&'a str, u32)>) -> Self {
        match lb {
            LoadBalancer::P2cEwma => Self::P2c,
            LoadBalancer::RoundRobin => Self::RoundRobin {
                schedule: endpoints
                    .enumerate()
                    .flat_map(|(i, (_, w))| std::iter::repeat_n(i, w.clamp(1, 100) as usize))
                    .collect(),
                next: AtomicUsize::new(0),
            },
            LoadBalancer::ConsistentHash { hash_on } => Self::Hash {
                on: hash_on.clone(),
                ring: HashRing::new(endpoints),
            },
        }
    }

    /// Chooses an endpoint index. `healthy(i)` says whether endpoint `i` may be used and
    /// `cost(i)` is its load-weighted latency (for P2C).
    pub fn pick(
        &self,
        n: usize,
        ctx: &PickContext<'_>,
        healthy: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        match self {
            Self::P2c => p2c(n, &healthy, &cost),
            Self::RoundRobin { schedule, next } => {
                let len = schedule.len();
                (0..len)
                    .map(|_| schedule[next.fetch_add(1, Ordering::Relaxed) % len])
                    .find(|i| healthy(*i))
            }
            Self::Hash { on, ring } => match hash_key(on, ctx) {
                Some(key) => ring.lookup(&key, &healthy),
                None => p2c(n, &healthy, &|_| 0.0),
            },
        }
    }
}

fn p2c(n: usize, healthy: &dyn Fn(usize) -> bool, cost: &dyn Fn(usize) -> f64) -> Option<usize> {
    // Fast paths without allocating: one endpoint, or two random picks that are both healthy
    // (the common case). Otherwise choose among the healthy ones.
    if n == 1 {
        return healthy(0).then_some(0);
    }
    if n > 1 {
        let mut rng = rand::rng();
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n)) % n;
        if healthy(a) && healthy(b) {
            return Some(if cost(b) < cost(a) { b } else { a });
        }
    }
    let candidates: Vec<usize> = (0..n).filter(|i| healthy(*i)).collect();
    let mut rng = rand::rng();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        len => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..len)) % len;
            let (a, b) = (candidates[a], candidates[b]);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

fn hash_key(on: &HashOn, ctx: &PickContext<'_>) -> Option<Vec<u8>> {
    match on {
        HashOn::Header { name } => ctx.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie { name } => ctx
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
        HashOn::ClientIp => Some(ctx.client_ip.to_string().into_bytes()),
    }
}

/// A consistent-hash ring over endpoint indices.
#[derive(Debug, Default)]
pub struct HashRing {
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// Builds the ring from `(address, weight)` pairs; indices follow the iteration order.
    pub fn new<'a>(endpoints: impl Iterator<Item = (&'a str, u32)>) -> Self {
        let mut points = Vec::new();
        for (i, (addr, weight)) in endpoints.enumerate() {
            for v in 0..VNODES * weight.clamp(1, 100) {
                points.push((hash(format!("{addr}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first healthy endpoint at or after the key's position.
    pub fn lookup(&self, key: &[u8], healthy: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key);
        let start = self.points.partition_point(|(p, _)| *p < h);
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1)
            .find(|i| healthy(*i))
    }
}

/// FNV-1a followed by a SplitMix64 finalizer: stable across builds and platforms (unlike
/// `DefaultHasher`), and well spread.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Peak-EWMA latency of one endpoint: a slower sample replaces the average at once, faster
/// ones pull it down with time constant `EWMA_DECAY`. Without samples the estimate decays
/// towards zero on the same time scale, so an endpoint that was slow once is tried again later
/// instead of being shunned forever on stale data.
#[derive(Debug)]
pub struct PeakEwma {
    rtt_ns: f64,
    stamp: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            rtt_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: Instant::now(),
        }
    }
}

impl PeakEwma {
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
    }

    /// Adds one latency sample.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        if sample > self.rtt_ns {
            self.rtt_ns = sample;
        } else {
            let w = self.weight(now);
            self.rtt_ns = self.rtt_ns * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }

    /// The estimate at `now`, in nanoseconds.
    pub fn rtt_ns(&self, now: Instant) -> f64 {
        self.rtt_ns * self.weight(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(h: &HeaderMap) -> PickContext<'_> {
        PickContext {
            headers: h,
            client_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn p2c_prefers_the_cheaper_endpoint_of_two() {
        let h = HeaderMap::new();
        let b = Balancer::new(&LoadBalancer::P2cEwma, [("a", 1), ("b", 1)].into_iter());
        for _ in 0..50 {
            let i = b.pick(2, &ctx(&h), |_| true, |i| if i == 0 { 10.0 } else { 1.0 });
            assert_eq!(i, Some(1));
        }
    }

    #[test]
    fn round_robin_follows_weights_and_skips_unhealthy() {
        let h = HeaderMap::new();
        let b = Balancer::new(&LoadBalancer::RoundRobin, [("a", 1), ("b", 2)].into_iter());
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(2, &ctx(&h), |_| true, |_| 0.0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 1, 0, 1, 1]);
        assert!((0..5).all(|_| b.pick(2, &ctx(&h), |i| i == 0, |_| 0.0) == Some(0)));
    }

    #[test]
    fn cookie_hashing_reads_the_named_cookie() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; session=xyz".parse().unwrap());
        let key = hash_key(
            &HashOn::Cookie {
                name: "session".into(),
            },
            &ctx(&h),
        );
        assert_eq!(key.as_deref(), Some(&b"xyz"[..]));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::default();
        let t0 = Instant::now();
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.rtt_ns(t0), 100e6);
        let t1 = t0 + Duration::from_secs(10);
        e.observe(Duration::from_millis(1), t1);
        assert!(e.rtt_ns(t1) < 50e6 && e.rtt_ns(t1) > 1e6);
        assert!(
            e.rtt_ns(t1 + Duration::from_secs(60)) < 1e6,
            "idle estimates fade"
        );
    }
}
