//! The worker's API: what the planner sends it and what it answers.

use serde::{Deserialize, Serialize};

use crate::{OpInfo, Output, TaskId};

/// `POST /tasks` on a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    #[serde(deserialize_with = "crate::integers::u64")]
    pub id: TaskId,
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = r"^[a-z][a-z0-9_-]*$")
    )]
    pub op: String,
    #[serde(deserialize_with = "crate::integers::i64s")]
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
    /// Milliseconds, to the microsecond (see [`millis`]).
    pub duration_ms: f64,
    pub worker: String,
}

/// A duration in milliseconds rounded to whole microseconds, so it prints as
/// `0.259`, not as the float noise of `0.25949700000000003`.
pub fn millis(duration: std::time::Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
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

/// The OpenAPI schema of a module upload: the component's raw bytes.
#[cfg(feature = "openapi")]
pub struct ComponentBytes;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ComponentBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .content_media_type("application/wasm")
            .min_length(Some(1))
            .max_length(Some(crate::limits::MAX_MODULE_BYTES))
            .description(Some(
                "A WebAssembly component implementing workers:op/operation, at most 8 MiB",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ComponentBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_print_without_float_noise() {
        let printed = |d| serde_json::to_string(&millis(d)).expect("a number");
        assert_eq!(printed(std::time::Duration::from_nanos(259_497)), "0.259");
        assert_eq!(
            printed(std::time::Duration::from_nanos(1_500_000_900)),
            "1500.0"
        );
        assert_eq!(
            printed(std::time::Duration::from_micros(12_345_678)),
            "12345.678"
        );
    }
}
