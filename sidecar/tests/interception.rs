//! Transparent interception for real: a network namespace made for the test, the iptables rules
//! of `portico-proxy init`, the proxy binary under its own uid, and an application process that
//! plainly dials a ClusterIP.
//!
//! ```text
//!  netns portico-t-XXXX (lo up, 198.18.0.0/15 routed to lo: every address in it is local)
//!    app (root) ──GET 198.19.0.10:80──► OUTPUT REDIRECT ─► proxy :4140 (uid 2102, exempt)
//!                                                          └─► service "orders" ─► 198.18.0.5:8080
//!    app ──GET 198.18.0.5:9090 (--skip-outbound-ports 9090)──────────────────────► backend
//! ```
//!
//! Processes inside the namespace (backends, the app) are this test binary run again through
//! `ip netns exec` with `PORTICO_INTERCEPT_HELPER` set: [`helper`] then plays that role instead
//! of being a test. Needs root, `ip` (iproute2), `setpriv` (util-linux) and `iptables` (installed
//! with apt-get when missing); without them the test fails saying what is missing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "PORTICO_INTERCEPT_HELPER";
const PROXY_UID: &str = "2102";
const ORDERS_VIP: &str = "198.19.0.10:80";
const SMTP_VIP: &str = "198.19.0.11:25";
const SUBMISSION_VIP: &str = "198.19.0.12:587";
const BACKEND: &str = "198.18.0.5:8080";
const BYPASS: &str = "198.18.0.5:9090";
const BANNER: &str = "198.18.0.6:2525";
const ADMIN: &str = "127.0.0.1:4191";

/// A network namespace and the processes started in it; all are removed on drop, also when
/// the test panics half-way.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create() -> Self {
        let name = format!(
            "portico-t-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self {
            name,
            children: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "route", "add", "local", "198.18.0.0/15", "dev", "lo"]);
        ns
    }

    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs a command in the namespace to completion; panics with its output if it fails.
    fn exec(&self, argv: &[&str]) -> Output {
        let out = self
            .cmd(argv)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {argv:?}: {e}"));
        assert!(
            out.status.success(),
            "{argv:?} failed in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a long-running process in the namespace; it is killed on drop.
    fn spawn(&mut self, mut cmd: Command) {
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        self.children.push(child);
    }

    /// This test binary, run again in the namespace as helper `role`.
    fn helper(&self, role: &str, arg: &str) -> Command {
        let exe = std::env::current_exe().expect("test binary path");
        let mut c = self.cmd(&[
            exe.to_str().expect("utf-8 path"),
            "helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]);
        c.env(HELPER_ENV, role).env("HELPER_ARG", arg);
        c
    }

    /// Runs a client helper and returns what it printed after `RESULT `.
    fn ask(&self, role: &str, arg: &str) -> String {
        let out = self
            .helper(role, arg)
            .output()
            .unwrap_or_else(|e| panic!("helper {role}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            // libtest prints "test helper ... " on the same line first.
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
            .map(|r| r.replace("\\n", "\n"))
            .unwrap_or_else(|| {
                panic!(
                    "helper {role} {arg} printed no result: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// GETs `http://addr/path` from inside the namespace (as root, so the rules apply).
    fn get(&self, addr: &str, path: &str) -> String {
        self.ask("get", &format!("{addr} {path}"))
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready() {
            assert!(Instant::now() < deadline, "{what} did not come up in 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn found(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails (never skips) when the machine cannot run the test, naming what is missing.
fn preflight() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the interception test needs root (network namespaces, iptables, setpriv)"
    );
    assert!(found("ip"), "the interception test needs `ip` (iproute2)");
    assert!(
        found("setpriv"),
        "the interception test needs `setpriv` (util-linux)"
    );
    if !found("iptables-restore") {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "iptables"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    assert!(
        found("iptables-restore"),
        "the interception test needs iptables: `apt-get install -y iptables` failed"
    );
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A file in a directory the proxy's uid can read.
fn world_readable_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    (dir, path)
}

fn sidecar_config() -> String {
    format!(
        r#"
listeners:
  - {{ name: outbound, address: "127.0.0.1:4140", protocol: OUTBOUND }}
  - {{ name: inbound, address: "0.0.0.0:4143", protocol: INBOUND }}
routes:
  - name: orders-teapot
    rules:
      - matches: [{{ path: {{ type: Exact, value: /teapot }} }}]
        filters: [{{ type: DirectResponse, status: 418, body: "short and stout" }}]
services:
  - {{ name: orders, addresses: ["{ORDERS_VIP}"], backend: orders, routes: [orders-teapot] }}
  - {{ name: smtp, addresses: ["{SMTP_VIP}"], backend: smtp, opaque: true }}
  - {{ name: submission, addresses: ["{SUBMISSION_VIP}"], backend: smtp }}
interception: {{ detectTimeout: 3s, opaquePorts: [587] }}
backends:
  - {{ name: orders, endpoints: [{{ address: "{BACKEND}" }}] }}
  - {{ name: smtp, endpoints: [{{ address: "{BANNER}" }}] }}
"#
    )
}

fn start_proxy(ns: &mut Netns, config: &Path) {
    let mut proxy = ns.cmd(&[
        "setpriv",
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
        env!("CARGO_BIN_EXE_portico-proxy"),
        "--config",
        config.to_str().expect("utf-8 path"),
        "--admin-addr",
        ADMIN,
        "--workers",
        "1",
    ]);
    proxy.env("PORTICO_LOG", "info");
    ns.spawn(proxy);
    ns.wait_for("the proxy", || ns.get(ADMIN, "/ready").starts_with("200"));
}

#[test]
fn an_app_reaches_a_cluster_ip_through_the_proxy_and_skipped_ports_bypass_it() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    preflight();
    let mut ns = Netns::create();
    // Backends first, checked before any rule exists, so readiness probes are not counted.
    ns.spawn(ns.helper("http-server", BACKEND));
    ns.spawn(ns.helper("http-server", BYPASS));
    ns.spawn(ns.helper("banner-server", BANNER));
    for addr in [BACKEND, BYPASS] {
        ns.wait_for(addr, || ns.ask("probe", addr) == "up");
    }
    ns.wait_for(BANNER, || ns.ask("probe", BANNER) == "up");

    // Idempotent: a second run leaves one set of rules.
    init(&ns);
    init(&ns);
    let rules =
        String::from_utf8_lossy(&ns.exec(&["iptables-save", "-t", "nat"]).stdout).into_owned();
    assert_eq!(rules.matches("-j PORTICO_OUTPUT").count(), 1, "{rules}");
    assert_eq!(rules.matches("--to-ports 4140").count(), 1, "{rules}");

    let (_dir, config) = world_readable_config(&sidecar_config());
    start_proxy(&mut ns, &config);
    let metrics = || ns.get(ADMIN, "/metrics");

    // The app dials the ClusterIP; the proxy routes it to the service's backend.
    let reply = ns.get(ORDERS_VIP, "/hello");
    assert!(reply.starts_with("200"), "{reply}");
    assert!(
        reply.contains(&format!("backend {BACKEND} /hello")),
        "{reply}"
    );
    // A route attached to the service applies.
    assert!(ns.get(ORDERS_VIP, "/teapot").starts_with("418"));
    let m = metrics();
    assert_eq!(
        metric(
            &m,
            r#"portico_intercepted_connections_total{listener="outbound",service="orders",protocol="http1"}"#
        ),
        2,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"portico_requests_total{route="orders",rule="",backend="orders",status_class="2xx"}"#
        ),
        1,
        "{m}"
    );

    // HTTP/2 with prior knowledge is detected too, and reaches the HTTP/1 backend.
    let reply = ns.ask("get-h2", &format!("{ORDERS_VIP} /h2"));
    assert_eq!(reply, format!("200 backend {BACKEND} /h2"));
    let m = metrics();
    assert_eq!(
        metric(
            &m,
            r#"portico_intercepted_connections_total{listener="outbound",service="orders",protocol="http2"}"#
        ),
        1,
        "{m}"
    );

    // An address that is no service passes through the proxy untouched.
    let reply = ns.get(BACKEND, "/direct");
    assert!(
        reply.contains(&format!("backend {BACKEND} /direct")),
        "{reply}"
    );
    let passed = r#"portico_intercepted_connections_total{listener="outbound",service="",protocol="opaque"}"#;
    let before = metric(&metrics(), passed);
    assert_eq!(before, 1);

    // A skipped port never reaches the proxy.
    let reply = ns.get(BYPASS, "/skipped");
    assert!(
        reply.contains(&format!("backend {BYPASS} /skipped")),
        "{reply}"
    );
    let m = metrics();
    assert_eq!(
        metric(&m, passed),
        before,
        "port 9090 went through the proxy: {m}"
    );

    // A server-speaks-first service declared opaque greets at once, though detection would
    // wait 3 s for a client's first bytes.
    let greeting = ns.ask("banner-client", SMTP_VIP);
    let (ms, banner) = greeting.split_once(' ').expect("elapsed and banner");
    assert_eq!(banner, "220 portico-test ESMTP");
    let ms: u64 = ms.parse().expect("elapsed ms");
    assert!(
        ms < 1000,
        "the banner took {ms} ms through an opaque service"
    );
    // The same for a port listed in `interception.opaquePorts`.
    let greeting = ns.ask("banner-client", SUBMISSION_VIP);
    let (ms, banner) = greeting.split_once(' ').expect("elapsed and banner");
    assert_eq!(banner, "220 portico-test ESMTP");
    let ms: u64 = ms.parse().expect("elapsed ms");
    assert!(ms < 1000, "the banner took {ms} ms through an opaque port");
    let m = metrics();
    for svc in ["smtp", "submission"] {
        let series = format!(
            r#"portico_intercepted_connections_total{{listener="outbound",service="{svc}",protocol="opaque"}}"#
        );
        assert_eq!(metric(&m, &series), 1, "{m}");
    }
}

/// `portico-proxy init` as the injected init container runs it.
fn init(ns: &Netns) {
    ns.exec(&[
        env!("CARGO_BIN_EXE_portico-proxy"),
        "init",
        "--skip-outbound-ports",
        "9090",
        "--skip-inbound-ports",
        "9091",
    ]);
}

#[test]
fn connections_to_the_pod_reach_the_app_on_loopback_and_skipped_ports_bypass_the_proxy() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    preflight();
    // PREROUTING sees only packets that arrive on an interface, so the caller lives in a second
    // namespace joined to the pod's by a veth pair (192.0.2.0/24 exists only between the two).
    let mut pod = Netns::create();
    let client = Netns::create();
    pod.exec(&[
        "ip",
        "link",
        "add",
        "vpod",
        "type",
        "veth",
        "peer",
        "name",
        "vclient",
        "netns",
        &client.name,
    ]);
    pod.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "vpod"]);
    pod.exec(&["ip", "link", "set", "vpod", "up"]);
    client.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "vclient"]);
    client.exec(&["ip", "link", "set", "vclient", "up"]);
    // The app listens on loopback only: the pod IP reaches it through the proxy or not at all.
    pod.spawn(pod.helper("http-server", "127.0.0.1:8081"));
    pod.spawn(pod.helper("http-server", "0.0.0.0:9091"));
    pod.wait_for("the app", || pod.ask("probe", "127.0.0.1:8081") == "up");
    pod.wait_for("the skipped app", || {
        pod.ask("probe", "127.0.0.1:9091") == "up"
    });
    init(&pod);
    let (_dir, config) = world_readable_config(&sidecar_config());
    start_proxy(&mut pod, &config);
    let inbound =
        r#"portico_intercepted_connections_total{listener="inbound",service="",protocol="opaque"}"#;

    let reply = client.get("192.0.2.1:8081", "/in");
    assert_eq!(reply, "200 backend 127.0.0.1:8081 /in");
    assert_eq!(metric(&pod.get(ADMIN, "/metrics"), inbound), 1);

    let reply = client.get("192.0.2.1:9091", "/skipped");
    assert_eq!(reply, "200 backend 0.0.0.0:9091 /skipped");
    assert_eq!(
        metric(&pod.get(ADMIN, "/metrics"), inbound),
        1,
        "9091 went through the proxy"
    );
}

/// Not a test: the roles this binary plays inside the namespace (see the module docs). Without
/// `PORTICO_INTERCEPT_HELPER` it does nothing.
#[test]
fn helper() {
    let Ok(role) = std::env::var(HELPER_ENV) else {
        return;
    };
    let arg = std::env::var("HELPER_ARG").expect("HELPER_ARG");
    let result = match role.as_str() {
        "http-server" => http_server(&arg),
        "banner-server" => banner_server(&arg),
        "probe" => {
            let addr: SocketAddr = arg.parse().expect("address");
            let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if up { "up" } else { "down" }.to_owned()
        }
        "get" => {
            let (addr, path) = arg.split_once(' ').expect("addr path");
            get(addr, path)
        }
        "get-h2" => {
            let (addr, path) = arg.split_once(' ').expect("addr path");
            get_h2(addr, path)
        }
        "banner-client" => {
            let start = Instant::now();
            let s = TcpStream::connect(&arg).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).expect("banner");
            format!("{} {}", start.elapsed().as_millis(), line.trim_end())
        }
        other => panic!("unknown helper role {other}"),
    };
    println!("RESULT {}", result.replace('\n', "\\n"));
}

/// `"<status> <body>"`, or `"error <why>"`.
fn get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return "error connect".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return "error write".into();
    }
    let mut resp = String::new();
    if s.read_to_string(&mut resp).is_err() {
        return "error read".into();
    }
    let status = resp.split(' ').nth(1).unwrap_or("none").to_owned();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    format!("{status} {body}")
}

/// Like [`get`] over HTTP/2 with prior knowledge (h2c), as gRPC clients speak.
fn get_h2(addr: &str, path: &str) -> String {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 request");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        format!("{status} {}", String::from_utf8_lossy(&body))
    })
}

/// A one-thread HTTP/1.1 server answering `backend <addr> <path>` and closing.
fn http_server(addr: &str) -> ! {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    for s in l.incoming().flatten() {
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                break;
            }
        }
        let body = format!("backend {addr} {path}");
        let _ = (&s).write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    unreachable!("incoming() never ends")
}

/// Greets every connection first, like SMTP, then waits for the client to leave.
fn banner_server(addr: &str) -> ! {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    for mut s in l.incoming().flatten() {
        let _ = s.write_all(b"220 portico-test ESMTP\r\n");
        std::thread::spawn(move || {
            let mut sink = [0; 64];
            while s.read(&mut sink).is_ok_and(|n| n > 0) {}
        });
    }
    unreachable!("incoming() never ends")
}

/// Without a NAT entry there is no original destination; forwarding to the listener's own
/// address would loop, so the proxy closes the connection. Needs no root.
#[tokio::test]
async fn a_connection_made_straight_to_the_outbound_listener_is_closed_not_looped() {
    use tokio::io::AsyncReadExt as _;
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    let cfg: portico_proxy_api::ProxyConfig = serde_yaml::from_str(
        r#"listeners: [{ name: outbound, address: "127.0.0.1:0", protocol: OUTBOUND }]"#,
    )
    .expect("config");
    let proxy = portico_proxy::Proxy::start(cfg, portico_proxy::Options::default())
        .await
        .expect("start");
    let addr = proxy.listener_addr("outbound").expect("bound");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
