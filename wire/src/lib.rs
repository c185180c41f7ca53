//! Wire types shared by the planner, the worker, the launcher and the tests.
//!
//! Only data lives here: no I/O, no framework types, so every side can depend
//! on it cheaply and a change of shape is one edit, seen by both ends.

pub mod channel;
pub mod controls;
pub mod integers;
pub mod legacy;
pub mod limits;
pub mod planner;
#[cfg(feature = "random")]
pub mod random;
pub mod worker;

use serde::{Deserialize, Serialize};

/// A task's identity, assigned by the planner; unique for the planner's data dir.
pub type TaskId = u64;

/// Every error answer of every route: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

/// What running an op produced: a value, or the op's (or the sandbox's) error.
/// Serialized flat as `{"result": 42}` or `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Result(i64),
    Error(String),
}

/// A loaded operation module, as a worker advertises it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpInfo {
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = r"^[a-z][a-z0-9_-]*$")
    )]
    pub name: String,
    /// Hex sha256 of the component bytes: names exactly which code ran.
    pub digest: String,
    pub arity: u32,
    /// At most 1024 bytes ([`limits::MAX_OP_DOC_BYTES`]).
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub doc: String,
}

/// Most tasks one worker runs at once (its `SLOTS`); a registration
/// claiming more is refused.
pub const MAX_SLOTS: u32 = 4096;

/// Longest op name (see [`limits`]).
pub const MAX_OP_NAME: usize = limits::MAX_OP_NAME_LEN;

/// Op names are short identifiers: they become file names (`<op>.wasm`) and
/// URL segments, so nothing else is allowed.
pub fn is_valid_op_name(name: &str) -> bool {
    check_op_name(name).is_ok()
}

/// Why `name` is not a valid op name, in words a user can act on.
pub fn check_op_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(80).collect();
    let rule = "an op name starts with a lowercase letter and has only lowercase letters, digits, `-` and `_`";
    if name.is_empty() {
        Err("the op name is empty".into())
    } else if name.len() > MAX_OP_NAME {
        Err(format!(
            "op name `{shown}...` is {} characters long; at most {MAX_OP_NAME}",
            name.len()
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        Err(format!("invalid op name `{shown}`: {rule}"))
    } else {
        Ok(())
    }
}

/// The content digest every side shows for a module: hex sha256 of its bytes.
pub fn digest_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
