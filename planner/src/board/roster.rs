//! The registered workers, with per-op indexes of those that can take a task
//! now, so choosing a worker costs O(log W) and never walks workers that do
//! not offer the op (a fleet of thousands of idle other-op workers used to
//! make every assignment scan all of them).
//!
//! Every change to a worker goes through [`Roster::get_mut`], which marks it
//! for re-ranking; the marked workers are re-ranked before the next choice
//! (only they move), so the indexes cannot drift from the workers.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use super::Worker;

/// A worker's place in an op's index: fewest ops first (specialists take
/// their op and generalists stay free for the rest), then most free slots,
/// then id (the order the old full scan broke ties in).
type Rank = (usize, Reverse<u32>, Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Has free slots: ranked in the index of every op it offers.
    Free(u32),
    /// Would have free slots, but was told to wait until then.
    Cooling(Instant),
    /// Gets nothing new: leaving, or every slot busy.
    Out,
}

#[derive(Debug, Clone)]
struct Placement {
    ops: Arc<[Arc<str>]>,
    legacy: bool,
    flavor: Arc<str>,
    state: State,
}

#[derive(Debug, Default)]
struct Index {
    placements: HashMap<Arc<str>, Placement>,
    free_by_op: HashMap<Arc<str>, BTreeSet<Rank>>,
    /// Workers waiting out a cooldown, soonest first.
    cooling: BTreeSet<(Instant, Arc<str>)>,
    /// The latest time [`Roster::wake`] was given: a cooldown ending at or
    /// before it is over.
    clock: Option<Instant>,
    flavors: BTreeMap<Arc<str>, usize>,
    /// Every placed worker by op it offers, whatever its state: who could
    /// run an op at all, without walking the workers that cannot. Changes
    /// only when a worker's ops do, not on every busy/free move.
    offering: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Workers re-ranked so far (for tests of the index's reach).
    #[cfg(test)]
    moves: u64,
}

#[derive(Debug, Default)]
pub struct Roster {
    workers: BTreeMap<Arc<str>, Worker>,
    index: Index,
    /// Workers changed since they were last ranked (at most every worker).
    changed: HashSet<Arc<str>>,
}

impl Roster {
    pub fn get<Q>(&self, id: &Q) -> Option<&Worker>
    where
        Arc<str>: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.workers.get(id)
    }

    /// The worker, marked to be re-ranked before the next choice.
    pub fn get_mut<Q>(&mut self, id: &Q) -> Option<&mut Worker>
    where
        Arc<str>: Borrow<Q>,
        Q: Ord + Hash + Eq + ?Sized,
    {
        let worker = self.workers.get_mut(id)?;
        if !self.changed.contains(id) {
            self.changed.insert(worker.id.clone());
        }
        Some(worker)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.workers.contains_key(id)
    }

    pub fn insert(&mut self, worker: Worker) {
        self.index.place(&worker);
        self.workers.insert(worker.id.clone(), worker);
    }

    pub fn remove(&mut self, id: &str) -> Option<Worker> {
        let worker = self.workers.remove(id)?;
        self.index.forget(id);
        self.index.unplace(id);
        self.changed.remove(id);
        Some(worker)
    }

    /// In id order.
    pub fn values(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// In id order, from `start`.
    pub fn range<'a>(&'a self, start: Bound<&str>) -> impl Iterator<Item = &'a Worker> {
        self.workers
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, worker)| worker)
    }

    /// Ends the cooldowns due by `now` (only the workers whose cooldown
    /// ends are touched). Time is taken to move forward: a `now` earlier
    /// than one already given does not put workers back into cooldown.
    pub fn wake(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.changed) {
            if let Some(worker) = self.workers.get(&id) {
                self.index.place(worker);
            }
        }
        if self.index.clock.is_none_or(|clock| clock < now) {
            self.index.clock = Some(now);
        }
        while let Some((until, id)) = self.index.cooling.first().cloned() {
            if until > now {
                break;
            }
            self.index.cooling.pop_first();
            if let Some(worker) = self.workers.get(&id) {
                self.index.place(worker);
            }
        }
    }

    /// The most specialized worker offering `op` with a free slot (fewest
    /// ops, then most free slots, then lowest id), as of the last
    /// [`Roster::wake`].
    pub fn best(&self, op: &str) -> Option<&Worker> {
        let (_, _, id) = self.index.free_by_op.get(op)?.first()?;
        self.workers.get(id)
    }

    /// How many workers there are of each flavor (see [`Worker::flavor`]):
    /// the ranked counts, corrected for the workers changed since.
    pub fn flavors(&self) -> BTreeMap<String, u64> {
        let mut flavors: BTreeMap<String, u64> = self
            .index
            .flavors
            .iter()
            .map(|(flavor, n)| (flavor.to_string(), *n as u64))
            .collect();
        for id in &self.changed {
            if let Some(placement) = self.index.placements.get(id)
                && let Some(n) = flavors.get_mut(&*placement.flavor)
            {
                *n -= 1;
            }
            if let Some(worker) = self.workers.get(id) {
                *flavors.entry(worker.flavor()).or_default() += 1;
            }
        }
        flavors.retain(|_, n| *n > 0);
        flavors
    }

    /// The workers offering `op` (leaving ones too), as of the last
    /// [`Roster::wake`] and corrected for the workers changed since: costs
    /// O(those workers), not O(all workers).
    pub fn offering<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a Worker> + 'a {
        let placed = self
            .index
            .offering
            .get(op)
            .into_iter()
            .flatten()
            .filter(|id| !self.changed.contains(*id))
            .filter_map(|id| self.workers.get(id));
        let changed = self
            .changed
            .iter()
            .filter_map(|id| self.workers.get(id))
            .filter(move |w| w.offers(op));
        placed.chain(changed)
    }

    /// Workers re-ranked so far (for tests of the index's reach).
    #[cfg(test)]
    pub fn moves(&self) -> u64 {
        self.index.moves
    }
}

impl Index {
    /// (Re-)ranks a worker after a change: only its own entries move.
    fn place(&mut self, worker: &Worker) {
        let old = self.placements.get(&*worker.id);
        let same_ops = old.is_some_and(|old| {
            old.legacy == worker.is_legacy()
                && old.ops.iter().map(|op| &**op).eq(worker.offered_ops())
        });
        let (ops, flavor) = match old {
            Some(old) if same_ops => (old.ops.clone(), old.flavor.clone()),
            _ => (
                worker.offered_ops().map(Arc::from).collect(),
                Arc::from(worker.flavor()),
            ),
        };
        let state = self.state_of(worker);
        if same_ops && old.is_some_and(|old| old.state == state) {
            return;
        }
        #[cfg(test)]
        {
            self.moves += 1;
        }
        if !same_ops {
            self.forget(&worker.id);
            for op in ops.iter() {
                self.offering
                    .entry(op.clone())
                    .or_default()
                    .insert(worker.id.clone());
            }
        }
        self.unplace(&worker.id);
        match state {
            State::Free(free) => {
                for op in ops.iter() {
                    self.free_by_op.entry(op.clone()).or_default().insert((
                        ops.len(),
                        Reverse(free),
                        worker.id.clone(),
                    ));
                }
            }
            State::Cooling(until) => {
                self.cooling.insert((until, worker.id.clone()));
            }
            State::Out => {}
        }
        *self.flavors.entry(flavor.clone()).or_default() += 1;
        self.placements.insert(
            worker.id.clone(),
            Placement {
                ops,
                legacy: worker.is_legacy(),
                flavor,
                state,
            },
        );
    }

    fn state_of(&self, worker: &Worker) -> State {
        let free = worker
            .slots
            .saturating_sub(worker.in_flight.len().try_into().unwrap_or(u32::MAX));
        if worker.leaving || free == 0 {
            return State::Out;
        }
        match worker.cooldown_until {
            Some(until) if self.clock.is_none_or(|clock| clock < until) => State::Cooling(until),
            _ => State::Free(free),
        }
    }

    /// Takes a worker out of [`Index::offering`] (its ops as last placed).
    fn forget(&mut self, id: &str) {
        let Some(placement) = self.placements.get(id) else {
            return;
        };
        for op in placement.ops.iter() {
            if let Some(ids) = self.offering.get_mut(op) {
                ids.remove(id);
                if ids.is_empty() {
                    self.offering.remove(op);
                }
            }
        }
    }

    fn unplace(&mut self, id: &str) {
        let Some((id, placement)) = self.placements.remove_entry(id) else {
            return;
        };
        match placement.state {
            State::Free(free) => {
                let rank = (placement.ops.len(), Reverse(free), id.clone());
                for op in placement.ops.iter() {
                    if let Some(ranked) = self.free_by_op.get_mut(op) {
                        ranked.remove(&rank);
                        if ranked.is_empty() {
                            self.free_by_op.remove(op);
                        }
                    }
                }
            }
            State::Cooling(until) => {
                self.cooling.remove(&(until, id));
            }
            State::Out => {}
        }
        if let Some(n) = self.flavors.get_mut(&placement.flavor) {
            *n -= 1;
            if *n == 0 {
                self.flavors.remove(&placement.flavor);
            }
        }
    }
}
