//! Answers finished by request tasks, waiting for the connection task to write them, and the
//! bookkeeping that lets requests wait for earlier ones (see [`super::order`]).
//!
//! Every answer pushed here gets the next *answer number*. A request that other requests must
//! wait for carries a [`Done`], which learns its answer number when its answer is pushed; the
//! connection task records how many answers it has moved into its output buffer, so it can
//! tell whether an earlier request's answer is already ahead of anything it writes inline.

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

/// Set once a request's answer has been pushed: later requests touching the same document
/// wait for it.
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

    /// Completes once the answer has been pushed.
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

    /// Queues the answer to `request_id` and wakes the connection task.
    pub fn push(
        &self,
        request_id: u32,
        response: &Message,
        done: Option<&Done>,
        permit: Option<ResponsePermit>,
    ) {
        {
            let mut pending = self.state.lock();
            response.encode(request_id, &mut pending.frames);
            pending.answered += 1;
            if let Some(done) = done {
                done.answer.store(pending.answered, Ordering::Release);
            }
            if let Some(permit) = permit {
                let end = pending.frames.len();
                pending.permits.push((end, permit));
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(done) = done {
            done.notify.notify_waiters();
        }
        self.pushed.store(true, Ordering::Release);
        self.waker.wake();
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
            out.extend_from_slice(&pending.frames);
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
    done: Option<Arc<Done>>,
    sent: bool,
}

impl Answer {
    pub fn new(outbox: Arc<Outbox>, request_id: u32, done: Option<Arc<Done>>) -> Answer {
        Answer {
            outbox,
            request_id,
            done,
            sent: false,
        }
    }

    pub fn send(mut self, response: &Message, permit: Option<ResponsePermit>) {
        self.sent = true;
        self.outbox
            .push(self.request_id, response, self.done.as_deref(), permit);
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
            self.outbox
                .push(self.request_id, &error, self.done.as_deref(), None);
        }
    }
}
