//! The admission webhooks against a real kube-apiserver: the webhook server runs in this process
//! (certificate signed by the test CA, `IP:127.0.0.1`), and each test registers a
//! MutatingWebhookConfiguration and a ValidatingWebhookConfiguration that call it by URL, scoped
//! to the test's namespace. What is checked is what the apiserver stores or refuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use portico_operator::admission::{AdmissionArgs, Webhooks, inject::InjectConfig, tls_acceptor};
use portico_tests::cluster::free_port;
use portico_tests::harness::{self, Ctx, test};
use portico_tests::support::base64;
use serde_json::{Value, json};

fn main() -> ExitCode {
    harness::run(
        "injection",
        vec![
            test(
                "labelled_namespace_pods_get_the_native_sidecar",
                labelled_namespace_pods_get_the_native_sidecar,
            ),
            test(
                "pods_annotated_disabled_are_admitted_unchanged",
                pods_annotated_disabled_are_admitted_unchanged,
            ),
            test(
                "pod_annotation_enabled_opts_in_without_the_namespace_label",
                pod_annotation_enabled_opts_in_without_the_namespace_label,
            ),
            test(
                "injection_never_doubles_the_sidecar",
                injection_never_doubles_the_sidecar,
            ),
            test(
                "route_with_an_invalid_regex_is_rejected_naming_the_field",
                route_with_an_invalid_regex_is_rejected_naming_the_field,
            ),
            test(
                "gateway_certificate_must_be_a_tls_secret",
                gateway_certificate_must_be_a_tls_secret,
            ),
            test(
                "route_with_duplicate_rules_is_rejected",
                route_with_duplicate_rules_is_rejected,
            ),
            test(
                "api_key_secret_must_be_opaque",
                api_key_secret_must_be_opaque,
            ),
            test(
                "the_operator_serves_the_webhooks_configured_by_its_flags",
                the_operator_serves_the_webhooks_configured_by_its_flags,
            ),
            test(
                "unprocessable_pods_are_admitted_unchanged_or_denied_when_failing_closed",
                unprocessable_pods_are_admitted_unchanged_or_denied_when_failing_closed,
            ),
            test(
                "webhook_down_with_failure_policy_ignore_admits_pods_unchanged",
                webhook_down_with_failure_policy_ignore_admits_pods_unchanged,
            ),
        ],
    )
}

/// The webhook server of one test, and its registrations; dropping it stops the server
/// (registrations are removed by [`Webhook::cleanup`]).
struct Webhook {
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
    ca_pem: String,
    names: Vec<String>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    /// Starts a webhook server on a free loopback port, with a certificate signed by the
    /// control plane's CA.
    async fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        Self::start_with(ctx, ctx.client.clone(), false).await
    }

    /// [`Webhook::start`] with the webhook's own apiserver client and failure mode.
    async fn start_with(
        ctx: &Ctx,
        client: kube::Client,
        fail_closed: bool,
    ) -> anyhow::Result<Self> {
        let (cert_file, key_file, ca_pem) = serving_cert(ctx)?;
        let tls = tls_acceptor(&cert_file, &key_file)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let webhooks = Webhooks {
            client,
            inject: InjectConfig {
                image: "portico-proxy:e2e".into(),
                control_plane_url: "https://127.0.0.1:8443".into(),
                ca_pem: ca_pem.clone(),
                ..InjectConfig::default()
            },
            fail_closed,
        };
        let task = tokio::spawn(async move {
            if let Err(e) = webhooks.serve(listener, tls).await {
                eprintln!("webhook server failed: {e}");
            }
        });
        Ok(Self {
            task,
            addr,
            ca_pem,
            names: Vec::new(),
        })
    }

    /// Starts the whole operator from its flags, webhook server included (the config server
    /// and the webhooks share one certificate, as in the chart).
    async fn operator(ctx: &Ctx) -> anyhow::Result<Self> {
        let (cert_file, key_file, ca_pem) = serving_cert(ctx)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let args = portico_operator::Args {
            kubeconfig: Some(ctx.plane.kubeconfig.clone()),
            namespaces: vec![ctx.namespace.clone()],
            log_level: String::new(),
            log_format: portico_operator::LogFormat::Text,
            admin_addr: format!("127.0.0.1:{}", free_port()?).parse()?,
            config_addr,
            config_tls_cert: cert_file,
            config_tls_key: key_file,
            config_debounce_ms: 20,
            token_recheck_interval: portico_proxy_api::Duration::from_secs(300),
            proxy_image: "portico-proxy:flags".into(),
            control_plane_url: format!("https://{config_addr}"),
            config_tls_ca: None,
            lease_namespace: ctx.namespace.clone(),
            lease_name: "portico-operator".into(),
            lease_duration_secs: 2,
            identity: Some("webhook-e2e".into()),
            identity_issuer: Default::default(),
            mtls_mode: portico_operator::MtlsModeArg::Permissive,
            admission: AdmissionArgs {
                webhook_addr: Some(addr),
                proxy_log_level: "debug".into(),
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
        Ok(Self {
            task,
            addr,
            ca_pem,
            names: Vec::new(),
        })
    }

    /// Registers both webhooks for the test's namespace, with `failure_policy`, and waits until
    /// the apiserver calls them.
    async fn register(&mut self, ctx: &Ctx, failure_policy: &str) -> anyhow::Result<()> {
        let name = format!("portico-{}", ctx.namespace);
        let ca_bundle = base64(self.ca_pem.as_bytes());
        let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": ctx.namespace}});
        let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "inject.portico.dev",
                "clientConfig": {"url": format!("https://{}/inject", self.addr), "caBundle": ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}],
                "namespaceSelector": selector,
                "failurePolicy": failure_policy,
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }))?;
        let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "validate.portico.dev",
                "clientConfig": {"url": format!("https://{}/validate", self.addr), "caBundle": ca_bundle},
                "rules": [{
                    "apiGroups": ["portico.dev"], "apiVersions": ["v1alpha1"],
                    "resources": ["gateways", "routes", "servicepolicies"],
                    "operations": ["CREATE", "UPDATE"],
                }],
                "namespaceSelector": selector,
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }))?;
        Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
            .create(&PostParams::default(), &mutating)
            .await?;
        self.names.push(name.clone());
        Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone())
            .create(&PostParams::default(), &validating)
            .await?;
        wait_for_default_service_account(ctx).await?;
        // The apiserver picks up new webhook configurations from an informer: wait until a dry
        // run shows each webhook being called.
        let started = Instant::now();
        loop {
            let probe = pod("probe", &[("portico.dev/inject", "enabled")]);
            let dry = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            let injected = match pods(ctx).create(&dry, &probe).await {
                Ok(p) => init_names(&p).contains(&"portico-proxy".to_owned()),
                Err(_) => false,
            };
            let rejected = routes(ctx)
                .create(&dry, &route("probe", "(unclosed"))
                .await
                .is_err();
            if injected && rejected {
                return Ok(());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the apiserver did not start calling the webhooks (injected: {injected}, rejected: {rejected})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes the registrations (they are cluster-scoped and outlive the test namespace).
    async fn cleanup(&self, ctx: &Ctx) {
        for name in &self.names {
            let _ = Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
                .delete(name, &DeleteParams::default())
                .await;
            let _ = Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone())
                .delete(name, &DeleteParams::default())
                .await;
        }
    }
}

/// Runs `body` with a registered webhook, removing the registration afterwards.
async fn with_webhook<F, Fut>(ctx: &Ctx, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut webhook = Webhook::start(ctx).await?;
    let result = match webhook.register(ctx, "Fail").await {
        Ok(()) => body(ctx.clone()).await,
        Err(e) => Err(e),
    };
    webhook.cleanup(ctx).await;
    result
}

/// A serving certificate for `IP:127.0.0.1` signed by the control plane's CA, so the apiserver
/// trusts it with the CA as `caBundle`: (certificate file, key file, CA PEM).
fn serving_cert(ctx: &Ctx) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let dir = ctx.plane.dir().join(format!("webhook-{}", ctx.namespace));
    let ca_pem = std::fs::read_to_string(&ctx.plane.certs.ca_cert)?;
    let (cert_file, key_file) = ctx
        .plane
        .certs
        .loopback_serving_cert(&dir, "portico-webhook")?;
    Ok((cert_file, key_file, ca_pem))
}

async fn wait_for_default_service_account(ctx: &Ctx) -> anyhow::Result<()> {
    let api = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ctx.namespace);
    let started = Instant::now();
    while api.get_opt("default").await?.is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no default ServiceAccount in {}",
            ctx.namespace
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn label_namespace(ctx: &Ctx, value: &str) -> anyhow::Result<()> {
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &ctx.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"portico.dev/inject": value}}})),
        )
        .await?;
    Ok(())
}

fn pods(ctx: &Ctx) -> Api<Pod> {
    Api::namespaced(ctx.client.clone(), &ctx.namespace)
}

fn routes(ctx: &Ctx) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "portico.dev".into(),
        version: "v1alpha1".into(),
        api_version: "portico.dev/v1alpha1".into(),
        kind: "Route".into(),
        plural: "routes".into(),
    };
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
}

fn gateways(ctx: &Ctx) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "portico.dev".into(),
        version: "v1alpha1".into(),
        api_version: "portico.dev/v1alpha1".into(),
        kind: "Gateway".into(),
        plural: "gateways".into(),
    };
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
}

fn pod(name: &str, annotations: &[(&str, &str)]) -> Pod {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1"}],
        },
    }))
    .expect("a valid pod")
}

fn route(name: &str, regex: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"kind": "Service", "name": "orders"}],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}],
                 "backendRefs": [{"name": "orders", "port": 80}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": regex}}],
                 "backendRefs": [{"name": "orders", "port": 80}]},
            ],
        },
    }))
    .expect("a valid route")
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

async fn labelled_namespace_pods_get_the_native_sidecar(ctx: Ctx) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    with_webhook(&ctx, |ctx| async move {
        pods(&ctx)
            .create(&PostParams::default(), &pod("web", &[]))
            .await?;
        // Read back what the apiserver stored, not what create returned.
        let stored = pods(&ctx).get("web").await?;
        ensure!(
            init_names(&stored) == ["portico-init", "portico-proxy", "migrate"],
            "init containers: {:?}",
            init_names(&stored)
        );
        ensure!(annotation(&stored, "portico.dev/injected").as_deref() == Some("true"));
        let spec = stored.spec.as_ref().context("spec")?;
        let inits = spec.init_containers.as_ref().context("init containers")?;
        let proxy = &inits[1];
        ensure!(proxy.restart_policy.as_deref() == Some("Always"));
        ensure!(proxy.image.as_deref() == Some("portico-proxy:e2e"));
        let probe = proxy.startup_probe.as_ref().context("startupProbe")?;
        let get = probe.http_get.as_ref().context("httpGet")?;
        ensure!(get.path.as_deref() == Some("/ready"), "{get:?}");
        let sc = proxy.security_context.as_ref().context("securityContext")?;
        ensure!(
            sc.run_as_non_root == Some(true)
                && sc.run_as_user == Some(2102)
                && sc.read_only_root_filesystem == Some(true)
                && sc.allow_privilege_escalation == Some(false),
            "{sc:?}"
        );
        let envs: Vec<&str> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        for name in ["POD_NAME", "POD_NAMESPACE", "POD_IP", "SERVICE_ACCOUNT"] {
            ensure!(envs.contains(&name), "{name} missing from {envs:?}");
        }
        let token = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "portico-token")
            .and_then(|v| v.projected.as_ref())
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.service_account_token.as_ref())
            .context("no projected token volume")?;
        ensure!(token.audience.as_deref() == Some("portico"), "{token:?}");
        ensure!(token.expiration_seconds == Some(3600), "{token:?}");
        let mount = proxy
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "portico-token")
            .context("no token mount")?;
        ensure!(mount.mount_path == "/var/run/secrets/portico" && mount.read_only == Some(true));
        let caps = inits[0]
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .context("portico-init capabilities")?;
        ensure!(
            caps.add == Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            "{caps:?}"
        );
        // The app container itself is untouched.
        ensure!(spec.containers.len() == 1 && spec.containers[0].name == "app");
        Ok(())
    })
    .await
}

async fn pods_annotated_disabled_are_admitted_unchanged(ctx: Ctx) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    with_webhook(&ctx, |ctx| async move {
        pods(&ctx)
            .create(
                &PostParams::default(),
                &pod("plain", &[("portico.dev/inject", "disabled")]),
            )
            .await?;
        let stored = pods(&ctx).get("plain").await?;
        ensure!(
            init_names(&stored) == ["migrate"],
            "{:?}",
            init_names(&stored)
        );
        ensure!(annotation(&stored, "portico.dev/injected").is_none());
        Ok(())
    })
    .await
}

async fn pod_annotation_enabled_opts_in_without_the_namespace_label(
    ctx: Ctx,
) -> anyhow::Result<()> {
    with_webhook(&ctx, |ctx| async move {
        pods(&ctx)
            .create(&PostParams::default(), &pod("unlabelled", &[]))
            .await?;
        let stored = pods(&ctx).get("unlabelled").await?;
        ensure!(
            init_names(&stored) == ["migrate"],
            "{:?}",
            init_names(&stored)
        );
        pods(&ctx)
            .create(
                &PostParams::default(),
                &pod("opted-in", &[("portico.dev/inject", "enabled")]),
            )
            .await?;
        let stored = pods(&ctx).get("opted-in").await?;
        ensure!(
            init_names(&stored) == ["portico-init", "portico-proxy", "migrate"],
            "{:?}",
            init_names(&stored)
        );
        Ok(())
    })
    .await
}

async fn injection_never_doubles_the_sidecar(ctx: Ctx) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    with_webhook(&ctx, |ctx| async move {
        let api = pods(&ctx);
        // The same spec twice: each pod gets exactly one sidecar.
        for name in ["twin-a", "twin-b"] {
            api.create(&PostParams::default(), &pod(name, &[])).await?;
            let stored = api.get(name).await?;
            ensure!(
                init_names(&stored) == ["portico-init", "portico-proxy", "migrate"],
                "{name}: {:?}",
                init_names(&stored)
            );
        }
        // A pod made from an injected pod's spec (as a controller copying a template would,
        // annotation dropped) is not injected again.
        let injected = api.get("twin-a").await?;
        let mut copy = pod("copy", &[]);
        let mut spec = injected.spec.clone().context("spec")?;
        spec.node_name = None;
        copy.spec = Some(spec);
        api.create(&PostParams::default(), &copy).await?;
        let stored = api.get("copy").await?;
        let names = init_names(&stored);
        ensure!(
            names.iter().filter(|n| *n == "portico-proxy").count() == 1
                && names.iter().filter(|n| *n == "portico-init").count() == 1,
            "{names:?}"
        );
        let volumes = stored
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        ensure!(
            volumes.iter().filter(|v| v.name == "portico-token").count() == 1,
            "{volumes:?}"
        );
        Ok(())
    })
    .await
}

async fn route_with_an_invalid_regex_is_rejected_naming_the_field(ctx: Ctx) -> anyhow::Result<()> {
    with_webhook(&ctx, |ctx| async move {
        let api = routes(&ctx);
        let err = match api
            .create(&PostParams::default(), &route("bad", "/users/(\\d+"))
            .await
        {
            Ok(_) => bail!("a Route with an invalid regex was admitted"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("spec.rules[1].matches[0].path.value: invalid regular expression"),
            "{err}"
        );
        // A valid one passes, and an update that breaks it is refused too.
        let created = api
            .create(&PostParams::default(), &route("good", "/users/[0-9]+"))
            .await?;
        let mut broken = created.clone();
        broken.data["spec"]["rules"][1]["matches"][0]["path"]["value"] = json!("[z-a]");
        let err = match api.replace("good", &PostParams::default(), &broken).await {
            Ok(_) => bail!("an update with an invalid regex was admitted"),
            Err(e) => e.to_string(),
        };
        ensure!(err.contains("spec.rules[1].matches[0].path.value"), "{err}");
        Ok(())
    })
    .await
}

async fn gateway_certificate_must_be_a_tls_secret(ctx: Ctx) -> anyhow::Result<()> {
    with_webhook(&ctx, |ctx| async move {
        let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.namespace);
        let opaque: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-a-cert"},
            "type": "Opaque", "stringData": {"x": "y"},
        }))?;
        secrets.create(&PostParams::default(), &opaque).await?;
        let gateway = |name: &str, secret: &str| -> anyhow::Result<DynamicObject> {
            Ok(serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
                "metadata": {"name": name},
                "spec": {"listeners": [{
                    "name": "https", "port": 443, "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": secret}]},
                }]},
            }))?)
        };
        let err = match gateways(&ctx)
            .create(&PostParams::default(), &gateway("opaque", "not-a-cert")?)
            .await
        {
            Ok(_) => bail!("a Gateway with an Opaque Secret as certificate was admitted"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("spec.listeners[0].tls.certificateRefs[0]")
                && err.contains("kubernetes.io/tls"),
            "{err}"
        );
        // A Secret that does not exist yet is not an admission error (it is a status condition).
        gateways(&ctx)
            .create(&PostParams::default(), &gateway("later", "created-later")?)
            .await
            .context("a Gateway referencing a missing Secret must be admitted")?;
        Ok(())
    })
    .await
}

async fn webhook_down_with_failure_policy_ignore_admits_pods_unchanged(
    ctx: Ctx,
) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    let mut webhook = Webhook::start(&ctx).await?;
    let result = async {
        webhook.register(&ctx, "Ignore").await?;
        // Stop the server: connections to its port are now refused.
        webhook.task.abort();
        let _ = (&mut webhook.task).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        pods(&ctx)
            .create(&PostParams::default(), &pod("unmeshed", &[]))
            .await
            .context("with failurePolicy Ignore the pod must be admitted")?;
        let stored = pods(&ctx).get("unmeshed").await?;
        ensure!(
            init_names(&stored) == ["migrate"],
            "{:?}",
            init_names(&stored)
        );
        anyhow::Ok(())
    }
    .await;
    webhook.cleanup(&ctx).await;
    result
}

async fn route_with_duplicate_rules_is_rejected(ctx: Ctx) -> anyhow::Result<()> {
    with_webhook(&ctx, |ctx| async move {
        let mut twins = route("twins", "/x");
        let rules = &mut twins.data["spec"]["rules"];
        rules[1] = rules[0].clone();
        let err = match routes(&ctx).create(&PostParams::default(), &twins).await {
            Ok(_) => bail!("a Route with two identical rules was admitted"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("spec.rules[1].matches: same matches as spec.rules[0]"),
            "{err}"
        );
        Ok(())
    })
    .await
}

async fn api_key_secret_must_be_opaque(ctx: Ctx) -> anyhow::Result<()> {
    with_webhook(&ctx, |ctx| async move {
        let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.namespace);
        let tls: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a-cert"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "x", "tls.key": "y"},
        }))?;
        secrets.create(&PostParams::default(), &tls).await?;
        let mut guarded = route("guarded", "/x");
        guarded.data["spec"]["rules"][0]["authentication"] =
            json!({"apiKey": {"secretRef": {"name": "a-cert"}}});
        let err = match routes(&ctx).create(&PostParams::default(), &guarded).await {
            Ok(_) => bail!("a Route using a TLS Secret as API keys was admitted"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("spec.rules[0].authentication.apiKey.secretRef") && err.contains("Opaque"),
            "{err}"
        );
        Ok(())
    })
    .await
}

async fn the_operator_serves_the_webhooks_configured_by_its_flags(ctx: Ctx) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    let mut operator = Webhook::operator(&ctx).await?;
    let result = async {
        // register() waits until the webhooks answer: the server is up once the operator runs.
        operator.register(&ctx, "Fail").await?;
        pods(&ctx)
            .create(&PostParams::default(), &pod("from-flags", &[]))
            .await?;
        let stored = pods(&ctx).get("from-flags").await?;
        let inits = stored
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        let proxy = inits
            .iter()
            .find(|c| c.name == "portico-proxy")
            .context("no proxy injected")?;
        ensure!(proxy.image.as_deref() == Some("portico-proxy:flags"));
        let env = |name: &str| {
            proxy
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        ensure!(env("PORTICO_LOG").as_deref() == Some("debug"));
        // Without --config-tls-ca the serving certificate itself is the CA proxies trust.
        let served = std::fs::read_to_string(
            ctx.plane
                .dir()
                .join(format!("webhook-{}/tls.crt", ctx.namespace)),
        )?;
        ensure!(env("PORTICO_CONTROL_PLANE_CA").as_deref() == Some(served.as_str()));
        let resources = serde_json::to_value(&proxy.resources)?;
        ensure!(
            resources
                == json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}),
            "{resources}"
        );
        let args = proxy.args.clone().unwrap_or_default().join(" ");
        ensure!(args.contains("--control-plane https://127.0.0.1:"), "{args}");
        anyhow::Ok(())
    }
    .await;
    operator.cleanup(&ctx).await;
    result
}

async fn unprocessable_pods_are_admitted_unchanged_or_denied_when_failing_closed(
    ctx: Ctx,
) -> anyhow::Result<()> {
    label_namespace(&ctx, "enabled").await?;
    // A webhook whose own apiserver connection is refused cannot read the namespace's label,
    // so it cannot decide about a pod without an inject annotation.
    let unreachable = || {
        kube::Client::try_from(kube::Config::new(
            "https://127.0.0.1:1".parse().expect("a url"),
        ))
    };
    for fail_closed in [false, true] {
        let mut webhook = Webhook::start_with(&ctx, unreachable()?, fail_closed).await?;
        let result = async {
            webhook.register(&ctx, "Fail").await?;
            let name = format!("undecided-{fail_closed}");
            let created = pods(&ctx)
                .create(&PostParams::default(), &pod(&name, &[]))
                .await;
            match (fail_closed, created) {
                (false, Ok(_)) => {
                    let stored = pods(&ctx).get(&name).await?;
                    ensure!(
                        init_names(&stored) == ["migrate"],
                        "{:?}",
                        init_names(&stored)
                    );
                }
                (false, Err(e)) => bail!("failing open, the pod must be admitted: {e}"),
                (true, Ok(_)) => bail!("failing closed, the pod must be denied"),
                (true, Err(e)) => ensure!(
                    e.to_string().contains("--inject-fail-closed")
                        && e.to_string().contains("namespace"),
                    "{e}"
                ),
            }
            anyhow::Ok(())
        }
        .await;
        webhook.cleanup(&ctx).await;
        result?;
        // The next round registers the same names again.
        wait_until_gone(&ctx, &format!("portico-{}", ctx.namespace)).await?;
    }
    Ok(())
}

async fn wait_until_gone(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(ctx.client.clone());
    let started = Instant::now();
    while api.get_opt(name).await?.is_some() {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{name} not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
