//! Shutdown of live connections, shared by both front ends: the drain tells every connection
//! to stop taking new requests (HTTP/1 closes after the current response, HTTP/2 and TCP send
//! GOAWAY), waits for them up to the grace period, then makes the rest close at once.
//!
//! Each connection registers its waker once; a phase change stores one atomic and wakes them
//! all. (A `watch` receiver polled on every turn of every connection loop cost ~340
//! instructions per request in callgrind; reading the phase costs one load.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::Context;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// How long connections told to close at once may take to end: their last flush, and a margin.
const CLOSE_NOW_WAIT: Duration = super::CLOSE_FLUSH.saturating_mul(2);

/// Where the server is in shutting down, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving = 0,
    /// Finish what is in flight, take nothing new.
    Draining = 1,
    /// The grace period is over: close now.
    Closing = 2,
}

/// Something a connection's task polls, holding the waker the drain wakes.
pub(crate) trait Wakes: Send + Sync {
    fn waker(&self) -> &AtomicWaker;
}

#[derive(Default)]
pub(crate) struct Drain {
    phase: AtomicU8,
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<dyn Wakes>>>,
}

impl Drain {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Serving,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        for connection in self.connections.lock().values() {
            connection.waker().wake();
        }
    }

    /// Registers `cx`'s waker in `waker` (a registered connection's), then returns the phase
    /// if it is past `seen`. Registering first means no change between the two is missed.
    pub fn poll_past(
        &self,
        waker: &AtomicWaker,
        cx: &mut Context<'_>,
        seen: Phase,
    ) -> Option<Phase> {
        waker.register(cx.waker());
        let phase = self.phase();
        (phase > seen).then_some(phase)
    }

    /// Registers a connection until the returned guard drops; its task learns of phase
    /// changes through [`Drain::poll_past`] with the connection's waker.
    pub fn register(&self, connection: Arc<dyn Wakes>) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(id, connection);
        Registration { drain: self, id }
    }

    /// Drains the connections counted by `connections` (a semaphore of `max` permits, one
    /// held by each connection task): waits up to `grace` for them to finish, then tells the
    /// rest to close at once and waits briefly for that.
    pub async fn run(&self, connections: &Semaphore, max: usize, grace: Duration, what: &str) {
        self.advance(Phase::Draining);
        tracing::info!(?grace, "shutting down: draining {what} connections");
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, connections.acquire_many(all))
            .await
            .is_ok()
        {
            return;
        }
        let left = max.saturating_sub(connections.available_permits());
        tracing::warn!(
            left,
            "grace period over; closing the remaining {what} connections"
        );
        self.advance(Phase::Closing);
        if tokio::time::timeout(CLOSE_NOW_WAIT, connections.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("{what} connections still open after being told to close");
        }
    }
}

/// Removes a connection from the drain when it ends.
pub(crate) struct Registration<'a> {
    drain: &'a Drain,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.drain.connections.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Poll, Wake, Waker};

    struct Counter(std::sync::atomic::AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[derive(Default)]
    struct Conn(AtomicWaker);
    impl Wakes for Conn {
        fn waker(&self) -> &AtomicWaker {
            &self.0
        }
    }

    #[tokio::test]
    async fn phases_advance_wake_registered_connections_and_end_when_they_are_gone() {
        let drain = Drain::default();
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let conn = Arc::new(Conn::default());
        let registration = drain.register(conn.clone());
        conn.0.register(&waker);
        assert_eq!(drain.phase(), Phase::Serving);

        // One connection holds its permit past the grace: told to drain, then to close.
        let connections = Semaphore::new(2);
        let permit = connections.try_acquire().unwrap();
        let run = drain.run(&connections, 2, Duration::from_millis(50), "test");
        tokio::pin!(run);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drain.phase(), Phase::Draining);
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        conn.0.register(&waker);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drain.phase(), Phase::Closing);
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        drop(permit);
        drop(registration);
        assert!(matches!(run.as_mut().poll(&mut cx), Poll::Ready(())));
        assert!(drain.connections.lock().is_empty());
    }
}
