//! A latency histogram that records without a lock: one atomic add per bucket hit, the sum and
//! the count. prometheus-client's own `Histogram` takes a mutex on every observation, which the
//! hit path (hundreds of thousands of requests a second on each core) should not pay; this one
//! encodes through the crate's encoder, so the exposition format stays the crate's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// The same bounds in nanoseconds, for the comparison on the hot path.
const BOUNDS_NS: [u64; 16] = {
    let mut ns = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Shared by every clone (the registry holds one, the component that records another).
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Observations per bucket (not cumulative); the last one is above every bound. The count
    /// is their sum, so a scrape never sees a bucket above the total.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|bound| *bound < ns);
        let inner = &self.0;
        inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let counts: [u64; 17] = std::array::from_fn(|i| inner.buckets[i].load(Ordering::Relaxed));
        let mut buckets = [(0.0, 0u64); 16];
        for (i, slot) in buckets.iter_mut().enumerate() {
            *slot = (LATENCY_BUCKETS[i], counts[i]);
        }
        // The encoder writes the `+Inf` bucket itself from the count, which holds the
        // observations above every bound (the 17th counter) too.
        let count = counts.iter().sum();
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // on the first bound: in it
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60)); // above every bound
        let counts: Vec<u64> =
            h.0.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[16], 1);
        assert_eq!(h.count(), 3);
        assert_eq!(h.0.sum_ns.load(Ordering::Relaxed), 60_000_101_000);
    }
}
