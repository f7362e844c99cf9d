//! `portico-crdgen`: writes the CRD manifests into each given directory, or with `--check`
//! fails when any committed manifest differs from what the types generate.

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut check = false;
    let mut dirs = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            flag if flag.starts_with('-') => {
                bail!("unknown flag {flag}; usage: portico-crdgen [--check] DIR...")
            }
            dir => dirs.push(PathBuf::from(dir)),
        }
    }
    if dirs.is_empty() {
        bail!("usage: portico-crdgen [--check] DIR...");
    }
    let mut stale = Vec::new();
    for dir in &dirs {
        for crd in portico_api::crds::all() {
            let path = dir.join(portico_api::crds::file_name(&crd));
            let text = portico_api::crds::render(&crd)?;
            if check {
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                if committed != text {
                    stale.push(path.display().to_string());
                }
            } else {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "CRD manifests are stale (run `make crds` and commit): {}",
            stale.join(", ")
        );
    }
    if check {
        println!(
            "CRD manifests are up to date in {} director(ies)",
            dirs.len()
        );
    }
    Ok(())
}
