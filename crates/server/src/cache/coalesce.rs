//! L2 lookups of single keys: shared by concurrent readers of one key (single flight) and sent
//! together as `MGET`s.
//!
//! Every L1 miss that reaches L2 used to be its own `GET`, read by a task of its own: one
//! command through redis-rs's multiplexer and one reply parsed per request. Here a lookup joins
//! a queue, and everything queued goes out as one `MGET` (split by hash slot by redis-rs on a
//! cluster): a lookup that finds fewer than [`MAX_IN_FLIGHT`] senders running starts one, and
//! a sender whose `MGET` returned sends what was queued meanwhile before it stops. While those
//! are on the wire the queue fills, so a batch grows with the load and a lone lookup waits for
//! nothing but its own round trip (no task is woken to send it). A task waits for one key
//! ([`Coalescer::lookup`]); a connection hands over the misses of everything it read at once,
//! with a callback run where the answers arrive ([`Coalescer::lookup_many`]), so it reads L2
//! without a task per request.
//!
//! **Single flight without stale answers.** A task reading a key joins the lookup already queued
//! or on the wire for it only when the key's L1 ticket has not moved since that lookup started. A
//! write, an invalidation from another instance or a cleared L1 moves the ticket, so a reader
//! who learnt of a newer version never receives an answer Redis gave before it (the same rule
//! as L1's own flights). An L2 hit fills L1 once, under the ticket of its lookup.
//!
//! Time: a lookup still queued after `cache.l2_timeout` is not sent but answered as a miss,
//! and a sent one waits at most `cache.l2_timeout` for Redis, so no lookup waits much longer
//! than twice that. A failed batch is a miss for every key in it, and while the breaker is open
//! a batch is a miss without being sent (one goes through as the breaker's probe).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use super::Ttls;
use super::l1::{Cached, L1, Ticket};
use super::l2::L2;

/// `MGET`s outstanding at once: enough to keep Redis and the connection busy while the next
/// batch gathers; more would only make the batches smaller.
const MAX_IN_FLIGHT: usize = 4;

/// Keys per `MGET` at most (a bound on one reply's size and on one batch's latency).
const MAX_KEYS: usize = 512;

/// A reader waiting for one key's answer (`None`: not in L2, or L2 failed).
pub type Waiter = oneshot::Sender<Option<Cached>>;

/// The answers to a lookup of several keys, in order, where they arrive.
pub type ThenMany = Box<dyn FnOnce(Vec<Option<Cached>>) + Send>;

/// One key's lookup, queued or on the wire.
struct Lookup {
    key: Box<str>,
    /// Taken out when the lookup is sent.
    redis_key: String,
    ticket: Ticket,
    /// How long L1 keeps what L2 answered.
    ttls: Ttls,
    waiters: Vec<Waiter>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    /// Every lookup not answered yet, by number.
    lookups: FastMap<u64, Lookup>,
    /// The lookup a new reader of a key may join (the latest one for the key).
    joinable: FastMap<Box<str>, u64>,
    /// Lookups not sent yet, in order.
    queued: Vec<Queued>,
    next: u64,
    /// Senders running (at most [`MAX_IN_FLIGHT`]).
    sending: usize,
}

enum Queued {
    /// A lookup of one key (in `lookups`), which other readers may join.
    One(u64, Instant),
    /// Several keys for one caller, shared with nobody.
    Many(Vec<String>, ThenMany, Instant),
}

/// What one `MGET` answers, in the order of its keys.
enum Part {
    One(u64),
    Many(usize, ThenMany),
}

/// What a sender sends in one `MGET`, and the lookups too late to be sent.
#[derive(Default)]
struct Batch {
    keys: Vec<String>,
    parts: Vec<Part>,
    late: Vec<Part>,
    late_keys: usize,
}

/// The queue shared by the readers and the senders.
pub(super) struct Coalescer {
    l1: L1,
    state: Mutex<State>,
}

/// A lookup request: what to read, and how long L1 keeps the answer.
pub(super) struct Want<'a> {
    pub key: &'a str,
    pub redis_key: String,
    pub ttls: Ttls,
}

impl Coalescer {
    pub fn new(l1: L1) -> Coalescer {
        Coalescer {
            l1,
            state: Mutex::default(),
        }
    }

    /// Looks `want.key` up in L2 for `waiter`, joining a lookup of the same key when that is
    /// safe (see the module documentation).
    pub fn lookup(self: &Arc<Self>, l2: &Arc<L2>, want: Want<'_>, waiter: Waiter) {
        let ticket = self.l1.ticket(want.key);
        let mut state = self.state.lock();
        if let Some(id) = state.joinable.get(want.key).copied()
            && let Some(lookup) = state.lookups.get_mut(&id)
            && lookup.ticket == ticket
        {
            lookup.waiters.push(waiter);
            return;
        }
        let id = state.next;
        state.next += 1;
        l2.counters().lookups.fetch_add(1, Ordering::Relaxed);
        state.lookups.insert(
            id,
            Lookup {
                key: want.key.into(),
                redis_key: want.redis_key,
                ticket,
                ttls: want.ttls,
                waiters: vec![waiter],
            },
        );
        state.joinable.insert(want.key.into(), id);
        state.queued.push(Queued::One(id, Instant::now()));
        self.send_if_free(state, l2);
    }

    /// Looks several keys up for one caller: they go out in the next batch, joining no other
    /// reader's lookup (so no answer can be older than the call), and `then` gets every answer
    /// at once.
    pub fn lookup_many(self: &Arc<Self>, l2: &Arc<L2>, redis_keys: Vec<String>, then: ThenMany) {
        l2.counters().lookups.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock();
        state
            .queued
            .push(Queued::Many(redis_keys, then, Instant::now()));
        self.send_if_free(state, l2);
    }

    /// Starts a sender for what is queued when fewer than [`MAX_IN_FLIGHT`] run; otherwise a
    /// running sender takes it when its `MGET` returns.
    fn send_if_free(self: &Arc<Self>, mut state: MutexGuard<'_, State>, l2: &Arc<L2>) {
        if state.sending >= MAX_IN_FLIGHT {
            return;
        }
        state.sending += 1;
        let batch = next_batch(&mut state, l2.timeout());
        drop(state);
        let sender = Sender {
            queue: self.clone(),
            l2: l2.clone(),
            released: false,
        };
        tokio::spawn(sender.run(batch));
    }

    /// Hands each part of a batch its answers; an L2 hit of a shared lookup also fills L1
    /// (once per lookup).
    fn answer(&self, parts: Vec<Part>, found: Vec<Option<Cached>>) {
        let mut found = found.into_iter();
        let mut answered = Vec::new();
        let mut many = Vec::new();
        {
            let mut state = self.state.lock();
            for part in parts {
                match part {
                    Part::One(id) => {
                        let value = found.next().flatten();
                        let Some(lookup) = state.lookups.remove(&id) else {
                            continue;
                        };
                        if state.joinable.get(&lookup.key) == Some(&id) {
                            state.joinable.remove(&lookup.key);
                        }
                        answered.push((lookup, value));
                    }
                    Part::Many(count, then) => {
                        many.push((found.by_ref().take(count).collect::<Vec<_>>(), then))
                    }
                }
            }
        }
        for (lookup, found) in answered {
            if let Some(value) = &found {
                let ttl = lookup.ttls.l1_for(value);
                self.l1.fill(&lookup.key, lookup.ticket, value.clone(), ttl);
            }
            for waiter in lookup.waiters {
                let _ = waiter.send(found.clone());
            }
        }
        for (found, then) in many {
            then(found);
        }
    }
}

/// The next batch from the queue (which must not be empty). A batch stops once it has
/// [`MAX_KEYS`] keys, but never splits one caller's keys. Lookups queued for longer than
/// `max_wait` (Redis slow or frozen, the batches ahead of them stuck) are not sent: they come
/// back in [`Batch::late`], to be answered as misses.
fn next_batch(state: &mut State, max_wait: Duration) -> Batch {
    let oldest_sent = Instant::now().checked_sub(max_wait);
    let mut batch = Batch::default();
    let mut taken = 0;
    for queued in &mut state.queued {
        taken += 1;
        let placeholder = Queued::Many(Vec::new(), Box::new(drop), Instant::now());
        let (part, keys, at) = match std::mem::replace(queued, placeholder) {
            // The key is taken out of its lookup below.
            Queued::One(id, at) => (Part::One(id), vec![String::new()], at),
            Queued::Many(keys, then, at) => (Part::Many(keys.len(), then), keys, at),
        };
        if oldest_sent.is_some_and(|oldest| at < oldest) {
            batch.late_keys += keys.len();
            batch.late.push(part);
            continue;
        }
        batch.keys.extend(keys);
        batch.parts.push(part);
        if batch.keys.len() >= MAX_KEYS {
            break;
        }
    }
    state.queued.drain(..taken);
    let mut at = 0;
    for part in &batch.parts {
        match part {
            Part::One(id) => {
                if let Some(lookup) = state.lookups.get_mut(id) {
                    batch.keys[at] = std::mem::take(&mut lookup.redis_key);
                }
                at += 1;
            }
            Part::Many(count, _) => at += count,
        }
    }
    batch
}

/// One of the at most [`MAX_IN_FLIGHT`] senders: sends its batch, answers it, and goes on with
/// whatever was queued meanwhile, so under load no task is started per batch and nobody is
/// woken to send. Gives its slot back when the queue is empty (or, through its drop, if it
/// panics).
struct Sender {
    queue: Arc<Coalescer>,
    l2: Arc<L2>,
    released: bool,
}

impl Sender {
    async fn run(mut self, mut batch: Batch) {
        loop {
            self.send(batch).await;
            let mut state = self.queue.state.lock();
            if state.queued.is_empty() {
                // Under the lock that lookups queue under: none is left without a sender.
                state.sending -= 1;
                self.released = true;
                return;
            }
            batch = next_batch(&mut state, self.l2.timeout());
        }
    }

    async fn send(&self, batch: Batch) {
        if !batch.late.is_empty() {
            self.queue.answer(batch.late, vec![None; batch.late_keys]);
        }
        if batch.parts.is_empty() {
            return;
        }
        // The breaker is asked per batch: while it is open, what was queued is a miss (one
        // batch goes through as the probe), instead of every queued lookup timing out in turn.
        if !self.l2.breaker().allow() {
            let misses = vec![None; batch.keys.len()];
            return self.queue.answer(batch.parts, misses);
        }
        let found = {
            let keys: Vec<&str> = batch.keys.iter().map(String::as_str).collect();
            self.l2.mget(&keys).await
        };
        let hits = found.iter().flatten().count() as u64;
        self.l2.counters().hits.fetch_add(hits, Ordering::Relaxed);
        self.queue.answer(batch.parts, found);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.released {
            self.queue.state.lock().sending -= 1;
        }
    }
}
