//! Rate limits kept in Redis, against a real `redis-server` started by each test on a free
//! loopback port: two proxies share one budget, and a failing Redis fails open or closed as
//! configured, counted in the metrics.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use portico_proxy::error::full;
use portico_proxy::policy::redis::{Client, Reply as RedisReply};

/// A `redis-server` of this test's own, stopped when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    /// Starts `redis-server` without persistence. A machine without it fails the test: it is
    /// a Debian package (`apt-get install redis-server`; `hack/k8s-bins.sh` installs it).
    async fn start() -> Self {
        let addr = closed_port().await;
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server is needed by this test and could not be started ({e}): \
                     install it with `apt-get install redis-server` (hack/k8s-bins.sh does)"
                )
            });
        let redis = Self { child, addr };
        let client = redis.client();
        for _ in 0..100 {
            if client.call(&[b"PING"]).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {addr} did not answer PING within 5s");
    }

    fn client(&self) -> Client {
        Client::new(&self.addr.to_string(), Duration::from_secs(2))
    }

    /// Sends `SIGSTOP` or `SIGCONT`: a server that accepts connections and never answers.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.stop();
    }
}

/// One route whose rule allows `requests` per minute (burst as large), one bucket for all,
/// counted in the Redis at `redis`.
fn limited(upstream: SocketAddr, redis: SocketAddr, requests: u32, fail_open: bool) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - backends: [{{ backend: app }}]
        rateLimit:
          requests: {requests}
          period: 1m
          burst: {requests}
          key: {{ type: Global }}
          store: {{ address: "{redis}", prefix: "portico:test:r:0", timeout: 100ms, failOpen: {fail_open} }}
backends:
  - {{ name: app, endpoints: [{{ address: "{upstream}" }}] }}
"#
    )
}

/// GET / on `proxy`'s listener, over HTTP/1.1 (the fast path) or h2c (hyper's path).
async fn get_via(proxy: &portico_proxy::Proxy, h2: bool) -> Reply {
    let addr = proxy.listener_addr("web").expect("listener");
    let req = request("GET", "example.com", "/").body(full("")).unwrap();
    read(send(addr, req, h2).await).await
}

#[tokio::test]
async fn two_proxies_share_one_budget_kept_in_redis() {
    let redis = Redis::start().await;
    let up = echo("app").await;
    let cfg = limited(up.addr, redis.addr, 6, false);
    let (a, b) = (start(&cfg).await, start(&cfg).await);
    // Six in total, alternating proxies and protocols: each proxy alone would allow six.
    for i in 0..6u64 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        let r = get_via(proxy, i % 3 == 2).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.headers["ratelimit-limit"], "6");
        assert_eq!(
            r.headers["ratelimit-remaining"],
            (5 - i).to_string().as_str(),
            "request {i}"
        );
    }
    for (proxy, h2) in [(&a, false), (&b, false), (&b, true)] {
        let r = get_via(proxy, h2).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.error(), "rate_limited");
        assert_eq!(r.headers["ratelimit-remaining"], "0");
        // One token every 10 s.
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(up.hits(), 6, "refused requests never reach the upstream");
    // The bucket lives in Redis, and expires once it would be full again (60 s from now).
    let ttl = redis
        .client()
        .call(&[b"PTTL", b"portico:test:r:0:all"])
        .await
        .expect("PTTL");
    let RedisReply::Integer(ms) = ttl else {
        panic!("PTTL answered {ttl:?}")
    };
    assert!((50_000..=60_000).contains(&ms), "ttl {ms} ms");
}

#[tokio::test]
async fn the_script_is_sent_again_after_redis_forgets_it() {
    let redis = Redis::start().await;
    let up = echo("app").await;
    let proxy = start(&limited(up.addr, redis.addr, 2, false)).await;
    assert_eq!(get_via(&proxy, false).await.status, 200);
    // As after a Redis restart: EVALSHA answers NOSCRIPT, the proxy falls back to EVAL.
    let flushed = redis.client().call(&[b"SCRIPT", b"FLUSH"]).await;
    assert_eq!(
        flushed.expect("SCRIPT FLUSH"),
        RedisReply::Simple("OK".into())
    );
    let r = get_via(&proxy, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["ratelimit-remaining"], "0", "the same bucket");
    assert_eq!(get_via(&proxy, false).await.status, 429);
}

#[tokio::test]
async fn a_failing_store_that_fails_open_lets_requests_through_and_counts_them() {
    let mut redis = Redis::start().await;
    let up = echo("app").await;
    let proxy = start(&limited(up.addr, redis.addr, 1, true)).await;
    assert_eq!(get_via(&proxy, false).await.status, 200);
    assert_eq!(get_via(&proxy, false).await.status, 429, "the limit holds");
    // Too slow: Redis accepts and never answers; each request waits the 100 ms timeout.
    redis.signal("-STOP");
    let r = get_via(&proxy, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.get("ratelimit-limit").is_none(),
        "nothing was counted"
    );
    redis.signal("-CONT");
    // Gone: the pooled connection breaks, new ones are refused.
    redis.stop();
    for h2 in [false, true] {
        assert_eq!(get_via(&proxy, h2).await.status, 200);
    }
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(
            r#"portico_rate_limit_store_errors_total{route="r",rule="",decision="allowed"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_store_that_fails_closed_refuses_requests_with_503() {
    let mut redis = Redis::start().await;
    let up = echo("app").await;
    let proxy = start(&limited(up.addr, redis.addr, 5, false)).await;
    assert_eq!(get_via(&proxy, false).await.status, 200);
    redis.stop();
    for h2 in [false, true] {
        let r = get_via(&proxy, h2).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.error(), "rate_limit_store_unavailable");
    }
    assert_eq!(up.hits(), 1);
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(
            r#"portico_rate_limit_store_errors_total{route="r",rule="",decision="refused"} 2"#
        ),
        "{metrics}"
    );
}
