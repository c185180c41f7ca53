//! Run what it renders: the rendered Deployments and the `helm test` Pod
//! as local processes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{RELEASE, final_task, get_json, helm_test_passes, modules_values};
use anyhow::{Context, Result};
use e2e::chart::{LocalCluster, container, describe, render};
use e2e::{expected, fixture, poll};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wire::TaskId;
use wire::planner::{TaskStatus, WorkerView};

/// The chart rendered with a mix of flavors (and a `pow` flavor whose
/// module comes from the modules ConfigMap), every Deployment run as local
/// processes: the planner sees each worker with the right flavor, ops and
/// slots, and every task comes back right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_chart_renders_runs_and_computes() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let pow = std::fs::read(fixture("pow"))?;
    let modules = modules_values(scratch.path(), "modules.yaml", &[("pow", &pow)])?;
    let values: &[&str] = &[
        "--set",
        "general.replicas=2",
        "--set",
        "mul.replicas=3",
        "--set",
        "add.replicas=2",
        "--set",
        "mul.slots=2",
        "--set",
        "extraFlavors.pow.replicas=1",
        "--set",
        "extraFlavors.pow.ops={pow}",
        "-f",
        &modules,
        // Every task takes at least 100 ms, mul workers' at least 200 ms:
        // the task timings show WORK_MS reached the workers.
        "--set",
        "worker.workMs=100",
        "--set",
        "mul.workMs=200",
        "--set",
        "planner.tasks=6",
    ];
    let manifest = render(RELEASE, values)?;
    let token = manifest.secret_value("workers-token", "token")?;
    let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
    cluster.start_deployments().await?;

    let expected_flavors: BTreeMap<&str, (usize, Vec<&str>, u32)> = BTreeMap::from([
        ("general", (2, vec!["add", "mul"], 1)),
        ("mul", (3, vec!["mul"], 2)),
        ("add", (2, vec!["add"], 1)),
        ("pow", (1, vec!["pow"], 1)),
    ]);
    let planner_url = cluster.service_url("workers-planner", 3000)?;
    assert_eq!(
        cluster.pods.len(),
        1 + 2 + 3 + 2 + 1,
        "one process per replica"
    );
    let http = reqwest::Client::new();
    let workers: Vec<WorkerView> =
        poll(Duration::from_secs(30), "8 workers registered", || async {
            let list: Vec<WorkerView> = get_json(&http, &format!("{planner_url}/workers")).await?;
            (list.len() == 8).then_some(list)
        })
        .await?;

    let mut by_flavor: BTreeMap<String, Vec<&WorkerView>> = BTreeMap::new();
    for worker in &workers {
        by_flavor
            .entry(worker.flavor.clone())
            .or_default()
            .push(worker);
    }
    for (flavor, (count, ops, slots)) in &expected_flavors {
        let found = by_flavor
            .get(*flavor)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(found.len(), *count, "{flavor} workers: {workers:#?}");
        for worker in found {
            let names: Vec<&str> = worker
                .ops
                .as_ref()
                .context("ops")?
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            assert_eq!(&names, ops, "{}", worker.id);
            assert_eq!(worker.slots, *slots, "{}", worker.id);
            // WORKER_ID is the pod name, ADDRESS the port the process really listens on.
            let pod = cluster
                .pods
                .iter()
                .find(|p| p.name == worker.id)
                .with_context(|| format!("no pod named {}", worker.id))?;
            assert_eq!(pod.component, *flavor);
            assert_eq!(
                worker.url,
                format!("http://127.0.0.1:{}", pod.service.addr.port()),
                "{}",
                worker.id
            );
        }
    }
    let pow_digest = hex::encode(Sha256::digest(&pow));
    let pow_op = by_flavor["pow"][0].ops.as_ref().context("ops")?;
    assert_eq!(
        pow_op[0].digest, pow_digest,
        "pow is the module from the ConfigMap"
    );

    // TOKEN reached the planner: registering without it is refused, while the
    // workers (same Secret) registered.
    let refused = http
        .post(format!("{planner_url}/workers"))
        .json(&json!({"id": "intruder", "url": "http://127.0.0.1:1", "slots": 1, "ops": []}))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let with_token = http
        .post(format!("{planner_url}/workers"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await?;
    assert!(
        with_token.status().is_client_error() && with_token.status() != 401,
        "the Secret's token is the planner's: {}",
        with_token.status()
    );

    // DATA_DIR is the planner's data volume.
    let planner_pods = cluster.pods_of("workers-planner");
    let data = &planner_pods[0].mounts["/data"];
    assert!(
        std::fs::read_dir(data)?.next().is_some(),
        "the durable store lives in the data volume {}",
        data.display()
    );

    // Tasks: mul, add and pow, all must come back right.
    let mut submission = Vec::new();
    for i in 0..16i64 {
        submission.push(json!({"op": "mul", "args": [i, i + 3]}));
        submission.push(json!({"op": "add", "args": [i * 1000, -i]}));
    }
    for i in 0..4i64 {
        submission.push(json!({"op": "pow", "args": [i + 2, 3]}));
    }
    let response = http
        .post(format!("{planner_url}/tasks"))
        .json(&submission)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let ids: Vec<TaskId> = serde_json::from_value(response.json::<Value>().await?["ids"].clone())?;
    let mut views = Vec::new();
    for id in &ids {
        let view = final_task(&http, &planner_url, *id).await?;
        views.push(view);
    }
    let flavor_of: BTreeMap<&str, &str> = workers
        .iter()
        .map(|w| (w.id.as_str(), w.flavor.as_str()))
        .collect();
    for (task, view) in submission.iter().zip(&views) {
        let op = task["op"].as_str().unwrap_or("");
        let args: Vec<i64> = serde_json::from_value(task["args"].clone())?;
        let want = if op == "pow" {
            args[0].checked_pow(args[1] as u32)
        } else {
            expected(op, &args)
        };
        assert_eq!(view.status, TaskStatus::Done, "{task}: {view:?}");
        assert_eq!(view.result, want, "{task}");
        let worker = view.worker.as_deref().unwrap_or("");
        let flavor = flavor_of.get(worker).copied().unwrap_or("?");
        assert!(
            expected_flavors[flavor].1.contains(&op),
            "{op} ran on {worker} ({flavor})"
        );
        let took = view
            .finished_at_ms
            .unwrap_or(0)
            .saturating_sub(view.started_at_ms.unwrap_or(0));
        let floor = if flavor == "mul" { 200 } else { 100 };
        assert!(
            took + 1 >= floor,
            "{task} on a {flavor} worker took {took} ms; WORK_MS says at least {floor}"
        );
    }
    assert!(
        views
            .iter()
            .any(|v| flavor_of.get(v.worker.as_deref().unwrap_or("")) == Some(&"mul")),
        "specialists take mul tasks"
    );

    // The planner's TASKS random tasks ran too.
    let stats: Value = poll(Duration::from_secs(30), "all tasks done", || async {
        let stats: Value = get_json(&http, &format!("{planner_url}/stats")).await?;
        (stats["by_status"]["done"] == json!(ids.len() + 6)).then_some(stats)
    })
    .await?;
    for status in ["failed", "queued", "running", "cancelled"] {
        assert!(
            stats["by_status"][status].as_u64().unwrap_or(0) == 0,
            "{stats}"
        );
    }

    // `helm test`: the rendered test Pod's script, run here, passes.
    let output = helm_test_passes(&cluster).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("mul(6, 7): HTTP 200") && stdout.contains("add(2, 3): HTTP 200"),
        "{stdout}"
    );

    // A changed modules ConfigMap, applied as the kubelet would, hot-swaps
    // mul on the running workers; no process restarts.
    let mul_v2 = std::fs::read(fixture("mul_v2"))?;
    let changed = modules_values(
        scratch.path(),
        "modules-v2.yaml",
        &[("pow", &pow), ("mul", &mul_v2)],
    )?;
    let values_v2: Vec<&str> = values
        .iter()
        .copied()
        .chain(["-f", changed.as_str()])
        .collect();
    let upgraded = render(RELEASE, &values_v2)?;
    let pids: Vec<Option<u32>> = cluster.pods.iter().map(|p| p.service.child.id()).collect();
    let updated = cluster.update_config_map(upgraded.get("ConfigMap", "workers-modules")?)?;
    assert_eq!(updated, 8, "every worker mounts the modules");
    let v2_digest = hex::encode(Sha256::digest(&mul_v2));
    poll(
        Duration::from_secs(30),
        "every mul worker to offer mul v2",
        || async {
            let list: Vec<WorkerView> = get_json(&http, &format!("{planner_url}/workers")).await?;
            let muls: Vec<&str> = list
                .iter()
                .flat_map(|w| w.ops.iter().flatten())
                .filter(|o| o.name == "mul")
                .map(|o| o.digest.as_str())
                .collect();
            (muls.len() == 5 && muls.iter().all(|d| *d == v2_digest)).then_some(())
        },
    )
    .await?;
    let answer: Value = http
        .post(format!("{planner_url}/tasks?wait=true"))
        .json(&json!({"op": "mul", "args": [6, 7]}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["result"], 1_000_042, "mul v2 answers: {answer}");
    for (pod, pid) in cluster.pods.iter_mut().zip(pids) {
        assert_eq!(pod.service.child.id(), pid, "{} restarted", pod.name);
        assert!(
            pod.service.child.try_wait()?.is_none(),
            "{} exited",
            pod.name
        );
    }
    Ok(())
}

/// The `helm test` Pod must fail when the planner answers a wrong result or
/// no result: run its script against a fake planner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_test_pod_fails_unless_the_right_result_comes_back() -> Result<()> {
    use axum::http::StatusCode;
    let manifest = render(
        RELEASE,
        &[
            "--set",
            "general.replicas=0",
            "--set",
            "mul.replicas=1",
            "--set",
            "tests.timeoutSeconds=5",
        ],
    )?;
    let pod = manifest.get("Pod", "workers-test-submit")?.clone();
    let script = container(&pod)?["args"][0]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        script.contains("submit mul 6 7 42") && !script.contains("submit add"),
        "tests only the ops offered: {script}"
    );

    for (status, body, passes) in [
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 42}),
            true,
        ),
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 41}),
            false,
        ),
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 420}),
            false,
        ),
        (
            StatusCode::ACCEPTED,
            json!({"id": 1, "status": "queued"}),
            false,
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"id": 1, "status": "failed", "error": "boom"}),
            false,
        ),
    ] {
        let app = axum::Router::new().route(
            "/tasks",
            axum::routing::post(move || async move { (status, axum::Json(body.clone())) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
        cluster.set_service("workers-planner", 3000, port);
        let output = cluster
            .run_pod(&pod, "workers-test-submit", Duration::from_secs(30))
            .await?;
        assert_eq!(
            output.status.success(),
            passes,
            "answer {status} must make the test {}: {}",
            if passes { "pass" } else { "fail" },
            describe(&output)
        );
        server.abort();
    }
    Ok(())
}
