//! HTTP plumbing shared by the planner and the worker.

pub mod auth;
pub mod cross_origin;
pub mod error;
pub mod http;
pub mod json;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod shutdown;

pub use error::{ApiError, Path, Query};
pub use json::{JsonBody, RawBody};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
