//! The worker's API: what the planner sends it and what it answers.

use serde::{Deserialize, Serialize};

use crate::{OpInfo, Output, TaskId};

/// `POST /tasks` on a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub id: TaskId,
    pub op: String,
    pub args: Vec<i64>,
}

/// The worker's answer to `POST /tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskOutcome {
    #[serde(flatten)]
    pub output: Output,
    pub op: String,
    pub digest: String,
    pub duration_ms: f64,
    pub worker: String,
}

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ModuleSource {
    /// Compiled into the worker binary.
    Embedded,
    /// A `<name>.wasm` file in `OPS_DIR`.
    File,
    /// `PUT /ops/{name}`.
    Upload,
}

/// One entry of a worker's `GET /ops`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadedOp {
    #[serde(flatten)]
    pub info: OpInfo,
    pub source: ModuleSource,
    /// Unix milliseconds.
    pub loaded_at_ms: u64,
    /// The last failed attempt to (re)load this op; the previous version kept serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
