//! The local run's closing report: per flavor, makespan, failures.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use wire::TaskId;
use wire::planner::{NewTask, TaskStatus, TaskView, WorkerView};

pub struct Report {
    tasks: Vec<(TaskView, i64)>,
    flavor_of: BTreeMap<String, String>,
    elapsed: Duration,
}

pub async fn collect(
    client: &reqwest::Client,
    planner: &str,
    expected: &BTreeMap<TaskId, (NewTask, i64)>,
    elapsed: Duration,
) -> Result<Report> {
    let workers: Vec<WorkerView> = client
        .get(format!("{planner}/workers"))
        .send()
        .await?
        .json()
        .await?;
    let mut flavor_of: BTreeMap<String, String> =
        workers.into_iter().map(|w| (w.id, w.flavor)).collect();
    let mut tasks = Vec::with_capacity(expected.len());
    for (id, (_, want)) in expected {
        let view: TaskView = client
            .get(format!("{planner}/tasks/{id}"))
            .send()
            .await?
            .json()
            .await
            .with_context(|| format!("reading task {id}"))?;
        if let Some(worker) = &view.worker {
            // Workers that already left: their id starts with their flavor.
            flavor_of.entry(worker.clone()).or_insert_with(|| {
                worker
                    .rsplit_once('-')
                    .map_or(worker.clone(), |(f, _)| f.to_string())
            });
        }
        tasks.push((view, *want));
    }
    Ok(Report {
        tasks,
        flavor_of,
        elapsed,
    })
}

impl Report {
    pub fn total(&self) -> usize {
        self.tasks.len()
    }

    fn is_correct(view: &TaskView, want: i64) -> bool {
        view.status == TaskStatus::Done && view.result == Some(want)
    }

    pub fn bad(&self) -> usize {
        self.tasks
            .iter()
            .filter(|(v, want)| !Self::is_correct(v, *want))
            .count()
    }

    pub fn all_correct(&self) -> bool {
        self.bad() == 0
    }

    pub fn print(&self) {
        #[derive(Default)]
        struct PerFlavor {
            workers: std::collections::BTreeSet<String>,
            done: usize,
            busy_ms: u64,
        }
        let mut flavors: BTreeMap<String, PerFlavor> = BTreeMap::new();
        for (view, _) in &self.tasks {
            let (Some(worker), Some(start), Some(end)) =
                (&view.worker, view.started_at_ms, view.finished_at_ms)
            else {
                continue;
            };
            let flavor = self
                .flavor_of
                .get(worker)
                .cloned()
                .unwrap_or_else(|| "?".into());
            let entry = flavors.entry(flavor).or_default();
            entry.workers.insert(worker.clone());
            entry.done += usize::from(view.status == TaskStatus::Done);
            entry.busy_ms += end.saturating_sub(start);
        }
        let first = self
            .tasks
            .iter()
            .map(|(v, _)| v.submitted_at_ms)
            .min()
            .unwrap_or(0);
        let last = self
            .tasks
            .iter()
            .filter_map(|(v, _)| v.finished_at_ms)
            .max()
            .unwrap_or(first);
        println!();
        println!(
            "{:<10} {:>8} {:>11} {:>12}",
            "flavor", "workers", "tasks done", "busy time"
        );
        for (name, f) in &flavors {
            println!(
                "{name:<10} {:>8} {:>11} {:>11.1}s",
                f.workers.len(),
                f.done,
                f.busy_ms as f64 / 1000.0
            );
        }
        let done = self
            .tasks
            .iter()
            .filter(|(v, _)| v.status == TaskStatus::Done)
            .count();
        let correct = self
            .tasks
            .iter()
            .filter(|(v, want)| Self::is_correct(v, *want))
            .count();
        println!();
        println!(
            "tasks      {} submitted, {done} done, {correct} correct, {} failed or wrong",
            self.total(),
            self.bad()
        );
        println!(
            "makespan   {:.2}s (first submit to last result; wall {:.2}s)",
            (last - first) as f64 / 1000.0,
            self.elapsed.as_secs_f64()
        );
        for (view, want) in self
            .tasks
            .iter()
            .filter(|(v, want)| !Self::is_correct(v, *want))
            .take(10)
        {
            println!(
                "  task {} {}{:?}: {} {:?} (expected {want}){}",
                view.id,
                view.op,
                view.args,
                view.status.as_str(),
                view.result,
                view.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
}
