//! Summaries of repeated measurements: min / median / max of a few timed
//! repeats, and percentiles of many latencies.

use std::time::Duration;

use serde::Serialize;

/// Min, median and max of a few repeats, in seconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` (at least one).
    pub fn of(samples: &[Duration]) -> Spread {
        let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        let median = match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Spread {
            min: s.first().copied().unwrap_or(f64::NAN),
            median,
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// Half the max−min range relative to the median: the noise this run
    /// itself shows, as a fraction.
    pub fn noise(&self) -> f64 {
        (self.max - self.min) / 2.0 / self.median
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `latencies` (sorted in place).
    pub fn of(latencies: &mut [Duration]) -> Percentiles {
        latencies.sort_unstable();
        let at = |q: f64| {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_nanos() as f64 / 1e3
        };
        Percentiles {
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

/// Bytes per second as MB/s (10^6, as disks and networks are quoted).
pub fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentiles_pick_the_right_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Spread::of(&ms(&[30, 10, 20]));
        assert_eq!((s.min, s.median, s.max), (0.010, 0.020, 0.030));
        assert_eq!(Spread::of(&ms(&[10, 20, 30, 40])).median, 0.025);
        assert!((s.noise() - 0.5).abs() < 1e-9);

        let mut lat: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut lat);
        assert_eq!(
            (p.p50_us, p.p99_us, p.p999_us, p.max_us),
            (500.0, 990.0, 999.0, 1000.0)
        );
    }
}
