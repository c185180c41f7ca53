//! The artificial work time of the exercise: fixed, or random in a range.

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkTime {
    min_ms: u64,
    max_ms: u64,
}

impl WorkTime {
    pub fn pick(&self) -> Duration {
        let ms = if self.min_ms == self.max_ms {
            self.min_ms
        } else {
            rand::rng().random_range(self.min_ms..=self.max_ms)
        };
        Duration::from_millis(ms)
    }
}

impl FromStr for WorkTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not a duration in ms: expected a number like 500 or a range like 3000-12000"))
        };
        let (min_ms, max_ms) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let ms = parse(s)?;
                (ms, ms)
            }
        };
        if min_ms > max_ms {
            return Err(format!("`{s}`: the range's start is after its end"));
        }
        Ok(Self { min_ms, max_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_ranges_and_rejects_the_rest() {
        assert_eq!(
            "250".parse::<WorkTime>().unwrap().pick(),
            Duration::from_millis(250)
        );
        let range: WorkTime = "10-20".parse().unwrap();
        for _ in 0..100 {
            let d = range.pick().as_millis();
            assert!((10..=20).contains(&d), "{d} outside 10-20");
        }
        assert!("20-10".parse::<WorkTime>().is_err());
        assert!("fast".parse::<WorkTime>().is_err());
        assert!("-5".parse::<WorkTime>().is_err());
    }
}
