//! A latency histogram with log-linear buckets (16 per power of two, so any quantile is
//! within about 6% of the true value) and fixed memory, so that recording ten million
//! commands costs the same few kilobytes as recording ten.

use std::time::Duration;

const SUB_BUCKETS: usize = 16;
const BUCKETS: usize = 64 * SUB_BUCKETS;

/// Counts of latencies in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0 }
    }
}

fn index(nanos: u64) -> usize {
    if nanos < SUB_BUCKETS as u64 {
        return nanos as usize;
    }
    let bits = 63 - nanos.leading_zeros() as usize; // at least 4
    let sub = ((nanos >> (bits - 4)) & 0xF) as usize;
    (bits - 3) * SUB_BUCKETS + sub
}

/// The largest value that falls in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let bits = index / SUB_BUCKETS + 3;
    let sub = (index % SUB_BUCKETS) as u64;
    ((SUB_BUCKETS as u64 + sub + 1) << (bits - 4)) - 1
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(nanos)] += 1;
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency below which `quantile` (0..=1) of the recorded ones fall.
    pub fn quantile(&self, quantile: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(upper_bound(index));
            }
        }
        Duration::from_nanos(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut histogram = Histogram::default();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        let p50 = histogram.quantile(0.5).as_nanos() as f64;
        let p99 = histogram.quantile(0.99).as_nanos() as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.07, "p50 {p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "p99 {p99}");
    }

    #[test]
    fn every_value_falls_at_or_below_its_bucket_bound() {
        for nanos in [0, 1, 15, 16, 17, 31, 32, 1000, 123_456_789, u64::MAX / 2] {
            let i = index(nanos);
            assert!(nanos <= upper_bound(i), "{nanos} above bound of bucket {i}");
            if i > 0 {
                assert!(nanos > upper_bound(i - 1), "{nanos} belongs in an earlier bucket");
            }
        }
    }
}
