//! Hot-swapping operation modules while tasks flow.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use e2e::{System, fixture, poll};
use serde_json::{Value, json};
use wire::planner::{OpRollout, RolloutReport, TaskStatus};

const TOKEN: &str = "swap-token";
const V2_OFFSET: i64 = 1_000_000;

fn digest_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

async fn worker_digest(url: &str, op: &str) -> Option<String> {
    let ops: Vec<Value> = reqwest::get(format!("{url}/ops"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    ops.iter()
        .find(|o| o["name"] == op)
        .and_then(|o| o["digest"].as_str())
        .map(str::to_string)
}

async fn put_module(
    system: &System,
    url: &str,
    bytes: Vec<u8>,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    // Not `system.client`, which presents the planner's token on its own.
    let _ = system;
    let mut request = reqwest::Client::new().put(url).body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn the_built_in_modules_are_reproducible_builds_of_ops() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system.add_worker("w", &[]).await?.url();
    for op in ["add", "mul"] {
        assert_eq!(
            worker_digest(&url, op).await,
            Some(digest_of(&fixture(op))?),
            "{op}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn swapping_mul_fleet_wide_under_load_fails_nothing_and_every_result_matches_its_digest()
-> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN)]).await?;
    for i in 0..4 {
        system
            .add_worker(&format!("w{i}"), &[("SLOTS", "2"), ("WORK_MS", "1-4")])
            .await?;
    }
    system.wait_for_workers(4).await?;
    let v1 = digest_of(&fixture("mul"))?;
    let v2_bytes = std::fs::read(fixture("mul_v2"))?;
    let v2 = digest_of(&fixture("mul_v2"))?;

    let tasks: Vec<Value> = (0..2000)
        .map(|i| json!({"op": if i % 4 == 0 { "add" } else { "mul" }, "args": [i, 3]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    poll(
        Duration::from_secs(30),
        "a fifth of the tasks to finish",
        || async {
            let stats: Value = system
                .client
                .get(system.url("/stats"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (stats["by_status"]["done"].as_u64()? >= 400).then_some(())
        },
    )
    .await?;

    let (status, _) = put_module(&system, &system.url("/ops/mul"), v2_bytes.clone(), None).await?;
    assert_eq!(status, 401, "a fleet upload without the token");
    let (status, body) = put_module(
        &system,
        &system.url("/ops/mul"),
        v2_bytes.clone(),
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let report: RolloutReport = serde_json::from_value(body)?;
    assert_eq!(report.digest, v2);
    assert_eq!(report.workers.len(), 4, "{report:?}");
    let acked: BTreeMap<String, u64> = report
        .workers
        .iter()
        .map(|w| {
            (
                w.id.clone(),
                w.acknowledged_at_ms
                    .unwrap_or_else(|| panic!("{} did not take v2: {:?}", w.id, w.error)),
            )
        })
        .collect();

    let views = system.wait_final(&ids, Duration::from_secs(120)).await?;
    let (mut old, mut new) = (0, 0);
    for view in &views {
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        let [a, b] = view.args[..] else {
            panic!("two args")
        };
        let digest = view.digest.as_deref().unwrap_or("");
        let want = match (view.op.as_str(), digest) {
            ("add", _) => a + b,
            ("mul", d) if d == v1 => {
                old += 1;
                let worker = view.worker.as_deref().unwrap_or("");
                assert!(
                    view.started_at_ms.unwrap_or(u64::MAX) <= acked[worker],
                    "old code started after {worker} acknowledged the swap: {view:?}"
                );
                a * b
            }
            ("mul", d) if d == v2 => {
                new += 1;
                a * b + V2_OFFSET
            }
            _ => panic!("unknown digest: {view:?}"),
        };
        assert_eq!(
            view.result,
            Some(want),
            "the result agrees with the module its digest names: {view:?}"
        );
    }
    println!(
        "fleet swap under load: {} tasks, 0 failed, mul by v1 {old}, by v2 {new}",
        views.len()
    );
    assert!(
        old > 0 && new > 0,
        "the swap happened mid-run (v1 {old}, v2 {new})"
    );

    let rollouts: Vec<OpRollout> = system.get_json("/ops").await?;
    let mul = rollouts
        .iter()
        .find(|r| r.name == "mul")
        .expect("mul listed");
    assert_eq!(
        (mul.digest.as_deref(), mul.up_to_date, mul.behind),
        (Some(v2.as_str()), 4, 0),
        "{mul:?}"
    );

    // A worker that joins later is brought to the fleet's version.
    let late = system.add_worker("late", &[]).await?.url();
    poll(
        Duration::from_secs(20),
        "the late worker to run v2",
        || async { (worker_digest(&late, "mul").await? == v2).then_some(()) },
    )
    .await?;

    // A module every worker would refuse is refused, and the fleet keeps v2.
    let (status, body) = put_module(
        &system,
        &system.url("/ops/mul"),
        b"\0asm\x0d\0\x01\0garbage".to_vec(),
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused the module"),
        "{body}"
    );
    let (status, body) = put_module(
        &system,
        &system.url("/ops/mul"),
        std::fs::read(fixture("add"))?,
        Some(TOKEN),
    )
    .await?;
    assert_eq!(
        status, 400,
        "a module describing itself as `add` can't be `mul`: {body}"
    );
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [2, 3]}))
        .await?;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!(6 + V2_OFFSET)),
        "{body}"
    );

    // Rolling back is putting the old module again.
    let (status, body) = put_module(
        &system,
        &system.url("/ops/mul"),
        std::fs::read(fixture("mul"))?,
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (_, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [2, 3]}))
        .await?;
    assert_eq!(
        (&body["result"], body["digest"].as_str()),
        (&json!(6), Some(v1.as_str())),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_swaps_one_module_by_upload_and_an_invalid_upload_changes_nothing()
-> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN)]).await?;
    let url = system.add_worker("w", &[]).await?.url();
    let v1 = worker_digest(&url, "mul").await.expect("mul loaded");
    let (status, body) = put_module(
        &system,
        &format!("{url}/ops/mul"),
        b"not a module".to_vec(),
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a valid WebAssembly component"),
        "{body}"
    );
    assert_eq!(
        worker_digest(&url, "mul").await,
        Some(v1.clone()),
        "the old version keeps serving"
    );
    let (status, body) = put_module(
        &system,
        &format!("{url}/ops/mul"),
        std::fs::read(fixture("mul_v2"))?,
        Some(TOKEN),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "upload");
    // The worker tells the planner at once: new tasks carry the new digest.
    let v2 = digest_of(&fixture("mul_v2"))?;
    poll(Duration::from_secs(10), "the planner to see v2", || async {
        let workers = system.workers().await.ok()?;
        workers[0]
            .ops
            .as_ref()?
            .iter()
            .any(|o| o.name == "mul" && o.digest == v2)
            .then_some(())
    })
    .await?;
    let (_, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [6, 7]}))
        .await?;
    assert_eq!(
        (&body["result"], body["digest"].as_str()),
        (&json!(42 + V2_OFFSET), Some(v2.as_str())),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn removing_an_op_from_a_worker_stops_routing_it_there() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let general = system.add_worker("general", &[]).await?.url();
    system.add_worker("muller", &[("OPS", "mul")]).await?;
    system.wait_for_workers(2).await?;
    let removed = system
        .client
        .delete(format!("{general}/ops/mul"))
        .send()
        .await?;
    assert_eq!(removed.status(), 204);
    poll(
        Duration::from_secs(10),
        "the planner to drop mul from `general`",
        || async {
            let workers = system.workers().await.ok()?;
            let general = workers.iter().find(|w| w.id == "general")?;
            general
                .ops
                .as_ref()?
                .iter()
                .all(|o| o.name != "mul")
                .then_some(())
        },
    )
    .await?;
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"op": "mul", "args": [i, 2]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    assert!(
        views
            .iter()
            .all(|v| v.worker.as_deref() == Some("muller") && v.status == TaskStatus::Done),
        "{views:?}"
    );
    let general_view = system
        .workers()
        .await?
        .into_iter()
        .find(|w| w.id == "general")
        .expect("still registered");
    assert_eq!(
        general_view.wrong_op, 0,
        "no mul task was sent to `general` after the removal"
    );
    Ok(())
}

/// Lays out `dir` the way the kubelet lays out a ConfigMap volume.
fn kubelet_publish(dir: &Path, version: &str, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data)?;
    for (name, bytes) in files {
        std::fs::write(data.join(name), bytes)?;
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    // The atomic step: a new `..data` symlink renamed over the old one.
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

#[tokio::test]
async fn ops_dir_follows_a_kubelet_style_symlink_swap_and_never_loads_a_half_written_file()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let modules = tempfile::tempdir()?;
    let v1 = std::fs::read(fixture("mul"))?;
    let v2 = std::fs::read(fixture("mul_v2"))?;
    kubelet_publish(modules.path(), "2026_11_28_01", &[("mul.wasm", &v1)])?;
    let url = system
        .add_worker(
            "cm",
            &[
                ("OPS", "mul"),
                ("OPS_DIR", modules.path().to_str().unwrap_or_default()),
            ],
        )
        .await?
        .url();
    assert_eq!(
        worker_digest(&url, "mul").await,
        Some(digest_of(&fixture("mul"))?)
    );

    kubelet_publish(modules.path(), "2026_11_28_02", &[("mul.wasm", &v2)])?;
    let v2_digest = digest_of(&fixture("mul_v2"))?;
    poll(
        Duration::from_secs(15),
        "the worker to load v2 from the new ..data",
        || async { (worker_digest(&url, "mul").await? == v2_digest).then_some(()) },
    )
    .await?;
    let (_, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [2, 2]}))
        .await?;
    assert_eq!(body["result"], 4 + V2_OFFSET, "{body}");

    // A plain file written in two steps: the first half must never be served.
    let plain = tempfile::tempdir()?;
    let path = plain.path().join("mul.wasm");
    std::fs::write(&path, &v1)?;
    let url = system
        .add_worker(
            "plain",
            &[
                ("OPS", "mul"),
                ("OPS_DIR", plain.path().to_str().unwrap_or_default()),
            ],
        )
        .await?
        .url();
    let half = &v2[..v2.len() / 2];
    std::fs::write(&path, half)?;
    let refused = poll(
        Duration::from_secs(15),
        "the worker to look at the half-written file",
        || async {
            let ops: Vec<Value> = reqwest::get(format!("{url}/ops"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            ops.into_iter()
                .find(|o| o["name"] == "mul" && o["last_error"].is_string())
        },
    )
    .await?;
    assert_eq!(
        refused["digest"].as_str(),
        Some(digest_of(&fixture("mul"))?.as_str()),
        "v1 keeps serving: {refused}"
    );
    std::fs::write(&path, &v2)?;
    poll(
        Duration::from_secs(15),
        "the complete file to load",
        || async { (worker_digest(&url, "mul").await? == v2_digest).then_some(()) },
    )
    .await?;
    Ok(())
}
