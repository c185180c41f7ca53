//! `workers submit`: one task from the arguments, or a batch from NDJSON.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use wire::planner::{NewTask, TaskStatus, TaskView};

use super::{Outcome, json_out, open_events};
use crate::api::Api;
use crate::cli::{Output, Submit};
use crate::follow::{Tally, follow};
use crate::render;

/// The planner's own ceiling on one `?wait=true` request.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(600);

pub async fn run(api: &Api, args: Submit, output: Output) -> Result<Outcome> {
    match (&args.op, &args.file) {
        (Some(op), None) => {
            one(
                api,
                args.controls
                    .apply(NewTask::new(op.clone(), args.args.clone())),
                &args,
                output,
            )
            .await
        }
        (None, Some(path)) => {
            if !args.args.is_empty() {
                bail!("arguments go in the file's tasks, not after --file");
            }
            let tasks = read_tasks(path)?
                .into_iter()
                .map(|task| args.controls.apply(task))
                .collect();
            batch(api, tasks, &args, output).await
        }
        _ => bail!("give an op and its arguments, or --file"),
    }
}

async fn one(api: &Api, task: NewTask, args: &Submit, output: Output) -> Result<Outcome> {
    let key = args.controls.idempotency_key.as_deref();
    if !args.wait {
        let ids = api
            .submit_keyed(std::slice::from_ref(&task), key)
            .await?
            .ids;
        match output {
            Output::Json => json_out(&serde_json::json!({ "ids": ids }))?,
            Output::Text => {
                for id in ids {
                    println!("{id}");
                }
            }
        }
        return Ok(Outcome::Ok);
    }
    // One request does it, unless the wait is longer than the planner holds one.
    let wait = match args.follow.timeout {
        Duration::ZERO => MAX_SERVER_WAIT,
        timeout => timeout.min(MAX_SERVER_WAIT),
    };
    let mut view = api.submit_and_wait(&task, wait, key).await?;
    if !view.status.is_final() {
        let rest = match args.follow.timeout {
            Duration::ZERO => None,
            timeout => Some(timeout.saturating_sub(wait)),
        };
        let events = open_events(api, args.follow.follow_by).await?;
        let mut views = follow(api, &[view.id], events, false, rest, |_| {}).await?;
        view = views.pop().context("the task vanished")?;
    }
    finished_one(&view, output)
}

/// Prints a finished task: its result alone in text (for `$(...)`), or the
/// whole task in JSON; a failure becomes exit status 3.
pub fn finished_one(view: &TaskView, output: Output) -> Result<Outcome> {
    match output {
        Output::Json => json_out(view)?,
        Output::Text => {
            if let (TaskStatus::Done, Some(result)) = (view.status, view.result) {
                println!("{result}");
            }
        }
    }
    Ok(match view.status {
        TaskStatus::Done => Outcome::Ok,
        status => Outcome::TaskFailed(format!(
            "task {} {}{}",
            view.id,
            status.as_str(),
            view.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
    })
}

async fn batch(api: &Api, tasks: Vec<NewTask>, args: &Submit, output: Output) -> Result<Outcome> {
    if tasks.is_empty() {
        bail!("no tasks in the input");
    }
    let started = Instant::now();
    // Subscribe before submitting, so no transition of ours is missed.
    let events = if args.wait {
        open_events(api, args.follow.follow_by).await?
    } else {
        None
    };
    let bar = ProgressBar::new(tasks.len() as u64).with_style(style("submitting")?);
    let mut ids = Vec::with_capacity(tasks.len());
    let key = args.controls.idempotency_key.as_deref();
    if key.is_some() && tasks.len() > args.chunk as usize {
        bail!(
            "--idempotency-key names one request: give --chunk {} or more for these {} tasks",
            tasks.len(),
            tasks.len()
        );
    }
    // One batch per request (`workers batch ID` follows one).
    let mut batches = Vec::new();
    for chunk in tasks.chunks(args.chunk as usize) {
        let accepted = api.submit_keyed(chunk, key).await.with_context(|| {
            format!("after {} of {} tasks were accepted", ids.len(), tasks.len())
        })?;
        batches.extend(accepted.batch);
        ids.extend(accepted.ids);
        bar.set_position(ids.len() as u64);
    }
    let submitted = started.elapsed();
    bar.finish_and_clear();
    if !args.wait {
        match output {
            Output::Json => json_out(&serde_json::json!({ "ids": ids, "batches": batches }))?,
            Output::Text => {
                let mut out = String::with_capacity(ids.len() * 8);
                for id in &ids {
                    out.push_str(&id.to_string());
                    out.push('\n');
                }
                print!("{out}");
                let batches: Vec<String> = batches.iter().map(u64::to_string).collect();
                eprintln!(
                    "{} tasks submitted in {} (batch {}: follow with `workers batch ID`)",
                    ids.len(),
                    render::duration_ms(submitted.as_millis() as u64),
                    batches.join(", ")
                );
            }
        }
        return Ok(Outcome::Ok);
    }
    let bar = ProgressBar::new(ids.len() as u64).with_style(style("finished")?);
    let timeout = (args.follow.timeout > Duration::ZERO).then_some(args.follow.timeout);
    let views = follow(api, &ids, events, true, timeout, |tally: &Tally| {
        bar.set_position(tally.finished() as u64);
        bar.set_message(format!(
            "{} failed, {} cancelled, {} expired",
            tally.failed, tally.cancelled, tally.expired
        ));
    })
    .await;
    bar.finish_and_clear();
    let views = views?;
    let elapsed = started.elapsed();
    let unsuccessful: Vec<&TaskView> = views
        .iter()
        .filter(|v| v.status != TaskStatus::Done)
        .collect();
    match output {
        Output::Json => json_out(&views)?,
        Output::Text => {
            println!(
                "{} in {} ({:.0} tasks/s; submitting took {})",
                render::counts(&views),
                render::duration_ms(elapsed.as_millis() as u64),
                views.len() as f64 / elapsed.as_secs_f64().max(1e-3),
                render::duration_ms(submitted.as_millis() as u64)
            );
            if !unsuccessful.is_empty() {
                let shown: Vec<TaskView> =
                    unsuccessful.iter().take(10).map(|v| (*v).clone()).collect();
                print!("{}", render::tasks(&shown));
                if unsuccessful.len() > shown.len() {
                    println!("... and {} more", unsuccessful.len() - shown.len());
                }
            }
        }
    }
    Ok(if unsuccessful.is_empty() {
        Outcome::Ok
    } else {
        Outcome::TaskFailed(format!(
            "{} of {} tasks did not succeed",
            unsuccessful.len(),
            views.len()
        ))
    })
}

fn style(verb: &str) -> Result<ProgressStyle> {
    Ok(ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {verb} ({{per_sec}}, eta {{eta}}) {{msg}}"
    ))?)
}

/// NDJSON: one task per line; blank lines and `#` comments are skipped.
fn read_tasks(path: &std::path::Path) -> Result<Vec<NewTask>> {
    let (name, reader): (String, Box<dyn BufRead>) = if path.as_os_str() == "-" {
        ("stdin".into(), Box::new(std::io::stdin().lock()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        (
            path.display().to_string(),
            Box::new(std::io::BufReader::new(file)),
        )
    };
    parse_tasks(reader, &name)
}

fn parse_tasks(reader: impl BufRead, name: &str) -> Result<Vec<NewTask>> {
    let mut tasks = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let task: NewTask = serde_json::from_str(line).with_context(|| {
            format!(
                "{name} line {}: expected {{\"op\": ..., \"args\": [...]}}",
                n + 1
            )
        })?;
        tasks.push(task);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_become_tasks_and_a_bad_line_is_named() {
        let input =
            "{\"op\":\"mul\",\"args\":[6,7]}\n\n# comment\n{\"op\":\"add\",\"args\":[1,2]}\n";
        let tasks = parse_tasks(input.as_bytes(), "t").ok();
        assert_eq!(tasks.map(|t| t.len()), Some(2));
        let err = parse_tasks(
            "{\"op\":\"mul\",\"args\":[6,7]}\n{\"op\":1}\n".as_bytes(),
            "t",
        )
        .err()
        .map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.starts_with("t line 2:")));
    }
}
