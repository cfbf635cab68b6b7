//! L1 lookup counts by result, for the metrics: what the front door found (a document, a
//! remembered miss, nothing) and how many of the misses joined a load already in flight.
//! Counted on the hit path, so each counter is striped per thread: one shared atomic bounced
//! its cache line between the cores on every request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

/// One counter slot on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A counter whose increments from different threads touch different cache lines.
#[derive(Default)]
pub struct Striped([Slot; STRIPES]);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Threads take the stripes in turn.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Striped {
    pub fn add(&self) {
        let stripe = STRIPE.with(|s| *s);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// L1 lookups by result.
#[derive(Default)]
pub struct Lookups {
    /// A live document was found.
    pub hit: Striped,
    /// A remembered miss (a tombstone or a missing id within its negative TTL) was found.
    pub negative: Striped,
    /// Nothing was found (or the caches were not trusted): the read went on.
    pub miss: Striped,
    /// Of the misses, those that waited for a load of the key already in flight instead of
    /// starting their own.
    pub coalesced: Striped,
}

#[cfg(test)]
mod tests {
    #[test]
    fn increments_from_many_threads_all_count() {
        let counter = std::sync::Arc::new(super::Striped::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| counter.add()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), 8000);
    }
}
