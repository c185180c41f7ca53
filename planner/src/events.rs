//! The planner's event stream: every task transition and worker change,
//! fanned out to `GET /events` subscribers.
//!
//! Publishing costs nothing when nobody listens: callers check
//! [`Events::active`] before building an event, so the dispatch path pays
//! for views only while someone is watching.

use tokio::sync::broadcast;
use wire::planner::{TaskView, WorkerEvent};

/// How many events a slow subscriber may fall behind before it skips ahead.
const BACKLOG: usize = 4096;

#[derive(Debug, Clone)]
pub enum Event {
    Task(TaskView),
    Worker(WorkerEvent),
}

pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    pub fn active(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
