//! Aggregate rules end to end: real JSON upstreams on loopback, the proxy in-process, clients
//! on both request paths (HTTP/1.1: the fast path; h2c: hyper's).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use hyper::body::Incoming;
use portico_proxy::Proxy;
use portico_proxy::error::full;
use serde_json::{Value, json};

/// An upstream answering every request with `body`.
async fn json_upstream(body: &'static str) -> Upstream {
    upstream(handler(move |_req: Request<Incoming>| async move {
        http::Response::new(full(body))
    }))
    .await
}

/// An upstream that takes its requests and never answers.
async fn silent_upstream() -> Upstream {
    upstream(handler(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await;
        status(200)
    }))
    .await
}

/// A proxy with one route, host `api.example.com`, whose only rule aggregates `backends`
/// (flow-style YAML) over backends `a`, `b`, `c` at `addrs`.
async fn proxy(backends: &str, timeout: &str, addrs: [SocketAddr; 3]) -> Proxy {
    let [a, b, c] = addrs;
    start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: r, hostnames: [api.example.com], rules: [{{ aggregate: {{ timeout: {timeout}, backends: {backends} }} }}] }}]
backends:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
  - {{ name: c, endpoints: [{{ address: "{c}" }}] }}
"#
    ))
    .await
}

/// GET (or another method) `path` on `api.example.com`, over HTTP/1.1 or h2c.
async fn call(proxy: &Proxy, method: &str, path: &str, h2: bool) -> Reply {
    let addr = proxy.listener_addr("web").expect("listener");
    let req = request(method, "api.example.com", path)
        .header("accept-encoding", "gzip")
        .header("if-none-match", "\"v1\"")
        .body(full(""))
        .expect("request");
    read(send(addr, req, h2).await).await
}

fn header<'r>(r: &'r Reply, name: &str) -> &'r str {
    r.headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

/// Top-level backends merge their fields in the rule's order (a later one's field wins); a
/// keyed backend's object goes under its key; each backend gets its own path (else the
/// request's) with the request's query, the request's forwarding headers, and no
/// `accept-encoding` or conditional headers (it must answer whole and plain). Both paths.
#[tokio::test]
async fn backends_merge_at_the_top_level_in_order_and_under_their_keys() {
    let a = json_upstream(r#"{"server": "a", "shared": "from a", "onlyA": 1}"#).await;
    let b = json_upstream(r#"{"shared": "from b", "onlyB": [1, 2]}"#).await;
    let c = echo("c").await;
    let p = proxy(
        r#"[{ backend: a }, { backend: b }, { backend: c, key: request, path: /v1/echo }]"#,
        "2s",
        [a.addr, b.addr, c.addr],
    )
    .await;
    for h2 in [false, true] {
        let r = call(&p, "GET", "/summary?user=7", h2).await;
        assert_eq!(r.status, 200, "h2 {h2}: {r:?}");
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(header(&r, "x-portico-aggregate"), "", "complete");
        let v = r.json();
        assert_eq!(v["server"], "a");
        assert_eq!(v["shared"], "from b", "the later backend's field wins");
        assert_eq!((&v["onlyA"], &v["onlyB"]), (&json!(1), &json!([1, 2])));
        let seen = &v["request"];
        assert_eq!(seen["server"], "c", "keyed: {v}");
        assert_eq!(
            (&seen["method"], &seen["path"]),
            (&json!("GET"), &json!("/v1/echo"))
        );
        assert_eq!(seen["query"], "user=7");
        let headers = &seen["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert!(headers["x-request-id"].is_string(), "{headers}");
        assert!(headers["traceparent"].is_string(), "{headers}");
        assert_eq!(headers["accept-encoding"], "identity");
        assert_eq!(headers["if-none-match"], Value::Null);
    }
    // Without a path of its own, a backend gets the request's.
    let p = proxy(r#"[{ backend: c }]"#, "2s", [a.addr, b.addr, c.addr]).await;
    let r = call(&p, "GET", "/own/path?q=1", false).await;
    assert_eq!(
        (&r.json()["path"], &r.json()["query"]),
        (&json!("/own/path"), &json!("q=1"))
    );
}

/// A backend that cannot be reached, one that does not answer within the timeout and one that
/// answers with something other than a JSON object are left out: the others' data is answered
/// with `x-portico-aggregate: incomplete` and the failed ones named by key or position.
#[tokio::test]
async fn failing_and_slow_backends_are_left_out_and_the_answer_is_marked_incomplete() {
    let a = json_upstream(r#"{"a": 1}"#).await;
    let slow = silent_upstream().await;
    let closed = closed_port().await;
    let p = proxy(
        r#"[{ backend: a }, { backend: b, key: slow }, { backend: c }]"#,
        "300ms",
        [a.addr, slow.addr, closed],
    )
    .await;
    for h2 in [false, true] {
        let started = Instant::now();
        let r = call(&p, "GET", "/", h2).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "h2 {h2}: {r:?}");
        assert_eq!(r.json(), json!({"a": 1}));
        assert_eq!(header(&r, "x-portico-aggregate"), "incomplete");
        assert_eq!(header(&r, "x-portico-aggregate-failed"), "slow, 3");
        assert!(
            (Duration::from_millis(250)..Duration::from_secs(2)).contains(&took),
            "the slow backend is waited for until its timeout only: {took:?}"
        );
    }
    let text = json_upstream("[1, 2, 3]").await;
    let p = proxy(
        r#"[{ backend: a, key: first }, { backend: b, key: list }]"#,
        "1s",
        [a.addr, text.addr, closed],
    )
    .await;
    let r = call(&p, "GET", "/", false).await;
    assert_eq!(r.json(), json!({"first": {"a": 1}}));
    assert_eq!(header(&r, "x-portico-aggregate-failed"), "list");
}

/// When every backend fails there is nothing to answer with: 502 `aggregate_failed`.
#[tokio::test]
async fn every_backend_failing_answers_502() {
    let closed = closed_port().await;
    let not_json = json_upstream("<html>").await;
    let p = proxy(
        r#"[{ backend: a }, { backend: b }]"#,
        "1s",
        [closed, not_json.addr, closed],
    )
    .await;
    for h2 in [false, true] {
        let r = call(&p, "GET", "/", h2).await;
        assert_eq!((r.status, r.error()), (502, "aggregate_failed"), "h2 {h2}");
    }
}

/// An aggregate rule answers GET and HEAD (HEAD: a GET's headers, no body); other methods get
/// 405 with `allow: GET, HEAD`, and no backend is asked.
#[tokio::test]
async fn only_get_and_head_are_aggregated() {
    let a = json_upstream(r#"{"a": 1}"#).await;
    let p = proxy(r#"[{ backend: a }]"#, "1s", [a.addr, a.addr, a.addr]).await;
    for h2 in [false, true] {
        let head = call(&p, "HEAD", "/", h2).await;
        assert_eq!(head.status, 200, "h2 {h2}");
        assert_eq!(header(&head, "content-type"), "application/json");
        assert!(head.body.is_empty());
        assert_eq!(
            header(&head, "content-length"),
            "7",
            "the length of a GET's answer"
        );
        let before = a.hits();
        let post = call(&p, "POST", "/", h2).await;
        assert_eq!((post.status, post.error()), (405, "method_not_allowed"));
        assert_eq!(header(&post, "allow"), "GET, HEAD");
        assert_eq!(a.hits(), before, "a refused method asks no backend");
    }
}
