//! The bounds of a task's controls (deadline, retries, priority,
//! idempotency key), defined once for the planner, its API description and
//! the client.

/// Longest `timeout_ms` a task may ask for: 7 days.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most `retries` a task may ask for.
pub const MAX_RETRIES: u32 = 10;
/// `priority` runs from `MIN_PRIORITY` to `MAX_PRIORITY`; 0 by default.
pub const MIN_PRIORITY: i8 = -10;
pub const MAX_PRIORITY: i8 = 10;
/// Most bytes in an `Idempotency-Key` header.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Most earlier attempts' errors a task keeps (the most recent).
pub const MAX_ATTEMPT_ERRORS: usize = 16;
/// Longest error text kept per attempt, in bytes.
pub const MAX_ATTEMPT_ERROR_LEN: usize = 1024;
/// The header carrying an idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The wait before retry number `retry` (1 for the first) after an op
/// failure: `base` doubled each time, at most `cap`. No jitter: a retry is
/// one task's, not a crowd's, and the schedule stays predictable.
pub fn backoff(base_ms: u64, cap_ms: u64, retry: u32) -> u64 {
    let doublings = retry.saturating_sub(1).min(40);
    base_ms.saturating_mul(1u64 << doublings).min(cap_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_literals_match_the_bounds() {
        // `#[schema(minimum = ..., maximum = ...)]` takes literals.
        assert_eq!(MAX_TIMEOUT_MS, 604_800_000);
        assert_eq!((MAX_RETRIES, MIN_PRIORITY, MAX_PRIORITY), (10, -10, 10));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=6).map(|n| backoff(500, 10_000, n)).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000]);
        assert_eq!(backoff(500, 60_000, 1000), 60_000);
        assert_eq!(backoff(0, 60_000, 3), 0);
    }
}
