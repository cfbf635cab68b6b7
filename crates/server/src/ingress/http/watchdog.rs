//! The per-connection HTTP watchdog: closes a connection that makes no progress for
//! `http.header_read_timeout` — silent after connecting, idle on keep-alive, trickling a request
//! head that never completes, or no longer reading a response it was sent. Progress is a
//! request starting or in progress, or response bytes leaving (a slow reader of a large
//! response keeps its connection as long as it keeps reading).
//!
//! hyper can enforce a header read timeout itself, but it arms a fresh timer for every request
//! (a boxed sleep, a timer-wheel insert and removal: ~1,200 instructions of the ~13,500 a
//! cache-hit GET cost in callgrind). Here a request only bumps two counters, and one timer per
//! connection ticks four times per timeout period.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::ingress::drain;

/// Ticks per timeout period: a stalled connection is found between 1 and 1¼ timeouts (its
/// graceful close may then take one more tick, at most a second).
const TICKS_PER_TIMEOUT: u32 = 4;

/// What the requests of one connection report to its watchdog.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests started on the connection (a complete head was read).
    started: AtomicU64,
    /// Requests being processed now.
    in_flight: AtomicU32,
    /// Successful socket writes (only the connection's own I/O writes it).
    writes: AtomicU64,
    /// Woken when the server's drain changes phase.
    drain_waker: AtomicWaker,
    /// The client's address (for per-address rate limits), when known.
    peer: Option<std::net::IpAddr>,
}

impl drain::Wakes for Activity {
    fn waker(&self) -> &AtomicWaker {
        &self.drain_waker
    }
}

impl Activity {
    /// The activity of a new connection from `peer`.
    pub fn of(peer: Option<std::net::IpAddr>) -> Activity {
        Activity {
            peer,
            ..Activity::default()
        }
    }
    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn enter(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

pub(super) struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// The address of the request's client.
    pub fn peer(&self) -> Option<std::net::IpAddr> {
        self.0.peer
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The watchdog's view between ticks.
pub(super) struct Watchdog {
    activity: Arc<Activity>,
    last_started: u64,
    last_writes: u64,
    stalled_ticks: u32,
    pub tick: Duration,
}

impl Watchdog {
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> Watchdog {
        Watchdog {
            activity,
            last_started: 0,
            last_writes: 0,
            stalled_ticks: 0,
            tick: (timeout / TICKS_PER_TIMEOUT).max(Duration::from_millis(1)),
        }
    }

    /// Called every `tick`: true once no request has started or been in progress, and no
    /// response bytes have left, for a whole timeout.
    pub fn expired(&mut self) -> bool {
        let started = self.activity.started.load(Ordering::Relaxed);
        let writes = self.activity.writes.load(Ordering::Relaxed);
        let busy = self.activity.in_flight.load(Ordering::Relaxed) > 0;
        if busy || started != self.last_started || writes != self.last_writes {
            self.last_started = started;
            self.last_writes = writes;
            self.stalled_ticks = 0;
            return false;
        }
        self.stalled_ticks += 1;
        self.stalled_ticks >= TICKS_PER_TIMEOUT
    }
}

/// The connection's socket, counting successful writes for the watchdog (one relaxed store
/// per write; reads go straight through).
pub(super) struct Socket<S = TcpStream> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S> Socket<S> {
    pub fn new(stream: S, activity: Arc<Activity>) -> Socket<S> {
        Socket { stream, activity }
    }

    fn wrote(&self, result: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result
            && *n > 0
        {
            // Only this socket writes the counter: a load and a store, no read-modify-write.
            let writes = &self.activity.writes;
            writes.store(
                writes.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_after_a_whole_timeout_without_a_request() {
        let activity = Arc::new(Activity::default());
        let mut dog = Watchdog::new(activity.clone(), Duration::from_secs(4));
        assert_eq!(dog.tick, Duration::from_secs(1));
        for _ in 0..TICKS_PER_TIMEOUT - 1 {
            assert!(!dog.expired());
        }
        // A request started: the count restarts.
        drop(activity.enter());
        for _ in 0..TICKS_PER_TIMEOUT {
            assert!(!dog.expired());
        }
        assert!(dog.expired());
    }

    #[test]
    fn response_bytes_leaving_keep_the_connection() {
        let activity = Arc::new(Activity::default());
        let mut dog = Watchdog::new(activity.clone(), Duration::from_secs(4));
        for _ in 0..3 * TICKS_PER_TIMEOUT {
            activity.writes.fetch_add(1, Ordering::Relaxed);
            assert!(!dog.expired());
        }
        for _ in 0..TICKS_PER_TIMEOUT - 1 {
            assert!(!dog.expired());
        }
        assert!(dog.expired());
    }

    #[test]
    fn a_request_in_progress_keeps_the_connection() {
        let activity = Arc::new(Activity::default());
        let mut dog = Watchdog::new(activity.clone(), Duration::from_secs(4));
        let slow = activity.enter();
        for _ in 0..3 * TICKS_PER_TIMEOUT {
            assert!(!dog.expired());
        }
        drop(slow);
        // Finished during the last tick: a full timeout of silence is still needed.
        for _ in 0..TICKS_PER_TIMEOUT - 1 {
            assert!(!dog.expired());
        }
        assert!(dog.expired());
    }
}
