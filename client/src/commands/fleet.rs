//! `workers`, `ops` and `ops put`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use wire::planner::{OpRollout, WorkerView};

use super::{Outcome, json_out};
use crate::api::Api;
use crate::cli::Output;
use crate::render::{self, short_digest};

pub async fn workers(api: &Api, output: Output) -> Result<Outcome> {
    let mut workers = api.workers().await?;
    if output == Output::Json {
        json_out(&workers)?;
        return Ok(Outcome::Ok);
    }
    workers.sort_by(|a, b| a.flavor.cmp(&b.flavor).then(a.id.cmp(&b.id)));
    print!("{}", render_workers(&workers));
    Ok(Outcome::Ok)
}

pub fn render_workers(workers: &[WorkerView]) -> String {
    let now = render::now_ms();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let ops = match &w.ops {
                Some(ops) => ops
                    .iter()
                    .map(|op| format!("{}@{}", op.name, short_digest(&op.digest)))
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "(legacy: learned by trying)".to_string(),
            };
            vec![
                w.flavor.clone(),
                w.id.clone(),
                format!("{}/{}", w.busy, w.slots),
                w.done.to_string(),
                w.failed.to_string(),
                format!(
                    "{} ago",
                    render::duration_ms(now.saturating_sub(w.last_seen_ms))
                ),
                ops,
            ]
        })
        .collect();
    let mut text = render::table(
        &["FLAVOR", "WORKER", "BUSY", "DONE", "FAILED", "SEEN", "OPS"],
        &rows,
    );
    let busy: u32 = workers.iter().map(|w| w.busy).sum();
    let slots: u32 = workers.iter().map(|w| w.slots).sum();
    text.push_str(&format!(
        "{} workers, {busy} of {slots} slots busy\n",
        workers.len()
    ));
    text
}

pub async fn ops(api: &Api, output: Output) -> Result<Outcome> {
    let rollouts = api.ops().await?;
    match output {
        Output::Json => json_out(&rollouts)?,
        Output::Text => print!("{}", render_ops(&rollouts)),
    }
    Ok(Outcome::Ok)
}

fn render_ops(rollouts: &[OpRollout]) -> String {
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|op| {
            // Digest → how many workers run it.
            let mut versions: std::collections::BTreeMap<&str, usize> = Default::default();
            for digest in op.workers.values() {
                *versions.entry(short_digest(digest)).or_default() += 1;
            }
            let versions = versions
                .iter()
                .map(|(digest, n)| format!("{digest}×{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                op.name.clone(),
                op.digest
                    .as_deref()
                    .map(short_digest)
                    .unwrap_or("-")
                    .to_string(),
                format!("{}/{}", op.up_to_date, op.up_to_date + op.behind),
                versions,
            ]
        })
        .collect();
    render::table(&["OP", "FLEET DIGEST", "UP TO DATE", "RUNNING"], &rows)
}

/// Puts the module through the planner (which checks it on one worker, then
/// pushes it to all), prints each worker's answer, then follows `GET /ops`
/// until every worker offering the op runs the new digest.
pub async fn put(
    api: &Api,
    name: &str,
    file: &Path,
    timeout: Duration,
    output: Output,
) -> Result<Outcome> {
    let module = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "rolling {} ({} bytes) out to the fleet",
        name,
        module.len()
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let report = api.put_op(name, module).await;
    spinner.finish_and_clear();
    let report = report?;
    if output == Output::Text {
        println!("{name} → {}", report.digest);
        let rows: Vec<Vec<String>> = report
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    match (&w.error, w.acknowledged_at_ms) {
                        (Some(error), _) => format!("failed: {error}"),
                        (None, Some(_)) => "swapped".to_string(),
                        (None, None) => "pending".to_string(),
                    },
                ]
            })
            .collect();
        print!("{}", render::table(&["WORKER", "PUSH"], &rows));
    }
    // Late joiners and workers that were briefly unreachable get the module
    // from the planner; wait until the fleet agrees.
    let until = Instant::now() + timeout;
    let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} workers run the new digest",
    )?);
    let rollout = loop {
        let rollout = api
            .ops()
            .await?
            .into_iter()
            .find(|op| op.name == name)
            .with_context(|| format!("the planner does not list op `{name}` after the rollout"))?;
        let up_to_date = rollout
            .workers
            .values()
            .filter(|d| **d == report.digest)
            .count();
        bar.set_length(rollout.workers.len() as u64);
        bar.set_position(up_to_date as u64);
        if up_to_date == rollout.workers.len() || Instant::now() >= until {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    match output {
        Output::Json => json_out(&serde_json::json!({ "report": report, "rollout": rollout }))?,
        Output::Text => println!(
            "{} of {} workers run {}",
            rollout.up_to_date,
            rollout.up_to_date + rollout.behind,
            short_digest(&report.digest)
        ),
    }
    let behind: Vec<&String> = rollout
        .workers
        .iter()
        .filter(|(_, d)| **d != report.digest)
        .map(|(id, _)| id)
        .collect();
    if !behind.is_empty() {
        bail!(
            "after {}: still behind: {}",
            humantime::format_duration(timeout),
            behind
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Outcome::Ok)
}
