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

#[tokio::test]
async fn a_body_over_max_body_bytes_reaches_the_client_whole_and_is_not_stored() {
    // `/chunked` streams its body in two frames with no length; others declare it.
    let app = upstream(handler(|req: Request<Incoming>| async move {
        let body = "x".repeat(100);
        if req.uri().path() == "/chunked" {
            let frames = futures_util::stream::iter(
                [body[..50].to_owned(), body[50..].to_owned()].map(|s| {
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(s)))
                }),
            );
            return http::Response::new(http_body_util::BodyExt::boxed_unsync(
                http_body_util::BodyExt::map_err(
                    http_body_util::StreamBody::new(frames),
                    |never| match never {},
                ),
            ));
        }
        http::Response::new(full(body))
    }))
    .await;
    let proxy = start(&one_route(
        "        cache: { ttl: 60s, maxBodyBytes: 64 }",
        app.addr,
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for path in ["/declared", "/chunked"] {
        for _ in 0..2 {
            let r = get(addr, path).await;
            assert_eq!(r.body.len(), 100, "{path}: the whole body");
            assert_eq!(
                header(&r, "x-portico-cache"),
                "miss",
                "{path}: never stored"
            );
        }
    }
    assert_eq!(app.hits(), 4);
}

#[tokio::test]
async fn vary_headers_keep_one_answer_per_value() {
    let app = upstream(handler(|req: Request<Incoming>| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        let mut resp = http::Response::new(full(lang));
        resp.headers_mut()
            .insert("vary", http::HeaderValue::from_static("accept-language"));
        resp
    }))
    .await;
    let proxy = start(&one_route(
        "        cache: { ttl: 60s, varyHeaders: [accept-language] }",
        app.addr,
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for lang in ["en", "fr", "en", "fr"] {
        let r = get_with(addr, "GET", "/", &[("accept-language", lang)]).await;
        assert_eq!(r.body, lang);
    }
    assert_eq!(app.hits(), 2, "one upstream request per language");

    // Without the header in varyHeaders, an answer that varies by it is not stored.
    let proxy = start(&one_route("        cache: { ttl: 60s }", app.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    get_with(addr, "GET", "/", &[("accept-language", "en")]).await;
    let fr = get_with(addr, "GET", "/", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr");
    assert_eq!(app.hits(), 4);
}

/// A rule served on hyper's path (its cache needs it) runs its request stages once for an
/// HTTP/1.1 request, not once on the fast path and again after the hand-off: a limit of three
/// lets three requests through, then answers 429.
#[tokio::test]
async fn a_cached_rule_s_rate_limit_counts_each_http1_request_once() {
    let app = switchable(Arc::new(AtomicBool::new(false))).await;
    let proxy = start(&one_route(
        "        cache: { ttl: 60s }\n        rateLimit: { requests: 3, period: 1h, burst: 3, key: { type: Global } }",
        app.addr,
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    for i in 0..3 {
        let r = get_with(addr, "GET", &format!("/p{i}"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let limited = get_with(addr, "GET", "/p9", &[]).await;
    assert_eq!(limited.status, 429, "{limited:?}");
}
