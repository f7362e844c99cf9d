//! The foundation, against a real kube-apiserver: the CRDs install, the examples are accepted,
//! invalid objects are rejected with the field named, and the control plane runs workloads.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use portico_tests::cluster;
use portico_tests::crds::FIELD_MANAGER;
use portico_tests::harness::{self, Ctx, Test, repo_root, test};
use serde_json::{Value, json};

fn main() -> ExitCode {
    let mut tests = vec![
        test(
            "crds_install_with_server_side_apply_and_become_established",
            crds_established,
        ),
        test(
            "examples_are_accepted_and_read_back_unchanged",
            examples_round_trip,
        ),
        test(
            "deployment_gets_running_pods_with_pod_ips_and_an_endpointslice",
            workloads_run,
        ),
        test(
            "kubectl_get_portico_lists_all_three_kinds",
            kubectl_get_portico,
        ),
        test(
            "kubectl_explain_route_rules_shows_the_schema_docs",
            kubectl_explain,
        ),
    ];
    tests.extend(invalid_cases());
    harness::run("foundation", tests)
}

fn api_resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "Gateway" => "gateways",
        "Route" => "routes",
        "RoutePolicy" => "routepolicies",
        _ => "servicepolicies",
    };
    ApiResource {
        group: "portico.dev".into(),
        version: "v1alpha1".into(),
        api_version: "portico.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn dynamic_api(ctx: &Ctx, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &api_resource(kind))
}

fn load_examples() -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for file in ["gateway.yaml", "routes.yaml", "servicepolicy.yaml"] {
        let path = repo_root().join("examples").join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    Ok(docs)
}

async fn apply(ctx: &Ctx, doc: &Value) -> anyhow::Result<DynamicObject> {
    let kind = doc["kind"].as_str().context("document without kind")?;
    let name = doc["metadata"]["name"]
        .as_str()
        .context("document without name")?;
    let api = dynamic_api(ctx, kind);
    Ok(api
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(doc))
        .await?)
}

async fn crds_established(ctx: Ctx) -> anyhow::Result<()> {
    // The harness installed them already; applying again must be a clean no-op.
    let names =
        portico_tests::crds::apply_with_client(&ctx.client, &repo_root().join("crds")).await?;
    // Portico's own, and the Gateway API's standard-channel kinds Portico serves, vendored as
    // they are upstream (their categories, columns and status are the Gateway API's, not
    // checked here).
    let (portico, vendored): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|n| n.ends_with(".portico.dev"));
    ensure!(
        portico
            == [
                "gateways.portico.dev",
                "routepolicies.portico.dev",
                "routes.portico.dev",
                "servicepolicies.portico.dev"
            ],
        "unexpected CRDs: {portico:?}"
    );
    ensure!(
        vendored
            == [
                "gatewayclasses.gateway.networking.k8s.io",
                "gateways.gateway.networking.k8s.io",
                "grpcroutes.gateway.networking.k8s.io",
                "httproutes.gateway.networking.k8s.io",
                "referencegrants.gateway.networking.k8s.io"
            ],
        "unexpected vendored CRDs: {vendored:?}"
    );
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for name in &portico {
        let crd = api.get(name).await?;
        let status = crd.status.context("no status")?;
        let accepted = status.accepted_names.context("no accepted names")?;
        ensure!(
            accepted.categories.unwrap_or_default() == ["portico"],
            "{name}: categories"
        );
        ensure!(
            !accepted.short_names.unwrap_or_default().is_empty(),
            "{name}: no short names"
        );
        let version = &crd.spec.versions[0];
        ensure!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "{name}: status"
        );
        ensure!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name}: printer columns"
        );
    }
    Ok(())
}

async fn examples_round_trip(ctx: Ctx) -> anyhow::Result<()> {
    let docs = load_examples()?;
    ensure!(
        docs.len() >= 4,
        "expected at least 4 example documents, found {}",
        docs.len()
    );
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        apply(&ctx, doc)
            .await
            .with_context(|| format!("applying example {kind}/{name}"))?;
        let stored = dynamic_api(&ctx, kind).get(name).await?;
        let stored_spec = &stored.data["spec"];
        ensure!(
            stored_spec == &doc["spec"],
            "{kind}/{name} changed on the way through the apiserver:\n sent: {}\n read: {}",
            doc["spec"],
            stored_spec
        );
    }
    Ok(())
}

async fn workloads_run(ctx: Ctx) -> anyhow::Result<()> {
    let ns = &ctx.namespace;
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{"name": "echo", "image": "portico.dev/echo:test",
                    "ports": [{"name": "http", "containerPort": 8080}]}]}
            }
        }
    }))?;
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))?;
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let svc = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await?;
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    ensure!(
        cluster_ip.starts_with("198.19."),
        "ClusterIP {cluster_ip} is outside 198.19.0.0/16"
    );

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: Vec<String> = pods
            .list(&ListParams::default().labels("app=echo"))
            .await?
            .items
            .into_iter()
            .filter_map(|p| {
                let status = p.status?;
                (status.phase.as_deref() == Some("Running")).then_some(status.pod_ip)?
            })
            .collect();
        let mut ready_ips: Vec<String> = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
            .await?
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .flat_map(|e| e.addresses)
            .collect();
        ready_ips.sort();
        let mut running_sorted = running.clone();
        running_sorted.sort();
        if running.len() == 2 && ready_ips == running_sorted {
            for ip in &running {
                ensure!(
                    ip.starts_with("198.18."),
                    "pod IP {ip} is outside 198.18.0.0/15"
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after 60s: running pod IPs {running:?}, ready EndpointSlice addresses {ready_ips:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kubectl(ctx: &Ctx, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cluster::component("kubectl")?)
        .arg(format!("--kubeconfig={}", ctx.plane.kubeconfig.display()))
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn kubectl_get_portico(ctx: Ctx) -> anyhow::Result<()> {
    for doc in load_examples()? {
        apply(&ctx, &doc).await?;
    }
    // Discovery lists new CRDs under their category a moment after they are Established.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        match kubectl(&ctx, &["get", "portico", "-n", &ctx.namespace]) {
            Ok(out) => break out,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    for needle in [
        "gateway.portico.dev/public",
        "route.portico.dev/shop",
        "route.portico.dev/orders-mesh",
        "servicepolicy.portico.dev/orders",
        "ACCEPTED",
        "PROGRAMMED",
        "TARGET",
    ] {
        ensure!(
            out.contains(needle),
            "`kubectl get portico` lacks {needle:?}:\n{out}"
        );
    }
    let all = kubectl(&ctx, &["get", "portico", "-A"])?;
    ensure!(
        all.contains(&ctx.namespace),
        "`kubectl get portico -A` lacks the namespace:\n{all}"
    );
    Ok(())
}

async fn kubectl_explain(ctx: Ctx) -> anyhow::Result<()> {
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kubectl(&ctx, &["explain", "route.spec.rules"]) {
            Ok(out) => {
                for needle in [
                    "backendRefs",
                    "matches",
                    "filters",
                    "Ordered rules",
                    "timeouts",
                ] {
                    ensure!(
                        out.contains(needle),
                        "`kubectl explain route.spec.rules` lacks {needle:?}:\n{out}"
                    );
                }
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid objects: each is rejected by the apiserver with a message naming the field.

fn base(kind: &str) -> Value {
    match kind {
        "Gateway" => json!({"listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}),
        "Route" => json!({
            "parentRefs": [{"kind": "Gateway", "name": "public"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]
        }),
        "RoutePolicy" => json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "cors": {"allowOrigins": ["https://shop.example.com"]}
        }),
        _ => json!({"targetRef": {"group": "", "kind": "Service", "name": "web"},
                    "protocol": "HTTP1"}),
    }
}

/// (test name, kind, JSON pointer to change in the base spec, new value, field, message part)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Value,
    &'static str,
    &'static str,
);

fn cases() -> Vec<Case> {
    let listener = |name: &str, port: u16| json!({"name": name, "port": port, "protocol": "HTTP"});
    vec![
        (
            "gateway_listener_port_out_of_range",
            "Gateway",
            "/listeners/0/port",
            json!(0),
            "spec.listeners[0].port",
            "greater than or equal to 1",
        ),
        (
            "gateway_https_listener_without_tls",
            "Gateway",
            "/listeners/0/protocol",
            json!("HTTPS"),
            "spec.listeners[0].tls",
            "HTTPS listeners need tls.certificateRefs",
        ),
        (
            "gateway_tls_certificate_ref_with_a_key",
            "Gateway",
            "/listeners/0",
            json!({"name": "https", "port": 8443, "protocol": "HTTPS",
                   "tls": {"certificateRefs": [{"name": "shop-tls", "key": "tls.crt"}]}}),
            "spec.listeners[0].tls.certificateRefs",
            "key has no meaning here",
        ),
        (
            "gateway_rate_limit_store_address_without_a_valid_port",
            "Gateway",
            "/rateLimitStore",
            json!({"redis": {"address": "redis.cache:65536"}}),
            "spec.rateLimitStore.redis.address",
            "should match",
        ),
        (
            "gateway_rate_limit_store_timeout_over_10s",
            "Gateway",
            "/rateLimitStore",
            json!({"redis": {"address": "redis.cache:6379", "timeout": "11s"}}),
            "spec.rateLimitStore.redis.timeout",
            "timeout must be longer than 0s and at most 10s",
        ),
        (
            "gateway_rate_limit_store_bad_failure_mode",
            "Gateway",
            "/rateLimitStore",
            json!({"redis": {"address": "redis.cache:6379", "failureMode": "Maybe"}}),
            "spec.rateLimitStore.redis.failureMode",
            "Unsupported value",
        ),
        (
            "gateway_duplicate_listener_names",
            "Gateway",
            "/listeners",
            json!([listener("web", 80), listener("web", 81)]),
            "spec.listeners",
            "listener names must be unique",
        ),
        (
            "gateway_duplicate_listener_ports",
            "Gateway",
            "/listeners",
            json!([listener("a", 80), listener("b", 80)]),
            "spec.listeners",
            "unique port and hostname",
        ),
        (
            "gateway_unknown_protocol",
            "Gateway",
            "/listeners/0/protocol",
            json!("UDP"),
            "spec.listeners[0].protocol",
            "Unsupported value",
        ),
        (
            "gateway_tcp_listener_with_hostname",
            "Gateway",
            "/listeners/0",
            json!({"name": "pg", "port": 5432, "protocol": "TCP", "hostname": "db.example.com"}),
            "spec.listeners[0].hostname",
            "hostname does not apply to TCP listeners",
        ),
        (
            "gateway_without_listeners",
            "Gateway",
            "/listeners",
            json!([]),
            "spec.listeners",
            "should have at least 1 items",
        ),
        (
            "gateway_replicas_negative",
            "Gateway",
            "/replicas",
            json!(-1),
            "spec.replicas",
            "greater than or equal to 0",
        ),
        (
            "route_parent_kind_not_gateway_or_service",
            "Route",
            "/parentRefs/0/kind",
            json!("Pod"),
            "spec.parentRefs[0].kind",
            "Unsupported value",
        ),
        (
            "route_section_name_on_service_parent",
            "Route",
            "/parentRefs/0",
            json!({"kind": "Service", "name": "web", "sectionName": "http"}),
            "spec.parentRefs[0].sectionName",
            "applies only to Gateway parents",
        ),
        (
            "route_redirect_with_backends",
            "Route",
            "/rules/0/filters",
            json!([{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]),
            "spec.rules[0].backendRefs",
            "backendRefs must be empty",
        ),
        (
            "route_direct_response_without_status",
            "Route",
            "/rules/0",
            json!({"filters": [{"type": "DirectResponse", "directResponse": {"body": "hi"}}]}),
            "spec.rules[0].filters[0].directResponse.statusCode",
            "Required value",
        ),
        (
            "route_aggregate_with_backend_refs",
            "Route",
            "/rules/0/aggregate",
            json!({"backends": [{"name": "users", "port": 80}]}),
            "spec.rules[0].aggregate",
            "either forwards (backendRefs) or aggregates",
        ),
        (
            "route_aggregate_with_a_repeated_key",
            "Route",
            "/rules/0",
            json!({"aggregate": {"backends": [{"name": "a", "port": 80, "key": "k"},
                                              {"name": "b", "port": 80, "key": "k"}]}}),
            "spec.rules[0].aggregate.backends",
            "keys must be unique",
        ),
        (
            "route_aggregate_matching_post",
            "Route",
            "/rules/0",
            json!({"matches": [{"method": "POST"}],
                   "aggregate": {"backends": [{"name": "a", "port": 80}]}}),
            "spec.rules[0].matches",
            "answers GET and HEAD only",
        ),
        (
            "route_aggregate_with_retry",
            "Route",
            "/rules/0",
            json!({"retry": {"attempts": 1},
                   "aggregate": {"backends": [{"name": "a", "port": 80}]}}),
            "spec.rules[0].aggregate",
            "has no retry or timeouts",
        ),
        (
            "route_aggregate_path_with_a_query",
            "Route",
            "/rules/0",
            json!({"aggregate": {"backends": [{"name": "a", "port": 80, "path": "/x?y=1"}]}}),
            "spec.rules[0].aggregate.backends[0].path",
            "should match",
        ),
        (
            "route_weight_out_of_range",
            "Route",
            "/rules/0/backendRefs/0/weight",
            json!(2_000_000),
            "spec.rules[0].backendRefs[0].weight",
            "less than or equal to 1000000",
        ),
        (
            "route_filter_type_without_its_field",
            "Route",
            "/rules/0/filters",
            json!([{"type": "URLRewrite", "requestHeaderModifier": {"remove": ["x"]}}]),
            "spec.rules[0].filters[0]",
            "urlRewrite must be set for type URLRewrite",
        ),
        (
            "route_exact_path_without_slash",
            "Route",
            "/rules/0/matches",
            json!([{"path": {"type": "Exact", "value": "api"}}]),
            "spec.rules[0].matches[0].path.value",
            "must start with '/'",
        ),
        (
            "route_malformed_duration",
            "Route",
            "/rules/0/timeouts",
            json!({"request": "10 seconds"}),
            "spec.rules[0].timeouts.request",
            "should match",
        ),
        (
            "route_backend_timeout_longer_than_request",
            "Route",
            "/rules/0/timeouts",
            json!({"request": "1s", "backendRequest": "5s"}),
            "spec.rules[0].timeouts.backendRequest",
            "must not be longer than request",
        ),
        (
            "route_redirect_status_not_a_redirect",
            "Route",
            "/rules/0",
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}]}),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301, 302, 303, 307, 308",
        ),
        (
            "route_too_many_hostnames",
            "Route",
            "/hostnames",
            json!(
                (0..17)
                    .map(|i| format!("h{i}.example.com"))
                    .collect::<Vec<_>>()
            ),
            "spec.hostnames",
            "must have at most 16 items",
        ),
        (
            "route_cors_credentials_with_wildcard_origin",
            "Route",
            "/rules/0/cors",
            json!({"allowOrigins": ["*"], "allowCredentials": true}),
            "spec.rules[0].cors.allowOrigins",
            "cannot be combined with the wildcard origin",
        ),
        (
            "route_header_rate_limit_without_header",
            "Route",
            "/rules/0/rateLimit",
            json!({"requests": 10, "unit": "Second", "key": "Header"}),
            "spec.rules[0].rateLimit.header",
            "header must be set when key is Header",
        ),
        (
            "route_jwt_with_two_key_sources",
            "Route",
            "/rules/0/authentication",
            json!({"jwt": {"issuer": "i", "jwksUri": "https://x/jwks", "jwksSecretRef": {"name": "s"}}}),
            "spec.rules[0].authentication.jwt",
            "exactly one of jwksUri and jwksSecretRef",
        ),
        (
            "policy_consistent_hash_without_input",
            "ServicePolicy",
            "/loadBalancer",
            json!({"type": "ConsistentHash"}),
            "spec.loadBalancer.consistentHash",
            "consistentHash must be set for type ConsistentHash",
        ),
        (
            "policy_ejection_percent_over_100",
            "ServicePolicy",
            "/outlierDetection",
            json!({"maxEjectionPercent": 150}),
            "spec.outlierDetection.maxEjectionPercent",
            "less than or equal to 100",
        ),
        (
            "policy_health_check_timeout_not_below_interval",
            "ServicePolicy",
            "/healthCheck",
            json!({"path": "/healthz", "interval": "1s", "timeout": "2s"}),
            "spec.healthCheck.timeout",
            "timeout must be shorter than interval",
        ),
        (
            "policy_without_any_policy",
            "ServicePolicy",
            "",
            json!({"targetRef": {"group": "", "kind": "Service", "name": "web"}}),
            "spec",
            "at least one policy",
        ),
        (
            "route_policy_cache_on_a_gateway",
            "RoutePolicy",
            "",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}],
                   "cache": {"ttl": "1m"}}),
            "spec.targetRefs",
            "cache and fallback apply to routes",
        ),
        (
            "route_policy_without_any_policy",
            "RoutePolicy",
            "",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}]}),
            "spec",
            "at least one policy besides targetRefs",
        ),
        (
            "route_policy_section_name_on_a_gateway",
            "RoutePolicy",
            "/targetRefs/0",
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web", "sectionName": "x"}),
            "spec.targetRefs[0].sectionName",
            "a Gateway is targeted whole",
        ),
        (
            "policy_target_kind_not_service",
            "ServicePolicy",
            "/targetRef/kind",
            json!("Deployment"),
            "spec.targetRef.kind",
            "Unsupported value",
        ),
    ]
}

fn invalid_cases() -> Vec<Test> {
    cases()
        .into_iter()
        .map(|(name, kind, pointer, value, field, message)| {
            test(format!("rejects_{name}"), move |ctx| {
                let value = value.clone();
                async move { expect_rejected(ctx, kind, pointer, value, field, message).await }
            })
        })
        .collect()
}

async fn expect_rejected(
    ctx: Ctx,
    kind: &str,
    pointer: &str,
    value: Value,
    field: &str,
    message: &str,
) -> anyhow::Result<()> {
    let mut spec = base(kind);
    if pointer.is_empty() {
        spec = value;
    } else {
        // Replace or insert the last segment of the pointer under its (existing) parent.
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        let parent = spec
            .pointer_mut(parent)
            .with_context(|| format!("no {parent} in the base {kind}"))?;
        match parent {
            Value::Object(map) => {
                map.insert(key.to_string(), value);
            }
            Value::Array(items) => {
                let index: usize = key.parse()?;
                *items
                    .get_mut(index)
                    .with_context(|| format!("no {pointer} in the base"))? = value;
            }
            _ => bail!("{parent} in the base {kind} is not an object or array"),
        }
    }
    let doc = json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "invalid"}, "spec": spec
    });
    // The unchanged base must be accepted, so the rejection is down to the change alone.
    let mut valid = doc.clone();
    valid["spec"] = base(kind);
    valid["metadata"]["name"] = json!("valid");
    apply(&ctx, &valid)
        .await
        .context("the valid base object was rejected")?;
    match apply(&ctx, &doc).await {
        Ok(_) => bail!("the apiserver accepted an invalid {kind}: {}", doc["spec"]),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                text.contains(field),
                "error does not name the field {field:?}: {text}"
            );
            ensure!(text.contains(message), "error lacks {message:?}: {text}");
            Ok(())
        }
    }
}
