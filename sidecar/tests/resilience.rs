//! Timeouts, retries, retry budgets, outlier detection, limits and load balancing, end to end.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::Request;
use hyper::body::Incoming;
use portico_proxy::error::full;
use portico_proxy::forward::balance::HashRing;

fn route_to(backends: &str, rule_extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - backends: [{{ backend: app }}]
{rule_extra}
backends:
{backends}
"#
    )
}

/// An upstream that never answers.
async fn hanging() -> Upstream {
    upstream(handler(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await;
        status(200)
    }))
    .await
}

/// An upstream whose first `fail` requests get `code`, then 200.
async fn failing_first(fail: usize, code: u16) -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    upstream(handler(move |_req: Request<Incoming>| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        async move { if i < fail { status(code) } else { status(200) } }
    }))
    .await
}

#[tokio::test]
async fn request_timeout_answers_504() {
    let up = hanging().await;
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}",
            up.addr
        ),
        "        timeouts: { request: 200ms }",
    ))
    .await;
    let r = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!((r.status, r.error()), (504, "upstream_timeout"));
}

#[tokio::test]
async fn per_try_timeout_is_retried_on_another_endpoint() {
    let (slow, fast) = (hanging().await, echo("fast").await);
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, loadBalancer: {{ type: RoundRobin }}, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            slow.addr, fast.addr
        ),
        "        timeouts: { perTry: 200ms }\n        retry: { attempts: 1, retryOn: [gateway-error], backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let r = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.server(), "fast");
    assert_eq!((slow.hits(), fast.hits()), (1, 1));
}

#[tokio::test]
async fn retries_5xx_until_success_and_counts_them() {
    let up = failing_first(2, 503).await;
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}",
            up.addr
        ),
        "        retry: { attempts: 3, retryOn: [5xx], backoff: { base: 1ms, max: 2ms } }",
    ))
    .await;
    let r = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 3);
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(r#"portico_retries_total{route="r",rule="",backend="app"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn attempts_are_bounded_and_the_last_answer_is_returned() {
    let up = failing_first(100, 502).await;
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}",
            up.addr
        ),
        "        retry: { attempts: 2, backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let r = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.error(),
        "",
        "the upstream's own 502 is passed on, not a proxy error"
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn grpc_unavailable_is_retried_when_listed() {
    // The first call gets a trailers-only UNAVAILABLE (grpc-status 14 in the headers), the
    // second succeeds.
    let n = Arc::new(AtomicUsize::new(0));
    let up = upstream(handler(move |_req: Request<Incoming>| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let mut r = status(200);
            let code = if first { "14" } else { "0" };
            r.headers_mut().insert("grpc-status", code.parse().unwrap());
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r
        }
    }))
    .await;
    let proxy = start(&route_to(
        &format!("  - {{ name: app, protocol: http2, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
        "        retry: { attempts: 2, retryOn: [retriable-grpc], grpcStatusCodes: [14], methods: [POST], backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let req = Request::post("http://example.com/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let reply = read(send(proxy.listener_addr("web").unwrap(), req, true).await).await;
    assert_eq!(reply.headers["grpc-status"], "0");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn post_is_not_retried_unless_allowed() {
    let up = failing_first(100, 503).await;
    let allowed = failing_first(1, 503).await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - backends: [{{ backend: app }}]
        retry: {{ attempts: 2, retryOn: [5xx], backoff: {{ base: 1ms, max: 1ms }} }}
      - matches: [{{ path: {{ type: PathPrefix, value: /allowed }} }}]
        backends: [{{ backend: allowed }}]
        retry: {{ attempts: 2, retryOn: [5xx], methods: [POST], backoff: {{ base: 1ms, max: 1ms }} }}
backends:
  - {{ name: app, endpoints: [{{ address: "{}" }}] }}
  - {{ name: allowed, endpoints: [{{ address: "{}" }}] }}
"#,
        up.addr, allowed.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let post = |path: &'static str| async move {
        let req = request("POST", "example.com", path)
            .body(full("x"))
            .unwrap();
        read(send(addr, req, false).await).await
    };
    assert_eq!(post("/pay").await.status, 503);
    assert_eq!(up.hits(), 1);
    assert_eq!(post("/allowed").await.status, 200);
    assert_eq!(allowed.hits(), 2);
}

#[tokio::test]
async fn bodies_over_the_replay_limit_are_not_retried() {
    let up = failing_first(100, 503).await;
    let proxy = start(&route_to(
        &format!("  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
        "        retry: { attempts: 2, retryOn: [5xx], methods: [PUT], backoff: { base: 1ms, max: 1ms } }",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let big = vec![b'x'; portico_proxy::pipeline::MAX_REPLAY_BODY + 1];
    let req = request("PUT", "example.com", "/").body(full(big)).unwrap();
    assert_eq!(read(send(addr, req, false).await).await.status, 503);
    assert_eq!(up.hits(), 1, "a large body streams through once");
    let req = request("PUT", "example.com", "/")
        .body(full("small"))
        .unwrap();
    assert_eq!(read(send(addr, req, false).await).await.status, 503);
    assert_eq!(up.hits(), 1 + 3, "a small body is replayed");
}

#[tokio::test]
async fn retries_stop_when_budget_is_spent() {
    let up = failing_first(usize::MAX, 503).await;
    // No share of traffic, one retry per second: 10 retries per 10 s window.
    let proxy = start(&route_to(
        &format!("  - {{ name: app, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
        "        retry: { attempts: 1, retryOn: [5xx], backoff: { base: 1ms, max: 1ms }, budget: { ratio: 0.0, minPerSecond: 1 } }",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..20 {
        assert_eq!(get(addr, "/").await.status, 503);
    }
    assert_eq!(up.hits(), 20 + 10);
}

#[tokio::test]
async fn failing_endpoint_is_ejected_and_traffic_moves_away() {
    let (bad, good) = (failing_first(usize::MAX, 500).await, echo("good").await);
    let proxy = start(&route_to(
        &format!(
            "  - name: app\n    loadBalancer: {{ type: RoundRobin }}\n    outlierDetection: {{ consecutiveFailures: 2, baseEjectionTime: 60s }}\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]",
            bad.addr, good.addr
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(addr, "/").await.status);
    }
    assert_eq!(bad.hits(), 2, "ejected after two consecutive failures");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 18);
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains(r#"portico_outlier_ejections_total{backend="app"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn connection_limit_answers_503_at_once_instead_of_queueing() {
    let Gated {
        upstream: up,
        mut entered,
        release,
    } = gated_upstream().await;
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, limits: {{ maxConnections: 1, maxPendingRequests: 0 }}, endpoints: [{{ address: \"{}\" }}] }}",
            up.addr
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let first = tokio::spawn(async move { get(addr, "/slow").await });
    entered.recv().await.unwrap();
    let second = get(addr, "/").await;
    assert_eq!((second.status, second.error()), (503, "overloaded"));
    assert_eq!(
        up.hits(),
        1,
        "the refused request never reached the upstream"
    );
    release.notify_one();
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b) = (echo("a").await, echo("b").await);
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, loadBalancer: {{ type: RoundRobin }}, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            a.addr, b.addr
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..10 {
        get(addr, "/").await;
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

#[tokio::test]
async fn p2c_steers_away_from_a_slow_endpoint() {
    let slow = upstream(handler(|_req: Request<Incoming>| async {
        // Far slower than the fast endpoint can ever be, even on a loaded machine.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        status(200)
    }))
    .await;
    let fast = echo("fast").await;
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            slow.addr, fast.addr
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..30 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    // Once the slow endpoint has answered, its peak latency loses the comparisons; a loaded
    // machine may give it a second or third chance as estimates age, never a real share.
    assert!(
        slow.hits() <= 3,
        "slow={} fast={}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test]
async fn consistent_hash_on_header_sticks_to_one_endpoint() {
    let ups = [echo("a").await, echo("b").await, echo("c").await];
    let eps: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ address: \"{}\" }}", u.addr))
        .collect();
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, loadBalancer: {{ type: ConsistentHash, hashOn: {{ type: Header, name: x-user }} }}, endpoints: [{}] }}",
            eps.join(", ")
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for user in ["alice", "bob", "carol"] {
        let mut servers = std::collections::HashSet::new();
        for _ in 0..10 {
            let req = request("GET", "example.com", "/")
                .header("x-user", user)
                .body(full(""))
                .unwrap();
            servers.insert(read(send(addr, req, false).await).await.server());
        }
        assert_eq!(servers.len(), 1, "{user} moved between {servers:?}");
    }
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys() {
    const N: usize = 10;
    let addrs: Vec<String> = (0..N).map(|i| format!("10.0.0.{i}:8080")).collect();
    let before = HashRing::new(addrs.iter().map(|a| (a.as_str(), 1)));
    let after = HashRing::new(addrs[..N - 1].iter().map(|a| (a.as_str(), 1)));
    let keys: Vec<String> = (0..10_000).map(|k| format!("user-{k}")).collect();
    let owner = |ring: &HashRing, k: &str| ring.lookup(k.as_bytes(), |_| true).unwrap();
    let mut moved = 0;
    let mut per_endpoint: HashMap<usize, usize> = HashMap::new();
    for k in &keys {
        let (b, a) = (owner(&before, k), owner(&after, k));
        *per_endpoint.entry(b).or_default() += 1;
        if b != a {
            moved += 1;
            assert_eq!(b, N - 1, "only keys of the removed endpoint move");
        }
    }
    // Exactly the removed endpoint's keys moved, and that share is about 1/N.
    assert_eq!(moved, per_endpoint[&(N - 1)]);
    let share = moved as f64 / keys.len() as f64;
    assert!(
        (0.5 / N as f64..1.5 / N as f64).contains(&share),
        "moved {share}"
    );
}

/// Power of two choices over peak-EWMA weighs an endpoint's latency by its requests in flight:
/// with two endpoints not yet measured, a second request goes to the one the first is not
/// waiting on. (Their estimates are equal but for a few nanoseconds of decay, so without the
/// in-flight count both requests would go to the same endpoint.)
#[tokio::test]
async fn the_endpoint_busy_with_a_request_is_avoided_by_the_next() {
    let Gated {
        upstream: a,
        entered: mut a_entered,
        release: a_release,
    } = gated_upstream().await;
    let Gated {
        upstream: b,
        entered: mut b_entered,
        release: b_release,
    } = gated_upstream().await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: r, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, endpoints: [{{ address: "{}" }}, {{ address: "{}" }}] }}]
"#,
        a.addr, b.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let first = tokio::spawn(async move { get(addr, "/").await });
    let first_on_a = tokio::select! {
        _ = a_entered.recv() => true,
        _ = b_entered.recv() => false,
    };
    let second = tokio::spawn(async move { get(addr, "/").await });
    let second_on_a = tokio::select! {
        _ = a_entered.recv() => true,
        _ = b_entered.recv() => false,
    };
    assert_ne!(
        first_on_a, second_on_a,
        "both requests went to the same endpoint although one was busy"
    );
    a_release.notify_one();
    b_release.notify_one();
    for r in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// A connection an endpoint refuses carries nothing upstream: the request (any method, no retry
/// policy) goes once more, to another endpoint, and that endpoint is passed over for a while, on
/// the HTTP/1 fast path and on the HTTP/2 path alike.
#[tokio::test]
async fn a_refused_connection_is_tried_once_more_on_another_endpoint() {
    let (closed, up) = (closed_port().await, echo("live").await);
    let proxy = start(&route_to(
        &format!(
            "  - {{ name: app, loadBalancer: {{ type: RoundRobin }}, endpoints: [{{ address: \"{closed}\" }}, {{ address: \"{}\" }}] }}",
            up.addr
        ),
        "",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for h2 in [false, true] {
        for method in ["GET", "POST"] {
            let req = request(method, "example.com", "/").body(full("")).unwrap();
            let r = read(send(addr, req, h2).await).await;
            assert_eq!(
                (r.status, r.server().as_str()),
                (200, "live"),
                "{method} over {}",
                if h2 { "HTTP/2" } else { "HTTP/1.1" }
            );
        }
    }
    // The first request found the refusal and was retried; round robin then kept offering the
    // closed endpoint, which was passed over: every request reached the live one once.
    assert_eq!(up.hits(), 4);
    let text = proxy.metrics_text();
    assert!(
        text.contains(r#"portico_retries_total{route="r",rule="",backend="app"} 1"#),
        "one retry: {text}"
    );
}
