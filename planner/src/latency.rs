//! A latency recorder with exact percentiles (HDR histogram), for figures the
//! planner reports about itself.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use wire::planner::Percentiles;

pub struct Recorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        // 3 significant digits from 1 µs up to an hour.
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static histogram bounds are valid");
        Self {
            histogram: Mutex::new(histogram),
        }
    }
}

impl Recorder {
    pub fn record(&self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).max(1);
        let mut histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        histogram.saturating_record(micros);
    }

    pub fn percentiles(&self) -> Percentiles {
        let histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        Percentiles {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }
}
