//! Answers finished by request tasks, waiting for the connection task to write them, and the
//! bookkeeping that lets requests wait for earlier ones (see [`super::order`]).
//!
//! Every answer pushed here gets the next *answer number*. Each dispatched request carries a
//! [`Done`], marked with its answer number once the request is done (answered, and for a write
//! settled); the connection task records how many answers it has moved into its output buffer,
//! so it can tell whether an earlier request's answer is already ahead of anything it writes
//! inline. Once the connection has ended, pushes are dropped (with their budget reservations)
//! and tasks that have not started skip their work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use datamiddleware_protocol::{ErrorCode, Message};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ingress::drain::{self, Drain};
use crate::service::ResponsePermit;

/// Responses finished by request tasks, waiting for the connection task to write them.
///
/// The wake-up is a flag plus an [`AtomicWaker`] rather than a `tokio::sync::Notify`: the
/// connection task polls it on every turn of its loop, and a `Notify` waiter takes a mutex to
/// register and another to deregister each time (~2 % of the server's CPU at depth 1 in
/// `perf`), where re-registering the same waker here is one atomic exchange.
#[derive(Default)]
pub(super) struct Outbox {
    state: Mutex<Pending>,
    /// Requests dispatched to tasks and not answered yet. Decremented under `state`'s lock, so
    /// the connection task sees "0 in flight" only together with every answer in `frames`.
    in_flight: AtomicUsize,
    pushed: AtomicBool,
    waker: AtomicWaker,
    /// Set when the connection task has ended: nobody will write what is pushed.
    closed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    frames: BytesMut,
    /// Answers pushed since the connection opened.
    answered: u64,
    /// Memory reservations of large answers, each with the end offset of its frame in `frames`.
    permits: Vec<(usize, ResponsePermit)>,
}

/// What the connection task takes out of the outbox in one go.
pub(super) struct Taken {
    /// How many answers have been pushed so far; all of them are now in the output.
    pub answered: u64,
    /// True when no dispatched request is unanswered.
    pub idle: bool,
}

/// Set once a request is done: later requests touching the same document wait for it.
#[derive(Default)]
pub(super) struct Done {
    /// The answer number, 0 while unanswered.
    answer: AtomicU64,
    notify: Notify,
}

impl Done {
    /// True when the answer is pushed and among the first `moved` answers, i.e. already in the
    /// connection's output buffer.
    pub fn answered_within(&self, moved: u64) -> bool {
        let answer = self.answer.load(Ordering::Acquire);
        answer != 0 && answer <= moved
    }

    /// Marks the request done with the number its answer got.
    fn mark(&self, answer: u64) {
        self.answer.store(answer, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Completes once the request is done.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so a push between the look and the wait is not missed.
        notified.as_mut().enable();
        if self.answer.load(Ordering::Acquire) != 0 {
            return;
        }
        notified.await;
    }
}

impl Outbox {
    /// Counts a request handed to a task (the in-flight window).
    pub fn dispatched(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Queues the answer to `request_id`, wakes the connection task, and returns the answer's
    /// number.
    fn push(
        &self,
        request_id: u32,
        response: Option<&Message>,
        permit: Option<ResponsePermit>,
    ) -> u64 {
        let answer = {
            let mut pending = self.state.lock();
            if let Some(response) = response
                && !self.closed.load(Ordering::Acquire)
            {
                response.encode(request_id, &mut pending.frames);
                if let Some(permit) = permit {
                    let end = pending.frames.len();
                    pending.permits.push((end, permit));
                }
            }
            pending.answered += 1;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            pending.answered
        };
        self.pushed.store(true, Ordering::Release);
        self.waker.wake();
        answer
    }

    /// The connection has ended: drops what waits to be written (and its reservations).
    pub fn close(&self) {
        let mut pending = self.state.lock();
        self.closed.store(true, Ordering::Release);
        pending.frames = BytesMut::new();
        pending.permits.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Moves every pushed answer to the end of `out`; `on_permit` gets each reservation with
    /// the offset in `out` where its frame ends.
    pub fn take_into(
        &self,
        out: &mut BytesMut,
        mut on_permit: impl FnMut(usize, ResponsePermit),
    ) -> Taken {
        let mut pending = self.state.lock();
        if !pending.frames.is_empty() {
            let base = out.len();
            if out.is_empty() {
                // No copy of what may be a large answer: the buffers trade places.
                std::mem::swap(out, &mut pending.frames);
            } else {
                out.extend_from_slice(&pending.frames);
            }
            pending.frames = BytesMut::new();
            for (end, permit) in pending.permits.drain(..) {
                on_permit(base + end, permit);
            }
        }
        Taken {
            answered: pending.answered,
            idle: self.in_flight.load(Ordering::Acquire) == 0,
        }
    }

    /// Ready with [`Wake::Drain`] once the drain's phase is past `seen`, or with
    /// [`Wake::Pushed`] once something was pushed since the last time.
    pub fn poll_wake(&self, cx: &mut Context<'_>, drain: &Drain, seen: drain::Phase) -> Poll<Wake> {
        // Registers the waker before looking, so a push between the two is not missed either.
        if let Some(phase) = drain.poll_past(&self.waker, cx, seen) {
            Poll::Ready(Wake::Drain(phase))
        } else if self.pushed.swap(false, Ordering::AcqRel) {
            Poll::Ready(Wake::Pushed)
        } else {
            Poll::Pending
        }
    }
}

impl drain::Wakes for Outbox {
    fn waker(&self) -> &AtomicWaker {
        &self.waker
    }
}

pub(super) enum Wake {
    Pushed,
    Drain(drain::Phase),
}

/// The promise of a request task to answer: if the task ends without answering (a panic), its
/// drop answers `internal`, so the window slot is freed and later requests do not wait forever.
pub(super) struct Answer {
    outbox: Arc<Outbox>,
    request_id: u32,
    done: Arc<Done>,
    sent: bool,
}

/// An answer pushed for a request that may not be done yet (a write still settling): marks
/// the request done when dropped.
pub(super) struct Pushed {
    done: Arc<Done>,
    answer: u64,
}

impl Drop for Pushed {
    fn drop(&mut self) {
        self.done.mark(self.answer);
    }
}

impl Answer {
    pub fn new(outbox: Arc<Outbox>, request_id: u32, done: Arc<Done>) -> Answer {
        Answer {
            outbox,
            request_id,
            done,
            sent: false,
        }
    }

    pub fn send(mut self, response: &Message, permit: Option<ResponsePermit>) -> Pushed {
        self.sent = true;
        let answer = self.outbox.push(self.request_id, Some(response), permit);
        Pushed {
            done: self.done.clone(),
            answer,
        }
    }

    /// True once the connection has ended: nobody reads this answer.
    pub fn connection_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    /// The connection ended before the request started: nothing is run or written, but the
    /// window slot and the requests waiting for this one are released.
    pub fn skip(mut self) {
        self.sent = true;
        let answer = self.outbox.push(self.request_id, None, None);
        self.done.mark(answer);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            tracing::error!(
                request_id = self.request_id,
                "a TCP request task ended without answering"
            );
            let error = Message::Error {
                code: ErrorCode::Internal.as_str().to_string(),
                message: "internal error".to_string(),
                op_index: None,
            };
            let answer = self.outbox.push(self.request_id, Some(&error), None);
            self.done.mark(answer);
        }
    }
}
