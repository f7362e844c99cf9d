//! The test runner of every end-to-end test binary: one control plane per binary, one
//! Kubernetes namespace per test, teardown whatever the tests do.
//!
//! Test binaries use `harness = false` and call [`run`] from `main`: libtest's harness has no
//! hook that runs after the last test, and the control plane must be stopped then, also when
//! tests panic. The output and exit code are libtest's (via libtest-mimic).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};

use crate::cluster::{ControlPlane, Nodes};

/// What a test gets: an admin client, a namespace of its own, and the control plane.
#[derive(Clone)]
pub struct Ctx {
    /// Admin client.
    pub client: kube::Client,
    /// A fresh namespace for this test, deleted afterwards.
    pub namespace: String,
    /// The control plane, for its kubeconfig and certificates.
    pub plane: Arc<ControlPlane>,
}

type TestFn =
    Box<dyn Fn(Ctx) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// One end-to-end test.
pub struct Test {
    name: String,
    body: TestFn,
}

/// Declares a test named `name` whose body is the async function `body`.
pub fn test<F, Fut>(name: impl Into<String>, body: F) -> Test
where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Test {
        name: name.into(),
        body: Box::new(move |ctx| Box::pin(body(ctx))),
    }
}

/// The repository root (for `crds/`, `examples/`, `charts/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts a control plane, installs the CRDs, runs `tests` and stops the control plane.
pub fn run(suite: &str, tests: Vec<Test>) -> ExitCode {
    run_on(suite, Nodes::Kwok, tests)
}

/// Like [`run`], on the given kind of node. With a real node the tests run one at a time in the
/// order given (they share what the cluster runs, such as one Helm release of Portico), and
/// the CRDs are left for the tests to install (the chart does, as for a user).
pub fn run_on(suite: &str, nodes: Nodes, tests: Vec<Test>) -> ExitCode {
    let mut args = Arguments::from_args();
    if nodes == Nodes::Real {
        args.test_threads = Some(1);
    }
    if args.list {
        let trials = tests
            .into_iter()
            .map(|t| Trial::test(t.name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("cannot build a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let setup = runtime.block_on(async {
        let dir = crate::cluster::unique_dir(&repo_root().join("target/e2e"), suite)?;
        let plane = ControlPlane::start_with(&dir, nodes).await?;
        let client = plane.client().await?;
        if nodes == Nodes::Kwok {
            crate::crds::install(&client, &plane.kubeconfig, &repo_root().join("crds")).await?;
        }
        anyhow::Ok((Arc::new(plane), client))
    });
    let (plane, client) = match setup {
        Ok(ok) => (Some(ok.0), Some(ok.1)),
        Err(e) => {
            // Every test then fails with the reason, rather than the suite vanishing silently.
            eprintln!("control plane setup failed: {e:#}");
            let first = format!("{e:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let msg = format!("control plane setup failed (details above): {first}");
            let trials = tests
                .into_iter()
                .map(|t| {
                    let msg = msg.clone();
                    Trial::test(t.name, move || Err(Failed::from(msg)))
                })
                .collect();
            return libtest_mimic::run(&args, trials).exit_code();
        }
    };
    let counter = Arc::new(AtomicUsize::new(0));
    let trials = tests
        .into_iter()
        .map(|t| {
            let runtime = runtime.clone();
            let plane = plane.clone();
            let client = client.clone();
            let counter = counter.clone();
            let body = Arc::new(t.body);
            let name = t.name.clone();
            Trial::test(t.name, move || {
                let (Some(plane), Some(client)) = (plane, client) else {
                    return Err("no control plane".into());
                };
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let namespace = namespace_name(&name, n);
                runtime
                    .block_on(async {
                        create_namespace(&client, &namespace).await?;
                        let ctx = Ctx {
                            client: client.clone(),
                            namespace: namespace.clone(),
                            plane,
                        };
                        let result = body(ctx).await;
                        let _ = Api::<Namespace>::all(client)
                            .delete(&namespace, &DeleteParams::default())
                            .await;
                        result
                    })
                    .map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the control plane even when tests failed or panicked (panics are caught per trial).
    if let Some(plane) = plane {
        match Arc::try_unwrap(plane) {
            Ok(mut plane) => plane.stop(),
            Err(_) => {
                eprintln!("control plane still referenced at exit; it stops with the process")
            }
        }
    }
    conclusion.exit_code()
}

fn namespace_name(test: &str, n: usize) -> String {
    let mut name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(50);
    format!("{}-{n}", name.trim_matches('-'))
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}
