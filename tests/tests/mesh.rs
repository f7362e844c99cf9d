//! The mesh end to end: a real operator (config server and injection webhook, started from its
//! flags), pods created through the apiserver and injected by the real webhook, and the real
//! `portico-proxy` binary started with the injected proxy container's own arguments and
//! environment. Only the token file is substituted: a token bound to the pod, minted with the
//! TokenRequest API, stands in for the kubelet's projected token.
//!
//! ```text
//!  in-netns (198.18.0.0/15 local)
//!   test "app" ──GET ClusterIP:80──► iptables nat OUTPUT REDIRECT (ClusterIP:80 only) ─► :4140
//!                                     sidecar of pod "client" (OUTBOUND, SO_ORIGINAL_DST)
//!                                       └─► orders endpoint 198.18.64.x:8080 (test HTTP server)
//!   test, bound to a caller pod's IP ──GET 198.18.64.y:8080──► REDIRECT ─► :4143 sidecar of the
//!                                     backend pod (INBOUND, ServicePolicy) ─► 127.0.0.1:8080
//! ```
//!
//! Redirection is one nat rule per test for exactly the address under test, not the full rule
//! set of `portico-proxy init` (covered by `sidecar/tests/interception.rs`): the test shares
//! its network namespace with the apiserver and the operator, whose traffic must not be
//! captured. The injected listen addresses (0.0.0.0:4143, 127.0.0.1:4140, 0.0.0.0:4191) are
//! fixed, so the tests of this binary take turns.
//!
//! Needs the `portico-proxy` binary next to this test's directory (`cargo build -p
//! portico-proxy`, or `PORTICO_PROXY_BIN`) and `iptables`; fails saying so without them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use portico_api::ServicePolicy;
use portico_operator::admission::AdmissionArgs;
use portico_tests::cluster::free_port;
use portico_tests::harness::{self, Ctx, test};
use portico_tests::support::{
    backend, base64, create, eventually, http_get, http_get_from, metric, pod_token, running_pod,
};
use serde_json::{Value, json};

fn main() -> ExitCode {
    portico_operator::init_logging(
        &std::env::var("PORTICO_TEST_LOG").unwrap_or_else(|_| "warn,portico_operator=info".into()),
        portico_operator::LogFormat::Text,
    );
    harness::run(
        "mesh",
        vec![
            test(
                "an_injected_sidecar_takes_an_app_request_to_a_service_by_its_pod_stream",
                outbound_by_the_pod_stream,
            ),
            test(
                "an_injected_backend_sidecar_lets_in_only_the_callers_its_service_policy_allows",
                inbound_by_the_service_policy,
            ),
        ],
    )
}

/// The injected addresses are fixed: one sidecar at a time in this namespace.
static ONE_SIDECAR_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const INJECTED_ADMIN: &str = "127.0.0.1:4191";
const INJECTED_OUTBOUND_PORT: u16 = 4140;
const INJECTED_INBOUND_PORT: u16 = 4143;

// ---------------------------------------------------------------------------------------------
// The operator, from its flags, with the injection webhook registered for the test namespace.

struct Operator {
    task: tokio::task::JoinHandle<()>,
    webhook: String,
    client: kube::Client,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
        let (client, name) = (self.client.clone(), self.webhook.clone());
        tokio::spawn(async move {
            let _ = Api::<MutatingWebhookConfiguration>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// A serving certificate for `IP:127.0.0.1` signed by the control plane's CA, which the
/// apiserver (webhook `caBundle`) and the sidecars (`--config-tls-ca`) both trust.
fn serving_cert(ctx: &Ctx) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = ctx.plane.dir().join(format!("mesh-{}", ctx.namespace));
    ctx.plane
        .certs
        .loopback_serving_cert(&dir, "portico-operator")
}

async fn start_operator(ctx: &Ctx) -> anyhow::Result<Operator> {
    let (cert, key) = serving_cert(ctx)?;
    let webhook_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let args = portico_operator::Args {
        kubeconfig: Some(ctx.plane.kubeconfig.clone()),
        namespaces: vec![ctx.namespace.clone()],
        log_level: String::new(),
        log_format: portico_operator::LogFormat::Text,
        admin_addr,
        config_addr,
        config_tls_cert: cert,
        config_tls_key: key,
        config_debounce_ms: 20,
        token_recheck_interval: portico_proxy_api::Duration(Duration::from_secs(300)),
        proxy_image: "portico-proxy:e2e".into(),
        control_plane_url: format!("https://{config_addr}"),
        config_tls_ca: Some(ctx.plane.certs.ca_cert.clone()),
        lease_namespace: ctx.namespace.clone(),
        lease_name: "portico-operator".into(),
        lease_duration_secs: 2,
        identity: Some("mesh-e2e".into()),
        identity_issuer: Default::default(),
        mtls_mode: portico_operator::MtlsModeArg::Permissive,
        admission: AdmissionArgs {
            webhook_addr: Some(webhook_addr),
            proxy_log_level: "info".into(),
            proxy_cpu_request: "50m".into(),
            proxy_memory_request: "32Mi".into(),
            proxy_memory_limit: "128Mi".into(),
            ..AdmissionArgs::default()
        },
    };
    let task = tokio::spawn(async move {
        if let Err(e) = portico_operator::run(args).await {
            eprintln!("the operator stopped: {e:#}");
        }
    });
    let op = Operator {
        task,
        webhook: format!("portico-{}", ctx.namespace),
        client: ctx.client.clone(),
    };
    eventually("the operator is ready", Duration::from_secs(30), || async {
        ensure!(
            !op.task.is_finished(),
            "the operator stopped (see its error above)"
        );
        Ok((http_get(admin_addr, "admin", "/ready").await?.0 == 200).then_some(()))
    })
    .await?;
    register_webhook(ctx, &op.webhook, webhook_addr).await?;
    Ok(op)
}

/// Registers the injection webhook for the test namespace and waits until a dry run shows the
/// apiserver calling it.
async fn register_webhook(ctx: &Ctx, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &ctx.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"portico.dev/inject": "enabled"}}})),
        )
        .await?;
    let ca = std::fs::read(&ctx.plane.certs.ca_cert)?;
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.portico.dev",
            "clientConfig": {"url": format!("https://{addr}/inject"), "caBundle": base64(&ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.namespace}},
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .create(&PostParams::default(), &mutating)
        .await?;
    let sa = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ctx.namespace);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))?;
    eventually(
        "the apiserver calls the webhook",
        Duration::from_secs(30),
        || async {
            let injected = match pods(ctx).create(&dry, &probe).await {
                Ok(p) => proxy_container(&p).is_ok(),
                Err(_) => false,
            };
            Ok(injected.then_some(()))
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Pods, tokens and the sidecar process.

fn pods(ctx: &Ctx) -> Api<Pod> {
    Api::namespaced(ctx.client.clone(), &ctx.namespace)
}

/// The injected proxy container (a native sidecar: an init container).
fn proxy_container(pod: &Pod) -> anyhow::Result<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "portico-proxy"))
        .context("no portico-proxy container injected")
}

fn proxy_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PORTICO_PROXY_BIN") {
        return Ok(bin.into());
    }
    // target/<profile>/deps/mesh-<hash> → target/<profile>/portico-proxy
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary without a target directory")?
        .join("portico-proxy");
    ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p portico-proxy` first (or set PORTICO_PROXY_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// The sidecar of one pod: the `portico-proxy` binary run with the injected container's
/// arguments and environment (downward-API fields resolved from the pod), the token file being
/// the only substitution.
struct Sidecar {
    child: Child,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_sidecar(ctx: &Ctx, pod: &Pod) -> anyhow::Result<Sidecar> {
    let container = proxy_container(pod)?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let dir = ctx
        .plane
        .dir()
        .join(format!("sidecar-{}-{name}", ctx.namespace));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, pod_token(ctx, pod).await?)?;

    let mut args = container.args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--token-file")
        .context("the injected command line has no --token-file")?;
    args[at + 1] = token_file.display().to_string();

    let pod_json = serde_json::to_value(pod)?;
    let mut cmd = Command::new(proxy_binary()?);
    cmd.args(&args).env_clear();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let path = &from
                    .field_ref
                    .as_ref()
                    .context("only fieldRef env is injected")?
                    .field_path;
                let pointer = format!("/{}", path.replace('.', "/"));
                pod_json
                    .pointer(&pointer)
                    .and_then(Value::as_str)
                    .with_context(|| format!("pod has no {path}"))?
                    .to_owned()
            }
            (None, None) => String::new(),
        };
        cmd.env(&e.name, value);
    }
    eprintln!(
        "starting sidecar of {name}: portico-proxy {}",
        args.join(" ")
    );
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting portico-proxy")?;
    let sidecar = Sidecar { child };
    let admin: SocketAddr = INJECTED_ADMIN.parse()?;
    eventually("the sidecar is ready", Duration::from_secs(30), || async {
        Ok(matches!(http_get(admin, "admin", "/ready").await, Ok((200, _))).then_some(()))
    })
    .await?;
    Ok(sidecar)
}

impl Sidecar {
    /// SIGTERM: the sidecar drains and exits 0.
    fn terminate(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        ensure!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()?
                .success()
        );
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the sidecar exited with {status}");
                return Ok(());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "the sidecar did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn sidecar_admin(path: &str) -> anyhow::Result<String> {
    let (status, body) = http_get(INJECTED_ADMIN.parse()?, "admin", path).await?;
    ensure!(status == 200, "{path}: {status} {body}");
    Ok(body)
}

/// A nat OUTPUT rule sending TCP to `dst` to a local port (the kernel keeps `dst` for
/// `SO_ORIGINAL_DST`); removed on drop.
struct Redirect {
    rule: Vec<String>,
}

impl Redirect {
    fn new(dst: SocketAddr, to_port: u16) -> anyhow::Result<Self> {
        let rule: Vec<String> = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &format!("{}/32", dst.ip()),
            "--dport",
            &dst.port().to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &to_port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = Command::new("iptables")
            .args(["-w", "-t", "nat", "-A"])
            .args(&rule)
            .output()
            .context("running iptables (install the iptables package)")?;
        ensure!(
            out.status.success(),
            "iptables -A {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { rule })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-D"])
            .args(&self.rule)
            .output();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

// ---------------------------------------------------------------------------------------------
// Tests.

/// Service `orders` (selector `app: orders`, port 80 → 8080); returns its ClusterIP:80.
/// Waits until an EndpointSlice of Service `service` has `ip` ready (the endpoints controller
/// of the real controller-manager writes it), so the operator can have it.
async fn ready_endpoint(ctx: &Ctx, service: &str, ip: std::net::IpAddr) -> anyhow::Result<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    eventually(
        &format!("{service}'s EndpointSlice has {ip} ready"),
        Duration::from_secs(30),
        || async {
            let list = slices
                .list(&kube::api::ListParams::default().labels(&selector))
                .await?;
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .any(|e| {
                    e.addresses.contains(&ip.to_string())
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                });
            Ok(ready.then_some(()))
        },
    )
    .await
}

async fn orders_service(ctx: &Ctx) -> anyhow::Result<SocketAddr> {
    let svc = create::<Service>(
        ctx,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "orders"},
            "spec": {"selector": {"app": "orders"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }),
    )
    .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service without ClusterIP")?;
    Ok(SocketAddr::new(ip.parse()?, 80))
}

async fn outbound_by_the_pod_stream(ctx: Ctx) -> anyhow::Result<()> {
    let _turn = ONE_SIDECAR_AT_A_TIME.lock().await;
    let _op = start_operator(&ctx).await?;
    let cluster_ip = orders_service(&ctx).await?;
    let (_, orders_ip) = running_pod(&ctx, "orders-0", "orders", "orders").await?;
    let _orders = backend(SocketAddr::new(orders_ip, 8080), "orders-0").await?;
    let (client, _) = running_pod(&ctx, "client", "client", "client").await?;
    let args = proxy_container(&client)?.args.clone().unwrap_or_default();
    ensure!(
        args.first().map(String::as_str) == Some("sidecar"),
        "{args:?}"
    );

    // A second Service the app never calls.
    create::<Service>(
        &ctx,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "payments"},
            "spec": {"selector": {"app": "payments"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }),
    )
    .await?;
    let (_, payments_ip) = running_pod(&ctx, "payments-0", "payments", "payments").await?;
    ready_endpoint(&ctx, "orders", orders_ip).await?;
    ready_endpoint(&ctx, "payments", payments_ip).await?;

    let sidecar = start_sidecar(&ctx, &client).await?;
    let config: Value = serde_json::from_str(&sidecar_admin("/config").await?)?;
    // Backends on demand: every Service's address is known, no endpoint was sent yet.
    ensure!(
        config["services"]
            .to_string()
            .contains(&cluster_ip.to_string()),
        "the route table is mesh-wide: {config}"
    );
    ensure!(
        !config["backends"]
            .to_string()
            .contains(&orders_ip.to_string()),
        "no endpoint before the app calls the Service: {config}"
    );
    let listeners = config["listeners"].to_string();
    ensure!(
        listeners.contains("\"OUTBOUND\"") && listeners.contains("\"INBOUND\""),
        "{listeners}"
    );

    // The app dials the ClusterIP; the kernel sends the connection to the OUTBOUND listener.
    let _redirect = Redirect::new(cluster_ip, INJECTED_OUTBOUND_PORT)?;
    // The first connection subscribes to the Service's backends and waits for them: the first
    // request already succeeds.
    let first = Instant::now();
    let (status, _, body) = http_get_from(None, cluster_ip, "orders", "/orders/1").await?;
    let first = first.elapsed();
    ensure!(
        status == 200 && body == "orders-0",
        "the first request to a Service whose backends were not here yet: {status} {body}"
    );
    let next = Instant::now();
    let (status, _, _) = http_get_from(None, cluster_ip, "orders", "/orders/2").await?;
    let next = next.elapsed();
    ensure!(status == 200, "the second request: {status}");
    eprintln!(
        "first request to a Service (subscribes, waits for its backends): {first:?}; the next \
         one (new connection): {next:?}"
    );

    // The route and the endpoint came from the operator's stream for this pod.
    let config: Value = serde_json::from_str(&sidecar_admin("/config").await?)?;
    let service = config["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["addresses"].to_string().contains(&cluster_ip.to_string()))
        .with_context(|| format!("no service for {cluster_ip} in {config}"))?;
    let service_name = service["name"].as_str().unwrap_or_default().to_owned();
    ensure!(
        config["backends"]
            .to_string()
            .contains(&format!("{orders_ip}:8080")),
        "the endpoint of orders-0 is in the config: {config}"
    );
    ensure!(
        !config["backends"]
            .to_string()
            .contains(&payments_ip.to_string()),
        "a Service the app never called sent no endpoint: {config}"
    );
    // The sidecar's own account of it.
    let subscriptions: Value = serde_json::from_str(&sidecar_admin("/subscriptions").await?)?;
    let orders_backend = format!("{}/orders:80", ctx.namespace);
    ensure!(
        subscriptions["connected"] == true
            && subscriptions["backends"] == json!([orders_backend])
            && subscriptions["services"][&orders_backend]["open"] == 0,
        "/subscriptions: {subscriptions:#}"
    );
    let metrics = sidecar_admin("/metrics").await?;
    let intercepted = metric(
        &metrics,
        "portico_intercepted_connections_total",
        &[
            "listener=\"outbound\"",
            &format!("service=\"{service_name}\""),
            "protocol=\"http1\"",
        ],
    );
    ensure!(
        intercepted.is_some_and(|n| n >= 1.0),
        "the request went through the OUTBOUND listener: {metrics}"
    );
    let answered = metric(
        &metrics,
        "portico_requests_total",
        &["status_class=\"2xx\""],
    );
    ensure!(answered.is_some_and(|n| n >= 1.0), "{metrics}");
    sidecar.terminate()
}

async fn inbound_by_the_service_policy(ctx: Ctx) -> anyhow::Result<()> {
    let _turn = ONE_SIDECAR_AT_A_TIME.lock().await;
    let _op = start_operator(&ctx).await?;
    orders_service(&ctx).await?;
    create::<ServicePolicy>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
            "metadata": {"name": "orders-callers"},
            "spec": {"targetRef": {"name": "orders"},
                     "authorization": {"defaultAction": "Deny",
                                       "allowedServiceAccounts": [{"name": "web"}]}}
        }),
    )
    .await?;
    let (_, web_ip) = running_pod(&ctx, "web-0", "web", "web").await?;
    let (orders, orders_ip) = running_pod(&ctx, "orders-0", "orders", "orders").await?;
    // The app of orders-0 listens on loopback; its sidecar forwards there.
    let _app = backend("127.0.0.1:8080".parse()?, "orders-0").await?;
    let sidecar = start_sidecar(&ctx, &orders).await?;
    let web = format!("spiffe://cluster.local/ns/{}/sa/web", ctx.namespace);
    eventually(
        "the sidecar has the inbound policy for SA web",
        Duration::from_secs(30),
        || async {
            let config: Value = serde_json::from_str(&sidecar_admin("/config").await?)?;
            let ids = config["inbound"]["ports"][0]["authorization"]["identities"].to_string();
            Ok(ids.contains(&web).then_some(()))
        },
    )
    .await?;

    // Callers dial the pod's address; the kernel sends them to the INBOUND listener. A
    // plaintext caller has no identity, whatever its address: web-0's own address proves
    // nothing (the real-node tests cover meshed callers with certificates).
    let pod_addr = SocketAddr::new(orders_ip, 8080);
    let _redirect = Redirect::new(pod_addr, INJECTED_INBOUND_PORT)?;
    let (status, error, body) = http_get_from(Some(web_ip), pod_addr, "orders", "/").await?;
    ensure!(
        status == 403 && error == "forbidden" && body.contains("unauthenticated"),
        "web-0 in plaintext: {status} {error} {body}"
    );
    let policy = format!("{}/orders-callers", ctx.namespace);
    ensure!(
        body.contains(&policy),
        "the refusal names the policy: {body}"
    );
    let metrics = sidecar_admin("/metrics").await?;
    let refused = metric(
        &metrics,
        "portico_inbound_refused_total",
        &[
            "port=\"8080\"",
            &format!("policy=\"{policy}\""),
            "reason=\"authorization\"",
        ],
    );
    ensure!(refused == Some(1.0), "{metrics}");
    sidecar.terminate()
}
