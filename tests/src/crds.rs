//! Installing the generated CRDs into a control plane.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

/// Field manager used for everything the tests apply.
pub const FIELD_MANAGER: &str = "portico-tests";

/// Reads every `*.yaml` CRD manifest in `dir`, in name order.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

/// Installs the CRDs the way users do, `kubectl apply --server-side -f DIR` (kubectl parses YAML
/// 1.1, which a Rust YAML parser does not), and waits until each is `Established`.
pub async fn install(
    client: &kube::Client,
    kubeconfig: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new(crate::cluster::component("kubectl")?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            FIELD_MANAGER,
        ])
        .arg("-f")
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in read_dir(dir)? {
        let name = crd.metadata.name.context("CRD without a name")?;
        wait_established(&api, &name).await?;
        names.push(name);
    }
    Ok(names)
}

/// Server-side applies every CRD in `dir` with the Rust client and waits until each is
/// `Established`.
pub async fn apply_with_client(client: &kube::Client, dir: &Path) -> anyhow::Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = read_dir(dir)?;
    if crds.is_empty() {
        bail!("no CRD manifests in {}", dir.display());
    }
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        wait_established(&api, name).await?;
    }
    Ok(names)
}

/// Waits until the CRD `name` reports `Established=True`.
pub async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> anyhow::Result<CustomResourceDefinition> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(crd);
        }
        if Instant::now() > deadline {
            bail!("CRD {name} not Established after 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
