//! The planner's API: tasks submitted by users, workers registering.

use serde::{Deserialize, Serialize};

use crate::{OpInfo, Output, TaskId};

/// One task as submitted: `{"op":"mul","args":[6,7]}`, optionally with
/// its controls (see [`crate::controls`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = r"^[a-z][a-z0-9_-]*$")
    )]
    pub op: String,
    #[serde(deserialize_with = "crate::integers::i64s")]
    pub args: Vec<i64>,
    /// Deadline in ms from submission, covering the wait in the queue and
    /// the run: past it a queued task ends `expired` and a running one is
    /// interrupted on its worker (and ends `expired`). Default: the
    /// planner's TASK_TIMEOUT_MS (none unless set). At most 7 days.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integers::u64_opt"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604_800_000))]
    pub timeout_ms: Option<u64>,
    /// How many times to run the task again when the op fails it (an op
    /// error, a trap, the worker's OP_TIMEOUT_MS), with exponential backoff.
    /// Worker loss is retried separately (MAX_ATTEMPTS). Default 0, at most 10.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integers::u64_opt"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10))]
    pub retries: Option<u64>,
    /// Higher runs first among the queued tasks of its op; FIFO within a
    /// priority. Strict: a steady stream of higher-priority tasks delays
    /// lower ones without bound. Default 0, from -10 to 10.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integers::i64_opt"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = -10, maximum = 10))]
    pub priority: Option<i64>,
}

impl NewTask {
    /// A task with no controls set.
    pub fn new(op: impl Into<String>, args: Vec<i64>) -> Self {
        Self {
            op: op.into(),
            args,
            ..Self::default()
        }
    }
}

/// `POST /tasks` accepts one task or an array of them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Submission {
    One(NewTask),
    Many(Vec<NewTask>),
}

impl Submission {
    pub fn into_tasks(self) -> Vec<NewTask> {
        match self {
            Self::One(task) => vec![task],
            Self::Many(tasks) => tasks,
        }
    }
}

/// Chooses the shape by the first token (`{` or `[`), so a malformed task
/// gets serde's precise message rather than "matched no variant".
impl<'de> Deserialize<'de> for Submission {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = Submission;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a task {"op": "...", "args": [...]} or an array of tasks"#)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Submission, A::Error> {
                NewTask::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Submission::One)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Submission, A::Error> {
                Vec::<NewTask>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Submission::Many)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// The 202 answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    pub ids: Vec<TaskId>,
    /// For an array: the batch's id (its first task's), for `GET /batches/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<TaskId>,
}

/// `GET /batches/{id}`: a batch submission's tasks counted by status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchView {
    pub id: TaskId,
    /// Its tasks still kept (finished ones leave with retention).
    pub total: u64,
    /// Status → tasks (statuses with none left out).
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// Every task kept reached a final state.
    pub finished: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    /// Its deadline (`timeout_ms`) passed before it finished.
    Expired,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Done | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    /// The status named `name` (as [`TaskStatus::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// A task as the planner reports it (`GET /tasks/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub id: TaskId,
    pub op: String,
    pub args: Vec<i64>,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a queued task is not moving (e.g. no live worker offers its op).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// sha256 of the module that computed the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Dispatches so far (op failures retried and worker losses included).
    pub attempts: u32,
    /// Unix milliseconds.
    pub submitted_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Its priority (0 unless given).
    #[serde(default, skip_serializing_if = "is_zero_i8")]
    pub priority: i8,
    /// Op failures it may be retried for, and how many it used.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retried: u32,
    /// Its deadline (unix ms), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// While waiting out a retry's backoff: when it may run again (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// The errors of its earlier attempts, oldest first (the last
    /// [`crate::controls::MAX_ATTEMPT_ERRORS`]); the final one is `error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_errors: Vec<AttemptError>,
    /// The batch it was submitted in (an array's first task id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<TaskId>,
}

fn is_zero_i8(n: &i8) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Why one attempt of a task ended without a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptError {
    /// Which dispatch of the task (1 for the first).
    pub attempt: u32,
    /// `op`: the op (or the sandbox) failed it, counted against `retries`;
    /// `lost`: no answer from its worker, counted against MAX_ATTEMPTS.
    pub kind: AttemptErrorKind,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When it ended (unix ms).
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AttemptErrorKind {
    Op,
    Lost,
}

impl TaskView {
    pub fn output(&self) -> Option<Output> {
        match (&self.result, &self.error) {
            (Some(value), _) => Some(Output::Result(*value)),
            (None, Some(error)) => Some(Output::Error(error.clone())),
            _ => None,
        }
    }
}

/// `POST /workers`: a worker announcing itself and what it can run. Its
/// sizes are bounded by [`crate::limits`], which also size the route's body limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub id: String,
    /// Where the planner reaches the worker, e.g. `http://10.0.0.7:8080`.
    pub url: String,
    pub ops: Vec<OpInfo>,
    pub slots: u32,
}

/// A worker as the planner sees it (`GET /workers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    pub id: String,
    pub url: String,
    /// `None` for a legacy worker, whose ops are learned by trying.
    pub ops: Option<Vec<OpInfo>>,
    /// Ops a legacy worker answered 404 for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lacks: Vec<String>,
    pub slots: u32,
    pub busy: u32,
    pub done: u64,
    pub failed: u64,
    /// Dispatches it answered 404 for (it lacked the op): zero unless a
    /// legacy worker's ops had to be learned, or an op was removed.
    pub wrong_op: u64,
    /// `general`, `add`, `mul`... derived from the ops; `legacy` when unknown.
    pub flavor: String,
    pub legacy: bool,
    /// Unix milliseconds of the last sign of life.
    pub last_seen_ms: u64,
    /// Its last answer to a dispatch was 401: it refuses the planner's
    /// token (a misconfiguration: they were given different tokens). Tasks
    /// are not sent to it meanwhile, only retried every few seconds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuses_token: bool,
    /// With several planner replicas: the address of the one this worker
    /// registered with (dispatched by and heartbeating to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<String>,
}

/// `GET /workers/summary`: the fleet by flavor, with counts, so a view of
/// thousands of workers need not fetch every one of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkersSummary {
    pub workers: u64,
    pub slots: u64,
    pub busy: u64,
    /// Flavors in name order.
    pub flavors: Vec<FlavorSummary>,
}

/// One flavor of [`WorkersSummary`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlavorSummary {
    pub flavor: String,
    pub workers: u64,
    pub slots: u64,
    pub busy: u64,
    pub done: u64,
    pub failed: u64,
    /// Workers that answered the planner's token with 401.
    pub refuses_token: u64,
    /// Op → digest → how many of these workers run it (a rollout's progress).
    pub digests: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// The first workers of the flavor in id order (at most `top`).
    pub shown: Vec<WorkerView>,
}

/// `GET /stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub by_op: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    pub workers_by_flavor: std::collections::BTreeMap<String, u64>,
    /// Tasks finished per second over the last minute.
    pub throughput_per_s: f64,
    /// From the event that made a dispatch possible (a task arriving, a slot
    /// freeing) to the task being sent, in µs, since the planner started.
    #[serde(default)]
    pub dispatch_gap_us: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// One op on the planner's `GET /ops`: the current module (if one was put
/// through the planner) and which worker runs which version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpRollout {
    pub name: String,
    /// The digest the fleet should run, if a module was put through the planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at_ms: Option<u64>,
    /// Worker id → the digest it runs.
    pub workers: std::collections::BTreeMap<String, String>,
    /// Workers running `digest` (all of them when no digest is set).
    pub up_to_date: u32,
    pub behind: u32,
}

/// The answer to the planner's `PUT /ops/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutReport {
    pub op: String,
    pub digest: String,
    pub workers: Vec<WorkerPush>,
}

/// How one worker took a module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerPush {
    pub id: String,
    /// When the worker had swapped to it (its clock, unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A worker's change of state on the event stream (`event: worker`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEvent {
    pub id: String,
    pub change: WorkerChange,
    /// The worker as it is now; absent once it left or was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WorkerChange {
    /// Registered, re-registered, or announced a new op set.
    Registered,
    /// Deregistered on purpose (shutting down).
    Left,
    /// Given up for dead (unreachable, or heartbeats stopped).
    Dropped,
}

/// `POST /tasks/cancel`: cancel the listed tasks, or every task matching a
/// filter (`{"status":"queued","op":"mul"}`), in one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// These tasks (not combined with a filter).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integers::u64s_opt"
    )]
    pub ids: Option<Vec<TaskId>>,
    /// Filter: `queued` or `running` (running tasks are interrupted on
    /// their workers); must be given with a filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Filter: only tasks of this op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

/// The answer to `POST /tasks/cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelReport {
    pub cancelled: u64,
    /// Listed ids the planner does not know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<TaskId>,
    /// Listed ids that had already finished, so not cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_queued: Vec<TaskId>,
    /// Tasks held by other planner replicas (PostgreSQL store) whose cancel
    /// was requested but not yet carried out when the answer was due (2 s);
    /// each ends cancelled as soon as its replica handles the request.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
