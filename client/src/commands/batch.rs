//! `batch ID`: a batch submission followed as one unit through
//! `GET /batches/{id}` (its counts by status), with a progress bar, until
//! every task of it has finished.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use wire::planner::BatchView;

use super::{Outcome, json_out};
use crate::api::Api;
use crate::cli::{Batch, Output};
use crate::render;

/// The look-ups start this often and back off to [`POLL_MAX`] while the
/// counts do not change, so a batch stuck in the queue costs the planner
/// next to nothing.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);

pub async fn run(api: &Api, args: Batch, output: Output) -> Result<Outcome> {
    let started = Instant::now();
    let mut view = api.batch(args.id).await?;
    if !args.once && !view.finished {
        view = follow(api, view, args.timeout).await?;
    }
    match output {
        Output::Json => json_out(&view)?,
        Output::Text => println!(
            "batch {}: {} tasks, {}{}",
            view.id,
            view.total,
            counts(&view),
            if view.finished {
                format!(
                    "; finished (followed {})",
                    render::duration_ms(started.elapsed().as_millis() as u64)
                )
            } else {
                "; not finished".to_string()
            }
        ),
    }
    let unsuccessful: u64 = view
        .by_status
        .iter()
        .filter(|(status, _)| *status != "done" && is_final(status))
        .map(|(_, n)| n)
        .sum();
    Ok(if unsuccessful == 0 {
        Outcome::Ok
    } else {
        Outcome::TaskFailed(format!(
            "{unsuccessful} of {} tasks of batch {} did not succeed",
            view.total, view.id
        ))
    })
}

async fn follow(api: &Api, mut view: BatchView, timeout: Duration) -> Result<BatchView> {
    let started = Instant::now();
    let bar = ProgressBar::new(view.total).with_style(ProgressStyle::with_template(
        "{elapsed:>4} [{bar:40}] {pos}/{len} finished  {msg}",
    )?);
    let mut interval = POLL_MIN;
    loop {
        bar.set_length(view.total);
        bar.set_position(finished(&view));
        bar.set_message(counts(&view));
        if view.finished {
            break;
        }
        if !timeout.is_zero() && started.elapsed() >= timeout {
            bar.finish_and_clear();
            bail!(
                "batch {} not finished after {}: {}",
                view.id,
                render::duration_ms(timeout.as_millis() as u64),
                counts(&view)
            );
        }
        tokio::time::sleep(interval).await;
        let next = api.batch(view.id).await?;
        interval = if next.by_status == view.by_status {
            (interval * 2).min(POLL_MAX)
        } else {
            POLL_MIN
        };
        view = next;
    }
    bar.finish_and_clear();
    Ok(view)
}

fn is_final(status: &str) -> bool {
    wire::planner::TaskStatus::parse(status).is_some_and(|s| s.is_final())
}

fn finished(view: &BatchView) -> u64 {
    view.by_status
        .iter()
        .filter(|(status, _)| is_final(status))
        .map(|(_, n)| n)
        .sum()
}

/// `3 done, 1 running`, in the order a task goes through.
fn counts(view: &BatchView) -> String {
    const ORDER: [&str; 6] = [
        "queued",
        "running",
        "done",
        "failed",
        "cancelled",
        "expired",
    ];
    let parts: Vec<String> = ORDER
        .iter()
        .filter_map(|status| view.by_status.get(*status).map(|n| format!("{n} {status}")))
        .collect();
    parts.join(", ")
}
