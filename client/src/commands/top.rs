//! `workers top`: a live view fed by `GET /events`.
//!
//! Task and worker events arrive as they happen (the feed of latest changes,
//! the finish rate, workers joining and leaving); counts and busy slots come
//! from `GET /stats` and `GET /workers` once per frame, since events alone
//! can't say what state a task was in before this view started. On a
//! terminal each frame replaces the last; otherwise (or with `--once`,
//! `--frames N`) frames are printed one after another, plain or as one JSON
//! object per line.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Result;
use futures_util::StreamExt;
use serde::Serialize;
use wire::planner::{Stats, TaskView, WorkerChange, WorkerView};

use super::{Outcome, json_out};
use crate::api::{Api, Event};
use crate::cli::{Output, Top};
use crate::commands::fleet::render_workers;
use crate::render;

/// Changes kept for the feed.
const FEED: usize = 12;

#[derive(Debug, Default, Serialize)]
struct Frame {
    /// Counts by status and op, throughput, dispatch gap (as `GET /stats`).
    stats: Stats,
    workers: Vec<WorkerView>,
    /// The latest task changes, newest first.
    recent: Vec<TaskView>,
    /// Worker joins and leaves seen since the view started.
    worker_changes: Vec<String>,
    /// Tasks that reached a final state per second, over the last frame.
    finished_per_s: f64,
    /// Events received since the view started.
    events: u64,
    /// Events the planner skipped because this view was too slow.
    lagged: u64,
}

pub async fn run(api: &Api, args: Top, output: Output) -> Result<Outcome> {
    let limit = if args.once { Some(1) } else { args.frames };
    let live = limit.is_none() && output == Output::Text && std::io::stdout().is_terminal();
    let mut events = api.events().await?;
    let mut frame = Frame::default();
    let mut recent: VecDeque<TaskView> = VecDeque::new();
    let mut finished_since_frame = 0u64;
    let mut last_frame = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    let term = console::Term::stdout();
    if live {
        term.hide_cursor()?;
    }
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result: Result<()> = async {
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(Event::Task(view))) => {
                        frame.events += 1;
                        if view.status.is_final() {
                            finished_since_frame += 1;
                        }
                        recent.push_front(view);
                        recent.truncate(FEED);
                    }
                    Some(Ok(Event::Worker(change))) => {
                        frame.events += 1;
                        let what = match change.change {
                            WorkerChange::Registered => "registered",
                            WorkerChange::Left => "left",
                            WorkerChange::Dropped => "dropped",
                        };
                        frame.worker_changes.push(format!("{} {what}", change.id));
                        let keep = frame.worker_changes.len().saturating_sub(5);
                        frame.worker_changes.drain(..keep);
                    }
                    Some(Ok(Event::Lagged(n))) => frame.lagged += n,
                    Some(Err(err)) => return Err(err.into()),
                    None => anyhow::bail!("the planner closed the event stream"),
                },
                _ = ticker.tick() => {
                    frame.stats = api.stats().await?;
                    frame.workers = api.workers().await?;
                    frame.workers.sort_by(|a, b| a.flavor.cmp(&b.flavor).then(a.id.cmp(&b.id)));
                    frame.recent = recent.iter().cloned().collect();
                    let elapsed = last_frame.elapsed().as_secs_f64().max(1e-3);
                    frame.finished_per_s = if printed == 0 { 0.0 } else { finished_since_frame as f64 / elapsed };
                    finished_since_frame = 0;
                    last_frame = Instant::now();
                    match output {
                        Output::Json => json_out(&frame)?,
                        Output::Text if live => {
                            term.clear_screen()?;
                            let (rows, _) = term.size();
                            let text = render_frame(&frame, api.base());
                            let lines: Vec<&str> = text.lines().take(rows as usize).collect();
                            term.write_str(&lines.join("\n"))?;
                        }
                        Output::Text => {
                            if printed > 0 {
                                println!();
                            }
                            print!("{}", render_frame(&frame, api.base()));
                        }
                    }
                    printed += 1;
                    if limit.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                },
                _ = &mut ctrl_c => return Ok(()),
            }
        }
    }
    .await;
    if live {
        term.show_cursor()?;
        term.write_line("")?;
    }
    result.map(|()| Outcome::Ok)
}

fn render_frame(frame: &Frame, planner: &str) -> String {
    let stats = &frame.stats;
    let count = |status: &str| stats.by_status.get(status).copied().unwrap_or(0);
    let mut text = format!(
        "planner {planner}   queued {}  running {}  done {}  failed {}  cancelled {}  expired {}\n\
         finished/s {:.1} (last frame), {:.1} (last minute)   dispatch gap p50 {}µs p99 {}µs   events {}{}\n\n",
        count("queued"),
        count("running"),
        count("done"),
        count("failed"),
        count("cancelled"),
        count("expired"),
        frame.finished_per_s,
        stats.throughput_per_s,
        stats.dispatch_gap_us.p50,
        stats.dispatch_gap_us.p99,
        frame.events,
        if frame.lagged > 0 {
            format!(" ({} skipped: too slow)", frame.lagged)
        } else {
            String::new()
        }
    );
    let ops: BTreeMap<&String, &BTreeMap<String, u64>> = stats.by_op.iter().collect();
    if !ops.is_empty() {
        let rows: Vec<Vec<String>> = ops
            .iter()
            .map(|(op, counts)| {
                let n = |s: &str| counts.get(s).copied().unwrap_or(0).to_string();
                vec![
                    (*op).clone(),
                    n("queued"),
                    n("running"),
                    n("done"),
                    n("failed"),
                ]
            })
            .collect();
        text.push_str(&render::table(
            &["OP", "QUEUED", "RUNNING", "DONE", "FAILED"],
            &rows,
        ));
        text.push('\n');
    }
    text.push_str(&render_workers(&frame.workers));
    if !frame.worker_changes.is_empty() {
        text.push_str(&format!(
            "worker changes: {}\n",
            frame.worker_changes.join(", ")
        ));
    }
    text.push_str("\nlatest task changes\n");
    text.push_str(&render::tasks(&frame.recent));
    text
}
