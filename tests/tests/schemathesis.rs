//! schemathesis (installed into `.tools/venv` by `scripts/install-tools`)
//! against a real worker's and a real planner's `/openapi.json`: requests
//! generated from the descriptions, with the fixed seed and bounded example
//! count of `tests/schemathesis.toml`, loopback only. Every check must pass:
//! no 5xx, no undocumented status, every response matching its schema,
//! schema-valid requests not refused, schema-violating ones not accepted.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::System;
use e2e::chart::workspace_root;

/// Generous: both runs take seconds; a hang must still end the test.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

fn schemathesis() -> Result<PathBuf> {
    let path = workspace_root().join(".tools/venv/bin/schemathesis");
    if !path.exists() {
        bail!("{} is missing: run scripts/install-tools", path.display());
    }
    Ok(path)
}

/// Runs schemathesis on `base`'s description, presenting `token` when
/// given; fails with its report unless every check passed.
async fn run(what: &str, base: &str, token: Option<&str>, scratch: &std::path::Path) -> Result<()> {
    let mut command = tokio::process::Command::new(schemathesis()?);
    command
        .arg("--no-color")
        .arg("--config-file")
        .arg(workspace_root().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .stdin(Stdio::null())
        // Its cache of found failures goes to a temporary directory, not
        // into the repository.
        .current_dir(scratch)
        .kill_on_drop(true);
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = tokio::time::timeout(RUN_DEADLINE, command.output())
        .await
        .with_context(|| format!("schemathesis on the {what} ran over {RUN_DEADLINE:?}"))?
        .context("running schemathesis")?;
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Selected:") || l.contains("Tested:"))
        .collect();
    println!("{what}: {}", summary.join(" | "));
    if !output.status.success() {
        bail!(
            "schemathesis found problems in the {what}'s API ({}):\n{report}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !report.contains("Tested:") {
        bail!("schemathesis tested nothing on the {what}:\n{report}");
    }
    Ok(())
}

#[tokio::test]
async fn the_worker_and_the_planner_answer_as_their_descriptions_say() -> Result<()> {
    let mut system = System::with_workers(&[], 1, &[("OPS", "add,mul")]).await?;
    let worker = system.workers[0].url();
    // The worker with the token: its task and module routes are exercised
    // past authentication.
    let scratch = system.dir.path();
    run("worker", &worker, system.token.as_deref(), scratch).await?;
    // The planner as an anonymous client (see tests/schemathesis.toml).
    run("planner", &system.planner.url(), None, scratch).await?;
    // Still serving honest clients afterwards. (The worker's generated
    // `DELETE /ops/{name}` calls may have removed its ops: a fresh worker
    // takes the task.)
    let alive = reqwest::get(format!("{worker}/healthz")).await?.status();
    assert_eq!(alive, 200, "the worker survived");
    system.add_worker("after", &[("OPS", "mul")]).await?;
    let (status, body) = system
        .post_json(
            "/tasks?wait=true",
            &serde_json::json!({"op": "mul", "args": [6, 7]}),
        )
        .await?;
    assert_eq!(
        (status, &body["result"]),
        (200, &serde_json::json!(42)),
        "{body}"
    );
    Ok(())
}
