//! The original exercise's wire protocol, kept so its planner and workers
//! interoperate with ours.

use serde::{Deserialize, Serialize};

/// Body of a legacy worker's `POST /add` and `POST /mult`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operands {
    #[serde(deserialize_with = "crate::integers::i64")]
    pub a: i64,
    #[serde(deserialize_with = "crate::integers::i64")]
    pub b: i64,
}

/// A legacy worker's answer: the result, how long it took (ms), who computed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Answer {
    pub res: i64,
    pub duration: u64,
    pub id: String,
}

/// `POST /register` on a legacy planner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Register {
    pub url: String,
    pub id: String,
}

/// The legacy route for an op name, and back.
pub fn route_for_op(op: &str) -> Option<&'static str> {
    match op {
        "add" => Some("/add"),
        "mul" => Some("/mult"),
        _ => None,
    }
}
