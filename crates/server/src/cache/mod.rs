//! The cache tiers in front of the store, behind one read-through API: the service asks "read
//! this key, loading it with this closure" and "these keys were committed at these versions";
//! keys, tickets, TTLs, L1, the optional Redis tier (L2) and the invalidation bus are this
//! module's business.
//!
//! Read: L1 → (single flight) L2 → the store. A store read fills L2 and L1; an L2 hit fills L1.
//! Write: [`Cache::begin_write`] before the transaction (L1 tickets, L2 markers), then
//! [`Cache::committed`] (L1 → L2 → bus) or [`Cache::not_committed`] / [`Cache::outcome_unknown`].
//! The invariant of every tier: **no older version ever replaces a newer one**.

pub mod breaker;
pub mod bus;
mod coalesce;
pub mod key;
pub mod l1;
pub mod l2;
pub mod lookups;
pub mod sketch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use bus::Bus;
pub use key::{KeyBuf, cache_key};
pub use l1::{Cached, L1, Ticket};
pub use l2::L2;
pub use sketch::Sketch;

use self::coalesce::{Coalescer, Want};
use crate::config::CollectionConfig;
use crate::error::ServiceError;
use crate::model::Tier;

/// The lifetimes of one collection's entries in each tier (±10 % jitter is added).
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub l1: Duration,
    pub l1_missing: Duration,
    pub l2: Duration,
    pub l2_missing: Duration,
}

impl Ttls {
    pub fn of(config: &CollectionConfig) -> Ttls {
        Ttls {
            l1: config.l1_ttl,
            l1_missing: config.negative_ttl,
            l2: config.l2_ttl,
            l2_missing: config.l2_negative_ttl,
        }
    }

    fn l1_for(&self, value: &Cached) -> Duration {
        match value {
            Cached::Doc { .. } => self.l1,
            Cached::Missing { .. } => self.l1_missing,
        }
    }

    fn l2_for(&self, value: &Cached) -> Duration {
        l1::jitter(match value {
            Cached::Doc { .. } => self.l2,
            Cached::Missing { .. } => self.l2_missing,
        })
    }
}

/// Test-only fault points (hidden from the docs): they let integration tests produce the races
/// and crashes the tier protocol must survive, deterministically.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPoints {
    /// A write task stops right after its COMMIT succeeded, as if its process died there: no
    /// cache step, no publish; the caller gets `internal`.
    pub abort_after_commit: AtomicBool,
    /// Milliseconds a store read waits before it fills L2 (a slow reader).
    pub fill_delay_ms: AtomicU64,
}

/// The tiers. Cloning is cheap.
#[derive(Clone)]
pub struct Cache {
    l1: L1,
    l2: Option<Arc<L2>>,
    /// Single-key L2 lookups, shared and batched (present with L2).
    reads: Option<Arc<Coalescer>>,
    bus: Option<Arc<Bus>>,
    /// Counts L1 misses to find hot keys, and where to report them (adaptive warm-up).
    hot: Option<(Arc<Sketch>, tokio::sync::mpsc::Sender<String>)>,
    faults: Arc<FaultPoints>,
}

impl Cache {
    /// L1 alone (a single instance), or with L2 and the bus that keeps instances coherent.
    pub fn new(l1: L1, shared: Option<(Arc<L2>, Arc<Bus>)>) -> Cache {
        let (l2, bus) = shared.unzip();
        let reads = l2.as_ref().map(|_| Arc::new(Coalescer::new(l1.clone())));
        Cache {
            l1,
            l2,
            reads,
            bus,
            hot: None,
            faults: Arc::default(),
        }
    }

    /// Counts misses in `sketch`; a key that becomes hot is sent to `report` (dropped when
    /// the receiver is behind: preloading is an optimisation).
    pub fn with_hot_keys(
        mut self,
        sketch: Arc<Sketch>,
        report: tokio::sync::mpsc::Sender<String>,
    ) -> Cache {
        self.hot = Some((sketch, report));
        self
    }

    /// The hot keys seen lately (empty when adaptive warm-up is off).
    pub fn hot_keys(&self) -> Vec<String> {
        self.hot
            .as_ref()
            .map(|(sketch, _)| sketch.hot_keys())
            .unwrap_or_default()
    }

    fn missed(&self, key: &str) {
        if let Some((sketch, report)) = &self.hot
            && sketch.missed(key)
        {
            let _ = report.try_send(key.to_string());
        }
    }

    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.bus.as_ref()
    }

    /// May reads be answered from L1 and L2 now? Always without a bus; with one, only while it
    /// is whole (see `bus.rs`).
    pub fn trusted(&self) -> bool {
        self.bus.as_ref().is_none_or(|bus| bus.trusted())
    }

    /// Waits (at most `limit`) for the bus to be whole, so an instance starts serving from its
    /// caches at once. True when it is.
    pub async fn wait_trusted(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.trusted() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    pub fn l1(&self) -> &L1 {
        &self.l1
    }

    pub fn l2(&self) -> Option<&Arc<L2>> {
        self.l2.as_ref()
    }

    #[doc(hidden)]
    pub fn faults(&self) -> &FaultPoints {
        &self.faults
    }

    /// L1's answer for `key`, synchronously (the inline hit path): `None` on a miss, or while
    /// the caches are not trusted.
    pub fn cached(&self, key: &str) -> Option<Cached> {
        let lookups = self.l1.lookups();
        let found = if self.trusted() {
            self.l1.get(key)
        } else {
            None
        };
        match &found {
            Some(Cached::Doc { .. }) => lookups.hit.add(),
            Some(Cached::Missing { .. }) => lookups.negative.add(),
            None => lookups.miss.add(),
        }
        found
    }

    /// Reads `key`, which L1 just missed ([`Cache::cached`]), through L2 and the store; `load`
    /// reads the store. Concurrent misses of one key share one L2 lookup and one store read.
    pub async fn read_missed<F, Fut>(
        &self,
        key: &str,
        ttls: Ttls,
        load: F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Cached, ServiceError>>,
    {
        self.missed(key);
        self.single_flight(key, ttls, || self.load(key, ttls, &load))
            .await
    }

    /// Runs `load` for `key` in the key's single flight, unless L1 has it by then (asked again
    /// under the flight's lock), and fills L1 with its answer.
    async fn single_flight<G, GFut>(
        &self,
        key: &str,
        ttls: Ttls,
        load: G,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        G: Fn() -> GFut,
        GFut: Future<Output = Result<(Cached, Tier), ServiceError>>,
    {
        self.l1
            .load_once(key, self.trusted(), |value| ttls.l1_for(value), load)
            .await
    }

    /// The miss path of one key: L2, else the store (whose answer then fills L2).
    async fn load<F, Fut>(
        &self,
        key: &str,
        ttls: Ttls,
        load: &F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Cached, ServiceError>>,
    {
        let looked_up = Instant::now();
        if let Some(shared) = self.l2_now() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            // Lookups are answered within about twice the L2 budget (see `coalesce.rs`); the
            // bound here only guards against a sender that is gone.
            let limit = 3 * shared.0.timeout() + Duration::from_millis(100);
            self.lookup_l2(shared, key, ttls, reply);
            if let Ok(Ok(Some(hit))) = tokio::time::timeout(limit, answer).await {
                return Ok((hit, Tier::L2));
            }
        }
        self.load_store(key, ttls, looked_up, load).await
    }

    /// The store's answer for `key`, which then fills L2 (in the background) for a lookup that
    /// missed at `looked_up`.
    async fn load_store<F, Fut>(
        &self,
        key: &str,
        ttls: Ttls,
        looked_up: Instant,
        load: &F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Cached, ServiceError>>,
    {
        let loaded = load().await?;
        self.fill_l2(key.to_string(), loaded.clone(), ttls, looked_up);
        Ok((loaded, Tier::Db))
    }

    /// L2 and its lookups, when L2 may be asked now: configured, and the caches trusted. (The
    /// breaker is asked by the sender, once per batch: asking it here would take the probe
    /// it lets through while open, and no batch would ever carry it.)
    fn l2_now(&self) -> Option<(&Arc<L2>, &Arc<Coalescer>)> {
        let (l2, reads) = (self.l2.as_ref()?, self.reads.as_ref()?);
        self.trusted().then_some((l2, reads))
    }

    /// Starts an L2 lookup of `key` for `waiter`, shared with other readers of the key and sent
    /// in a batch (see `coalesce.rs`).
    fn lookup_l2(
        &self,
        (l2, reads): (&Arc<L2>, &Arc<Coalescer>),
        key: &str,
        ttls: Ttls,
        waiter: tokio::sync::oneshot::Sender<Option<Cached>>,
    ) {
        let want = Want {
            key,
            redis_key: l2.value_key(key),
            ttls,
        };
        reads.lookup(l2, want, waiter);
    }

    /// After L1 missed each of `keys`, for callers that answer without a task: asks L2 for all
    /// of them in its next batch and calls `then` with the answers, in order, where they arrive
    /// (`None`: not in L2). Gives `then` back, uncalled, when L2 cannot be asked now; either way
    /// the store is the caller's next step for what L2 did not answer
    /// ([`Cache::read_past_l2`]).
    pub fn read_l2_many_then<F>(&self, keys: &[(&str, Ttls)], then: F) -> Result<(), F>
    where
        F: FnOnce(Vec<Option<Cached>>) + Send + 'static,
    {
        for (key, _) in keys {
            self.missed(key);
        }
        let Some((l2, reads)) = self.l2_now() else {
            return Err(then);
        };
        // What L2 answers fills L1 under a ticket taken now, as a read through the store does;
        // not where L1 keeps no documents (a "missing" answer then goes unremembered too).
        let fills: Vec<Option<(String, Ticket, Ttls)>> = keys
            .iter()
            .map(|(key, ttls)| {
                (!ttls.l1.is_zero()).then(|| (key.to_string(), self.l1.ticket(key), *ttls))
            })
            .collect();
        let l1 = self.l1.clone();
        let then = move |found: Vec<Option<Cached>>| {
            for (fill, found) in fills.into_iter().zip(&found) {
                if let (Some((key, ticket, ttls)), Some(value)) = (fill, found) {
                    l1.fill(&key, ticket, value.clone(), ttls.l1_for(value));
                }
            }
            then(found);
        };
        let redis_keys = keys.iter().map(|(key, _)| l2.value_key(key)).collect();
        reads.lookup_many(l2, redis_keys, Box::new(then));
        Ok(())
    }

    /// The read of `key` after L2 missed (see [`Cache::read_l2_many_then`]): L1 once more, then the
    /// store, with the single flight of [`Cache::read_missed`].
    pub async fn read_past_l2<F, Fut>(
        &self,
        key: &str,
        ttls: Ttls,
        load: F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Cached, ServiceError>>,
    {
        let looked_up = Instant::now();
        self.single_flight(key, ttls, || self.load_store(key, ttls, looked_up, &load))
            .await
    }

    /// Fills L2 in the background: the reader does not wait for it.
    fn fill_l2(&self, key: String, value: Cached, ttls: Ttls, looked_up: Instant) {
        let Some(l2) = self.l2.clone() else { return };
        let delay = self.faults.fill_delay_ms.load(Ordering::Relaxed);
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            l2.fill(&key, &value, ttls.l2_for(&value), looked_up).await;
        });
    }

    /// Starts a read of several keys of one collection: L1 answers what it holds.
    pub fn batch(&self, keys: Vec<String>, ttls: Ttls) -> BatchRead<'_> {
        let found = keys
            .iter()
            .map(|key| {
                let hit = self.cached(key);
                if hit.is_none() {
                    self.missed(key);
                }
                hit
            })
            .collect();
        let tier = Tier::L1;
        BatchRead {
            cache: self,
            keys,
            found,
            ttls,
            tickets: Vec::new(),
            looked_up: Instant::now(),
            tier,
        }
    }

    /// Before a write transaction on `keys` starts: tickets against stale fills in L1, taken
    /// now. The markers in L2 that stop concurrent fills (see `l2.rs`) are taken by a task in
    /// parallel with the transaction; the returned gate opens once they are, and the COMMIT
    /// waits for it. Hand the task's answer to [`WriteTickets::set_marked`] afterwards.
    pub fn begin_write(
        &self,
        keys: Vec<String>,
    ) -> (
        WriteTickets,
        tokio::sync::watch::Receiver<bool>,
        Option<tokio::task::JoinHandle<bool>>,
    ) {
        let l1 = keys.iter().map(|key| self.l1.ticket(key)).collect();
        let write = fastrand::u64(..);
        let (open, gate) = tokio::sync::watch::channel(self.l2.is_none());
        let marking = self.l2.clone().map(|l2| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let marked = l2.begin_write(&keys, write).await;
                let _ = open.send(true);
                marked
            })
        });
        let tickets = WriteTickets {
            keys,
            l1,
            write,
            l2_marked: false,
        };
        (tickets, gate, marking)
    }

    /// After the transaction committed: `changed[i]` is the new state of `write.keys[i]`
    /// (`None`: unchanged). L1 first, then L2; keys whose L2 step failed wait for repair.
    pub async fn committed(&self, write: WriteTickets, changed: Vec<Option<(Cached, Ttls)>>) {
        for ((key, ticket), change) in write.keys.iter().zip(&write.l1).zip(&changed) {
            if let Some((value, ttls)) = change {
                self.l1
                    .complete_write(key, *ticket, value.clone(), ttls.l1_for(value));
            }
        }
        let Some(l2) = &self.l2 else { return };
        let ends = write
            .keys
            .iter()
            .zip(&changed)
            .map(|(key, change)| async move {
                let committed = change
                    .as_ref()
                    .map(|(value, ttls)| (value, ttls.l2_for(value)));
                let ok = l2.end_write(key, write.write, committed).await;
                (!ok && change.is_some()).then(|| key.clone())
            });
        let announce = async {
            if let Some(bus) = &self.bus {
                let announced = write.keys.iter().zip(&changed).filter_map(|(key, change)| {
                    change
                        .as_ref()
                        .map(|(value, _)| (key.clone(), value.version()))
                });
                bus.announce(announced).await;
            }
        };
        // With the markers taken, L2 and the announcement go at once (one round trip instead of
        // two per write): *begin* deleted the value and the markers block fills, so an instance
        // that hears of the change before L2 has it misses L2 and reads the store, which has
        // the commit; an *end* that fails needs no repair either (the value stays deleted, fills
        // stay blocked until the marker expires, after which the store has the commit). Without
        // markers L2 may still hold the older version: it must be replaced first, or an
        // instance hearing of the change could read that version back into its L1; a failed
        // replacement is recorded for repair before the announcement, which then says "not
        // caught up".
        if write.l2_marked {
            let (_, ()) = tokio::join!(futures_util::future::join_all(ends), announce);
        } else {
            let failed: Vec<String> = futures_util::future::join_all(ends)
                .await
                .into_iter()
                .flatten()
                .collect();
            if !failed.is_empty() {
                l2.needs_repair(failed);
            }
            announce.await;
        }
    }

    /// After the transaction did not commit. `forget_l1`: the store disagreed with what the
    /// caller expected (maybe from L1), so L1's copies go too.
    pub async fn not_committed(&self, write: WriteTickets, forget_l1: bool) {
        if forget_l1 {
            self.forget(&write.keys);
        }
        if let (Some(l2), true) = (&self.l2, write.l2_marked) {
            let ends = write
                .keys
                .iter()
                .map(|key| l2.end_write(key, write.write, None));
            futures_util::future::join_all(ends).await;
        }
    }

    /// The transaction's outcome is not known yet (its COMMIT may still land, up to `until`
    /// from now): L1 forgets the keys and the L2 markers are kept that long, so no tier serves
    /// the old version with authority meanwhile. Settle later with `committed` or
    /// `not_committed` on `write`.
    pub async fn outcome_unknown(&self, write: &WriteTickets, until: Duration) {
        if let Some(l2) = &self.l2 {
            l2.extend_marks(&write.keys, until + l2.mark_ttl()).await;
        }
        self.forget_everywhere(&write.keys).await;
    }

    /// Drops `keys` from this instance's L1 and, through the bus, from every other instance's
    /// (whatever version they hold): a write whose outcome is unknown may have committed.
    pub async fn forget_everywhere(&self, keys: &[String]) {
        self.forget(keys);
        if let Some(bus) = &self.bus {
            bus.announce(keys.iter().map(|key| (key.clone(), u64::MAX)))
                .await;
        }
    }

    /// Drops `keys` from L1.
    pub fn forget(&self, keys: &[String]) {
        keys.iter().for_each(|key| self.l1.invalidate(key));
    }
}

/// What a write holds between [`Cache::begin_write`] and its end.
#[derive(Debug)]
pub struct WriteTickets {
    keys: Vec<String>,
    l1: Vec<Ticket>,
    /// This write's id in the L2 markers.
    write: u64,
    l2_marked: bool,
}

impl WriteTickets {
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Records whether every L2 marker was taken (the answer of `begin_write`'s task).
    pub fn set_marked(&mut self, marked: bool) {
        self.l2_marked = marked;
    }
}

/// A read of several keys in progress (see [`Cache::batch`]). The caller looks at what was
/// found, asks L2 for the rest, then gives what the store answered for what is still missing.
pub struct BatchRead<'a> {
    cache: &'a Cache,
    keys: Vec<String>,
    found: Vec<Option<Cached>>,
    ttls: Ttls,
    /// For each key missed by L1, the L1 ticket taken before L2 was asked.
    tickets: Vec<Option<Ticket>>,
    looked_up: Instant,
    tier: Tier,
}

impl BatchRead<'_> {
    /// What the tiers hold so far, per key.
    pub fn found(&self) -> &[Option<Cached>] {
        &self.found
    }

    /// Indexes of the keys nothing has answered yet.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.keys.len())
            .filter(|index| self.found[*index].is_none())
            .collect()
    }

    /// Asks L2 for every key L1 missed (one multi-key call); its hits fill L1.
    pub async fn read_l2(&mut self) {
        let missing = self.missing();
        if missing.is_empty() {
            return;
        }
        self.looked_up = Instant::now();
        self.tickets = vec![None; self.keys.len()];
        for index in &missing {
            self.tickets[*index] = Some(self.cache.l1.ticket(&self.keys[*index]));
        }
        let Some(l2) = self.cache.l2.as_ref().filter(|_| self.cache.trusted()) else {
            return;
        };
        let keys: Vec<&str> = missing
            .iter()
            .map(|index| self.keys[*index].as_str())
            .collect();
        let hits = l2.get_many(&keys).await;
        for (index, hit) in missing.into_iter().zip(hits) {
            if let (Some(value), Some(ticket)) = (hit, self.tickets[index]) {
                let ttl = self.ttls.l1_for(&value);
                self.cache
                    .l1
                    .fill(&self.keys[index], ticket, value.clone(), ttl);
                self.found[index] = Some(value);
                self.tier = Tier::L2;
            }
        }
    }

    /// The store's answer for key `index` (one [`BatchRead::missing`] reported): fills L2 and L1.
    pub fn loaded(&mut self, index: usize, value: Cached) {
        if let Some(Some(ticket)) = self.tickets.get(index) {
            let ttl = self.ttls.l1_for(&value);
            self.cache
                .l1
                .fill(&self.keys[index], *ticket, value.clone(), ttl);
        }
        self.cache.fill_l2(
            self.keys[index].clone(),
            value.clone(),
            self.ttls,
            self.looked_up,
        );
        self.found[index] = Some(value);
        self.tier = Tier::Db;
    }

    /// Every key's answer (`None` only where neither the tiers nor `loaded` gave one) and
    /// the farthest tier that answered.
    pub fn finish(self) -> (Vec<Option<Cached>>, Tier) {
        (self.found, self.tier)
    }
}
