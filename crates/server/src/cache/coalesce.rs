//! L2 lookups of single keys: shared by concurrent readers of one key (single flight) and sent
//! together as `MGET`s.
//!
//! Every L1 miss that reaches L2 used to be its own `GET`, read by a task of its own: one
//! command through redis-rs's multiplexer and one reply parsed per request. Here a lookup joins
//! a queue; one flusher task takes everything queued and sends it as one `MGET` (split by hash
//! slot by redis-rs on a cluster), keeping at most [`MAX_IN_FLIGHT`] outstanding. While those
//! are on the wire the queue fills, so a batch grows with the load and a lone lookup waits for
//! nothing but its own round trip. A task waits for one key ([`Coalescer::lookup`]); a
//! connection hands over the misses of everything it read at once, with a callback run where
//! the answers arrive ([`Coalescer::lookup_many`]), so it reads L2 without a task per request.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, oneshot};

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
    l1_ttl: Duration,
    l1_missing_ttl: Duration,
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

/// What the flusher sends in one `MGET`, and the lookups too late to be sent.
#[derive(Default)]
struct Batch {
    keys: Vec<String>,
    parts: Vec<Part>,
    late: Vec<Part>,
    late_keys: usize,
}

/// The queue shared by the readers and the flusher.
pub(super) struct Coalescer {
    l1: L1,
    state: Mutex<State>,
    wake: Notify,
    started: AtomicBool,
}

/// A lookup request: what to read, and how long L1 keeps the answer.
pub(super) struct Want<'a> {
    pub key: &'a str,
    pub redis_key: String,
    pub l1_ttl: Duration,
    pub l1_missing_ttl: Duration,
}

impl Coalescer {
    pub fn new(l1: L1) -> Coalescer {
        Coalescer {
            l1,
            state: Mutex::default(),
            wake: Notify::new(),
            started: AtomicBool::new(false),
        }
    }

    /// Looks `want.key` up in L2 for `waiter`, joining a lookup of the same key when that is
    /// safe (see the module documentation). Starts the flusher on first use, on the caller's
    /// runtime.
    pub fn lookup(self: &Arc<Self>, l2: &Arc<L2>, want: Want<'_>, waiter: Waiter) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(flush(self.clone(), Arc::downgrade(l2)));
        }
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
                l1_ttl: want.l1_ttl,
                l1_missing_ttl: want.l1_missing_ttl,
                waiters: vec![waiter],
            },
        );
        state.joinable.insert(want.key.into(), id);
        state.queued.push(Queued::One(id, Instant::now()));
        let first = state.queued.len() == 1;
        drop(state);
        if first {
            self.wake.notify_one();
        }
    }

    /// Looks several keys up for one caller: they go out in the next batch, joining no other
    /// reader's lookup (so no answer can be older than the call), and `then` gets every answer
    /// at once.
    pub fn lookup_many(self: &Arc<Self>, l2: &Arc<L2>, redis_keys: Vec<String>, then: ThenMany) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(flush(self.clone(), Arc::downgrade(l2)));
        }
        l2.counters().lookups.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut state = self.state.lock();
            state
                .queued
                .push(Queued::Many(redis_keys, then, Instant::now()));
            state.queued.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// The next batch, waiting for one; `None` once the L2 tier is gone. A batch stops once it
    /// has [`MAX_KEYS`] keys, but never splits one caller's keys. Lookups queued for longer
    /// than `max_wait` (Redis slow or frozen, the batches ahead of them stuck) are not sent:
    /// they come back in [`Batch::late`], to be answered as misses.
    async fn next_batch(&self, l2: &Weak<L2>, max_wait: Duration) -> Option<Batch> {
        loop {
            if l2.strong_count() == 0 {
                return None;
            }
            {
                let mut state = self.state.lock();
                if !state.queued.is_empty() {
                    let oldest_sent = Instant::now().checked_sub(max_wait);
                    let mut batch = Batch::default();
                    let mut taken = 0;
                    for queued in &mut state.queued {
                        taken += 1;
                        let (part, keys, at) = match std::mem::replace(
                            queued,
                            Queued::Many(Vec::new(), Box::new(drop), Instant::now()),
                        ) {
                            // The key is taken out of its lookup below.
                            Queued::One(id, at) => (Part::One(id), vec![String::new()], at),
                            Queued::Many(keys, then, at) => {
                                (Part::Many(keys.len(), then), keys, at)
                            }
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
                    return Some(batch);
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a lookup queued between the
            // check above and this wait is not missed. The timeout notices a dropped L2.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
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
                let ttl = match value {
                    Cached::Doc { .. } => lookup.l1_ttl,
                    Cached::Missing { .. } => lookup.l1_missing_ttl,
                };
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

/// The flusher: takes batches while fewer than [`MAX_IN_FLIGHT`] are outstanding.
async fn flush(queue: Arc<Coalescer>, l2: Weak<L2>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let max_wait = l2.upgrade().map_or(Duration::ZERO, |l2| l2.timeout());
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = queue.next_batch(&l2, max_wait).await else {
            return;
        };
        let Some(l2) = l2.upgrade() else { return };
        if !batch.late.is_empty() {
            queue.answer(batch.late, vec![None; batch.late_keys]);
        }
        if batch.parts.is_empty() {
            continue;
        }
        // The breaker is asked per batch: while it is open, what was queued is a miss (one
        // batch goes through as the probe), instead of every queued lookup timing out in turn.
        if !l2.breaker().allow() {
            let misses = vec![None; batch.keys.len()];
            queue.answer(batch.parts, misses);
            continue;
        }
        let queue = queue.clone();
        tokio::spawn(async move {
            let found = {
                let keys: Vec<&str> = batch.keys.iter().map(String::as_str).collect();
                l2.mget(&keys).await
            };
            drop(slot);
            let hits = found.iter().flatten().count() as u64;
            l2.counters().hits.fetch_add(hits, Ordering::Relaxed);
            queue.answer(batch.parts, found);
        });
    }
}
