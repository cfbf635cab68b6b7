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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ResponsesConfig;
use crate::error::{ErrorCode, ServiceError};

/// Reservations are counted in KiB so that large budgets fit the semaphore's `u32` requests.
const UNIT: usize = 1024;

/// The shared budget. Cloning is cheap.
#[derive(Clone)]
pub struct ResponseBudget {
    permits: Arc<Semaphore>,
    total_units: usize,
    /// Most bytes of documents in one answer.
    pub max_bytes: usize,
    wait: Duration,
}

/// Bytes of the budget held by one answer; released when dropped.
#[derive(Debug)]
pub struct ResponsePermit(OwnedSemaphorePermit);

impl ResponseBudget {
    pub fn new(config: &ResponsesConfig, wait: Duration) -> ResponseBudget {
        let total_units = config.max_total_bytes.div_ceil(UNIT).min(u32::MAX as usize);
        ResponseBudget {
            permits: Arc::new(Semaphore::new(total_units)),
            total_units,
            max_bytes: config.max_bytes,
            wait,
        }
    }

    /// Reserves `bytes` (at least one unit, at most the whole budget), waiting up to the store
    /// time budget for other answers to be written.
    pub async fn reserve(&self, bytes: usize) -> Result<ResponsePermit, ServiceError> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.total_units) as u32;
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
        (self.total_units - self.permits.available_permits()) * UNIT
    }
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
}
