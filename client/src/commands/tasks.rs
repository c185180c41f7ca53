//! `get`, `ls`, `wait` and `cancel`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wire::TaskId;
use wire::planner::{CancelRequest, TaskStatus, TaskView};

use super::{Outcome, json_out, open_events};
use crate::api::{Api, ListQuery};
use crate::cli::{Cancel, FollowArgs, List, Output};
use crate::follow::follow;
use crate::render;

/// The planner's cap on one page.
const MAX_PAGE: usize = 10_000;

pub async fn get(api: &Api, ids: &[TaskId], output: Output) -> Result<Outcome> {
    let views = api.tasks(ids).await?;
    let known: HashSet<TaskId> = views.iter().map(|v| v.id).collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !known.contains(id))
        .map(TaskId::to_string)
        .collect();
    print_tasks(&views, output)?;
    if !missing.is_empty() {
        bail!("no task {}", missing.join(", "));
    }
    Ok(Outcome::Ok)
}

pub async fn list(api: &Api, args: List, output: Output) -> Result<Outcome> {
    if args.limit == 0 || args.limit > MAX_PAGE {
        bail!("--limit must be between 1 and {MAX_PAGE}");
    }
    let since_ms = args.since.as_deref().map(since).transpose()?;
    let mut query = ListQuery {
        status: args.status,
        op: args.op,
        since_ms,
        before: args.before,
        limit: args.limit,
    };
    let mut all = Vec::new();
    loop {
        let page = api.list(&query).await?;
        let full = page.len() == query.limit;
        let last = page.last().map(|t| t.id);
        if args.all {
            all.extend(page);
        } else {
            print_tasks(&page, output)?;
            if let (true, Some(last), Output::Text) = (full, last, output) {
                eprintln!("more: workers ls --before {last} (same filters)");
            }
            return Ok(Outcome::Ok);
        }
        match last {
            Some(last) if full => query.before = Some(last),
            _ => break,
        }
    }
    print_tasks(&all, output)?;
    Ok(Outcome::Ok)
}

/// `10m` (that long ago) or an RFC 3339 time, as unix milliseconds.
fn since(value: &str) -> Result<u64> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(value) {
        Ok(ago) => now.checked_sub(ago).context("--since is too far back")?,
        Err(_) => humantime::parse_rfc3339_weak(value).with_context(|| {
            format!("--since `{value}`: give a duration (`10m`, `2h`) or a time (`2025-01-31T12:00:00Z`)")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

pub async fn wait(api: &Api, ids: &[TaskId], args: FollowArgs, output: Output) -> Result<Outcome> {
    let events = open_events(api, args.follow_by).await?;
    let timeout = (args.timeout > Duration::ZERO).then_some(args.timeout);
    let views = follow(api, ids, events, false, timeout, |_| {}).await?;
    print_tasks(&views, output)?;
    let unsuccessful: Vec<String> = views
        .iter()
        .filter(|v| v.status != TaskStatus::Done)
        .map(|v| format!("{} {}", v.id, v.status.as_str()))
        .collect();
    Ok(if unsuccessful.is_empty() {
        Outcome::Ok
    } else {
        Outcome::TaskFailed(format!("not done: {}", unsuccessful.join(", ")))
    })
}

pub async fn cancel(api: &Api, args: Cancel, output: Output) -> Result<Outcome> {
    let request = if args.ids.is_empty() {
        CancelRequest {
            ids: None,
            // `--op mul` alone means its queued tasks.
            status: Some(args.status.unwrap_or(TaskStatus::Queued)),
            op: args.op,
        }
    } else {
        CancelRequest {
            ids: Some(args.ids.clone()),
            ..CancelRequest::default()
        }
    };
    let report = api.cancel(&request).await?;
    match output {
        Output::Json => json_out(&report)?,
        Output::Text => println!("cancelled {}", report.cancelled),
    }
    let mut problems = Vec::new();
    if !report.not_found.is_empty() {
        problems.push(format!("no task {}", join(&report.not_found)));
    }
    if !report.not_queued.is_empty() {
        problems.push(format!("already finished: {}", join(&report.not_queued)));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(Outcome::Ok)
}

fn join(ids: &[TaskId]) -> String {
    ids.iter()
        .map(TaskId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_tasks(views: &[TaskView], output: Output) -> Result<()> {
    match output {
        Output::Json => json_out(&views),
        Output::Text => {
            print!("{}", render::tasks(views));
            Ok(())
        }
    }
}
