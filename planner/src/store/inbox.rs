//! The SQLite writer's inbox: an ordered queue that wakes the writer thread
//! only when something is waiting on it.
//!
//! A result is written behind: nobody waits for its commit. With a plain
//! channel every result sent would wake the writer (a futex wake on the
//! sending runtime thread, a context switch on the writer), which measured
//! about a fifth of the planner's CPU at full speed. Here the writer says how
//! it waits: `Idle` (any write wakes it), or `Lingering` over a batch of
//! results (only a write someone awaits wakes it, else it sleeps out its
//! linger). While it commits, nothing wakes it: it looks again after.
//! One queue keeps the order writes were sent in, so a task's result is
//! never applied before its insert.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Inbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    queue: VecDeque<T>,
    wait: Wait,
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Committing, or about to look: senders need not wake it.
    Busy,
    Idle,
    Lingering,
}

/// The inbox is closed: the store is stopping.
#[derive(Debug)]
pub struct Closed;

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                wait: Wait::Busy,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write; `awaited`: someone waits for its commit, so a
    /// lingering writer must commit now.
    pub fn send(&self, write: T, awaited: bool) -> Result<(), Closed> {
        let wake = {
            let mut state = self.lock();
            if state.closed {
                return Err(Closed);
            }
            state.queue.push_back(write);
            let wake = match state.wait {
                Wait::Busy => false,
                Wait::Idle => true,
                Wait::Lingering => awaited,
            };
            if wake {
                state.wait = Wait::Busy;
            }
            wake
        };
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Stops taking writes; the writer still gets what was queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits until a write is queued (at most `timeout`, if given), then
    /// moves up to `max` queued writes into `batch`. `Err(Closed)` once the
    /// inbox is closed and empty.
    pub fn wait(
        &self,
        batch: &mut Vec<T>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<(), Closed> {
        let until = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        while state.queue.is_empty() && !state.closed {
            state.wait = Wait::Idle;
            state = match until {
                None => self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        state.wait = Wait::Busy;
        if state.queue.is_empty() && state.closed {
            return Err(Closed);
        }
        take(&mut state, batch, max);
        Ok(())
    }

    /// Sleeps until `until`, unless an awaited write (or closing) wakes it
    /// first, then moves up to `max` queued writes into `batch`.
    pub fn linger(&self, batch: &mut Vec<T>, max: usize, until: Instant) {
        let mut state = self.lock();
        state.wait = Wait::Lingering;
        while state.wait == Wait::Lingering && !state.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.wait = Wait::Busy;
        take(&mut state, batch, max);
    }
}

fn take<T>(state: &mut State<T>, batch: &mut Vec<T>, max: usize) {
    let n = state.queue.len().min(max.saturating_sub(batch.len()));
    batch.extend(state.queue.drain(..n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writes_come_out_in_the_order_they_were_sent() {
        let inbox = Inbox::default();
        for i in 0..10 {
            inbox.send(i, i % 3 == 0).unwrap();
        }
        let mut batch = Vec::new();
        inbox.wait(&mut batch, 4, None).unwrap();
        assert_eq!(batch, [0, 1, 2, 3]);
        inbox.wait(&mut batch, 100, None).unwrap();
        assert_eq!(batch, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn an_idle_writer_wakes_for_any_write() {
        let inbox = Arc::new(Inbox::default());
        let writer = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                inbox.wait(&mut batch, 10, None).unwrap();
                batch
            })
        };
        // Whether the writer is already waiting or not, it gets the write.
        inbox.send(7, false).unwrap();
        assert_eq!(writer.join().unwrap(), [7]);
    }

    #[test]
    fn a_lingering_writer_sleeps_through_results_and_wakes_for_an_awaited_write() {
        let inbox = Arc::new(Inbox::default());
        let (lingering_tx, lingering) = std::sync::mpsc::channel();
        let writer = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                let started = Instant::now();
                lingering_tx.send(()).unwrap();
                // A long linger: only the awaited write can end it early.
                inbox.linger(&mut batch, 100, started + Duration::from_secs(60));
                batch
            })
        };
        lingering.recv().unwrap();
        // Wait until the writer has actually entered its linger.
        let deadline = Instant::now() + Duration::from_secs(10);
        while inbox.lock().wait != Wait::Lingering {
            assert!(Instant::now() < deadline, "the writer never lingered");
            std::thread::yield_now();
        }
        inbox.send(1, false).unwrap();
        inbox.send(2, false).unwrap();
        assert_eq!(inbox.lock().wait, Wait::Lingering, "a result woke it");
        inbox.send(3, true).unwrap();
        assert_eq!(writer.join().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_linger_ends_by_itself() {
        let inbox = Inbox::default();
        inbox.send(1, false).unwrap();
        let mut batch = Vec::new();
        inbox.linger(&mut batch, 10, Instant::now() + Duration::from_millis(5));
        assert_eq!(batch, [1]);
    }

    #[test]
    fn closing_lets_the_writer_drain_then_stop() {
        let inbox = Inbox::default();
        inbox.send(1, false).unwrap();
        inbox.close();
        assert!(inbox.send(2, true).is_err(), "a closed inbox takes nothing");
        let mut batch = Vec::new();
        inbox.wait(&mut batch, 10, None).unwrap();
        assert_eq!(batch, [1]);
        assert!(inbox.wait(&mut batch, 10, None).is_err());
    }

    #[test]
    fn a_timed_wait_returns_empty_handed() {
        let inbox: Inbox<u8> = Inbox::default();
        let mut batch = Vec::new();
        inbox
            .wait(&mut batch, 10, Some(Duration::from_millis(1)))
            .unwrap();
        assert!(batch.is_empty());
    }
}
