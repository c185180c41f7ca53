//! Finishes per second over the last minute, in constant time and memory.
//!
//! A ring of per-second counters: recording bumps one counter, reading sums
//! 60 of them. `/stats` (polled by the dashboard) used to walk every finish
//! of the last minute under the board lock.

use std::time::{Duration, Instant};

const WINDOW_S: usize = 60;

#[derive(Debug)]
pub struct Throughput {
    started: Instant,
    /// `counts[s % WINDOW_S]` holds finishes of second `s` since `started`,
    /// valid while `seconds[s % WINDOW_S] == s`.
    counts: [u64; WINDOW_S],
    seconds: [u64; WINDOW_S],
}

impl Throughput {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            counts: [0; WINDOW_S],
            seconds: [u64::MAX; WINDOW_S],
        }
    }

    pub fn record(&mut self, now: Instant) {
        let second = self.second(now);
        let slot = (second % WINDOW_S as u64) as usize;
        if self.seconds[slot] != second {
            self.seconds[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] += 1;
    }

    /// Finishes per second over the last minute, or over the time since the
    /// planner started when that is shorter (so the rate is right at once).
    pub fn per_second(&self, now: Instant) -> f64 {
        let current = self.second(now);
        let oldest = current.saturating_sub(WINDOW_S as u64 - 1);
        let total: u64 = (0..WINDOW_S)
            .filter(|&slot| (oldest..=current).contains(&self.seconds[slot]))
            .map(|slot| self.counts[slot])
            .sum();
        let elapsed = now.duration_since(self.started);
        let span = elapsed.min(Duration::from_secs(WINDOW_S as u64));
        total as f64 / span.as_secs_f64().max(1.0)
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.started).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_last_minute() {
        let start = Instant::now();
        let mut t = Throughput::new(start);
        for _ in 0..120 {
            t.record(start + Duration::from_secs(1));
        }
        assert_eq!(t.per_second(start + Duration::from_secs(2)), 60.0);
        t.record(start + Duration::from_secs(70));
        // The burst at second 1 has left the window; one finish remains.
        let rate = t.per_second(start + Duration::from_secs(70));
        assert!((rate - 1.0 / 60.0).abs() < 1e-9, "{rate}");
    }
}
