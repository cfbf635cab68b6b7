//! A circuit breaker for the Redis tier: after a few failed calls in a row it opens and
//! requests stop calling Redis (they go on without L2: reads go to the store); while open it
//! lets one probe through every `probe_every`, and the first success closes it again. Every
//! check is a couple of atomic loads, so it sits on the read path at no measurable cost.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failed calls in a row that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;

pub struct Breaker {
    /// Failed calls since the last success.
    failures: AtomicU32,
    /// While open: when the next probe may go (ms since `epoch`); 0 when closed.
    next_probe_ms: AtomicU64,
    /// Transitions to open since start (for logs and tests).
    opened: AtomicU64,
    probe_every: Duration,
    epoch: Instant,
}

impl Breaker {
    pub fn new(probe_every: Duration) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            probe_every,
            epoch: Instant::now(),
        }
    }

    /// May a call go to Redis now? Closed: yes. Open: only one caller per `probe_every`.
    pub fn allow(&self) -> bool {
        let next = self.next_probe_ms.load(Ordering::Acquire);
        if next == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + self.probe_ms(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub fn is_open(&self) -> bool {
        self.next_probe_ms.load(Ordering::Acquire) != 0
    }

    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.next_probe_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("Redis answers again: L2 is back in use");
        }
    }

    pub fn failure(&self, what: &str, error: &dyn std::fmt::Display) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= FAILURES_TO_OPEN {
            let next = self.now_ms() + self.probe_ms();
            if self.next_probe_ms.swap(next, Ordering::AcqRel) == 0 {
                self.opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, failures, "Redis is failing ({what}): L2 is bypassed until a probe succeeds");
            }
        }
    }

    /// Times the breaker opened since start.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        // Never 0: 0 means "closed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn probe_ms(&self) -> u64 {
        self.probe_every.as_millis().max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_success() {
        let breaker = Breaker::new(Duration::from_secs(3600));
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failure("test", &"boom");
            assert!(breaker.allow(), "opened too early");
        }
        breaker.success();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failure("test", &"boom");
        }
        assert!(!breaker.is_open(), "a success must reset the count");
        breaker.failure("test", &"boom");
        assert!(breaker.is_open());
        assert!(
            !breaker.allow(),
            "an open breaker must refuse before the probe time"
        );
        assert_eq!(breaker.times_opened(), 1);
        breaker.success();
        assert!(breaker.allow() && !breaker.is_open());
    }

    #[test]
    fn lets_one_probe_through_per_interval() {
        let breaker = Breaker::new(Duration::from_millis(20));
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failure("test", &"boom");
        }
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.allow(), "the probe must go once its time came");
        assert!(!breaker.allow(), "only one probe per interval");
    }
}
