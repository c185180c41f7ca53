//! Retention: finished tasks are deleted after `RESULT_TTL` (and beyond
//! `RESULT_LIMIT` of them), from memory and from the store, a chunk at a
//! time, so the planner's memory and disk stop growing with the number of
//! tasks it ever ran; idempotency keys after `IDEMPOTENCY_TTL` (at most
//! `RESULT_TTL`), always, as every key a client sends takes a row.
//!
//! Each chunk is one short transaction through the store's writer, grouped
//! with whatever submissions and results are waiting: nothing waits behind
//! a long delete, and between chunks the writer serves the rest.

use std::sync::Arc;
use std::time::Duration;

use crate::planner::Planner;
use crate::store::Expiry;

/// Rows deleted per transaction: about a millisecond of the writer's time.
pub const CHUNK: usize = 2_000;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Finished tasks older than this are deleted; zero keeps them (until
    /// the count cap).
    pub ttl: Duration,
    /// Most finished tasks kept in the store; `None` for no cap.
    pub keep_at_most: Option<u64>,
    /// How long idempotency keys are kept (above zero).
    pub idempotency_ttl: Duration,
}

impl Policy {
    /// The keys' window: theirs, but never longer than the results' (a
    /// replayed submission must find its tasks).
    fn key_ttl(&self) -> Duration {
        if self.ttl.is_zero() {
            self.idempotency_ttl
        } else {
            self.idempotency_ttl.min(self.ttl)
        }
    }

    /// How often a pass runs: a tenth of the shorter TTL, between 100 ms
    /// and 10 s, so a task or a key outlives its TTL by at most about a
    /// tenth of it.
    fn interval(&self) -> Duration {
        (self.key_ttl() / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Runs passes until the process ends.
pub async fn run(planner: Arc<Planner>, policy: Policy) {
    let keep_at_most = policy
        .keep_at_most
        .filter(|_| planner.store().supports_count_cap());
    if policy.keep_at_most.is_some() && keep_at_most.is_none() {
        tracing::warn!("RESULT_LIMIT is not applied on this store; RESULT_TTL is");
    }
    let mut prepared = false;
    let mut ticker = tokio::time::interval(policy.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !prepared {
            match planner.store().prepare_retention().await {
                Ok(()) => prepared = true,
                Err(err) => {
                    tracing::warn!(error = %err, "retention: could not prepare the store; retrying");
                    continue;
                }
            }
        }
        let before_ms = (!policy.ttl.is_zero())
            .then(|| serve::now_ms().saturating_sub(policy.ttl.as_millis() as u64));
        // Also gives back memory a burst left behind, TTL or not.
        planner.forget_finished_before(before_ms.unwrap_or(0));
        let expiry = Expiry {
            finished_before_ms: before_ms,
            keep_at_most,
            chunk: CHUNK,
            keys_before_ms: Some(
                serve::now_ms().saturating_sub(policy.key_ttl().as_millis() as u64),
            ),
        };
        let mut deleted = 0;
        loop {
            match planner.store().expire(expiry).await {
                Ok(n) => {
                    deleted += n;
                    if n < CHUNK as u64 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "retention: deleting expired tasks failed; retrying next pass");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "retention: expired finished tasks deleted");
            metrics::counter!("planner_tasks_expired_total").increment(deleted);
        }
    }
}
