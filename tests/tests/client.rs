//! The `workers` command-line client, run as a real process against a real
//! planner and workers: every command, its `--output json` parsed, and its
//! error exits.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{System, expected, fixture};
use launcher::process::sibling_binary;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, BufReader};
use wire::planner::{CancelReport, OpRollout, TaskStatus, TaskView, WorkerView};

/// What one run of the client left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not the expected JSON: {self:?}"))
    }

    /// Exit status 0, or fail showing what it printed.
    fn ok(self) -> Result<Self> {
        if self.code != 0 {
            bail!("the client failed: {self:?}");
        }
        Ok(self)
    }

    /// The failure was reported as one readable line.
    fn one_error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        lines[0]
    }
}

/// The client with a clean environment: nothing from the test runner's
/// PLANNER/TOKEN/config leaks in, and HOME points nowhere.
fn client(planner: &str) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(sibling_binary("workers")?);
    cmd.env_remove("TOKEN")
        .env_remove("TOKEN_FILE")
        .env_remove("WORKERS_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", "/nonexistent")
        .env("PLANNER", planner)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

async fn run_cmd(mut cmd: tokio::process::Command, stdin: Option<&str>) -> Result<Run> {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("the client did not exit within 120 s")??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

async fn workers(system: &System, args: &[&str]) -> Result<Run> {
    let mut cmd = client(&system.planner.url())?;
    cmd.args(args);
    run_cmd(cmd, None).await
}

#[tokio::test]
async fn submit_get_wait_and_list_tasks() -> Result<()> {
    let mut system = System::start(&[]).await?;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;

    // Without --wait: the id, alone on stdout.
    let submitted = workers(&system, &["submit", "mul", "6", "7"]).await?.ok()?;
    let id: u64 = submitted.stdout.trim().parse().context("an id")?;
    let waited: Vec<TaskView> = workers(&system, &["wait", &id.to_string(), "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(waited.len(), 1);
    assert_eq!((waited[0].id, waited[0].result), (id, Some(42)));
    assert_eq!(waited[0].status, TaskStatus::Done);

    // With --wait: the result alone, ready for $(...); negative numbers are arguments.
    let result = workers(&system, &["submit", "add", "-5", "3", "--wait"])
        .await?
        .ok()?;
    assert_eq!(result.stdout.trim(), "-2");
    let json: TaskView = workers(
        &system,
        &["submit", "mul", "3", "3", "--wait", "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!((json.status, json.result), (TaskStatus::Done, Some(9)));

    // A task that fails: exit status 3 and why, on one line.
    let overflow = workers(
        &system,
        &["submit", "mul", &i64::MAX.to_string(), "2", "--wait"],
    )
    .await?;
    assert_eq!(overflow.code, 3, "{overflow:?}");
    assert!(
        overflow.one_error_line().contains("failed") && overflow.stderr.contains("overflow"),
        "{overflow:?}"
    );

    // get: several ids, JSON in the order asked; text has the result.
    let both: Vec<TaskView> = workers(
        &system,
        &["get", &json.id.to_string(), &id.to_string(), "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(
        both.iter().map(|t| (t.id, t.result)).collect::<Vec<_>>(),
        vec![(json.id, Some(9)), (id, Some(42))]
    );
    let text = workers(&system, &["get", &id.to_string()]).await?.ok()?;
    assert!(
        text.stdout.contains("done") && text.stdout.contains("42") && text.stdout.contains("w1"),
        "{text:?}"
    );

    // ls: filters, and the cursor walks every page exactly once, newest first.
    let ids = system
        .submit_ids(&json!(
            (0..25)
                .map(|i| json!({"op": "add", "args": [i, 1]}))
                .collect::<Vec<_>>()
        ))
        .await?;
    system.wait_final(&ids, Duration::from_secs(30)).await?;
    let everything: Vec<TaskView> =
        workers(&system, &["ls", "--all", "--limit", "7", "-o", "json"])
            .await?
            .ok()?
            .json()?;
    let listed: Vec<u64> = everything.iter().map(|t| t.id).collect();
    let mut newest_first = listed.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first.dedup();
    assert_eq!(listed, newest_first, "pages neither overlap nor reorder");
    assert_eq!(listed.len(), 25 + 4, "every task the planner holds");

    let page: Vec<TaskView> = workers(
        &system,
        &["ls", "--op", "add", "--limit", "10", "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(page.len(), 10);
    assert!(page.iter().all(|t| t.op == "add"));
    let before = page[9].id.to_string();
    let next: Vec<TaskView> = workers(
        &system,
        &[
            "ls", "--op", "add", "--limit", "10", "--before", &before, "-o", "json",
        ],
    )
    .await?
    .ok()?
    .json()?;
    assert!(next.iter().all(|t| t.id < page[9].id && t.op == "add"));
    assert_eq!(next.len(), 10);

    let failed: Vec<TaskView> = workers(&system, &["ls", "--status", "failed", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        failed.iter().map(|t| t.op.as_str()).collect::<Vec<_>>(),
        ["mul"]
    );

    let recent: Vec<TaskView> = workers(
        &system,
        &["ls", "--since", "10m", "--limit", "100", "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(recent.len(), 29);
    let future: Vec<TaskView> = workers(
        &system,
        &["ls", "--since", "2999-01-01T00:00:00Z", "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    assert!(future.is_empty());

    let text = workers(&system, &["ls", "--limit", "3"]).await?.ok()?;
    assert_eq!(
        text.stdout.lines().count(),
        4,
        "a header and 3 rows: {text:?}"
    );
    assert!(
        text.stderr.contains("--before"),
        "says how to get the next page: {text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn batches_from_a_file_and_from_stdin_are_followed_to_the_end() -> Result<()> {
    let mut system = System::start(&[]).await?;
    system.add_worker("w1", &[("SLOTS", "4")]).await?;
    system.add_worker("w2", &[("SLOTS", "4")]).await?;
    system.wait_for_workers(2).await?;

    let tasks: Vec<Value> = (0..500)
        .map(|i| json!({"op": if i % 2 == 0 { "add" } else { "mul" }, "args": [i, i + 1]}))
        .collect();
    let ndjson: String = tasks.iter().map(|t| format!("{t}\n")).collect();
    let file = system.dir.path().join("tasks.ndjson");
    std::fs::write(&file, &ndjson)?;

    for follow_by in ["events", "poll"] {
        let views: Vec<TaskView> = workers(
            &system,
            &[
                "submit",
                "--file",
                &file.to_string_lossy(),
                "--wait",
                "--chunk",
                "128",
                "--follow-by",
                follow_by,
                "-o",
                "json",
            ],
        )
        .await?
        .ok()?
        .json()?;
        assert_eq!(views.len(), 500, "{follow_by}");
        for (view, task) in views.iter().zip(&tasks) {
            let args: Vec<i64> = serde_json::from_value(task["args"].clone())?;
            assert_eq!(view.op, task["op"].as_str().unwrap_or(""));
            assert_eq!(view.status, TaskStatus::Done, "{follow_by}: {view:?}");
            assert_eq!(
                view.result,
                expected(&view.op, &args),
                "{follow_by}: {view:?}"
            );
        }
    }

    // From stdin, text: a summary line; one overflowing task makes it exit 3.
    let mut cmd = client(&system.planner.url())?;
    cmd.args(["submit", "--file", "-", "--wait"]);
    let input = format!("{ndjson}{}\n", json!({"op": "mul", "args": [i64::MAX, 2]}));
    let summary = run_cmd(cmd, Some(&input)).await?;
    assert_eq!(summary.code, 3, "{summary:?}");
    assert!(
        summary.stdout.starts_with("501 tasks: 500 done, 1 failed"),
        "{summary:?}"
    );
    assert!(
        summary.stdout.contains("overflow"),
        "the failure is shown: {summary:?}"
    );

    // Without --wait: one id per line.
    let mut cmd = client(&system.planner.url())?;
    cmd.args(["submit", "-f", "-"]);
    let half: String = ndjson.lines().take(250).map(|l| format!("{l}\n")).collect();
    let ids = run_cmd(cmd, Some(&half)).await?.ok()?;
    let ids: Vec<u64> = ids
        .stdout
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 250);
    let mut args = vec!["wait".to_string(), "-o".into(), "json".into()];
    args.extend(ids.iter().map(u64::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let waited: Vec<TaskView> = workers(&system, &args).await?.ok()?.json()?;
    assert_eq!(waited.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert!(waited.iter().all(|t| t.status == TaskStatus::Done));

    // A broken line is named, and nothing is submitted.
    std::fs::write(&file, "{\"op\":\"add\",\"args\":[1,2]}\n{\"op\": 3}\n")?;
    let bad = workers(&system, &["submit", "--file", &file.to_string_lossy()]).await?;
    assert_eq!(bad.code, 1);
    assert!(bad.one_error_line().contains("line 2"), "{bad:?}");
    Ok(())
}

#[tokio::test]
async fn cancel_by_id_and_twenty_thousand_queued_tasks_in_one_request() -> Result<()> {
    let mut system = System::start(&[("STORE", "memory")]).await?;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;
    // No worker offers `idle`, so these stay queued.
    let batch: Vec<Value> = (0..20_000)
        .map(|i| json!({"op": "idle", "args": [i]}))
        .collect();
    let queued = system.submit_ids(&json!(batch)).await?;
    let other = system
        .submit_ids(&json!([{"op": "idle2", "args": [1]}, {"op": "idle2", "args": [2]}]))
        .await?;

    // By id: one cancelled; a finished task and an unknown id are reported.
    let done = workers(
        &system,
        &["submit", "add", "1", "1", "--wait", "-o", "json"],
    )
    .await?
    .ok()?
    .json::<TaskView>()?;
    let report: CancelReport = workers(&system, &["cancel", &other[0].to_string(), "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(report.cancelled, 1);
    assert_eq!(system.task(other[0]).await?.status, TaskStatus::Cancelled);
    let mixed = workers(
        &system,
        &["cancel", &done.id.to_string(), "987654", "-o", "json"],
    )
    .await?;
    assert_eq!(mixed.code, 1, "{mixed:?}");
    let report: CancelReport = mixed.json()?;
    assert_eq!(
        (report.cancelled, report.not_queued, report.not_found),
        (0, vec![done.id], vec![987654])
    );
    assert!(
        mixed.one_error_line().contains("no task 987654"),
        "{mixed:?}"
    );

    // By filter: all 20,000 in one request; the other op's task stays queued.
    let started = Instant::now();
    let report: CancelReport = workers(
        &system,
        &["cancel", "--status", "queued", "--op", "idle", "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    println!(
        "bulk cancel of 20,000 queued tasks through the client: {:?}",
        started.elapsed()
    );
    assert_eq!(report.cancelled, 20_000);
    for id in [queued[0], queued[9_999], queued[19_999]] {
        assert_eq!(system.task(id).await?.status, TaskStatus::Cancelled);
    }
    assert_eq!(system.task(other[1]).await?.status, TaskStatus::Queued);
    let stats: Value = system
        .client
        .get(system.url("/stats"))
        .send()
        .await?
        .json()
        .await?;
    // No worker offers `idle` or `idle2`: /stats counts them as `other`
    // (issue 12, bounded labels): idle's 20,000 and idle2's one cancelled,
    // idle2's other task still queued.
    assert_eq!(stats["by_op"]["other"]["cancelled"], 20_001, "{stats}");
    assert_eq!(stats["by_op"]["other"]["queued"], 1, "{stats}");
    assert!(stats["by_op"].get("idle").is_none(), "{stats}");
    let again = workers(&system, &["cancel", "--op", "idle"]).await?.ok()?;
    assert_eq!(again.stdout.trim(), "cancelled 0");

    // The queue still works after a bulk cancel.
    let after = workers(&system, &["submit", "mul", "2", "21", "--wait"])
        .await?
        .ok()?;
    assert_eq!(after.stdout.trim(), "42");
    Ok(())
}

#[tokio::test]
async fn workers_ops_rollout_and_top() -> Result<()> {
    let mut system = System::start(&[("TOKEN", "fleet-token")]).await?;
    system.add_worker("gen-1", &[("OPS", "add,mul")]).await?;
    system.add_worker("mul-1", &[("OPS", "mul")]).await?;
    system.wait_for_workers(2).await?;

    let fleet: Vec<WorkerView> = workers(&system, &["workers", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let mut flavors: Vec<(String, String)> = fleet
        .iter()
        .map(|w| (w.id.clone(), w.flavor.clone()))
        .collect();
    flavors.sort();
    assert_eq!(
        flavors,
        [
            ("gen-1".to_string(), "general".to_string()),
            ("mul-1".into(), "mul".into())
        ]
    );
    let text = workers(&system, &["workers"]).await?.ok()?;
    assert!(
        text.stdout.contains("general")
            && text.stdout.contains("mul-1")
            && text.stdout.contains("0/1"),
        "{text:?}"
    );
    assert!(
        text.stdout.contains("2 workers, 0 of 2 slots busy"),
        "{text:?}"
    );

    let ops: Vec<OpRollout> = workers(&system, &["ops", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let mul = ops.iter().find(|o| o.name == "mul").context("mul listed")?;
    assert_eq!(mul.workers.len(), 2);

    // ops put: without the token the planner refuses, with it the fleet moves.
    let module = fixture("mul_v2");
    let refused = workers(&system, &["ops", "put", "mul", &module.to_string_lossy()]).await?;
    assert_eq!(refused.code, 1);
    assert!(refused.one_error_line().contains("401"), "{refused:?}");
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&module)?));
    let put: Value = workers(
        &system,
        &[
            "ops",
            "put",
            "mul",
            &module.to_string_lossy(),
            "--token",
            "fleet-token",
            "-o",
            "json",
        ],
    )
    .await?
    .ok()?
    .json()?;
    assert_eq!(put["report"]["digest"], digest.as_str(), "{put}");
    assert_eq!(put["rollout"]["up_to_date"], 2, "{put}");
    assert_eq!(put["rollout"]["behind"], 0, "{put}");
    let text = workers(&system, &["ops"]).await?.ok()?;
    assert!(
        text.stdout.contains(&digest[..12]) && text.stdout.contains("2/2"),
        "{text:?}"
    );
    let junk = system.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component")?;
    let refused = workers(
        &system,
        &[
            "ops",
            "put",
            "mul",
            &junk.to_string_lossy(),
            "--token",
            "fleet-token",
        ],
    )
    .await?;
    assert_eq!(refused.code, 1);
    assert!(refused.one_error_line().contains("400"), "{refused:?}");

    // top, one JSON frame per line: changes after the first frame show up.
    let mut cmd = client(&system.planner.url())?;
    cmd.args(["top", "--frames", "4", "--interval", "1s", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut top = cmd.spawn()?;
    let mut lines = BufReader::new(top.stdout.take().context("stdout")?).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await?.context("a first frame")?)?;
    assert_eq!(
        first["workers"].as_array().map(Vec::len),
        Some(2),
        "{first}"
    );
    let ids = system
        .submit_ids(&json!([{"op": "mul", "args": [2, 3]}, {"op": "add", "args": [2, 3]}]))
        .await?;
    system.wait_final(&ids, Duration::from_secs(20)).await?;
    let mut frames = vec![first];
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??
    {
        frames.push(serde_json::from_str(&line)?);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), top.wait()).await??;
    assert!(status.success());
    assert_eq!(frames.len(), 4);
    let last = &frames[3];
    let seen: Vec<(u64, String)> = last["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["id"].as_u64().unwrap_or(0),
                t["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for id in &ids {
        assert!(
            seen.contains(&(*id, "done".to_string())),
            "task {id} done in the feed: {seen:?}"
        );
    }
    assert!(
        last["stats"]["by_status"]["done"].as_u64().unwrap_or(0) >= 2,
        "{last}"
    );

    // Plain frames when stdout is not a terminal.
    let once = workers(&system, &["top", "--once"]).await?.ok()?;
    assert!(
        once.stdout.contains(&system.planner.url())
            && once.stdout.contains("gen-1")
            && once.stdout.contains("latest task changes"),
        "{once:?}"
    );
    Ok(())
}

#[tokio::test]
async fn failures_exit_non_zero_with_one_readable_line() -> Result<()> {
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = client(&format!("http://127.0.0.1:{port}"))?;
    cmd.args(["get", "1"]);
    let unreachable = run_cmd(cmd, None).await?;
    assert_eq!(unreachable.code, 1);
    let line = unreachable.one_error_line();
    assert!(
        line.contains("cannot reach the planner") && line.contains("refused"),
        "{unreachable:?}"
    );

    let mut system =
        System::start(&[("TOKEN", "s3cret"), ("SUBMIT_REQUIRES_TOKEN", "true")]).await?;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;

    // Wrong token, then the token from a flag, the environment, a token file
    // and a config file.
    let bad = workers(
        &system,
        &["submit", "add", "1", "2", "--token", "not-the-token-x7"],
    )
    .await?;
    assert_eq!(bad.code, 1);
    assert!(bad.one_error_line().contains("401"), "{bad:?}");
    assert!(
        !bad.stderr.contains("x7"),
        "the token is not echoed: {bad:?}"
    );
    workers(&system, &["submit", "add", "1", "2", "--token", "s3cret"])
        .await?
        .ok()?;

    let secret = system.dir.path().join("token");
    std::fs::write(&secret, "s3cret\n")?;
    let mut cmd = client(&system.planner.url())?;
    cmd.env("TOKEN_FILE", &secret)
        .args(["submit", "add", "1", "2", "--wait"]);
    assert_eq!(run_cmd(cmd, None).await?.ok()?.stdout.trim(), "3");

    let config = system.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "planner = \"{}\"\ntoken_file = \"{}\"\n",
            system.planner.url(),
            secret.display()
        ),
    )?;
    let mut cmd = client("")?;
    cmd.env_remove("PLANNER")
        .env("WORKERS_CONFIG", &config)
        .args(["submit", "add", "2", "2", "--wait"]);
    assert_eq!(run_cmd(cmd, None).await?.ok()?.stdout.trim(), "4");
    // The default location: $XDG_CONFIG_HOME/workers/config.toml.
    let xdg = system.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("workers"))?;
    std::fs::copy(&config, xdg.join("workers/config.toml"))?;
    let mut cmd = client("")?;
    cmd.env_remove("PLANNER")
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["submit", "add", "3", "3", "--wait"]);
    assert_eq!(run_cmd(cmd, None).await?.ok()?.stdout.trim(), "6");

    // Unknown ids.
    let unknown = workers(&system, &["get", "987654"]).await?;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.one_error_line().contains("no task 987654"),
        "{unknown:?}"
    );
    let unknown = workers(&system, &["wait", "987654", "--timeout", "10s"]).await?;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.one_error_line().contains("no task 987654"),
        "{unknown:?}"
    );

    // The planner's 400 comes through with its message.
    let invalid = workers(&system, &["submit", "Mul!", "1", "2", "--token", "s3cret"]).await?;
    assert_eq!(invalid.code, 1);
    let line = invalid.one_error_line();
    assert!(
        line.contains("400") && line.contains("invalid op name"),
        "{invalid:?}"
    );

    // Bad arguments: clap's usage error, exit status 2.
    for args in [
        &["submit"][..],
        &["get", "not-a-number"],
        &["ls", "--status", "sleeping"],
        &["cancel"],
        &["cancel", "5", "--op", "mul"],
        &["no-such-command"],
    ] {
        let run = workers(&system, args).await?;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty());
    }
    let missing = workers(&system, &["submit", "--file", "/nonexistent/tasks.ndjson"]).await?;
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .one_error_line()
            .contains("/nonexistent/tasks.ndjson"),
        "{missing:?}"
    );
    let limit = workers(&system, &["ls", "--limit", "0"]).await?;
    assert_eq!(limit.code, 1);
    assert!(limit.one_error_line().contains("--limit"), "{limit:?}");
    let bad_url = workers(&system, &["get", "1", "--planner", "ftp://x"]).await?;
    assert_eq!(bad_url.code, 1);
    assert!(bad_url.one_error_line().contains("http"), "{bad_url:?}");

    // Waiting gives up when told to.
    let stuck = workers(&system, &["submit", "nobody-has-this", "--token", "s3cret"])
        .await?
        .ok()?;
    let timed_out = workers(
        &system,
        &["wait", stuck.stdout.trim(), "--timeout", "300ms"],
    )
    .await?;
    assert_eq!(timed_out.code, 1);
    assert!(
        timed_out.one_error_line().contains("timed out"),
        "{timed_out:?}"
    );
    Ok(())
}

#[tokio::test]
async fn shell_completions_come_from_clap() -> Result<()> {
    let mut cmd = client("http://127.0.0.1:9")?;
    cmd.args(["completions", "bash"]);
    let bash = run_cmd(cmd, None).await?.ok()?;
    assert!(
        bash.stdout.contains("_workers()"),
        "a bash completion function"
    );
    for word in ["submit", "cancel", "top", "--output"] {
        assert!(bash.stdout.contains(word), "completes {word}");
    }
    let mut cmd = client("http://127.0.0.1:9")?;
    cmd.args(["completions", "zsh"]);
    assert!(
        run_cmd(cmd, None)
            .await?
            .ok()?
            .stdout
            .contains("#compdef workers")
    );
    Ok(())
}

#[tokio::test]
async fn submit_sets_the_task_controls() -> Result<()> {
    let system = System::with_workers(&[], 1, &[]).await?;
    let args = [
        "-o",
        "json",
        "submit",
        "mul",
        "6",
        "7",
        "--wait",
        "--timeout-ms",
        "30s",
        "--retries",
        "2",
        "--priority",
        "-3",
        "--idempotency-key",
        "client-key-1",
    ];
    let view: TaskView = workers(&system, &args).await?.ok()?.json()?;
    assert_eq!(view.result, Some(42));
    assert_eq!((view.retries, view.priority), (2, -3));
    assert_eq!(view.deadline_ms, Some(view.submitted_at_ms + 30_000));
    // The same submission again: the same task, nothing new run.
    let again: TaskView = workers(&system, &args).await?.ok()?.json()?;
    assert_eq!(again.id, view.id);
    let muls: Vec<TaskView> = system.get_json("/tasks?op=mul").await?;
    assert_eq!(muls.len(), 1);
    // Another submission under that key is refused with the planner's reason.
    let refused = workers(
        &system,
        &[
            "submit",
            "mul",
            "6",
            "8",
            "--idempotency-key",
            "client-key-1",
        ],
    )
    .await?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.one_error_line().contains("Idempotency-Key"),
        "{refused:?}"
    );
    // Out of range: refused by the client itself (usage, exit 2).
    let bad = workers(&system, &["submit", "mul", "6", "7", "--priority", "11"]).await?;
    assert_eq!(bad.code, 2, "{bad:?}");
    Ok(())
}

#[tokio::test]
async fn batch_follows_a_submission_by_its_id_to_the_end() -> Result<()> {
    let system = System::with_workers(&[], 1, &[("WORK_MS", "50")]).await?;
    // Eight adds and a mul whose deadline passes before it can run.
    let ndjson: String = (0..8)
        .map(|i| format!("{}\n", json!({"op": "add", "args": [i, 1]})))
        .chain([format!(
            "{}\n",
            json!({"op": "mul", "args": [2, 3], "timeout_ms": 1})
        )])
        .collect();
    let file = system.dir.path().join("batch.ndjson");
    std::fs::write(&file, &ndjson)?;
    let submitted: Value = workers(
        &system,
        &["submit", "--file", &file.to_string_lossy(), "-o", "json"],
    )
    .await?
    .ok()?
    .json()?;
    let batch = submitted["batches"][0]
        .as_u64()
        .with_context(|| format!("no batch id: {submitted}"))?
        .to_string();
    assert_eq!(submitted["ids"][0].to_string(), batch, "{submitted}");

    let followed = workers(&system, &["batch", &batch, "-o", "json"]).await?;
    assert_eq!(followed.code, 3, "one task expired: {followed:?}");
    let view: wire::planner::BatchView = followed.json()?;
    assert!(view.finished, "{view:?}");
    assert_eq!(view.total, 9);
    assert_eq!(
        serde_json::to_value(&view.by_status)?,
        json!({"done": 8, "expired": 1}),
        "{view:?}"
    );
    let text = workers(&system, &["batch", &batch]).await?;
    assert_eq!(text.code, 3, "{text:?}");
    assert!(
        text.stdout.contains("9 tasks, 8 done, 1 expired; finished"),
        "{text:?}"
    );
    assert!(
        text.one_error_line().contains("1 of 9 tasks of batch"),
        "{text:?}"
    );

    // A batch that cannot finish (no worker offers `pow`): `--once` shows
    // it as it is, `--timeout` gives up with one line.
    let mut cmd = client(&system.planner.url())?;
    cmd.args(["submit", "--file", "-", "-o", "json"]);
    let pow = format!(
        "{}\n{}\n",
        json!({"op": "pow", "args": [2, 3]}),
        json!({"op": "pow", "args": [2, 4]})
    );
    let stuck: Value = run_cmd(cmd, Some(&pow)).await?.ok()?.json()?;
    let stuck = stuck["batches"][0].to_string();
    let once: wire::planner::BatchView =
        workers(&system, &["batch", &stuck, "--once", "-o", "json"])
            .await?
            .ok()?
            .json()?;
    assert!(!once.finished, "{once:?}");
    assert_eq!(serde_json::to_value(&once.by_status)?, json!({"queued": 2}));
    let gave_up = workers(&system, &["batch", &stuck, "--timeout", "300ms"]).await?;
    assert_eq!(gave_up.code, 1, "{gave_up:?}");
    assert!(
        gave_up
            .one_error_line()
            .contains("not finished after 300ms: 2 queued"),
        "{gave_up:?}"
    );
    let unknown = workers(&system, &["batch", "999999999999"]).await?;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.one_error_line().contains("no batch"), "{unknown:?}");
    Ok(())
}
