//! One op's queue: higher priority first, first come first served within a
//! priority. Strict priority: a steady stream of higher-priority tasks holds
//! lower ones back without bound (documented; no ageing).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use wire::TaskId;

/// Where a task stands in its op's queue; smaller goes first. Also how
/// queue heads of different ops compare: priority first, then age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    priority: Reverse<i8>,
    /// The task's id for a task joining at the back (ids grow with
    /// submission); a decreasing negative count for one put back in front.
    seq: i64,
}

impl QueueKey {
    pub fn back(priority: i8, id: TaskId) -> Self {
        Self {
            priority: Reverse(priority),
            seq: id.min(i64::MAX as u64) as i64,
        }
    }

    pub fn front(priority: i8, seq: i64) -> Self {
        Self {
            priority: Reverse(priority),
            seq,
        }
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }
}

#[derive(Debug, Default)]
pub struct OpQueue {
    entries: BTreeMap<QueueKey, TaskId>,
}

impl OpQueue {
    pub fn push(&mut self, key: QueueKey, id: TaskId) {
        self.entries.insert(key, id);
    }

    pub fn front(&self) -> Option<(QueueKey, TaskId)> {
        self.entries.first_key_value().map(|(k, id)| (*k, *id))
    }

    pub fn pop_front(&mut self) -> Option<TaskId> {
        self.entries.pop_first().map(|(_, id)| id)
    }

    pub fn remove(&mut self, key: &QueueKey) -> Option<TaskId> {
        self.entries.remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids in the order they would run.
    pub fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.entries.values().copied()
    }

    /// Empties the queue; the ids in the order they would have run.
    pub fn take(&mut self) -> Vec<TaskId> {
        std::mem::take(&mut self.entries).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_first_come_and_requeued_in_front() {
        let mut queue = OpQueue::default();
        for (id, priority) in [(1, 0), (2, 5), (3, -3), (4, 5), (5, 10), (6, 0)] {
            queue.push(QueueKey::back(priority, id), id);
        }
        queue.push(QueueKey::front(0, -1), 7);
        assert_eq!(queue.ids().collect::<Vec<_>>(), [5, 2, 4, 7, 1, 6, 3]);
        assert_eq!(queue.remove(&QueueKey::back(5, 4)), Some(4));
        assert_eq!(queue.pop_front(), Some(5));
        assert_eq!(queue.take(), [2, 7, 1, 6, 3]);
        assert!(queue.is_empty());
    }
}
