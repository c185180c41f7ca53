//! The sizes every side enforces, defined once.
//!
//! A worker refuses at load any module whose self-description breaks these,
//! and the planner sizes its registration body limit from them, so a module
//! that loads can always be registered (a 2.8 MB `doc` once made a worker
//! unregistrable while it reported itself ready).

/// Op names: `[a-z][a-z0-9_-]*`, at most this many bytes (see [`crate::is_valid_op_name`]).
pub const MAX_OP_NAME_LEN: usize = 64;
/// An op's `doc` string, in bytes of UTF-8.
pub const MAX_OP_DOC_BYTES: usize = 1024;
/// Ops one worker may offer at once.
pub const MAX_OPS_PER_WORKER: usize = 64;
/// A worker id (a DNS name's length, so a pod name always fits).
pub const MAX_WORKER_ID_LEN: usize = 253;
/// A worker's URL.
pub const MAX_WORKER_URL_LEN: usize = 2048;
/// A module (component) upload; a ConfigMap holds 1 MiB, this leaves room.
pub const MAX_MODULE_BYTES: usize = 8 << 20;
/// Hex sha256: 64 characters.
pub const DIGEST_HEX_LEN: usize = 64;

/// The largest `POST /workers` body a worker within the limits above can
/// send: every string at its longest and in its worst JSON escaping (a
/// control character becomes `\u00XX`, 6 bytes), every number at its widest.
pub const MAX_REGISTRATION_BYTES: usize = {
    const ESCAPED: usize = 6;
    const FIELD_OVERHEAD: usize = 64; // keys, quotes, braces, commas
    let op = FIELD_OVERHEAD
        + ESCAPED * (MAX_OP_NAME_LEN + MAX_OP_DOC_BYTES)
        + DIGEST_HEX_LEN * ESCAPED
        + 10; // arity: a u32
    FIELD_OVERHEAD
        + ESCAPED * (MAX_WORKER_ID_LEN + MAX_WORKER_URL_LEN)
        + 10 // slots: a u32
        + MAX_OPS_PER_WORKER * (op + 1)
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpInfo;
    use crate::planner::Registration;

    #[test]
    fn the_schema_literals_match_the_limits() {
        // `#[schema(max_length = ...)]` takes literals; keep them in step.
        assert_eq!((MAX_OP_NAME_LEN, MAX_OP_DOC_BYTES), (64, 1024));
    }

    #[test]
    fn a_registration_at_every_limit_fits_the_registration_body_limit() {
        // The worst escaping: control characters everywhere a string may hold them.
        let worst = |n: usize| "\u{1}".repeat(n);
        let registration = Registration {
            id: worst(MAX_WORKER_ID_LEN),
            url: worst(MAX_WORKER_URL_LEN),
            ops: (0..MAX_OPS_PER_WORKER)
                .map(|_| OpInfo {
                    name: worst(MAX_OP_NAME_LEN),
                    digest: worst(DIGEST_HEX_LEN),
                    arity: u32::MAX,
                    doc: worst(MAX_OP_DOC_BYTES),
                })
                .collect(),
            slots: u32::MAX,
        };
        let body = serde_json::to_vec(&registration).expect("serializable");
        assert!(
            body.len() <= MAX_REGISTRATION_BYTES,
            "{} > {MAX_REGISTRATION_BYTES}",
            body.len()
        );
        // And the limit is not absurdly loose.
        assert!(MAX_REGISTRATION_BYTES < 2 * body.len());
    }
}
