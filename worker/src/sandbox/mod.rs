//! Running operation modules in wasmtime, sandboxed.
//!
//! State is kept at three lifetimes, each with its own type:
//! - [`Sandbox`]: process-wide — the engine, its epoch ticker, the limits;
//! - [`OpModule`]: one compiled, validated version of one op;
//! - a `Store` per call, dropped right after: any trap poisons a store, so no
//!   state survives from one task into the next.

mod engine;
mod limits;
mod module;

pub use engine::{Sandbox, SandboxConfig};
pub use module::{LoadError, OpModule};

/// Why a call produced no value from the op.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The op ran and returned its own error (wrong arity, overflow...).
    #[error("{0}")]
    Op(String),
    #[error("deadline exceeded: the call ran longer than {0} ms (OP_TIMEOUT_MS)")]
    Deadline(u64),
    #[error(
        "memory limit exceeded: the module tried to grow its memory to {desired} bytes, over the {limit} byte cap (OP_MEMORY_MB)"
    )]
    Memory { desired: usize, limit: usize },
    /// Any other trap: a panic (`unreachable`), an out-of-bounds access...
    #[error("the module trapped: {0}")]
    Trap(String),
    /// Instantiation or the host itself failed; not the op's fault.
    #[error("sandbox error: {0}")]
    Host(String),
    /// The planner cancelled the task (or its deadline passed) mid-call.
    #[error("interrupted: the planner cancelled the task")]
    Cancelled,
}

impl CallError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Op(_) => "op_error",
            Self::Deadline(_) => "deadline",
            Self::Memory { .. } => "memory",
            Self::Trap(_) => "trap",
            Self::Host(_) => "host",
            Self::Cancelled => "cancelled",
        }
    }
}
