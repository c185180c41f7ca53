//! Showing the workers without sending all of them: pages in id order and a
//! summary by flavor. Both walk the roster in id order, so a page costs
//! O(log W + page) and never clones a worker it does not return.

use std::collections::BTreeMap;
use std::ops::Bound;

use wire::planner::{FlavorSummary, WorkerView, WorkersSummary};

use super::{Board, Worker};

/// Which workers a page holds.
#[derive(Debug, Clone, Default)]
pub struct WorkerQuery {
    /// Start after this id (the previous page's last).
    pub after: Option<String>,
    pub limit: usize,
    pub flavor: Option<String>,
    /// Only workers offering this op.
    pub op: Option<String>,
}

impl WorkerQuery {
    pub fn admits(&self, view: &WorkerView) -> bool {
        self.flavor.as_ref().is_none_or(|f| *f == view.flavor)
            && self
                .op
                .as_ref()
                .is_none_or(|op| view.ops.iter().flatten().any(|info| info.name == *op))
            && self.after.as_ref().is_none_or(|after| view.id > *after)
    }

    fn admits_worker(&self, worker: &Worker) -> bool {
        self.flavor.as_ref().is_none_or(|f| *f == worker.flavor())
            && self.op.as_ref().is_none_or(|op| worker.offers(op))
    }
}

/// A page, and whether workers follow it.
pub struct Page {
    pub workers: Vec<WorkerView>,
    pub more: bool,
}

impl Page {
    /// The first `limit` of `views` (in id order) that `query` admits.
    pub fn of(views: impl Iterator<Item = WorkerView>, query: &WorkerQuery) -> Self {
        let mut workers = Vec::new();
        let mut more = false;
        for view in views.filter(|v| query.admits(v)) {
            if workers.len() == query.limit {
                more = true;
                break;
            }
            workers.push(view);
        }
        Self { workers, more }
    }
}

/// Adds workers up, flavor by flavor, keeping the first `top` of each as
/// they come (callers add in id order).
pub struct SummaryBuilder {
    top: usize,
    flavors: BTreeMap<String, FlavorSummary>,
}

impl SummaryBuilder {
    pub fn new(top: usize) -> Self {
        Self {
            top,
            flavors: BTreeMap::new(),
        }
    }

    pub fn add_view(&mut self, view: WorkerView) {
        let top = self.top;
        let flavor = self.flavor(view.flavor.clone());
        count(flavor, view.slots, view.busy, view.done, view.failed);
        flavor.refuses_token += u64::from(view.refuses_token);
        for info in view.ops.iter().flatten() {
            count_digest(flavor, &info.name, &info.digest);
        }
        if flavor.shown.len() < top {
            flavor.shown.push(view);
        }
    }

    fn add_worker(&mut self, worker: &Worker) {
        let top = self.top;
        let flavor = self.flavor(worker.flavor());
        let busy = worker.in_flight.len() as u32;
        count(flavor, worker.slots, busy, worker.done, worker.failed);
        flavor.refuses_token += u64::from(worker.refuses_token);
        for info in worker.ops.iter().flat_map(|ops| ops.values()) {
            count_digest(flavor, &info.name, &info.digest);
        }
        if flavor.shown.len() < top {
            flavor.shown.push(worker.view());
        }
    }

    fn flavor(&mut self, name: String) -> &mut FlavorSummary {
        self.flavors.entry(name).or_default()
    }

    pub fn finish(self) -> WorkersSummary {
        let flavors: Vec<FlavorSummary> = self
            .flavors
            .into_iter()
            .map(|(name, flavor)| FlavorSummary {
                flavor: name,
                ..flavor
            })
            .collect();
        WorkersSummary {
            workers: flavors.iter().map(|f| f.workers).sum(),
            slots: flavors.iter().map(|f| f.slots).sum(),
            busy: flavors.iter().map(|f| f.busy).sum(),
            flavors,
        }
    }
}

fn count(flavor: &mut FlavorSummary, slots: u32, busy: u32, done: u64, failed: u64) {
    flavor.workers += 1;
    flavor.slots += u64::from(slots);
    flavor.busy += u64::from(busy);
    flavor.done += done;
    flavor.failed += failed;
}

/// Allocates only for an op or digest not seen yet (one per rollout, not
/// one per worker).
fn count_digest(flavor: &mut FlavorSummary, op: &str, digest: &str) {
    if !flavor.digests.contains_key(op) {
        flavor.digests.insert(op.to_string(), BTreeMap::new());
    }
    let Some(digests) = flavor.digests.get_mut(op) else {
        return;
    };
    match digests.get_mut(digest) {
        Some(n) => *n += 1,
        None => {
            digests.insert(digest.to_string(), 1);
        }
    }
}

impl Board {
    /// A page of this board's workers in id order.
    pub fn workers_page(&self, query: &WorkerQuery) -> Page {
        let start = match &query.after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let mut workers = Vec::new();
        let mut more = false;
        for worker in self.workers.range(start).filter(|w| query.admits_worker(w)) {
            if workers.len() == query.limit {
                more = true;
                break;
            }
            workers.push(worker.view());
        }
        Page { workers, more }
    }

    /// Adds this board's workers to `summary`, in id order.
    pub fn summarize(&self, summary: &mut SummaryBuilder) {
        for worker in self.workers.values() {
            summary.add_worker(worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::OpInfo;

    fn view(id: &str, ops: &[&str]) -> WorkerView {
        let ops: Vec<OpInfo> = ops
            .iter()
            .map(|name| OpInfo {
                name: name.to_string(),
                digest: format!("{name}-v1"),
                arity: 2,
                doc: String::new(),
            })
            .collect();
        WorkerView {
            id: id.into(),
            url: format!("http://{id}:8080"),
            flavor: match ops.len() {
                2 => "general".into(),
                _ => ops[0].name.clone(),
            },
            ops: Some(ops),
            lacks: Vec::new(),
            slots: 2,
            busy: 1,
            done: 3,
            failed: 0,
            wrong_op: 0,
            legacy: false,
            last_seen_ms: 0,
            refuses_token: false,
            planner: None,
        }
    }

    fn fleet() -> Vec<WorkerView> {
        vec![
            view("a", &["add", "mul"]),
            view("b", &["mul"]),
            view("c", &["mul"]),
            view("d", &["add"]),
            view("e", &["mul"]),
        ]
    }

    #[test]
    fn a_page_of_merged_views_starts_after_the_cursor_and_says_whether_more_follow() {
        let query = |after: Option<&str>, flavor: Option<&str>, op: Option<&str>| WorkerQuery {
            after: after.map(String::from),
            limit: 2,
            flavor: flavor.map(String::from),
            op: op.map(String::from),
        };
        let ids =
            |page: &Page| -> Vec<String> { page.workers.iter().map(|w| w.id.clone()).collect() };
        let page = Page::of(fleet().into_iter(), &query(None, None, None));
        assert_eq!(
            (ids(&page), page.more),
            (vec!["a".into(), "b".into()], true)
        );
        let page = Page::of(fleet().into_iter(), &query(Some("c"), None, None));
        assert_eq!(
            (ids(&page), page.more),
            (vec!["d".into(), "e".into()], false)
        );
        let page = Page::of(fleet().into_iter(), &query(Some("b"), Some("mul"), None));
        assert_eq!(
            (ids(&page), page.more),
            (vec!["c".into(), "e".into()], false)
        );
        let page = Page::of(fleet().into_iter(), &query(None, None, Some("add")));
        assert_eq!(
            (ids(&page), page.more),
            (vec!["a".into(), "d".into()], false)
        );
    }

    #[test]
    fn the_summary_counts_every_worker_and_keeps_the_first_of_each_flavor() {
        let mut summary = SummaryBuilder::new(2);
        for worker in fleet() {
            summary.add_view(worker);
        }
        let summary = summary.finish();
        assert_eq!((summary.workers, summary.slots, summary.busy), (5, 10, 5));
        let flavors: Vec<(&str, u64, Vec<&str>)> = summary
            .flavors
            .iter()
            .map(|f| {
                let shown = f.shown.iter().map(|w| w.id.as_str()).collect();
                (f.flavor.as_str(), f.workers, shown)
            })
            .collect();
        assert_eq!(
            flavors,
            [
                ("add", 1, vec!["d"]),
                ("general", 1, vec!["a"]),
                ("mul", 3, vec!["b", "c"]),
            ]
        );
        assert_eq!(summary.flavors[2].digests["mul"]["mul-v1"], 3);
        assert_eq!(summary.flavors[2].done, 9);
    }
}
