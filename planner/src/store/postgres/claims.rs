//! The claims this replica holds: task id → the claim number it got. A
//! result or an attempt count is written only under the same claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wire::TaskId;

/// What [`Claims::of`] answers for a task this replica does not hold: no
/// row has a negative claim, so writes guarded by it change nothing.
const NOT_HELD: i64 = -1;

#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<TaskId, i64>>>);

impl Claims {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, i64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hold(&self, id: TaskId, claim: i64) {
        self.map().insert(id, claim);
    }

    pub fn of(&self, id: TaskId) -> i64 {
        self.map().get(&id).copied().unwrap_or(NOT_HELD)
    }

    pub fn forget(&self, id: TaskId) {
        self.map().remove(&id);
    }

    /// Removes and returns the claims on `ids` (those held).
    pub fn take(&self, ids: &[TaskId]) -> Vec<(TaskId, i64)> {
        let mut map = self.map();
        ids.iter()
            .filter_map(|id| map.remove(id).map(|claim| (*id, claim)))
            .collect()
    }

    pub fn clear(&self) {
        self.map().clear();
    }
}
