//! The response cache and fallback of a rule, end to end through a real proxy and upstreams.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use hyper::body::Incoming;
use portico_proxy::error::full;

fn one_route(rule_extra: &str, backend: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: r
    rules:
      - backends: [{{ backend: app }}]
{rule_extra}
backends: [{{ name: app, endpoints: [{{ address: "{backend}" }}] }}]
"#
    )
}

/// Answers `body <path>`; while `failing` is set, 503.
async fn switchable(failing: Arc<AtomicBool>) -> Upstream {
    upstream(handler(move |req: Request<Incoming>| {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            if failing {
                return status(503);
            }
            http::Response::new(full(format!("body {}", req.uri().path())))
        }
    }))
    .await
}

async fn get_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    h: &[(&str, &str)],
) -> Reply {
    let mut req = request(method, "example.com", path);
    for (n, v) in h {
        req = req.header(*n, *v);
    }
    read(send(addr, req.body(full("")).unwrap(), false).await).await
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_caching_rule_answers_repeats_from_the_cache_with_age_and_never_for_authorization() {
    let app = switchable(Arc::default()).await;
    let proxy = start(&one_route("        cache: { ttl: 60s }", app.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();

    let first = get(addr, "/a?x=1").await;
    assert_eq!((first.status, first.body.as_str()), (200, "body /a"));
    assert_eq!(header(&first, "x-portico-cache"), "miss");
    let second = get(addr, "/a?x=1").await;
    assert_eq!(second.body, "body /a");
    assert_eq!(header(&second, "x-portico-cache"), "hit");
    assert_eq!(header(&second, "age"), "0");
    let head = get_with(addr, "HEAD", "/a?x=1", &[]).await;
    assert_eq!(
        header(&head, "x-portico-cache"),
        "hit",
        "HEAD from the stored GET"
    );
    assert_eq!(header(&head, "content-length"), "7");
    assert_eq!(app.hits(), 1, "one upstream request for three answers");

    get(addr, "/a?x=2").await;
    assert_eq!(app.hits(), 2, "another query is another key");
    let auth = get_with(addr, "GET", "/a?x=1", &[("authorization", "Bearer t")]).await;
    assert_eq!(header(&auth, "x-portico-cache"), "bypass");
    let no_cache = get_with(addr, "GET", "/a?x=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(header(&no_cache, "x-portico-cache"), "bypass");
    assert_eq!(app.hits(), 4);

    let admin = proxy.admin_addr().unwrap();
    let metrics = get(admin, "/metrics").await.body;
    for line in [
        r#"portico_cache_lookups_total{route="r",rule="",result="hit"} 2"#,
        r#"portico_cache_lookups_total{route="r",rule="",result="miss"} 2"#,
        r#"portico_cache_stores_total{route="r",rule=""} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_burst_of_identical_misses_makes_one_upstream_request() {
    let app = upstream(handler(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        http::Response::new(full("slow answer"))
    }))
    .await;
    let proxy = start(&one_route("        cache: { ttl: 60s }", app.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let burst: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/burst").await }))
        .collect();
    for r in burst {
        let r = r.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "slow answer"));
    }
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_failing_backend_is_masked_by_the_last_good_answer_then_the_default_one() {
    let failing = Arc::new(AtomicBool::new(false));
    let app = switchable(failing.clone()).await;
    let rule = "        fallback:\n          staleFor: 60s\n          directResponse: { status: 200, body: \"default\" }";
    let proxy = start(&one_route(rule, app.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();

    let good = get(addr, "/kept").await;
    assert_eq!(good.body, "body /kept");
    assert_eq!(header(&good, "x-portico-fallback"), "");
    assert_eq!(
        header(&good, "x-portico-cache"),
        "",
        "no cache header without cache"
    );
    let again = get(addr, "/kept").await;
    assert_eq!(header(&again, "x-portico-fallback"), "");
    assert_eq!(
        app.hits(),
        2,
        "fallback alone serves nothing from the store while all is well"
    );

    failing.store(true, Ordering::SeqCst);
    let stale = get(addr, "/kept").await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "body /kept"));
    assert_eq!(header(&stale, "x-portico-fallback"), "stale");
    assert!(stale.headers.contains_key("age"));
    let default = get(addr, "/never-seen").await;
    assert_eq!((default.status, default.body.as_str()), (200, "default"));
    assert_eq!(header(&default, "x-portico-fallback"), "default");
    let post = get_with(addr, "POST", "/kept", &[]).await;
    assert_eq!(
        header(&post, "x-portico-fallback"),
        "default",
        "no stale answer for a POST"
    );
}

#[tokio::test]
async fn an_unreachable_backend_gets_the_default_answer_and_other_statuses_pass() {
    let rule = "        fallback:\n          onStatus: [500]\n          directResponse: { status: 503, body: \"later\" }";
    let proxy = start(&one_route(rule, closed_port().await)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let r = get(addr, "/").await;
    assert_eq!((r.status, r.body.as_str()), (503, "later"));
    assert_eq!(header(&r, "x-portico-fallback"), "default");
    assert_eq!(
        r.error(),
        "",
        "the fallback's answer, not the proxy's error"
    );

    let app = upstream(handler(|_req: Request<Incoming>| async { status(502) })).await;
    let proxy = start(&one_route(rule, app.addr)).await;
    let r = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!(r.status, 502, "502 is not listed in onStatus");
    assert_eq!(header(&r, "x-portico-fallback"), "");
}
