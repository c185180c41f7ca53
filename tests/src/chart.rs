//! Helpers of the Helm chart tests: the real `helm` and `kubernetes-validate`
//! that `scripts/install-tools` puts in `.tools/`, parsing what
//! `helm template` renders ([`Manifest`]), and running rendered Deployments
//! as local processes ([`LocalCluster`]; its module says how a rendered pod
//! becomes a local process).

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, bail, ensure};

mod kubelet;
mod local_cluster;
mod manifest;
mod pod_setup;

pub use kubelet::{expand, write_atomic_dir};
pub use local_cluster::{LocalCluster, LocalPod, PortMap, free_port};
pub use manifest::{
    Manifest, container, env_literal, name_of, pod_metadata, pod_spec, quantity_bytes, selects,
};

/// The workspace root (holding `chart/` and `.tools/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace_root().join("chart")
}

fn tool(relative: &str) -> Result<PathBuf> {
    let path = workspace_root().join(relative);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/install-tools (it installs helm, kubectl and kubernetes-validate into .tools/)",
            path.display()
        );
    }
    Ok(path)
}

/// `.tools/bin/helm`.
pub fn helm_path() -> Result<PathBuf> {
    tool(".tools/bin/helm")
}

/// `.tools/venv/bin/kubernetes-validate`.
pub fn kubernetes_validate_path() -> Result<PathBuf> {
    tool(".tools/venv/bin/kubernetes-validate")
}

/// Runs `helm` with `args` in the workspace root; the status is not checked.
pub fn helm(args: &[&str]) -> Result<Output> {
    std::process::Command::new(helm_path()?)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("running helm")
}

/// Like [`helm`], without blocking the async runtime (for a test that
/// serves something helm talks to).
pub async fn helm_async(args: &[&str]) -> Result<Output> {
    tokio::process::Command::new(helm_path()?)
        .args(args)
        .current_dir(workspace_root())
        .kill_on_drop(true)
        .output()
        .await
        .context("running helm")
}

/// Stdout and stderr of a command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm template <release> chart/ --namespace default <args>`, parsed.
pub fn render(release: &str, args: &[&str]) -> Result<Manifest> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        release,
        chart.to_str().context("chart path")?,
        "--namespace",
        "default",
    ];
    all.extend_from_slice(args);
    let output = helm(&all)?;
    ensure!(
        output.status.success(),
        "helm {} failed: {}",
        all.join(" "),
        describe(&output)
    );
    Manifest::parse(&String::from_utf8(output.stdout)?)
}
