//! Running one task: take a slot, wait the artificial work time, call the op
//! in the sandbox. Shared by `POST /tasks` and the legacy routes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wire::{Output, TaskId};

use crate::catalog::Catalog;
use crate::sandbox::CallError;
use crate::telemetry;
use crate::work_time::WorkTime;

/// Why a task was not run at all.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("all {0} slots are busy")]
    Busy(u32),
    #[error("this worker does not offer op `{op}` (it offers: {offered})")]
    NoSuchOp { op: String, offered: String },
    #[error("this worker is shutting down")]
    Draining,
}

/// A finished run: the op's output (or the sandbox's error) and what ran it.
pub struct Run {
    pub output: Result<i64, CallError>,
    pub op: String,
    pub digest: String,
    pub elapsed: std::time::Duration,
}

impl Run {
    pub fn wire_output(&self) -> Output {
        match &self.output {
            Ok(value) => Output::Result(*value),
            Err(err) => Output::Error(err.to_string()),
        }
    }
}

/// What `GET /` shows about a task in progress.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Running {
    pub id: TaskId,
    pub op: String,
    pub args: Vec<i64>,
    pub started_at_ms: u64,
    /// The id is the planner's (not a legacy call's local one).
    #[serde(skip)]
    pub planned: bool,
}

pub struct Executor {
    pub catalog: Arc<Catalog>,
    slots: Arc<Semaphore>,
    slot_count: u32,
    work: WorkTime,
    draining: std::sync::atomic::AtomicBool,
    /// The planner has accepted this worker and still answers its heartbeats;
    /// with `draining`, what readiness reports.
    registered: std::sync::atomic::AtomicBool,
    running: Mutex<BTreeMap<u64, (Running, CancellationToken)>>,
    next_local_id: std::sync::atomic::AtomicU64,
}

impl Executor {
    pub fn new(catalog: Arc<Catalog>, slots: u32, work: WorkTime) -> Self {
        Self {
            catalog,
            slots: Arc::new(Semaphore::new(slots as usize)),
            slot_count: slots,
            work,
            draining: false.into(),
            registered: false.into(),
            running: Mutex::new(BTreeMap::new()),
            next_local_id: 0.into(),
        }
    }

    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    pub fn busy(&self) -> u32 {
        self.slot_count - self.slots.available_permits() as u32
    }

    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_registered(&self, registered: bool) {
        self.registered
            .store(registered, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn running(&self) -> Vec<Running> {
        self.lock_running()
            .values()
            .map(|(running, _)| running.clone())
            .collect()
    }

    /// Interrupts the planner's task `id` if it is running here (its call
    /// stops within one epoch tick, and its slot is freed); returns how many
    /// runs of it were interrupted (0: none running).
    pub fn cancel(&self, id: TaskId) -> usize {
        let running = self.lock_running();
        let mut cancelled = 0;
        for (task, token) in running.values() {
            if task.id == id && !token.is_cancelled() && task.planned {
                token.cancel();
                cancelled += 1;
            }
        }
        if cancelled > 0 {
            tracing::info!(task = id, "task interrupted at the planner's request");
        }
        cancelled
    }

    /// Whether the calls of `op` lately took microseconds (see [`Pace`]).
    pub fn runs_briefly(&self, op: &str) -> bool {
        self.catalog
            .get(op)
            .is_none_or(|entry| entry.pace.is_brief())
    }

    /// Runs a task; `id` is the planner's, or `None` for a legacy call.
    pub async fn run(&self, id: Option<TaskId>, op: &str, args: Vec<i64>) -> Result<Run, Refusal> {
        let outcome = self.run_counted(id, op, args).await;
        if let Err(refusal) = &outcome {
            telemetry::refused(match refusal {
                Refusal::Busy(_) => "busy",
                Refusal::NoSuchOp { .. } => "no_such_op",
                Refusal::Draining => "draining",
            });
        }
        outcome
    }

    async fn run_counted(
        &self,
        id: Option<TaskId>,
        op: &str,
        args: Vec<i64>,
    ) -> Result<Run, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let _permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy(self.slot_count))?;
        let entry = self.catalog.get(op).ok_or_else(|| Refusal::NoSuchOp {
            op: op.to_string(),
            offered: self.catalog.names().join(", "),
        })?;
        let key = self
            .next_local_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let _running = RunningGuard::new(
            self,
            key,
            Running {
                id: id.unwrap_or(key),
                op: op.to_string(),
                args: args.clone(),
                started_at_ms: serve::now_ms(),
                planned: id.is_some(),
            },
            cancel.clone(),
        );

        let started = Instant::now();
        let work = self.work.pick();
        if !work.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(work) => {}
                () = cancel.cancelled() => {}
            }
        }
        let sandbox = self.catalog.sandbox();
        let call_started = Instant::now();
        // Most calls take microseconds: making them right here costs far less
        // than handing them to a blocking thread and back (BENCHMARKS.md, P3),
        // and holds this async thread for at most one epoch tick. An op whose
        // calls lately outlast that tick goes straight to a blocking thread:
        // the attempt would only waste it.
        let straight = entry.pace.outlasts_a_tick();
        let brief = if straight {
            None
        } else {
            sandbox.try_call_briefly(&entry.module, &args, &cancel)
        };
        let output = match brief {
            Some(output) => output,
            None => {
                // A long call, where it may run for its deadline (the rest
                // of it after an attempt here) without holding up health
                // checks, the channel and the other slots. Made again from
                // the start after an attempt: ops are pure, and every call
                // gets a fresh store.
                let retried = !straight;
                telemetry::call_moved(op, retried);
                let sandbox = sandbox.clone();
                let module = entry.clone();
                tokio::task::spawn_blocking(move || {
                    if retried {
                        sandbox.call_after_brief(&module.module, &args, &cancel)
                    } else {
                        sandbox.call_cancellable(&module.module, &args, &cancel)
                    }
                })
                .await
                .unwrap_or_else(|join| {
                    Err(CallError::Host(format!("the call's thread failed: {join}")))
                })
            }
        };
        let call_time = call_started.elapsed();
        entry.pace.record(call_time);
        entry.metrics.ran(op, &output, started.elapsed(), call_time);
        if let Some(id) = id {
            // One line per execution (`LOG=info,worker::executor=debug`): the
            // real-cluster test counts them to prove no task ran twice.
            tracing::debug!(task = id, op, ok = output.is_ok(), "ran");
        }
        if let Err(err) = &output {
            tracing::debug!(op, kind = err.kind(), error = %err, "op call failed");
        }
        Ok(Run {
            output,
            op: op.to_string(),
            digest: entry.module.digest.clone(),
            elapsed: started.elapsed(),
        })
    }

    fn lock_running(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Running, CancellationToken)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long an op's calls take: a moving average of the last few (each new
/// call weighs 1/8), in µs. The dispatch channel polls the calls of an op
/// under [`Pace::BRIEF_US`] itself, one after another, and gives longer ones
/// a task each so that they run in parallel. A call the OS preempted looks
/// long for a few calls, then the average comes back down.
#[derive(Debug, Default)]
pub struct Pace(std::sync::atomic::AtomicU32);

impl Pace {
    const BRIEF_US: u32 = 100;
    const TICK_US: u32 = 5_000;

    pub fn record(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let took = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        // Concurrent calls may lose an update of each other's: harmless.
        let average = self.0.load(Relaxed);
        self.0.store(average - average / 8 + took / 8, Relaxed);
    }

    pub fn is_brief(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) < Self::BRIEF_US
    }

    /// Whether calls lately took longer than the inline attempt allows (one
    /// epoch tick, 5 ms).
    pub fn outlasts_a_tick(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) >= Self::TICK_US
    }
}

/// Keeps a task listed in `GET /` exactly while it runs, even if the request
/// is dropped half-way.
struct RunningGuard<'a> {
    executor: &'a Executor,
    key: u64,
}

impl<'a> RunningGuard<'a> {
    fn new(executor: &'a Executor, key: u64, running: Running, cancel: CancellationToken) -> Self {
        executor.lock_running().insert(key, (running, cancel));
        Self { executor, key }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.executor.lock_running().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Pace;

    #[test]
    fn an_op_is_brief_until_its_calls_take_long_and_again_once_they_are_short() {
        let pace = Pace::default();
        assert!(pace.is_brief(), "an op nothing is known about yet");
        for _ in 0..100 {
            pace.record(Duration::from_micros(8));
        }
        assert!(pace.is_brief());
        // One call preempted for 2 ms: long for a few calls only.
        pace.record(Duration::from_millis(2));
        assert!(!pace.is_brief());
        let calls_back = (1..100)
            .find(|_| {
                pace.record(Duration::from_micros(8));
                pace.is_brief()
            })
            .expect("brief again");
        assert!(calls_back <= 25, "{calls_back} calls to come back");
        assert!(!pace.outlasts_a_tick());
        // Calls that take milliseconds each keep it long.
        for _ in 0..50 {
            pace.record(Duration::from_millis(3));
        }
        assert!(!pace.is_brief() && !pace.outlasts_a_tick());
        // One that ran into its deadline outlasts the inline attempt.
        pace.record(Duration::from_millis(300));
        assert!(pace.outlasts_a_tick());
        // Even the longest call does not overflow the average.
        for _ in 0..50 {
            pace.record(Duration::from_secs(3600 * 24 * 365));
        }
        assert!(!pace.is_brief());
    }
}
