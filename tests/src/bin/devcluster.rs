//! `portico-devcluster up|down DIR`: a development control plane with a real kubelet node that
//! outlives the command.
//!
//! `make cluster-up` runs `up` inside the named network namespace `portico-dev` (entered with
//! `nsenter --net`, which keeps the host's `/sys`); the processes keep running there, the
//! control plane's PIDs in `DIR/pids`, the node's state in `DIR/node/`. `down` stops the node
//! (pods, processes, mounts, cgroups, host leftovers) and then the control plane by those PIDs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portico_tests::cluster::{self, ControlPlane, Nodes};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (cmd, dir) = match (args.next(), args.next()) {
        (Some(cmd), Some(dir)) => (cmd, PathBuf::from(dir)),
        _ => bail!("usage: portico-devcluster up|down DIR"),
    };
    match cmd.as_str() {
        "up" => up(&dir),
        "down" => down(&dir),
        other => bail!("unknown command {other}; usage: portico-devcluster up|down DIR"),
    }
}

fn pids_file(dir: &Path) -> PathBuf {
    dir.join("pids")
}

fn read_pids(dir: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(pids_file(dir)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            Some((name.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn up(dir: &Path) -> anyhow::Result<()> {
    let pids = read_pids(dir);
    if !pids.is_empty() && pids.iter().all(|(_, pid)| alive(*pid)) {
        println!(
            "development control plane already running (PIDs in {})",
            pids_file(dir).display()
        );
        return Ok(());
    }
    if !pids.is_empty() {
        down(dir)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let plane = runtime.block_on(async {
        // No CRDs here: `helm install` brings them, as for a user.
        ControlPlane::start_with(dir, Nodes::Real).await
    })?;
    std::fs::write(
        dir.join("etcd-data-dir"),
        plane.data_dir().display().to_string(),
    )?;
    let pids = plane.detach();
    let text: String = pids.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
    std::fs::write(pids_file(dir), text).context("writing the PID file")?;
    println!(
        "development control plane and node {} running",
        portico_tests::node::NODE_NAME
    );
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    portico_tests::node::teardown(&dir.join("node"));
    let pids = read_pids(dir);
    for (_, pid) in pids.iter().rev() {
        if alive(*pid) {
            cluster::terminate(*pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|(_, p)| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, pid) in &pids {
        if alive(*pid) {
            eprintln!("{name} (PID {pid}) ignored SIGTERM; sending SIGKILL");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    if let Ok(data) = std::fs::read_to_string(dir.join("etcd-data-dir")) {
        let _ = std::fs::remove_dir_all(data.trim());
    }
    let _ = std::fs::remove_file(pids_file(dir));
    println!(
        "development control plane stopped ({} processes)",
        pids.len()
    );
    Ok(())
}
