//! A full disk under the planner's data dir (issue 15): submissions get a
//! JSON 503 saying so, nothing acknowledged is lost or damaged, and the
//! planner takes submissions again by itself once space returns.
//!
//! The data dir is on a small tmpfs this test mounts (root needed; without
//! it the test says why it skipped) and always unmounts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::{System, poll};
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::TaskStatus;

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<std::result::Result<Self, String>> {
        std::fs::create_dir_all(path)?;
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output();
        Ok(match output {
            Ok(out) if out.status.success() => Ok(Self {
                path: path.to_path_buf(),
            }),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(err) => Err(format!("cannot run mount: {err}")),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it anyway.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

/// Fills the file system holding `path` with one file, to the last byte.
fn fill(path: &Path) -> Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let mut written = 0;
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0xA5u8; chunk];
        loop {
            match file.write_all(&block) {
                Ok(()) => written += chunk as u64,
                Err(err) if err.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(err) => return Err(err).context("filling the disk"),
            }
        }
    }
    let _ = file.sync_all();
    Ok(written)
}

/// Commits the planner's store writer logged as failed for a full disk.
fn disk_full_commits(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("store commit failed: the disk is full")
        .count()
}

fn tasks(from: i64, n: i64) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"op": "add", "args": [i, 1000]}))
            .collect(),
    )
}

#[tokio::test]
async fn a_full_disk_refuses_submissions_loses_nothing_and_recovers_by_itself() -> Result<()> {
    let scratch = tempfile::Builder::new().prefix("disk-full-").tempdir()?;
    let mount_point = scratch.path().join("mnt");
    let mount = match Tmpfs::mount(&mount_point, "8m")? {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs ({why}); this test needs root");
            return Ok(());
        }
    };
    let data = mount.path.join("planner-data");
    let data_env = data.to_string_lossy().to_string();
    // The store under test is SQLite on the small disk; retention off, so
    // nothing frees space behind the test's back.
    let env = [
        ("STORE", "durable"),
        ("DATA_DIR", data_env.as_str()),
        ("RESULT_TTL", "0"),
        ("RESULT_LIMIT", "0"),
    ];
    let mut system = System::start(&env).await?;

    // Acknowledged while there is room; no worker yet, so they wait queued.
    let mut accepted: Vec<(TaskId, i64)> = Vec::new();
    let ids = system.submit_ids(&tasks(0, 200)).await?;
    accepted.extend(ids.into_iter().zip(0..));

    let ballast = mount.path.join("ballast");
    let filled = fill(&ballast)?;
    println!("disk full: {filled} bytes of ballast");
    // Submissions now fail to commit. Anything still acknowledged (a commit
    // that found room in the WAL) is kept track of like the rest.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut next = 1_000;
    let refusal: Value = loop {
        ensure!(
            std::time::Instant::now() < deadline,
            "no 503 within 30 s of a full disk"
        );
        let body = tasks(next, 100);
        let response = system
            .client
            .post(system.url("/tasks"))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let answer: Value = response.json().await?;
        match status {
            202 => {
                let ids: Vec<TaskId> = serde_json::from_value(answer["ids"].clone())?;
                accepted.extend(ids.into_iter().zip(next..));
                next += 100;
            }
            503 if retry_after => break answer,
            _ => bail!("unexpected answer {status}: {answer}"),
        }
    };
    let error = refusal["error"].as_str().unwrap_or_default();
    assert!(error.contains("disk is full"), "a clear error: {refusal}");
    let failed_submissions = disk_full_commits(&system.planner.log);

    // Work already accepted goes on: the results are held until they can be
    // written.
    system.add_worker("w1", &[("SLOTS", "4")]).await?;
    system.wait_for_workers(1).await?;
    let ids: Vec<TaskId> = accepted.iter().map(|(id, _)| *id).collect();
    let views = system.wait_final(&ids, Duration::from_secs(60)).await?;
    assert!(views.iter().all(|v| v.status == TaskStatus::Done));
    // Their results cannot be written meanwhile: the writer keeps trying
    // (and failing) with no submission in sight.
    poll(
        Duration::from_secs(10),
        "the held results' commits to fail",
        || async { (disk_full_commits(&system.planner.log) > failed_submissions).then_some(()) },
    )
    .await?;
    // Still full: still refused. With an idle worker, the planner dispatches
    // a submission while its commit is under way; the refused one must
    // vanish whatever it did meanwhile: only acknowledged tasks are counted.
    let (status, body) = system.submit(&tasks(5_000, 1)).await?;
    assert_eq!(status, 503, "{body}");
    let counted = poll(
        Duration::from_secs(10),
        "nothing queued or running after the refusal",
        || async {
            let stats: wire::planner::Stats = system.get_json("/stats").await.ok()?;
            let unfinished = ["queued", "running"]
                .iter()
                .filter_map(|s| stats.by_status.get(*s))
                .sum::<u64>();
            (unfinished == 0).then(|| stats.by_status.values().sum::<u64>())
        },
    )
    .await?;
    assert_eq!(
        counted,
        accepted.len() as u64,
        "the board holds exactly the acknowledged tasks"
    );

    // Space returns; the planner takes submissions again by itself.
    std::fs::remove_file(&ballast)?;
    let recovered: Vec<TaskId> = poll(
        Duration::from_secs(30),
        "submissions accepted again",
        || async {
            let (status, body) = system.submit(&tasks(9_000, 1)).await.ok()?;
            (status == 202).then(|| serde_json::from_value(body["ids"].clone()).ok())?
        },
    )
    .await?;

    // Everything acknowledged is on disk: the held results went in with the
    // first commit that had room. Kill everything (no graceful flush) and
    // read the data dir back with a new planner and no workers.
    system.worker_mut("w1").kill();
    system.planner.kill();
    system.planner.wait(Duration::from_secs(10)).await?;
    system.workers.clear();
    system.restart_planner(&env).await?;
    for (id, i) in &accepted {
        let view = system.task(*id).await?;
        if view.status != TaskStatus::Done || view.result != Some(i + 1000) {
            bail!("acknowledged task {id} after the restart: {view:?}");
        }
    }
    let view = system.task(recovered[0]).await?;
    ensure!(
        matches!(view.status, TaskStatus::Queued | TaskStatus::Done),
        "the first task accepted after recovery is kept: {view:?}"
    );
    println!(
        "disk full: {} acknowledged tasks all done after a SIGKILL and restart",
        accepted.len()
    );
    drop(system);
    drop(mount);
    Ok(())
}
