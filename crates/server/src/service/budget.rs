//! The memory bound of multi-document answers (batch get, list pages, transaction results).
//!
//! Each such answer holds at most `responses.max_bytes` of documents: the store is asked for
//! no more than that (plus one document), so a small request cannot make the server read or
//! assemble a huge answer. All of them together hold at most `responses.max_total_bytes`: a
//! request reserves, before its store read, the most it could receive, keeps what it actually
//! got once the read is done, and releases it when its answer has been written to the client
//! (or dropped). A request that cannot reserve within the store time budget is shed with
//! `overloaded`. Single-document answers are bounded by the collection's `max_document_bytes`
//! and are not counted here.
//!
//! Both bounds change on a configuration reload ([`ResponseBudget::resize`]): answers already
//! being assembled keep what they reserved; a smaller total is taken back as they finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ResponsesConfig;
use crate::error::{ErrorCode, ServiceError};

/// Reservations are counted in KiB so that large budgets fit the semaphore's `u32` requests.
const UNIT: usize = 1024;

/// The shared budget. Cloning is cheap (clones share it, and see its resizes).
#[derive(Clone)]
pub struct ResponseBudget {
    permits: Arc<Semaphore>,
    bounds: Arc<Bounds>,
    wait: Duration,
}

/// The bounds in force.
struct Bounds {
    /// `responses.max_total_bytes`, in units.
    total_units: AtomicUsize,
    /// `responses.max_bytes`.
    max_bytes: AtomicUsize,
}

/// Bytes of the budget held by one answer; released when dropped.
#[derive(Debug)]
pub struct ResponsePermit(OwnedSemaphorePermit);

impl ResponseBudget {
    pub fn new(config: &ResponsesConfig, wait: Duration) -> ResponseBudget {
        let total_units = units_of(config.max_total_bytes);
        ResponseBudget {
            permits: Arc::new(Semaphore::new(total_units)),
            bounds: Arc::new(Bounds {
                total_units: AtomicUsize::new(total_units),
                max_bytes: AtomicUsize::new(config.max_bytes),
            }),
            wait,
        }
    }

    /// Most bytes of documents in one answer (`responses.max_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.bounds.max_bytes.load(Ordering::Relaxed)
    }

    /// Most bytes of all answers at once (`responses.max_total_bytes`, rounded up to KiB).
    pub fn total_bytes(&self) -> usize {
        self.bounds.total_units.load(Ordering::Relaxed) * UNIT
    }

    /// Takes the bounds of `config` (a configuration reload; one at a time). A larger total
    /// is available at once; a smaller one takes back what is free now and the rest as the
    /// answers holding it are written (reservations wait meanwhile, as when the budget is
    /// spent).
    pub fn resize(&self, config: &ResponsesConfig) {
        self.bounds
            .max_bytes
            .store(config.max_bytes, Ordering::Relaxed);
        let units = units_of(config.max_total_bytes);
        let old = self.bounds.total_units.swap(units, Ordering::Relaxed);
        if units > old {
            self.permits.add_permits(units - old);
        } else if units < old {
            let cut = old - units;
            let owed = cut - self.permits.forget_permits(cut);
            if owed > 0 {
                // Taken in turn with the reservations waiting (the semaphore is fair), then
                // forgotten: the semaphore ends at the new total.
                let permits = self.permits.clone();
                let take = async move {
                    if let Ok(permit) = permits.acquire_many_owned(owed as u32).await {
                        permit.forget();
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(take)),
                    Err(_) => tracing::warn!(
                        owed_bytes = owed * UNIT,
                        "responses.max_total_bytes: the reserved part is kept"
                    ),
                }
            }
        }
    }

    /// Reserves `bytes` (at least one unit, at most the whole budget), waiting up to the store
    /// time budget for other answers to be written.
    pub async fn reserve(&self, bytes: usize) -> Result<ResponsePermit, ServiceError> {
        let total = self.bounds.total_units.load(Ordering::Relaxed);
        let units = bytes.div_ceil(UNIT).clamp(1, total.max(1)) as u32;
        let acquire = self.permits.clone().acquire_many_owned(units);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(ResponsePermit(permit)),
            _ => Err(ServiceError::new(
                ErrorCode::Overloaded,
                "too many large answers are being assembled; retry later",
            )),
        }
    }

    /// Makes `permit` hold what the assembled answer really takes, `bytes`: it gives back the
    /// rest of the estimate, or grows when the answer is bigger than estimated (an id asked
    /// for twice, a document stored before `max_document_bytes` was lowered).
    pub async fn fit(&self, permit: &mut ResponsePermit, bytes: usize) -> Result<(), ServiceError> {
        if let Some(more) = bytes.checked_sub(permit.bytes()).filter(|b| *b > 0) {
            let extra = self.reserve(more).await?;
            permit.0.merge(extra.0);
        }
        permit.shrink_to(bytes);
        Ok(())
    }

    /// Bytes reserved by answers right now.
    pub fn reserved_bytes(&self) -> usize {
        let total = self.bounds.total_units.load(Ordering::Relaxed);
        total.saturating_sub(self.permits.available_permits()) * UNIT
    }
}

/// `bytes` in units, as many as a semaphore takes at once at most.
fn units_of(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).min(u32::MAX as usize)
}

impl ResponsePermit {
    /// Gives back what is reserved beyond `bytes` (keeps at least one unit).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT).max(1);
        if let Some(extra) = self.0.num_permits().checked_sub(keep).filter(|n| *n > 0) {
            drop(self.0.split(extra));
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.num_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize) -> ResponseBudget {
        let config = ResponsesConfig {
            max_bytes: total,
            max_total_bytes: total,
        };
        ResponseBudget::new(&config, Duration::from_millis(50))
    }

    #[tokio::test]
    async fn reservations_are_bounded_shrink_and_come_back() {
        let budget = budget(10 * UNIT);
        let mut first = budget.reserve(8 * UNIT).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 8 * UNIT);
        let refused = budget.reserve(4 * UNIT).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Overloaded);
        budget.fit(&mut first, UNIT + 1).await.unwrap();
        assert_eq!(first.bytes(), 2 * UNIT);
        let mut second = budget.reserve(4 * UNIT).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 6 * UNIT);
        budget.fit(&mut second, 6 * UNIT).await.unwrap();
        assert_eq!(
            (second.bytes(), budget.reserved_bytes()),
            (6 * UNIT, 8 * UNIT)
        );
        drop((first, second));
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_through_when_another_is_released() {
        let budget = budget(4 * UNIT);
        let held = budget.reserve(4 * UNIT).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 * UNIT).await.map(|p| p.bytes()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 2 * UNIT);
    }

    #[tokio::test]
    async fn a_resize_applies_to_new_reservations_and_takes_back_what_is_held() {
        let budget = budget(8 * UNIT);
        let held = budget.reserve(6 * UNIT).await.unwrap();
        let larger = ResponsesConfig {
            max_bytes: 16 * UNIT,
            max_total_bytes: 16 * UNIT,
        };
        budget.resize(&larger);
        assert_eq!(
            (budget.max_bytes(), budget.total_bytes()),
            (16 * UNIT, 16 * UNIT)
        );
        let more = budget.reserve(10 * UNIT).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 16 * UNIT);
        drop(more);
        // Smaller than what is held: the free part goes now, the rest once it is released.
        let smaller = ResponsesConfig {
            max_bytes: 2 * UNIT,
            max_total_bytes: 4 * UNIT,
        };
        budget.resize(&smaller);
        assert_eq!(budget.max_bytes(), 2 * UNIT);
        let refused = budget.reserve(UNIT).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Overloaded, "6 KiB held of 4");
        drop(held);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.reserved_bytes(), 0);
        let all = budget.reserve(100 * UNIT).await.unwrap();
        assert_eq!(
            all.bytes(),
            4 * UNIT,
            "a reservation is at most the new total"
        );
        assert_eq!(
            budget.reserve(UNIT).await.unwrap_err().code,
            ErrorCode::Overloaded
        );
    }
}
