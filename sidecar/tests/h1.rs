//! The HTTP/1.1 fast path on the wire: raw bytes from real TCP clients, raw bytes from real TCP
//! upstreams (to send exactly the framing under test), the proxy in-process.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_backend(addr: SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: all, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends: [{{ name: app, protocol: http1, endpoints: [{{ address: "{addr}" }}] }}]
"#
    )
}

/// Writes `bytes` on a new connection and reads until the proxy closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    read_to_close(&mut conn).await
}

async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    // Longer than the proxy's header read timeout, which a test runs into on paused time.
    tokio::time::timeout(Duration::from_secs(60), conn.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `conn` until `out` contains `marker`.
async fn read_until(conn: &mut TcpStream, marker: &str) -> String {
    let mut out = Vec::new();
    while find_bytes(&out, marker.as_bytes()).is_none() {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before {marker:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = raw_upstream(|head, _| Some(ok(target(head)))).await;
    let proxy = start(&one_backend(up.addr)).await;
    let reply = exchange(
        proxy.listener_addr("web").unwrap(),
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (a, b, c) = (reply.find("/a"), reply.find("/b"), reply.find("/c"));
    assert!(a < b && b < c && a.is_some(), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    assert!(reply.ends_with("/c"), "the last one closes: {reply}");
    assert!(reply.contains("connection: close"), "{reply}");
}

#[tokio::test]
async fn chunked_responses_pass_through_unchanged_and_the_connection_is_reused() {
    let chunks = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
    let up = raw_upstream(move |_, _| {
        Some(format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{chunks}").into_bytes())
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut conn, "x-trailer: t\r\n\r\n").await;
    assert!(first.contains("transfer-encoding: chunked\r\n"), "{first}");
    assert!(first.ends_with(chunks), "{first}");
    conn.write_all(b"GET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let second = read_to_close(&mut conn).await;
    assert!(second.ends_with(chunks), "{second}");
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for both"
    );
    // A plain client reads the body as one.
    let reply = get(addr, "/3").await;
    assert_eq!(reply.body, "hello world");
}

#[tokio::test]
async fn a_response_delimited_by_close_closes_the_client_connection() {
    let up = raw_upstream(|_, _| {
        Some(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nuntil the end<close>".to_vec())
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    // No `connection: close` from the client: the proxy closes because the body ended so.
    let reply = exchange(
        proxy.listener_addr("web").unwrap(),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nuntil the end"), "{reply}");
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body_and_the_connection_goes_on() {
    let up = raw_upstream(|head, _| {
        Some(match target(head) {
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n".to_vec(),
            // A HEAD answer announces the length of the body it does not send.
            _ if head.starts_with("HEAD") => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec()
            }
            _ => ok("after"),
        })
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    let reply = exchange(
        proxy.listener_addr("web").unwrap(),
        b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET /204 HTTP/1.1\r\nhost: x\r\n\r\nGET /304 HTTP/1.1\r\nhost: x\r\n\r\nGET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.contains("content-length: 100\r\n"), "{reply}");
    assert!(reply.contains("HTTP/1.1 204 No Content\r\n"), "{reply}");
    assert!(reply.contains("HTTP/1.1 304 Not Modified\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nafter"), "{reply}");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "{reply}");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_drops_is_replaced_for_safe_methods_only() {
    // Each upstream connection answers one request, then closes when the next one arrives on
    // it, without answering: the race of a keep-alive connection closed as it is reused.
    let up = raw_upstream(|head, n| (n == 0).then(|| ok(target(head)))).await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/first").await.body, "/first");
    let reply = get(addr, "/again").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "/again"),
        "GET is sent again"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    let post = exchange(
        addr,
        b"POST /order HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await;
    assert!(
        post.starts_with("HTTP/1.1 502"),
        "POST may have been processed: {post}"
    );
    assert!(post.contains("x-portico-error: upstream_reset"), "{post}");
}

#[tokio::test]
async fn interim_responses_are_dropped_and_the_final_one_relayed() {
    let up = raw_upstream(|_, _| {
        let mut r = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n".to_vec();
        r.extend(ok("final"));
        Some(r)
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    let reply = get(proxy.listener_addr("web").unwrap(), "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "final"));
}

#[tokio::test]
async fn a_request_split_across_packets_is_put_back_together() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    let mut conn = TcpStream::connect(proxy.listener_addr("web").unwrap())
        .await
        .unwrap();
    for part in [
        &b"POST /split HT"[..],
        b"TP/1.1\r\nhost: x\r\ncontent-",
        b"length: 11\r\nconnection: close\r\n\r\nhello",
        b" world",
    ] {
        conn.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = read_to_close(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains(r#""body":"hello world""#), "{reply}");
    assert!(reply.contains(r#""path":"/split""#), "{reply}");
}

#[tokio::test]
async fn what_the_fast_path_leaves_to_hyper_still_works_on_the_same_connection() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    // A fast request, then a chunked body (streamed by hyper), then a plain request again.
    let reply = exchange(
        addr,
        b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\nPOST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    assert!(reply.contains(r#""body":"abc""#), "{reply}");
    assert!(reply.contains(r#""path":"/after""#), "{reply}");
    // Expect: 100-continue gets its interim answer from hyper.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PUT /e HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut conn, "100 Continue").await;
    conn.write_all(b"ok").await.unwrap();
    let reply = read_to_close(&mut conn).await;
    assert!(reply.contains(r#""body":"ok""#), "{reply}");
    // HTTP/1.0 closes after its response.
    let reply = exchange(addr, b"GET /old HTTP/1.0\r\nhost: x\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.0 200 OK") || reply.starts_with("HTTP/1.1 200 OK"),
        "{reply}"
    );
    assert!(reply.contains(r#""path":"/old""#), "{reply}");
}

#[tokio::test]
async fn bad_requests_get_4xx_naming_the_problem_and_the_proxy_stays_up() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", "HTTP/1.1 400"),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", "HTTP/1.1 400"),
        (
            format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(70_000))
                .into_bytes()
                .leak(),
            "HTTP/1.1 431",
        ),
        // More header fields than the proxy reads (100): 431 as well, not a parse error.
        (
            format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n")
                .into_bytes()
                .leak(),
            "HTTP/1.1 431",
        ),
    ];
    for (bytes, status) in cases {
        let reply = exchange(addr, bytes).await;
        assert!(reply.starts_with(status), "{status}: {reply}");
        assert!(reply.contains("x-portico-error: bad_request"), "{reply}");
    }
    assert_eq!(get(addr, "/still-up").await.status, 200);
    assert_eq!(up.hits(), 1, "no bad request reached the upstream");
}

#[tokio::test]
async fn a_broken_upstream_response_is_502_and_a_truncated_body_ends_the_connection() {
    let up = raw_upstream(|head, _| {
        Some(match target(head) {
            "/garbage" => b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
            // Promises 10 bytes, sends 4, and closes.
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshor<close>".to_vec(),
        })
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let reply = get(addr, "/garbage").await;
    assert_eq!((reply.status, reply.error()), (502, "bad_response"));
    assert!(reply.body.contains("cannot relay"), "{}", reply.body);
    // The client must see its connection end instead of a short body that looks whole (without
    // `connection: close` from the client, only the truncation closes it).
    let seen = exchange(addr, b"GET /short HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(seen.contains("content-length: 10\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n\r\nshor"), "{seen}");
}

#[tokio::test]
async fn a_response_with_too_many_header_fields_is_a_502_that_says_so_on_both_paths() {
    let fields: String = (0..150).map(|i| format!("x-field-{i}: v\r\n")).collect();
    let up = raw_upstream(move |_, _| {
        Some(format!("HTTP/1.1 200 OK\r\n{fields}content-length: 2\r\n\r\nok").into_bytes())
    })
    .await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    // The fast path (a plain GET) and hyper's (a chunked request body goes there).
    let fast = get(addr, "/many").await;
    let chunked = exchange(
        addr,
        b"POST /many HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((fast.status, fast.error()), (502, "bad_response"));
    assert!(
        fast.body.contains("at most 100 header fields"),
        "{}",
        fast.body
    );
    assert!(chunked.starts_with("HTTP/1.1 502"), "{chunked}");
    assert!(
        chunked.contains("x-portico-error: bad_response"),
        "{chunked}"
    );
    assert!(chunked.contains("at most 100 header fields"), "{chunked}");
    assert_eq!(
        get(addr, "/still-up").await.status,
        502,
        "the proxy stays up"
    );
}

#[tokio::test]
async fn forwarded_requests_carry_the_filtered_head() {
    let up = raw_upstream(|_, _| Some(ok("x"))).await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: all
    rules:
      - filters:
          - {{ type: RequestHeaderModifier, set: [{{ name: x-set, value: "1" }}], remove: [x-drop] }}
          - {{ type: UrlRewrite, hostname: internal, path: {{ type: ReplaceFullPath, value: /new }} }}
          - {{ type: ResponseHeaderModifier, add: [{{ name: x-resp, value: "r" }}] }}
        backends: [{{ backend: app }}]
backends: [{{ name: app, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let reply = exchange(
        proxy.listener_addr("web").unwrap(),
        b"GET /old?q=1 HTTP/1.1\r\nhost: public\r\nx-drop: 1\r\nconnection: close, x-hop\r\nx-hop: 1\r\n\r\n",
    )
    .await;
    assert!(reply.contains("x-resp: r\r\n"), "{reply}");
    assert!(
        reply.contains("date: "),
        "a Date is added when the upstream sent none: {reply}"
    );
    let head = up.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /new?q=1 HTTP/1.1\r\n"), "{head}");
    for want in [
        "host: internal\r\n",
        "x-set: 1\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
    ] {
        assert!(head.contains(want), "{want:?} in {head}");
    }
    for gone in ["x-drop", "x-hop", "connection"] {
        assert!(!head.contains(gone), "{gone:?} in {head}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_head_that_never_ends_gets_408() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    // Paused time: while the proxy waits for the rest of the head, the clock jumps to the
    // header read timeout.
    let reply = exchange(
        proxy.listener_addr("web").unwrap(),
        b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_sends_a_byte_is_closed_but_a_kept_alive_one_may_idle() {
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    // Paused time: while the proxy waits for a first byte, the clock jumps to its deadline.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(120), silent.read(&mut byte))
        .await
        .expect("the proxy closes a connection that never sends a byte")
        .unwrap_or(0);
    assert_eq!(n, 0, "the silent connection is closed");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(59)..Duration::from_secs(65)).contains(&waited),
        "closed after {waited:?}, not the 60 s first-byte timeout"
    );
    // After one request, the connection may stay idle far longer and still be served.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n";
    kept.write_all(request).await.unwrap();
    let first = read_until(&mut kept, "\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    kept.write_all(b"GET /two HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let second = read_to_close(&mut kept).await;
    assert!(second.contains("HTTP/1.1 200"), "{second}");
    assert_eq!(up.hits(), 2);
}

/// Mutated requests (bytes flipped to the characters HTTP framing hinges on, deleted, inserted,
/// lines doubled, cut short) from valid ones with every kind of framing: each gets answers or a
/// close and never a hang, a 200 from the upstream or a 400 from the proxy; every upstream
/// answer reaches the client whose request it was (an upstream connection that a mutated
/// request desynchronised would hand a later client a stale answer); and the proxy still
/// serves afterwards. The seed is fixed, so a failure repeats.
#[tokio::test]
async fn mutated_requests_never_hang_the_proxy_or_desynchronise_an_upstream() {
    use rand::{Rng, SeedableRng};
    let up = echo("a").await;
    let proxy = start(&one_backend(up.addr)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let templates = [
        "GET /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\n\r\n",
        "POST /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\ncontent-length: 5\r\n\r\nhello",
        "POST /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\n\r\nGET /@/2 HTTP/1.1\r\nhost: x\r\nx-id: @\r\n\r\n",
        "POST /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /@ HTTP/1.1\r\nhost: x\r\nx-id: @\r\nconnection: close\r\n\r\n",
    ];
    let alphabet = b"\r\n :\0\t09a-,;\x7f\x80\xff";
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0003);
    let (mut answers, mut bad_bodies) = (0, 0);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for case in 0..600 {
        let token = format!("t{case:04}x");
        let template = templates[case % templates.len()];
        let mut bytes = template.replace('@', &token).into_bytes();
        for _ in 0..rng.random_range(1..=3) {
            if bytes.len() < 2 {
                break;
            }
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..5) {
                0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                3 => {
                    // Double the line around `at`.
                    let start = bytes[..at]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    let end = bytes[at..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |i| at + i + 1);
                    let line = bytes[start..end].to_vec();
                    bytes.splice(start..start, line);
                }
                _ => bytes.truncate(at.max(1)),
            }
        }
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        // The whole request is sent: a proxy waiting for more sees the end instead.
        conn.shutdown().await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("case {case} hung: {:?}", String::from_utf8_lossy(&bytes)))
            .ok();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let shown = || {
            format!(
                "case {case}: {:?} → {reply:?}",
                String::from_utf8_lossy(&bytes)
            )
        };
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 "),
            "{}",
            shown()
        );
        for status in reply.split("HTTP/1.1 ").skip(1) {
            *statuses
                .entry(status.chars().take(3).collect())
                .or_default() += 1;
        }
        let echoed = reply.matches(r#""path":""#).count();
        answers += echoed;
        // A malformed chunked body is found while it streams: its head may have reached the
        // upstream, whose answer is then dropped with the connection.
        bad_bodies += reply.matches("bad request: request body:").count();
        // Mutations may have destroyed the token; where it survived, the answers carry it.
        if echoed > 0 && bytes.windows(token.len()).any(|w| w == token.as_bytes()) {
            assert!(
                reply.contains(&token),
                "another request's answer: {}",
                shown()
            );
        }
    }
    eprintln!("statuses: {statuses:?}; upstream answers relayed: {answers}");
    // Every request the upstream answered was answered to its client, but for those whose body
    // turned out malformed (400). Only 200 (the upstream) or 400: nothing here is the
    // upstream's fault (no 5xx), and the route takes every path, so a 404 would be a malformed
    // target (or Host) routed as if valid.
    let hits = up.hits();
    assert!(
        answers <= hits && hits <= answers + bad_bodies,
        "upstream saw {hits}, clients got {answers} answers and {bad_bodies} bad-body 400s; {statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| s == "200" || s == "400"),
        "{statuses:?}"
    );
    let reply = exchange(
        addr,
        b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A malformed chunked body (found while it streams, on hyper's side of the hand-off) is the
/// client's fault: 400 naming the problem, and nothing held against the endpoint (ejected after
/// one failure, it would otherwise stop serving). A client that shuts its sending side once a
/// chunked request is out still gets its answer.
#[tokio::test]
async fn a_bad_chunked_body_is_400_and_not_held_against_the_endpoint() {
    let up = echo("a").await;
    let proxy = start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: all, rules: [{{ backends: [{{ backend: app }}] }}] }}]
backends:
  - name: app
    protocol: http1
    outlierDetection: {{ consecutiveFailures: 1, baseEjectionTime: 60s }}
    endpoints: [{{ address: "{}" }}]
"#,
        up.addr
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let bad =
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n";
    for _ in 0..3 {
        let reply = exchange(addr, bad).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("request body: "), "{reply}");
    }
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
    let reply = read_to_close(&mut conn).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""body":"hello""#), "{reply}");
    let metrics = proxy.metrics_text();
    assert!(
        !metrics.contains("portico_outlier_ejections_total{backend=\"app\"} 1"),
        "{metrics}"
    );
}

/// `Expect: 100-continue` is the upstream's to answer: the client hears `100 Continue` only
/// after the upstream said it (not at once from the proxy), a final answer without it reaches the
/// client without its body ever being asked for (and that body never reaches the upstream), and
/// an upstream that ignores `Expect` gets the body after a second, as clients do themselves.
#[tokio::test]
async fn expect_100_continue_is_decided_by_the_upstream() {
    let (up, stray) = expect_upstream().await;
    let proxy = start(&one_backend(up)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
        )
    };

    let mut conn = TcpStream::connect(addr).await.unwrap();
    let start = tokio::time::Instant::now();
    conn.write_all(head("/continue").as_bytes()).await.unwrap();
    let mut text = String::new();
    read_into_until(&mut conn, &mut text, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{text}");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "100 came after {:?}, before the upstream said it",
        start.elapsed()
    );
    conn.write_all(b"hello").await.unwrap();
    read_into_until(&mut conn, &mut text, "read 5").await;
    assert!(
        text.contains("HTTP/1.1 200 OK") && text.ends_with("read 5"),
        "{text}"
    );
    // The connection carries the next request.
    conn.write_all(b"GET /next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_to_close(&mut conn).await;
    assert!(rest.starts_with("HTTP/1.1 "), "{rest}");

    // A body too big to keep (100 KB) streams through behind the same gate.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let big = head("/continue").replace("content-length: 5", "content-length: 100000");
    conn.write_all(big.as_bytes()).await.unwrap();
    let mut text = String::new();
    read_into_until(&mut conn, &mut text, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{text}");
    conn.write_all(&vec![b'b'; 100_000]).await.unwrap();
    read_into_until(&mut conn, &mut text, "read 100000").await;
    assert!(text.ends_with("read 100000"), "{text}");

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head("/refuse").as_bytes()).await.unwrap();
    let text = read_to_close(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 417"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stray.load(Ordering::SeqCst), 0, "no body went upstream");

    let mut conn = TcpStream::connect(addr).await.unwrap();
    let start = tokio::time::Instant::now();
    conn.write_all(head("/silent").as_bytes()).await.unwrap();
    let mut text = String::new();
    read_into_until(&mut conn, &mut text, "100 Continue\r\n\r\n").await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    conn.write_all(b"hello").await.unwrap();
    read_into_until(&mut conn, &mut text, "read 5").await;
    assert!(text.ends_with("read 5"), "{text}");
}

/// The fields of an upstream request head (request line left out), by lowercased name with
/// their values in order; the values the proxy makes at random are replaced by what they are.
fn upstream_fields(head: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut fields = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("a field line");
        let name = name.to_ascii_lowercase();
        let mut value = value.trim().to_owned();
        if name == "x-via-map" {
            continue;
        }
        let b = value.as_bytes();
        if name == "x-request-id" && b.len() == 36 && b[8] == b'-' && b[14] == b'4' {
            value = "<new uuid>".into();
        }
        if name == "traceparent" {
            let parts: Vec<&str> = value.split('-').collect();
            assert_eq!(parts.len(), 4, "{value}");
            let trace = if parts[1] == CLIENT_TRACE {
                parts[1]
            } else {
                "<new>"
            };
            value = format!("{}-{trace}-<span>-{}", parts[0], parts[3]);
        }
        fields.entry(name).or_default().push(value);
    }
    fields
}

/// A request whose rule only forwards it goes upstream from the bytes it came in (no header
/// map: `wire::raw`); one whose rule edits headers gets its map after routing; one routed by a
/// table that matches on headers gets it before. All three must carry the same fields: the
/// client's, less the hop-by-hop ones, with the request ID, trace context and `X-Forwarded-*`
/// set by the same rules.
#[tokio::test]
async fn requests_forwarded_as_they_came_carry_the_same_fields_as_through_the_header_map() {
    let up = raw_upstream(|_, _| Some(ok("x"))).await;
    let config = |header_match: &str| {
        format!(
            r#"
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes:
  - name: all
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /as-is }} }}]
        backends: [{{ backend: app }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /map }} }}]
        filters: [{{ type: RequestHeaderModifier, set: [{{ name: x-via-map, value: "1" }}] }}]
        backends: [{{ backend: app }}]
{header_match}
backends: [{{ name: app, protocol: http1, endpoints: [{{ address: "{}" }}] }}]
"#,
            up.addr
        )
    };
    let proxy = start(&config("")).await;
    // A rule matching on a header: every request of this table is routed with its map.
    let routed_by_map = start(&config(
        "      - matches: [{ path: { type: PathPrefix, value: /other }, headers: [{ name: x-never, value: \"1\" }] }]\n        backends: [{ backend: app }]",
    ))
    .await;
    let addr = proxy.listener_addr("web").unwrap();
    let map_addr = routed_by_map.listener_addr("web").unwrap();
    let variants: [&[u8]; 9] = [
        b"GET {P} HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-123\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
          tracestate: v=1\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n\
          Connection: keep-alive, close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\ntraceparent: garbage\r\n\
          tracestate: v=1\r\nConnection: close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-For: 10.0.0.2\r\nConnection: close\r\n\r\n",
        b"POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET http://a{P}/x?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\nConnection: close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-S:v\r\nX-T:   w  \r\nX-E:\r\nConnection: close\r\n\r\n",
        b"GET {P} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: caf\xe9\r\nConnection: close\r\n\r\n",
    ];
    for (i, variant) in variants.iter().enumerate() {
        let mut heads = Vec::new();
        for (to, path) in [(addr, "/as-is"), (addr, "/map"), (map_addr, "/as-is")] {
            let text = String::from_utf8_lossy(variant).replace("{P}", path);
            // Back to bytes as sent (the one non-UTF-8 byte stays one byte).
            let bytes: Vec<u8> = text
                .chars()
                .map(|c| if c == '\u{fffd}' { 0xe9 } else { c as u8 })
                .collect();
            let reply = exchange(to, &bytes).await;
            assert!(
                reply.starts_with("HTTP/1.1 200"),
                "variant {i} {path}: {reply}"
            );
            heads.push(up.heads.lock().unwrap().last().unwrap().clone());
        }
        for other in &heads[1..] {
            assert_eq!(
                upstream_fields(&heads[0]),
                upstream_fields(other),
                "variant {i}:\n{}\n{other}",
                heads[0],
            );
        }
    }
    // The first went as it came: field names keep their case (a header map lowercases them).
    let heads = up.heads.lock().unwrap();
    assert!(heads[0].contains("\r\nUser-Agent: t\r\n"), "{}", heads[0]);
    assert!(heads[1].contains("\r\nuser-agent: t\r\n"), "{}", heads[1]);
    assert!(heads[2].contains("\r\nuser-agent: t\r\n"), "{}", heads[2]);
}
