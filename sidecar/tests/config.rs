//! Config apply and reload, the admin server, graceful drain, and the real binary.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use portico_proxy::ApplyError;

fn to(name: &str, addr: SocketAddr, generation: u64) -> String {
    format!(
        r#"
generation: {generation}
listeners: [{{ name: web, address: "127.0.0.1:0", protocol: HTTP }}]
routes: [{{ name: r, rules: [{{ name: main, backends: [{{ backend: {name} }}] }}] }}]
backends: [{{ name: {name}, endpoints: [{{ address: "{addr}" }}] }}]
"#
    )
}

#[tokio::test]
async fn bad_config_is_refused_and_old_one_keeps_serving() {
    let a = echo("a").await;
    let proxy = start(&to("a", a.addr, 1)).await;
    let addr = proxy.listener_addr("web").unwrap();

    let mut bad = config(&to("a", a.addr, 2));
    bad.routes[0].rules[0].backends[0].backend = "pay".into();
    let err = proxy.apply(bad).await.unwrap_err();
    assert!(matches!(err, ApplyError::Invalid(_)));
    assert_eq!(
        err.to_string(),
        r#"invalid config: route "r" rule 1: backend "pay" is not defined"#
    );

    assert_eq!(get(addr, "/").await.server(), "a");
    assert_eq!(proxy.config().generation, 1);
    let m = proxy.metrics_text();
    assert!(
        m.contains(r#"portico_config_reloads_total{result="error"} 1"#),
        "{m}"
    );
    assert!(m.contains("portico_config_version 1"), "{m}");
}

#[tokio::test]
async fn unusable_certificate_is_refused_naming_the_listener() {
    let a = echo("a").await;
    let proxy = start(&to("a", a.addr, 1)).await;
    let mut bad = config(&to("a", a.addr, 2));
    bad.listeners.push(config(
        r#"
listeners:
  - { name: secure, address: "127.0.0.1:0", protocol: HTTPS, tls: { cert: { file: /nonexistent.pem }, key: { inline: "x" } } }
"#,
    )
    .listeners
    .remove(0));
    let err = proxy.apply(bad).await.unwrap_err().to_string();
    assert!(
        err.starts_with(r#"listener "secure": tls: reading /nonexistent.pem"#),
        "{err}"
    );
    assert_eq!(
        get(proxy.listener_addr("web").unwrap(), "/").await.status,
        200
    );
}

#[tokio::test]
async fn config_swap_keeps_in_flight_requests() {
    let Gated {
        upstream: old,
        mut entered,
        release,
    } = gated_upstream().await;
    let new = echo("new").await;
    let proxy = start(&to("old", old.addr, 1)).await;
    let addr = proxy.listener_addr("web").unwrap();

    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    entered.recv().await.unwrap();
    proxy.apply(config(&to("new", new.addr, 2))).await.unwrap();
    assert_eq!(
        proxy.listener_addr("web"),
        Some(addr),
        "the listener was kept"
    );
    assert_eq!(get(addr, "/").await.server(), "new");

    release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "status 200"));
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_reload() {
    let a = echo("a").await;
    let proxy = start(&to("a", a.addr, 1)).await;
    let mut two = config(&to("a", a.addr, 2));
    let mut extra = two.listeners[0].clone();
    extra.name = "second".into();
    two.listeners.push(extra);
    proxy.apply(two).await.unwrap();
    let second = proxy.listener_addr("second").unwrap();
    assert_eq!(get(second, "/").await.server(), "a");

    proxy.apply(config(&to("a", a.addr, 3))).await.unwrap();
    assert_eq!(proxy.listener_addr("second"), None);
    let refused = tokio::net::TcpStream::connect(second).await;
    assert!(refused.is_err(), "the removed listener no longer accepts");
}

/// Two listeners at fixed addresses (`listeners`: name and port), each routed to its own
/// backend by listener name.
fn named(generation: u64, listeners: [(&str, u16); 2], a: SocketAddr, b: SocketAddr) -> String {
    let [(one, p1), (two, p2)] = listeners;
    format!(
        r#"
generation: {generation}
listeners:
  - {{ name: {one}, address: "127.0.0.1:{p1}", protocol: HTTP }}
  - {{ name: {two}, address: "127.0.0.1:{p2}", protocol: HTTP }}
routes:
  - {{ name: to-a, listeners: [{one}], rules: [{{ backends: [{{ backend: a }}] }}] }}
  - {{ name: to-b, listeners: [{two}], rules: [{{ backends: [{{ backend: b }}] }}] }}
backends:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
"#
    )
}

/// One request on a new connection: the answering server's name, or what went wrong.
async fn served_by(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text.into_owned());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{e}: {text}"))?;
    Ok(json["server"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn listeners_renamed_or_swapping_addresses_take_over_their_sockets_under_load() {
    let (a, b) = (echo("a").await, echo("b").await);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (s1, s2) = (free(), free());
    let (p1, p2) = (
        s1.local_addr().unwrap().port(),
        s2.local_addr().unwrap().port(),
    );
    drop((s1, s2));
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let proxy = start(&named(1, [("one", p1), ("two", p2)], a.addr, b.addr)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |port: u16| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match served_by(addr(port)).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let loads = [load(p1), load(p2)];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // (what, the listeners, who answers on p1 and on p2 afterwards)
    let steps = [
        (
            "a rename, same address",
            [("uno", p1), ("two", p2)],
            ["a", "b"],
        ),
        (
            "two listeners swap addresses",
            [("uno", p2), ("two", p1)],
            ["b", "a"],
        ),
        (
            "a swap back and a rename",
            [("uno", p1), ("dos", p2)],
            ["a", "b"],
        ),
    ];
    for (generation, (what, listeners, served)) in (2..).zip(steps) {
        proxy
            .apply(config(&named(generation, listeners, a.addr, b.addr)))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(served_by(addr(p1)).await.unwrap(), served[0], "{what}");
        assert_eq!(served_by(addr(p2)).await.unwrap(), served[1], "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.listener_addr("uno"), Some(addr(p1)));
    assert_eq!(proxy.listener_addr("one"), None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (port, task) in [p1, p2].into_iter().zip(loads) {
        let (ok, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "port {port}: {} failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 10, "port {port}: only {ok} requests");
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    let req = request("GET", "admin", path)
        .body(portico_proxy::error::full(""))
        .unwrap();
    read(send(addr, req, false).await).await
}

#[tokio::test]
async fn admin_serves_live_ready_metrics_and_config() {
    let a = echo("a").await;
    let proxy = start(&to("a", a.addr, 7)).await;
    get(proxy.listener_addr("web").unwrap(), "/").await;
    let admin = proxy.admin_addr().unwrap();
    assert_eq!(admin_get(admin, "/live").await.status, 200);
    assert_eq!(admin_get(admin, "/ready").await.status, 200);
    let m = admin_get(admin, "/metrics").await.body;
    for line in [
        r#"portico_requests_total{route="r",rule="main",backend="a",status_class="2xx"} 1"#,
        r#"portico_request_duration_seconds_count{route="r",rule="main"} 1"#,
        "portico_config_version 7",
        r#"portico_config_reloads_total{result="ok"} 1"#,
        r#"portico_open_connections{listener="web"}"#,
    ] {
        assert!(m.contains(line), "missing {line}:\n{m}");
    }
    let cfg = admin_get(admin, "/config").await.json();
    assert_eq!(cfg["generation"], 7);
    assert_eq!(
        cfg["backends"][0]["endpoints"][0]["address"],
        a.addr.to_string()
    );
    assert_eq!(admin_get(admin, "/nope").await.status, 404);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let Gated {
        upstream: up,
        mut entered,
        release,
    } = gated_upstream().await;
    let proxy = start(&to("a", up.addr, 1)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    entered.recv().await.unwrap();

    let drain = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.shutdown(Duration::from_secs(30)).await }
    });
    // Wait until the proxy no longer reports ready: the listener is closed by then.
    let admin = proxy.admin_addr().unwrap();
    while admin_get(admin, "/ready").await.status == 200 {
        tokio::task::yield_now().await;
    }
    assert!(!drain.is_finished(), "a request is still in flight");
    release.notify_one();
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert!(drain.await.unwrap(), "drained before the deadline");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Idle connections do not hold a shutdown up: one that never sent a request, and a kept-alive
/// one waiting for its next request after one answered (the HTTP/1.1 fast path's idle wait).
#[tokio::test]
async fn shutdown_closes_idle_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let a = echo("a").await;
    let proxy = start(&to("a", a.addr, 1)).await;
    let addr = proxy.listener_addr("web").unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !has_whole_response(&String::from_utf8_lossy(&got)) {
        let mut chunk = [0u8; 4096];
        let n = kept.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    while !proxy
        .metrics_text()
        .contains(r#"portico_open_connections{listener="web"} 2"#)
    {
        tokio::task::yield_now().await;
    }
    assert!(proxy.shutdown(Duration::from_secs(5)).await, "drained");
    for (name, conn) in [("silent", &mut silent), ("kept-alive", &mut kept)] {
        let mut buf = [0u8; 1];
        let n = conn.read(&mut buf).await;
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "the {name} connection was closed"
        );
    }
}

/// Kills the proxy process if the test fails before it is stopped, so no process outlives it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port (bound, then released) for the binary's config file.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn write_config(path: &std::path::Path, listen: SocketAddr, name: &str, backend: SocketAddr) {
    let yaml = to(name, backend, 1).replace("127.0.0.1:0", &listen.to_string());
    write_atomically(path, &yaml);
}

/// Write then rename, as config management tools do, so the proxy never sees half a file.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `f` until it returns true; the binary runs in another process, so there is no
/// in-process signal to wait on.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn try_get(addr: SocketAddr) -> Option<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = request("GET", "example.com", "/")
        .body(portico_proxy::error::full(""))
        .unwrap();
    Some(read(tx.send_request(req).await.ok()?).await)
}

#[tokio::test]
async fn binary_reloads_a_changed_file_refuses_a_bad_one_and_drains_on_sigterm() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let (listen, admin) = (free_port(), free_port());
    write_config(&path, listen, "a", a.addr);
    let child = Command::new(env!("CARGO_BIN_EXE_portico-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--admin-addr", &admin.to_string()])
        .args([
            "--reload-interval",
            "50ms",
            "--workers",
            "1",
            "--access-log",
        ])
        .args(["--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child));

    eventually("ready", async || {
        try_get(admin).await.is_some() && try_get(listen).await.is_some()
    })
    .await;
    assert_eq!(try_get(listen).await.unwrap().server(), "a");

    write_config(&path, listen, "b", b.addr);
    eventually("reload to b", async || {
        try_get(listen).await.is_some_and(|r| r.server() == "b")
    })
    .await;

    write_atomically(
        &path,
        "apiVersion: portico.dev/proxy/v1\nlisteners: [{ name: web }]\n",
    );
    eventually("bad config counted", async || {
        let req = request("GET", "admin", "/metrics")
            .body(portico_proxy::error::full(""))
            .unwrap();
        let m = read(send(admin, req, false).await).await.body;
        m.contains(r#"portico_config_reloads_total{result="error"} 1"#)
    })
    .await;
    assert_eq!(
        try_get(listen).await.unwrap().server(),
        "b",
        "old config still serves"
    );

    let mut child = guard.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        (status, child)
    })
    .await
    .unwrap();
    let (status, mut child) = status;
    assert!(status.success(), "exit status {status}");

    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("config refused"), "{stderr}");
    let access: Vec<serde_json::Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(
        access.iter().any(|e| e["status"] == 200
            && e["route"] == "r"
            && e["rule"] == "main"
            && e["backend"] == "b"
            && e["request_id"].as_str().is_some_and(|id| id.len() == 36)
            && e["trace_id"].as_str().is_some_and(|id| id.len() == 32)),
        "{access:?}"
    );
}

#[test]
fn binary_shows_why_the_listen_port_could_not_be_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    write_config(&path, listen, "a", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_portico-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--admin-addr", &free_port().to_string(), "--workers", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let causes: Vec<&str> = stderr
        .split_once("Caused by:")
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(causes.len(), 1, "one cause, shown once: {stderr}");
    let cause = causes[0];
    assert!(
        cause.contains(&format!(r#"listener "web": cannot bind {listen}"#)),
        "{stderr}"
    );
    assert!(cause.contains("in use"), "the OS reason is shown: {stderr}");
}

#[test]
fn readme_example_config_is_valid() {
    let readme = include_str!("../README.md");
    let start = readme.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let len = readme[start..].find("```").unwrap();
    let cfg = config(&readme[start..start + len]);
    cfg.validate().unwrap();
    assert_eq!(cfg.listeners.len(), 3);
}

/// The sidecar example is a fragment (its services' backends are not shown), so it is parsed
/// (unknown fields are refused) and its listeners and inbound policy are validated on their own.
#[test]
fn readme_sidecar_example_parses_and_its_inbound_policy_is_valid() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .find(|b| b.contains("protocol: OUTBOUND"))
        .expect("a sidecar example");
    let cfg = config(block);
    assert_eq!(cfg.inbound.ports.len(), 2);
    let checked = portico_proxy_api::ProxyConfig {
        listeners: cfg.listeners.clone(),
        inbound: cfg.inbound.clone(),
        ..Default::default()
    };
    checked.validate().unwrap();
}

/// A backend update rebuilds only the backends it names: requests follow the new endpoints at
/// once, the config in force shows them, a bad backend or the removal of one a route still
/// uses is refused (the backends in force keep serving), and an unused backend can go.
#[tokio::test]
async fn a_backend_update_replaces_one_backend_and_a_bad_one_is_refused() {
    use portico_proxy_api::{Backend, BackendUpdate};
    let (a, b) = (echo("a").await, echo("b").await);
    let mut cfg = config(&to("app", a.addr, 1));
    cfg.backends.push(
        serde_yaml::from_str(&format!(
            "{{ name: spare, endpoints: [{{ address: \"{}\" }}] }}",
            b.addr
        ))
        .unwrap(),
    );
    let proxy = portico_proxy::Proxy::start(cfg, portico_proxy::Options::default())
        .await
        .unwrap();
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.server(), "a");

    let backend = |name: &str, up: SocketAddr| -> Backend {
        serde_yaml::from_str(&format!(
            "{{ name: {name}, endpoints: [{{ address: \"{up}\" }}] }}"
        ))
        .unwrap()
    };
    proxy
        .apply_backends(BackendUpdate {
            generation: 2,
            backends: vec![backend("app", b.addr)],
            removed: vec![],
        })
        .await
        .unwrap();
    assert_eq!(get(addr, "/").await.server(), "b");
    let now = proxy.config();
    assert_eq!(now.generation, 2);
    assert_eq!(
        now.backend("app").unwrap().endpoints[0].address,
        b.addr.to_string()
    );
    assert!(now.backend("spare").is_some(), "the other backend stays");

    let mut bad = backend("app", a.addr);
    bad.endpoints[0].address = "not-an-address".into();
    let err = proxy
        .apply_backends(BackendUpdate {
            generation: 3,
            backends: vec![bad],
            removed: vec![],
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("backend \"app\""), "{err}");
    let err = proxy
        .apply_backends(BackendUpdate {
            generation: 3,
            backends: vec![],
            removed: vec!["app".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid config: backend "app": is removed but still referenced"#
    );
    assert_eq!(
        get(addr, "/").await.server(),
        "b",
        "the backends in force serve"
    );
    proxy
        .apply_backends(BackendUpdate {
            generation: 4,
            backends: vec![],
            removed: vec!["spare".into()],
        })
        .await
        .unwrap();
    assert!(proxy.config().backend("spare").is_none());
    let m = proxy.metrics_text();
    assert!(m.contains("portico_config_version 4"), "{m}");
    assert!(
        m.contains(r#"portico_config_reloads_total{result="error"} 2"#),
        "{m}"
    );
}

/// What one endpoint change costs a proxy that holds the mesh-wide config of 1,000 Services ×
/// 10 endpoints: the whole config rebuilt, against the one backend updated (printed; the
/// figure in `operator/README.md`; no timing is asserted).
#[tokio::test]
async fn a_one_endpoint_update_costs_a_fraction_of_a_whole_config() {
    use portico_proxy_api::{BackendUpdate, ProxyConfig};
    let mut cfg = config(
        r#"
listeners: [{ name: web, address: "127.0.0.1:0", protocol: HTTP }]
routes: [{ name: r, rules: [{ backends: [{ backend: svc-0 }] }] }]
"#,
    );
    for s in 0..1000u32 {
        let endpoints: Vec<String> = (0..10u32)
            .map(|e| {
                let n = s * 10 + e;
                format!(
                    "{{ address: \"10.{}.{}.{}:8080\" }}",
                    n >> 16,
                    (n >> 8) & 255,
                    n & 255
                )
            })
            .collect();
        cfg.backends.push(
            serde_yaml::from_str(&format!(
                "{{ name: svc-{s}, endpoints: [{}] }}",
                endpoints.join(", ")
            ))
            .unwrap(),
        );
    }
    let proxy = portico_proxy::Proxy::start(cfg.clone(), portico_proxy::Options::default())
        .await
        .unwrap();
    let rounds = 50u64;
    let whole = std::time::Instant::now();
    for g in 0..rounds {
        let mut next: ProxyConfig = cfg.clone();
        next.generation = g + 2;
        next.backends[500].endpoints[3].address = format!("10.200.0.{}:8080", g % 250);
        proxy.apply(next).await.unwrap();
    }
    let whole = whole.elapsed() / rounds as u32;
    let update = |n: u64| {
        let mut backend = cfg.backends[500].clone();
        backend.endpoints[3].address = format!("10.201.0.{}:8080", n % 250);
        BackendUpdate {
            generation: 100 + n,
            backends: vec![backend],
            removed: vec![],
        }
    };
    let mut times = Vec::new();
    let updates = 1000u64;
    for g in 0..updates {
        let next = update(g);
        let t = std::time::Instant::now();
        proxy.apply_backends(next).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    // CPU: this thread's (the test's runtime runs the apply on it) user + system time over many
    // updates, from /proc in clock ticks (10 ms), so the mean, not a percentile.
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
    };
    let many = 20_000u64;
    let before = cpu_ticks();
    for g in updates..updates + many {
        proxy.apply_backends(update(g)).await.unwrap();
    }
    let cpu = std::time::Duration::from_millis((cpu_ticks() - before) * 10) / many as u32;
    eprintln!(
        "1,000 backends × 10 endpoints, one endpoint changed: whole config {whole:?} per apply, \
         backend update p50 {:?} p99 {:?} max {:?} wall (of {updates}), CPU {cpu:?} per update \
         (mean of {many}, building the update included)",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1],
    );
    assert_eq!(
        proxy.config().backend("svc-500").unwrap().endpoints[3].address,
        format!("10.201.0.{}:8080", (updates + many - 1) % 250)
    );
}
