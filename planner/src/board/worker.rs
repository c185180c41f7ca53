//! Workers as the planner tracks them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use wire::OpInfo;
use wire::TaskId;
use wire::planner::WorkerView;

/// The ops a legacy worker may have: the exercise's two routes.
const LEGACY_OPS: [&str; 2] = ["add", "mul"];

#[derive(Debug)]
pub struct Worker {
    pub id: Arc<str>,
    pub url: Arc<str>,
    /// `None` for a legacy worker (registered by `POST /register`).
    pub ops: Option<BTreeMap<String, OpInfo>>,
    /// Ops a legacy worker answered 404 for.
    pub lacks: BTreeSet<String>,
    pub slots: u32,
    pub in_flight: rustc_hash::FxHashSet<TaskId>,
    pub done: u64,
    pub failed: u64,
    pub wrong_op: u64,
    pub last_seen: Instant,
    pub last_seen_ms: u64,
    /// Deregistered or draining: finishes what it has, gets nothing new.
    pub leaving: bool,
    /// It said it was busy although we counted a free slot; skip it until it
    /// finishes something or this passes.
    pub cooldown_until: Option<Instant>,
    /// Its last answer to a dispatch was 401 (see `WorkerView::refuses_token`).
    pub refuses_token: bool,
}

impl Worker {
    pub fn new(
        id: Arc<str>,
        url: Arc<str>,
        ops: Option<BTreeMap<String, OpInfo>>,
        slots: u32,
    ) -> Self {
        Self {
            id,
            url,
            ops,
            lacks: BTreeSet::new(),
            slots,
            in_flight: rustc_hash::FxHashSet::default(),
            done: 0,
            failed: 0,
            wrong_op: 0,
            last_seen: Instant::now(),
            last_seen_ms: serve::now_ms(),
            leaving: false,
            cooldown_until: None,
            refuses_token: false,
        }
    }

    pub fn touch(&mut self) {
        self.last_seen = Instant::now();
        self.last_seen_ms = serve::now_ms();
    }

    pub fn is_legacy(&self) -> bool {
        self.ops.is_none()
    }

    pub fn offers(&self, op: &str) -> bool {
        match &self.ops {
            Some(ops) => ops.contains_key(op),
            None => LEGACY_OPS.contains(&op) && !self.lacks.contains(op),
        }
    }

    /// The ops it offers.
    pub fn offered(&self) -> Vec<&str> {
        self.offered_ops().collect()
    }

    /// The ops it offers, in name order, without allocating (the board
    /// re-ranks a worker on every change).
    pub fn offered_ops(&self) -> impl Iterator<Item = &str> {
        let declared = self
            .ops
            .iter()
            .flat_map(|ops| ops.keys().map(String::as_str));
        let legacy = self
            .ops
            .is_none()
            .then_some(LEGACY_OPS)
            .into_iter()
            .flatten()
            .filter(|op| !self.lacks.contains(*op));
        declared.chain(legacy)
    }

    /// How many ops it offers: fewer means more specialized.
    pub fn breadth(&self) -> usize {
        match &self.ops {
            Some(ops) => ops.len(),
            None => LEGACY_OPS
                .iter()
                .filter(|op| !self.lacks.contains(**op))
                .count(),
        }
    }

    pub fn free_slots(&self, now: Instant) -> u32 {
        if self.leaving || self.cooldown_until.is_some_and(|until| until > now) {
            return 0;
        }
        self.slots.saturating_sub(self.in_flight.len() as u32)
    }

    /// `general` for add+mul, the op's name for a specialist, the ops joined
    /// by `+` otherwise, `legacy` when unknown.
    pub fn flavor(&self) -> String {
        match &self.ops {
            None => "legacy".into(),
            Some(ops) => {
                let names: Vec<&str> = ops.keys().map(String::as_str).collect();
                match names.as_slice() {
                    ["add", "mul"] => "general".into(),
                    [] => "none".into(),
                    _ => names.join("+"),
                }
            }
        }
    }

    pub fn digest_of(&self, op: &str) -> Option<&str> {
        self.ops.as_ref()?.get(op).map(|info| info.digest.as_str())
    }

    pub fn view(&self) -> WorkerView {
        WorkerView {
            id: self.id.to_string(),
            url: self.url.to_string(),
            ops: self.ops.as_ref().map(|ops| ops.values().cloned().collect()),
            lacks: self.lacks.iter().cloned().collect(),
            slots: self.slots,
            busy: self.in_flight.len() as u32,
            done: self.done,
            failed: self.failed,
            wrong_op: self.wrong_op,
            flavor: self.flavor(),
            legacy: self.is_legacy(),
            last_seen_ms: self.last_seen_ms,
            refuses_token: self.refuses_token,
            planner: None,
        }
    }
}
