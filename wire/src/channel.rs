//! The persistent dispatch channel between the planner and a worker.
//!
//! A worker that speaks it opens a WebSocket to the planner replica that
//! registered it (`GET /workers/{id}/channel`, with the same token as its
//! other requests). The planner then sends tasks as [`ToWorker::Task`] frames
//! and the worker answers each with a [`ToPlanner`] frame carrying the same
//! `dispatch` id, in whatever order the tasks finish: many tasks and results
//! share a connection (and, when they are queued together, one write).
//!
//! Every frame is one JSON text message. Anything else (a binary message, a
//! frame that does not parse, one over [`MAX_FRAME_BYTES`]) closes that
//! channel with the reason; its tasks in flight are treated as lost, as a
//! dropped per-task connection would be.

use serde::{Deserialize, Serialize};

use crate::{Output, TaskId};

/// The largest frame either side accepts. A task is an op name (at most 64
/// bytes) and its arguments; a result is a value or an error message that
/// the worker already caps well below this.
pub const MAX_FRAME_BYTES: usize = 64 << 10;

/// How much either side reads from the socket at a time. tungstenite
/// zero-fills its read buffer up to this size before every read (128 KiB by
/// default, which measured 5 % of the planner's CPU at full speed); frames
/// are about a hundred bytes, and a larger one still arrives whole (the
/// buffer grows to fit it, up to [`MAX_FRAME_BYTES`]).
pub const READ_BUFFER_BYTES: usize = 8 << 10;

/// The planner's route a worker opens its channel on.
pub fn path(worker_id: &str) -> String {
    format!("/workers/{worker_id}/channel")
}

/// What the planner sends on a channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// First frame: how often the planner wants signs of life (a side that
    /// hears nothing, not even a ping, for `silence_ms` closes the channel),
    /// and the `Authorization` value the planner presents on per-task HTTP:
    /// a worker that requires a token takes tasks on the channel only from
    /// a planner that has it, as its `POST /tasks` would.
    Hello {
        ping_ms: u64,
        silence_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization: Option<Secret>,
    },
    /// Run a task; answer with the same `dispatch`.
    Task {
        dispatch: u64,
        id: TaskId,
        op: String,
        args: Vec<i64>,
    },
    /// The planner cancelled task `id` (or its deadline passed): stop its
    /// call. Its dispatch is still answered (and ignored).
    Cancel { id: TaskId },
}

/// A credential: never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a worker sends on a channel: the answer to one task frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToPlanner {
    /// The op ran: its value or its (or the sandbox's) error, and the digest
    /// of the module that ran it.
    Done {
        dispatch: u64,
        output: Output,
        digest: String,
    },
    /// The task was not run (all slots busy, op not offered, draining).
    Refused { dispatch: u64, reason: Refusal },
}

/// Why a worker did not run a task; the same cases as `POST /tasks`'s
/// 429, 404 and 503.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    Busy,
    Lacks,
    Draining,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_as_tagged_json() {
        let task = ToWorker::Task {
            dispatch: 7,
            id: 42,
            op: "mul".into(),
            args: vec![6, 7],
        };
        let text = serde_json::to_string(&task).expect("serializes");
        assert_eq!(
            text,
            r#"{"type":"task","dispatch":7,"id":42,"op":"mul","args":[6,7]}"#
        );
        assert_eq!(
            serde_json::from_str::<ToWorker>(&text).expect("parses"),
            task
        );
        let done = ToPlanner::Done {
            dispatch: 7,
            output: Output::Result(42),
            digest: "ab".into(),
        };
        let text = serde_json::to_string(&done).expect("serializes");
        assert_eq!(
            text,
            r#"{"type":"done","dispatch":7,"output":{"result":42},"digest":"ab"}"#
        );
        assert_eq!(
            serde_json::from_str::<ToPlanner>(&text).expect("parses"),
            done
        );
    }

    #[test]
    fn unknown_frames_and_fields_are_refused() {
        assert!(serde_json::from_str::<ToPlanner>(r#"{"type":"gossip"}"#).is_err());
        assert!(
            serde_json::from_str::<ToPlanner>(
                r#"{"type":"refused","dispatch":1,"reason":"busy","extra":1}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<ToPlanner>("not json").is_err());
    }
}
