//! The store as the bus's witness of which instances are alive (see `cache/bus.rs`).
//!
//! With L2, every instance records itself in each store's `dmw_instances` every
//! `cache.bus_forget_after / 4` and reads back which instances of its bus were alive within
//! `bus_forget_after`. An instance silent on the bus but alive here is waited for; one absent
//! from both is forgotten. While this instance's own bus is broken, each write first records it
//! in the store it writes to, so an instance that comes back after being forgotten is waited for
//! again before its unannounced writes could be missed.

use crate::ops::metrics::StoreOp;
use std::collections::HashSet;
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::Ordering;

use super::{Game, Inner, Service};

impl Service {
    /// One round: record this instance in every store, then learn who else is alive.
    async fn presence_round(&self) {
        let Some(bus) = self.inner.cache.bus() else {
            return;
        };
        if bus.mute.load(std::sync::atomic::Ordering::Relaxed) {
            return; // the test fault point: as if this process were gone
        }
        let prefix = &self.inner.bus_prefix;
        let now = now_ms();
        let since = now.saturating_sub(bus.forget_after().as_millis() as u64);
        let mut alive = HashSet::new();
        let mut answered = false;
        for (name, store) in &self.inner.stores {
            let round = async {
                store.touch_instance(prefix, bus.id(), now).await?;
                store.instances_since(prefix, since).await
            };
            match tokio::time::timeout(self.inner.store_timeout, round).await {
                Ok(Ok(ids)) => {
                    answered = true;
                    alive.extend(ids);
                }
                Ok(Err(e)) => tracing::debug!(store = %name, error = %e, "presence round failed"),
                Err(_) => tracing::debug!(store = %name, "presence round timed out"),
            }
        }
        if answered {
            alive.remove(bus.id());
            bus.set_present(alive);
        }
    }

    /// Before a write while this instance's bus is broken: it is recorded alive in the store it
    /// writes to (see the module documentation) — at most once a second, and a failure does
    /// not fail the write (the presence rounds keep trying).
    pub(super) async fn present_before_write(&self, game: &Game) {
        let Some(bus) = self.inner.cache.bus() else {
            return;
        };
        if bus.trusted() {
            return;
        }
        let now = now_ms();
        let last = self.inner.last_touch_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .inner
                .last_touch_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let touch = game
            .store
            .touch_instance(&self.inner.bus_prefix, bus.id(), now);
        if let Err(e) = self.budget(StoreOp::Presence, touch).await {
            tracing::debug!(error = %e, "presence before a write failed");
        }
    }

    /// A clean shutdown: once the writes still running (their clients gone or not) are done,
    /// out of every store's list, then goodbye on the bus. Waits at most `grace` for the writes.
    /// An instance with writes still running, or with written keys L2 could not take, does not
    /// say goodbye: the others keep waiting for it until it is forgotten.
    pub async fn leave(&self, grace: Duration) {
        let Some(bus) = self.inner.cache.bus() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + grace;
        let all = self.inner.max_pending_writes;
        while self.inner.pending_writes.available_permits() < all {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("writes still running at shutdown: no goodbye on the bus");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(l2) = self.inner.cache.l2()
            && l2.has_pending_repair()
            && !l2.repair().await
        {
            tracing::warn!("written keys L2 could not take at shutdown: no goodbye on the bus");
            return;
        }
        for (_, store) in &self.inner.stores {
            let gone = store.leave_instance(&self.inner.bus_prefix, bus.id());
            let _ = tokio::time::timeout(self.inner.store_timeout, gone).await;
        }
        bus.leave().await;
    }
}

/// Runs presence rounds until the service is gone.
pub(super) fn start(service: Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            Service { inner }.presence_round().await;
        }
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
