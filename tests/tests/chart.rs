//! The Helm chart against a real control plane: lint, server-side dry run, install (operator
//! pods scheduled on the kwok node), upgrade with changed values, uninstall leaving only the CRDs.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use portico_tests::cluster;
use portico_tests::harness::{self, Ctx, repo_root, test};

fn main() -> ExitCode {
    harness::run(
        "chart",
        vec![
            test("helm_lint_passes", helm_lint),
            test(
                "rendered_chart_passes_a_server_side_dry_run",
                server_dry_run,
            ),
            test(
                "install_upgrade_uninstall_leave_nothing_but_the_crds",
                install_upgrade_uninstall,
            ),
        ],
    )
}

fn run(ctx: &Ctx, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    portico_tests::support::tool(ctx, program, args, stdin)
}

fn chart() -> String {
    repo_root().join("charts/portico").display().to_string()
}

async fn helm_lint(ctx: Ctx) -> anyhow::Result<()> {
    let out = run(&ctx, "helm", &["lint", "--strict", &chart()], None)?;
    ensure!(out.contains("0 chart(s) failed"), "{out}");
    // The values schema refuses a bad value with the field named.
    let bad = Command::new(cluster::component("helm")?)
        .args(["template", "x", &chart(), "--set", "operator.replicas=0"])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && err.contains("replicas"),
        "schema did not refuse replicas=0: {err}"
    );
    Ok(())
}

async fn server_dry_run(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace.as_str();
    let rendered = run(
        &ctx,
        "helm",
        &["template", "portico", &chart(), "-n", ns],
        None,
    )?;
    let out = run(
        &ctx,
        "kubectl",
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        Some(&rendered),
    )?;
    for kind in [
        "deployment.apps/portico-operator",
        "service/portico-operator",
        "serviceaccount/portico-operator",
        "poddisruptionbudget.policy/portico-operator",
        "secret/portico-operator-tls",
        "clusterrole.rbac.authorization.k8s.io/",
    ] {
        ensure!(out.contains(kind), "dry run did not create {kind}:\n{out}");
    }
    Ok(())
}

async fn install_upgrade_uninstall(ctx: Ctx) -> anyhow::Result<()> {
    let ns = ctx.namespace.as_str();
    run(
        &ctx,
        "helm",
        &[
            "install",
            "portico",
            &chart(),
            "-n",
            ns,
            "--wait",
            "--timeout=90s",
        ],
        None,
    )?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let selector = "app.kubernetes.io/name=portico";
    wait_for_running_pods(&pods, selector, 2).await?;
    let tls_before = secrets.get("portico-operator-tls").await?.data;
    // The webhooks trust exactly the CA in the generated Secret.
    let ca = tls_before
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .context("no ca.crt")?
        .0
        .clone();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let hook = mutating.get(&format!("portico-{ns}-injector")).await?;
    let bundle = hook.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone();
    ensure!(
        bundle.map(|b| b.0) == Some(ca),
        "injector caBundle differs from the Secret's CA"
    );
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    validating.get(&format!("portico-{ns}-validator")).await?;

    run(
        &ctx,
        "helm",
        &[
            "upgrade",
            "portico",
            &chart(),
            "-n",
            ns,
            "--set",
            "operator.replicas=3",
            "--set",
            "operator.logLevel=debug",
            "--wait",
            "--timeout=90s",
        ],
        None,
    )?;
    let deployment = deployments.get("portico-operator").await?;
    let spec = deployment.spec.context("no spec")?;
    ensure!(
        spec.replicas == Some(3),
        "upgrade did not scale to 3: {:?}",
        spec.replicas
    );
    let args = spec.template.spec.context("no pod spec")?.containers[0]
        .args
        .clone()
        .unwrap_or_default();
    ensure!(
        args.iter().any(|a| a == "--log-level=debug"),
        "upgrade did not change args: {args:?}"
    );
    wait_for_running_pods(&pods, selector, 3).await?;
    ensure!(
        secrets.get("portico-operator-tls").await?.data == tls_before,
        "the generated TLS certificate changed on upgrade"
    );

    run(
        &ctx,
        "helm",
        &["uninstall", "portico", "-n", ns, "--wait", "--timeout=90s"],
        None,
    )?;
    let left = run(
        &ctx,
        "kubectl",
        &[
            "get",
            "all,sa,secret,role,rolebinding,pdb",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/instance=portico",
            "-o",
            "name",
        ],
        None,
    )?;
    ensure!(
        left.trim().is_empty(),
        "uninstall left objects behind:\n{left}"
    );
    let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    let left: Vec<String> = roles
        .list(&ListParams::default().labels("app.kubernetes.io/instance=portico"))
        .await?
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .filter(|n| n.ends_with(ns))
        .collect();
    ensure!(left.is_empty(), "uninstall left cluster roles: {left:?}");
    ensure!(
        mutating
            .get_opt(&format!("portico-{ns}-injector"))
            .await?
            .is_none()
            && validating
                .get_opt(&format!("portico-{ns}-validator"))
                .await?
                .is_none(),
        "uninstall left webhook configurations"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for crd in [
        "gateways.portico.dev",
        "routes.portico.dev",
        "servicepolicies.portico.dev",
    ] {
        crds.get(crd)
            .await
            .with_context(|| format!("uninstall removed CRD {crd}"))?;
    }
    Ok(())
}

async fn wait_for_running_pods(pods: &Api<Pod>, selector: &str, want: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(cluster::NODE_NAME)
            })
            .count();
        if running == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{running} of {want} operator pods Running on {} after 60s",
                cluster::NODE_NAME
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
