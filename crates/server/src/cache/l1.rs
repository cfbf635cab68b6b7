//! L1: the in-process cache of encoded documents, bounded by bytes.
//!
//! What it guarantees, and how:
//! - **Hits are cheap**: an entry holds the encoded response body ([`Bytes`]); a hit is one
//!   hash lookup in [`quick_cache`] and a reference-count increment, nothing parsed.
//! - **Breakdown (hot key expiring under load)**: misses are single-flighted per key, so however
//!   many requests miss at once, one store read runs and the others wait for its result.
//! - **Penetration (floods of missing ids)**: a missing id is cached as [`Cached::Missing`] for
//!   the collection's short negative TTL.
//! - **Avalanche (synchronised expiry)**: every TTL gets ±10 % random jitter.
//! - **No stale overwrite**: every cache mutation for a key happens under that key's *stripe*
//!   lock, and each stripe carries an epoch bumped by every write. A fill (a store read) records
//!   the epoch before reading and is dropped if any write touched the stripe meanwhile. A write
//!   replaces an older entry; if the entry is absent it inserts only when no other write touched
//!   the stripe during its transaction (see [`L1::complete_write`]). So an older version can
//!   never replace a newer one, even when the newer entry was evicted in between.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::error::ServiceError;
use crate::model::Tier;

/// Number of stripes (epoch + in-flight map) that keys hash into. A power of two.
const STRIPES: usize = 1024;

/// A cached answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// A live document: its version and its encoded public form.
    Doc { version: u64, body: Bytes },
    /// No live document; `version` is the tombstone version (0 if never written).
    Missing { version: u64 },
}

impl Cached {
    pub fn version(&self) -> u64 {
        match self {
            Cached::Doc { version, .. } | Cached::Missing { version } => *version,
        }
    }
}

#[derive(Clone)]
struct Entry {
    value: Cached,
    expires_at: Instant,
}

#[derive(Clone)]
struct EntryWeighter;

impl quick_cache::Weighter<Box<str>, Entry> for EntryWeighter {
    fn weight(&self, key: &Box<str>, entry: &Entry) -> u64 {
        // Fixed part approximates the entry, key box and Bytes header overheads.
        let body = match &entry.value {
            Cached::Doc { body, .. } => body.len(),
            Cached::Missing { .. } => 0,
        };
        (96 + key.len() + body) as u64
    }
}

type Flight = Arc<OnceCell<Result<(Cached, Tier), ServiceError>>>;

#[derive(Default)]
struct Stripe {
    /// Bumped by every write that touches a key of this stripe.
    epoch: u64,
    /// Store reads in progress, one per key.
    inflight: HashMap<Box<str>, Flight, foldhash::fast::RandomState>,
}

/// The stripe epoch observed before a store read or a write transaction started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    stripe: usize,
    epoch: u64,
}

/// The L1 cache. Cloning the handle is cheap (shared state behind an `Arc`).
#[derive(Clone)]
pub struct L1 {
    inner: Arc<Inner>,
}

struct Inner {
    entries: quick_cache::sync::Cache<Box<str>, Entry, EntryWeighter>,
    lookups: super::lookups::Lookups,
    stripes: Box<[Mutex<Stripe>]>,
    hasher: foldhash::fast::RandomState,
}

impl L1 {
    /// A cache holding at most about `max_bytes` of keys and bodies.
    pub fn new(max_bytes: u64) -> Self {
        // quick_cache sizes its tables from an item estimate; assume ~1 KiB per entry.
        let estimated_items = (max_bytes / 1024).clamp(1024, 16 * 1024 * 1024) as usize;
        let entries =
            quick_cache::sync::Cache::with_weighter(estimated_items, max_bytes, EntryWeighter);
        let stripes = (0..STRIPES)
            .map(|_| Mutex::new(Stripe::default()))
            .collect();
        L1 {
            inner: Arc::new(Inner {
                entries,
                lookups: Default::default(),
                stripes,
                hasher: Default::default(),
            }),
        }
    }

    /// Lookups by result (counted by the cache's front door and by [`L1::load_once`]).
    pub fn lookups(&self) -> &super::lookups::Lookups {
        &self.inner.lookups
    }

    /// The unexpired entry for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let entry = self.inner.entries.get(key)?;
        (entry.expires_at > Instant::now()).then_some(entry.value)
    }

    /// Runs `load` once for all concurrent callers of `key` and caches its result (unless a
    /// write raced it). `ttl_of` chooses the lifetime of a result. The caller has looked for a
    /// hit first; `load` also says which tier answered. With `serve_hits`, a hit that a load
    /// finishing meanwhile just put in is answered too (so a key is not loaded twice).
    pub async fn load_once<F, Fut>(
        &self,
        key: &str,
        serve_hits: bool,
        ttl_of: impl Fn(&Cached) -> Duration,
        load: F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(Cached, Tier), ServiceError>>,
    {
        let stripe = self.stripe_of(key);
        let flight = {
            let mut guard = self.inner.stripes[stripe].lock();
            // A flight fills and leaves under this lock: a caller that missed just before it
            // finished finds its result here instead of starting a second load.
            if serve_hits && let Some(hit) = self.get(key) {
                self.inner.lookups.coalesced.add();
                return Ok((hit, Tier::L1));
            }
            guard.inflight.entry(key.into()).or_default().clone()
        };
        // The closure runs only in the caller that drives the load; if that caller is
        // cancelled, a waiting caller runs its own closure instead (OnceCell semantics).
        let drove = std::sync::atomic::AtomicBool::new(false);
        let answer = flight
            .get_or_init(|| async {
                drove.store(true, std::sync::atomic::Ordering::Relaxed);
                let _done = FlightGuard {
                    l1: self,
                    stripe,
                    key,
                    flight: &flight,
                };
                let ticket = self.ticket(key);
                let loaded = load().await;
                if let Ok((value, _)) = &loaded {
                    self.fill(key, ticket, value.clone(), ttl_of(value));
                }
                loaded
            })
            .await
            .clone();
        if !drove.load(std::sync::atomic::Ordering::Relaxed) {
            self.inner.lookups.coalesced.add();
        }
        answer
    }

    /// Call before a write transaction or a store read of `key` starts.
    pub fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe_of(key);
        let epoch = self.inner.stripes[stripe].lock().epoch;
        Ticket { stripe, epoch }
    }

    /// Call after a write to `key` committed, with the new state. Reads already in flight for
    /// the key are detached so that later readers do not receive their (older) result.
    ///
    /// The entry becomes the new state when it holds an older version, or when it is absent and
    /// no other write touched the stripe since `ticket` was taken. A present entry that is not
    /// older is kept. An absent entry stays absent when the stripe was contended: a newer
    /// version may have been written and evicted meanwhile, which nothing else could tell.
    /// Invariant: once a write has completed here, the entry is absent or at least its version.
    pub fn complete_write(&self, key: &str, ticket: Ticket, value: Cached, ttl: Duration) {
        let mut stripe = self.inner.stripes[ticket.stripe].lock();
        stripe.inflight.remove(key);
        let uncontended = stripe.epoch == ticket.epoch;
        stripe.epoch = stripe.epoch.wrapping_add(1);
        let insert = match self.inner.entries.peek(key) {
            Some(old) => old.value.version() < value.version(),
            None => uncontended,
        };
        if insert {
            self.insert(key, value, ttl);
        }
    }

    /// Another instance committed `version` of `key`: an older entry is dropped, and reads in
    /// flight (which may have fetched the older version) are detached and will not fill.
    pub fn remote_write(&self, key: &str, version: u64) {
        let mut stripe = self.inner.stripes[self.stripe_of(key)].lock();
        stripe.inflight.remove(key);
        stripe.epoch = stripe.epoch.wrapping_add(1);
        if self
            .inner
            .entries
            .peek(key)
            .is_some_and(|old| old.value.version() < version)
        {
            self.inner.entries.remove(key);
        }
    }

    /// Forgets everything (the invalidation bus was lost: any entry may be stale). Every
    /// stripe's epoch moves, so reads and writes in flight do not fill afterwards either.
    pub fn clear(&self) {
        for stripe in self.inner.stripes.iter() {
            let mut stripe = stripe.lock();
            stripe.inflight.clear();
            stripe.epoch = stripe.epoch.wrapping_add(1);
        }
        self.inner.entries.clear();
    }

    /// Forgets `key` (after a write whose outcome is unknown, for instance).
    pub fn invalidate(&self, key: &str) {
        let mut stripe = self.inner.stripes[self.stripe_of(key)].lock();
        stripe.inflight.remove(key);
        stripe.epoch = stripe.epoch.wrapping_add(1);
        self.inner.entries.remove(key);
    }

    /// Bytes currently accounted in the cache.
    pub fn weight(&self) -> u64 {
        self.inner.entries.weight()
    }

    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Caches the result of a store read that started at `ticket`, unless a write touched the
    /// stripe since (the read may be older than what that write committed).
    pub fn fill(&self, key: &str, ticket: Ticket, value: Cached, ttl: Duration) {
        let guard = self.inner.stripes[ticket.stripe].lock();
        if guard.epoch != ticket.epoch {
            return; // a write raced this read: its result may be older than the cache's truth
        }
        let newer = self
            .inner
            .entries
            .peek(key)
            .is_none_or(|old| old.value.version() <= value.version());
        if newer {
            self.insert(key, value, ttl);
        }
        drop(guard);
    }

    /// Stores `value` (newer than what the entry holds) for `ttl`. A zero lifetime keeps
    /// nothing, and drops the older entry: with `l1_ttl = 0` a "missing" is still kept for the
    /// negative TTL, and must not outlive the write of its id.
    fn insert(&self, key: &str, value: Cached, ttl: Duration) {
        if ttl.is_zero() {
            self.inner.entries.remove(key);
            return;
        }
        let entry = Entry {
            value,
            expires_at: Instant::now() + jitter(ttl),
        };
        self.inner.entries.insert(key.into(), entry);
    }

    fn stripe_of(&self, key: &str) -> usize {
        (self.inner.hasher.hash_one(key) as usize) & (STRIPES - 1)
    }
}

/// Removes a finished (or abandoned) flight from its stripe, unless a write already replaced it.
struct FlightGuard<'a> {
    l1: &'a L1,
    stripe: usize,
    key: &'a str,
    flight: &'a Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut stripe = self.l1.inner.stripes[self.stripe].lock();
        if stripe
            .inflight
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.flight))
        {
            stripe.inflight.remove(self.key);
        }
    }
}

/// `ttl` scaled by a random factor in [0.9, 1.1), so entries written together expire apart.
pub fn jitter(ttl: Duration) -> Duration {
    ttl.mul_f64(0.9 + fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests;
