//! The Helm chart in `chart/`, checked by the real `helm` and
//! `kubernetes-validate` (installed into `.tools/` by `scripts/install-tools`)
//! and by running what it renders: the rendered Deployments' commands start
//! as local processes with the environment the manifests give them (see
//! `e2e::chart` for how cluster addresses map to this machine).
//!
//! One test binary (`--test chart`), one module per concern.

mod access;
mod ha;
mod persistence;
mod rendering;
mod runs;
mod security;
mod upgrade;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, ensure};
use base64::Engine;
use e2e::chart::{LocalCluster, Manifest, chart_dir, container, describe, env_literal};
use e2e::poll;
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::TaskView;

const RELEASE: &str = "workers";

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("examples"))
        .expect("chart/examples exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn example(name: &str) -> String {
    chart_dir()
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A values file in `dir` putting `modules` (op -> component bytes) in the
/// chart's modules ConfigMap.
fn modules_values(dir: &std::path::Path, name: &str, modules: &[(&str, &[u8])]) -> Result<String> {
    let files: serde_json::Map<String, Value> = modules
        .iter()
        .map(|(op, bytes)| (format!("{op}.wasm"), Value::String(b64(bytes))))
        .collect();
    let path = dir.join(name);
    // JSON is YAML.
    std::fs::write(
        &path,
        serde_json::to_string(&json!({ "modules": { "files": files } }))?,
    )?;
    Ok(path.display().to_string())
}

fn deployment_replicas(manifest: &Manifest, name: &str) -> u64 {
    manifest
        .find("Deployment", name)
        .map(|d| d["spec"]["replicas"].as_u64().unwrap_or(1))
        .unwrap_or(0)
}

fn env_of(manifest: &Manifest, deployment: &str, var: &str) -> Option<String> {
    let d = manifest.find("Deployment", deployment)?;
    env_literal(container(d).ok()?, var).map(str::to_string)
}

/// GET `url` as JSON; `None` on any failure (for a poll to retry).
async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Option<T> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Task `id` read from `planner` once it is final.
async fn final_task(http: &reqwest::Client, planner: &str, id: TaskId) -> Result<TaskView> {
    let url = format!("{planner}/tasks/{id}");
    poll(Duration::from_secs(60), &format!("task {id}"), || async {
        let view: TaskView = get_json(http, &url).await?;
        view.status.is_final().then_some(view)
    })
    .await
}

/// Runs the rendered `helm test` Pod against the running cluster; it must pass.
async fn helm_test_passes(cluster: &LocalCluster) -> Result<std::process::Output> {
    let pod = cluster.manifest.get("Pod", "workers-test-submit")?;
    let output = cluster
        .run_pod(pod, "workers-test-submit", Duration::from_secs(60))
        .await?;
    ensure!(
        output.status.success(),
        "the helm test Pod failed: {}",
        describe(&output)
    );
    Ok(output)
}
