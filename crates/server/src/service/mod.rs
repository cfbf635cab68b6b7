//! The one API both ingresses call: get, batch get, list and write transactions (put, patch,
//! delete, incr, check), over the cache tiers (`crate::cache`) and the games' stores.
//!
//! Read path (here): the cache reads through its tiers (L1, then L2 when configured) and, on a
//! miss, runs this module's store read once for all concurrent callers. Batch gets and list
//! pages are in `many.rs`, bounded by [`budget`]. Write path (`write.rs`): lock the keys and
//! commit in the store → the cache follows the committed versions → acknowledge, run to its end
//! in a task of its own; a write whose outcome is unknown drops the keys from L1 so no stale
//! entry survives it.

pub mod budget;
mod many;
pub mod ops;
mod presence;
mod read;
pub mod request;
mod warm;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{Access, Caller};
use crate::cache::{Bus, Cache, Cached, L1, L2, Sketch, Ttls};
use crate::config::{CollectionConfig, Config};
use crate::error::{ErrorCode, ServiceError};
use crate::model::{DocKey, StoredDoc, Tier, encode_document};
use crate::ops::metrics::{Metrics, StoreOp};
use crate::store::{Store, StoreError};
pub use budget::{ResponseBudget, ResponsePermit};
use ops::{Precondition, WriteOp};
pub use read::{Get, L1Answer, Missed, Reply};
pub use request::{KeyedOp, TxnOpRequest, TxnRequest};
pub use warm::Warming;
pub use write::{SETTLE_LIMIT, Settled};

/// Maps looked up on every request: a fast non-cryptographic hasher (keys are config names).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Most ids in one batch get.
pub const MAX_BATCH_IDS: usize = 1000;
/// Most documents in one list page.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Page size when none is given.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Most operations in one transaction.
pub const MAX_TXN_OPS: usize = 100;

/// A document read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub body: Bytes,
    pub version: u64,
    pub tier: Tier,
}

/// The documents of a batch get (`None` where an id has no document), in request order.
#[derive(Debug)]
pub struct BatchDocs {
    pub docs: Vec<Option<Bytes>>,
    /// L1 when L1 answered every id (ids remembered as missing included), else the store.
    pub tier: Tier,
    /// The answer's share of the response budget: keep it until the answer is written.
    pub permit: ResponsePermit,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub docs: Vec<Bytes>,
    pub next_cursor: Option<String>,
    /// The answer's share of the response budget: keep it until the answer is written.
    pub permit: ResponsePermit,
}

/// What a write transaction returned.
#[derive(Debug)]
pub struct Written {
    /// One per operation, in order.
    pub outcomes: Vec<OpOutcome>,
    /// For transactions of several operations, the answer's share of the response budget.
    pub permit: Option<ResponsePermit>,
}

/// What one write operation returned.
#[derive(Debug, Clone)]
pub struct OpOutcome {
    /// The new document, for put / patch / incr.
    pub doc: Option<Bytes>,
    /// The key's version after the operation.
    pub version: u64,
    pub created: bool,
}

/// `{"results":[{"version":n,"doc":{…} or null},…]}`: the transaction response of every
/// protocol, assembled from the already-encoded documents.
pub fn txn_results_json(outcomes: &[OpOutcome]) -> Bytes {
    let size = outcomes
        .iter()
        .map(|o| 32 + o.doc.as_ref().map_or(4, Bytes::len))
        .sum::<usize>();
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(b"{\"results\":[");
    for (index, outcome) in outcomes.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"version\":{},\"doc\":", outcome.version).as_bytes());
        out.extend_from_slice(outcome.doc.as_deref().unwrap_or(b"null"));
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

struct Game {
    store: Store,
    collections: FastMap<String, Collection>,
}

/// A collection's rules. The lifetimes and `max_document_bytes` change on a configuration
/// reload ([`Service::reload`]), so they are atomics read where they are used (relaxed loads:
/// a request sees either value); the rest is fixed until a restart.
pub(crate) struct Collection {
    pub public_read: bool,
    pub player_write: bool,
    pub float_counters: bool,
    pub warm_recent: usize,
    pub related: Vec<String>,
    /// `l1_ttl`, `negative_ttl`, `l2_ttl`, `l2_negative_ttl`, in nanoseconds.
    ttls: [AtomicU64; 4],
    max_document_bytes: AtomicUsize,
}

impl Collection {
    fn new(config: &CollectionConfig) -> Collection {
        let collection = Collection {
            public_read: config.public_read,
            player_write: config.player_write,
            float_counters: config.float_counters,
            warm_recent: config.warm_recent,
            related: config.related.clone(),
            ttls: Default::default(),
            max_document_bytes: AtomicUsize::new(0),
        };
        collection.reload(config);
        collection
    }

    /// Takes the lifetimes and `max_document_bytes` of `config`: entries filled from now on
    /// get the new lifetimes, documents written from now on are held to the new bound.
    fn reload(&self, config: &CollectionConfig) {
        let ttls = Ttls::of(config);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for (slot, ttl) in
            self.ttls
                .iter()
                .zip([ttls.l1, ttls.l1_missing, ttls.l2, ttls.l2_missing])
        {
            slot.store(nanos(ttl), Ordering::Relaxed);
        }
        self.max_document_bytes
            .store(config.max_document_bytes, Ordering::Relaxed);
    }

    /// The lifetimes of entries filled now.
    pub fn ttls(&self) -> Ttls {
        let ttl = |slot: usize| Duration::from_nanos(self.ttls[slot].load(Ordering::Relaxed));
        Ttls {
            l1: ttl(0),
            l1_missing: ttl(1),
            l2: ttl(2),
            l2_missing: ttl(3),
        }
    }

    /// Largest encoded value accepted now.
    pub fn max_document_bytes(&self) -> usize {
        self.max_document_bytes.load(Ordering::Relaxed)
    }
}

/// The service. Cloning is cheap (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    games: FastMap<String, Game>,
    /// One entry per distinct store, for health checks.
    stores: Vec<(String, Store)>,
    cache: Cache,
    _stop_bus: tokio::sync::watch::Sender<bool>,
    warming: Warming,
    /// Set when the server starts shutting down: readiness turns false at once.
    draining: std::sync::atomic::AtomicBool,
    started: std::time::Instant,
    recent_owners: warm::RecentOwners,
    /// `cache.l2_prefix`: the bus this instance is on (its row in `dmw_instances`).
    bus_prefix: String,
    /// When this instance last recorded itself before a write (ms since the Unix epoch).
    last_touch_ms: AtomicU64,
    /// `store.max_pending_writes`: all permits of `pending_writes`.
    max_pending_writes: usize,
    store_timeout: Duration,
    /// Where the service's own work is counted (store reads, commits).
    metrics: Arc<Metrics>,
    budget: ResponseBudget,
    /// Writes in progress, whether their callers wait or went away (`store.max_pending_writes`).
    pending_writes: Arc<tokio::sync::Semaphore>,
    /// The caller of the service's own work (warm-up): every right.
    itself: Caller,
}

impl Service {
    /// Connects every configured store (one pool per distinct URL) and migrates it.
    pub async fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Service, StoreError> {
        let mut by_url: HashMap<&str, Store> = HashMap::new();
        let mut games = FastMap::default();
        for (name, game) in &config.games {
            let store = match by_url.get(game.store.as_str()) {
                Some(store) => store.clone(),
                None => {
                    let store = Store::connect(&game.store, &config.store).await?;
                    by_url.insert(&game.store, store.clone());
                    store
                }
            };
            let collections = game
                .collections
                .iter()
                .map(|(name, config)| (name.clone(), Collection::new(config)))
                .collect();
            games.insert(name.clone(), Game { store, collections });
        }
        let stores: Vec<(String, Store)> = by_url
            .into_iter()
            .map(|(url, store)| (redact_url(url), store))
            .collect();
        for (name, store) in &stores {
            metrics.pools.watch(name.clone(), store.pool_watch());
        }
        let l1 = L1::new(config.cache.l1_max_bytes);
        // The bus's tasks end when the service (this sender) is dropped.
        let (stop_bus, stopped) = tokio::sync::watch::channel(false);
        let shared = if config.cache.has_l2() {
            let l2 = L2::connect(&config.cache, config.store.timeout)
                .map_err(|e| StoreError::Url("cache.l2_url".to_string(), e))?;
            let bus = Bus::start(&config.cache, l1.clone(), l2.clone(), stopped)
                .map_err(|e| StoreError::Url("cache.l2_url".to_string(), e))?;
            Some((l2, bus))
        } else {
            None
        };
        let mut cache = Cache::new(l1, shared);
        let mut hot_keys = None;
        if config.warmup.hot_after_misses > 0 {
            let (report, receive) = tokio::sync::mpsc::channel(warm::HOT_QUEUE);
            let sketch = Arc::new(Sketch::new(config.warmup.hot_after_misses));
            cache = cache.with_hot_keys(sketch, report);
            hot_keys = Some(receive);
        }
        let service = Service {
            inner: Arc::new(Inner {
                itself: Caller::trusted(),
                games,
                stores,
                cache,
                _stop_bus: stop_bus,
                warming: Warming::default(),
                draining: std::sync::atomic::AtomicBool::new(false),
                started: std::time::Instant::now(),
                recent_owners: Default::default(),
                bus_prefix: config.cache.l2_prefix.clone(),
                last_touch_ms: AtomicU64::new(0),
                max_pending_writes: config.store.max_pending_writes,
                store_timeout: config.store.timeout,
                metrics,
                budget: ResponseBudget::new(&config.responses, config.store.timeout),
                pending_writes: Arc::new(tokio::sync::Semaphore::new(
                    config.store.max_pending_writes,
                )),
            }),
        };
        service
            .inner
            .metrics
            .caches
            .watch(service.inner.cache.clone());
        if let Some(hot_keys) = hot_keys {
            warm::start_preloader(Arc::downgrade(&service.inner), hot_keys);
        }
        if service.inner.cache.bus().is_some() {
            presence::start(
                Arc::downgrade(&service.inner),
                config.cache.bus_forget_after / 4,
            );
        }
        Ok(service)
    }

    /// The process's metrics (front ends get their handles from here).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The cache tiers (their counters are visible to tests and metrics).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The response budget (its reservations are visible to tests and metrics).
    pub fn response_budget(&self) -> &ResponseBudget {
        &self.inner.budget
    }

    /// Takes what can change while running from `config` (a configuration reload): the
    /// lifetimes and `max_document_bytes` of every collection it shares with the running set,
    /// and `[responses]`. Games and collections added or removed, and stores, take a restart:
    /// they are not looked at here.
    pub fn reload(&self, config: &Config) {
        for (game_name, game) in &self.inner.games {
            let Some(new) = config.games.get(game_name) else {
                continue;
            };
            for (name, collection) in &game.collections {
                if let Some(new) = new.collections.get(name) {
                    collection.reload(new);
                }
            }
        }
        self.inner.budget.resize(&config.responses);
    }

    /// The lifetimes entries of `game`'s `collection` get when they are filled now.
    pub fn ttls(&self, game: &str, collection: &str) -> Option<Ttls> {
        let game = self.inner.games.get(game)?;
        game.collections.get(collection).map(Collection::ttls)
    }

    /// The largest value `game`'s `collection` accepts now.
    pub fn max_document_bytes(&self, game: &str, collection: &str) -> Option<usize> {
        let game = self.inner.games.get(game)?;
        game.collections
            .get(collection)
            .map(Collection::max_document_bytes)
    }

    /// `Ok` when `game` is configured, else the `unknown_game` error.
    pub fn check_game(&self, game: &str) -> Result<(), ServiceError> {
        self.game(game).map(|_| ())
    }

    fn game(&self, game: &str) -> Result<&Game, ServiceError> {
        self.inner.games.get(game).ok_or_else(|| {
            ServiceError::new(ErrorCode::UnknownGame, format!("no game named {game:?}"))
        })
    }

    fn collection<'a>(
        &'a self,
        game: &'a Game,
        name: &str,
    ) -> Result<&'a Collection, ServiceError> {
        game.collections.get(name).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::UnknownCollection,
                format!("no collection named {name:?}"),
            )
        })
    }

    /// Runs a store call within the time budget, mapping failures to client-safe errors.
    async fn budget<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ServiceError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.inner.store_timeout, call).await;
        self.inner.metrics.store.observe(op, started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(store_error(e)),
            Err(_) => Err(ServiceError::new(
                ErrorCode::Timeout,
                "the store did not answer in time",
            )),
        }
    }

    /// Applies write operations atomically: all commit, or none does and the first failing
    /// operation's error (with its index) is returned. The write runs to its end even if the
    /// caller goes away (see `write.rs`); `settled` is dropped once it has settled.
    pub async fn write(
        &self,
        caller: &Caller,
        game_name: &str,
        ops: Vec<KeyedOp>,
        settled: Option<Settled>,
    ) -> Result<Written, ServiceError> {
        caller.authorize(game_name, Access::Write)?;
        let ops = self.player_ops(caller, game_name, ops)?;
        let mut prepared = self.prepare(game_name, ops)?;
        if caller.principal.subject.is_some() {
            prepared.player = Some(caller.principal.clone());
        }
        let mut permit = if prepared.ops.len() > 1 {
            Some(
                self.inner
                    .budget
                    .reserve(Self::worst_answer_bytes(&prepared))
                    .await?,
            )
        } else {
            None
        };
        let outcomes = self.run_write(prepared, settled).await?;
        if let Some(permit) = &mut permit {
            let bytes = outcomes
                .iter()
                .filter_map(|o| o.doc.as_ref())
                .map(Bytes::len)
                .sum();
            // Never an error after the commit: the reservation was the worst case.
            permit.shrink_to(bytes);
        }
        Ok(Written { outcomes, permit })
    }

    /// Records a token revocation of game `game_name` in its store (`admin` callers only):
    /// `kind` "jti" (one token, `value` its id) or "sub" (every token of subject `value`
    /// issued at or before `cutoff_s`). The caller applies it locally; other instances read
    /// it with [`Service::revocations`].
    pub async fn revoke(
        &self,
        caller: &Caller,
        game_name: &str,
        kind: &str,
        value: &str,
        cutoff_s: u64,
    ) -> Result<(), ServiceError> {
        if caller.principal.role != crate::auth::Role::Admin {
            return Err(caller.principal.deny(
                Access::Write,
                game_name,
                "only admin keys revoke tokens",
            ));
        }
        let game = self.game(game_name)?;
        // A token revocation outlives the tokens it names; a key's is for good.
        let until = match kind {
            "key" => i64::MAX as u64,
            _ => crate::auth::tokens::unix_now() + crate::auth::revocations::KEEP_FOR.as_secs(),
        };
        self.budget(
            StoreOp::Revocations,
            game.store.revoke(game_name, kind, value, cutoff_s, until),
        )
        .await?;
        if let Some(bus) = self.inner.cache.bus() {
            // The other instances read the table now rather than at their next poll.
            bus.announce_revocations().await;
        }
        tracing::info!(
            target: "audit",
            principal = %caller.principal.name,
            action = "revoke",
            game = game_name,
            kind,
            cutoff_s,
            "tokens revoked"
        );
        Ok(())
    }

    /// The revocations in force in every store (game, kind, value, cutoff_s).
    pub async fn revocations(&self) -> Result<Vec<(String, String, String, u64)>, ServiceError> {
        let now = crate::auth::tokens::unix_now();
        let mut all = Vec::new();
        for (_, store) in &self.inner.stores {
            all.extend(
                self.budget(StoreOp::Revocations, store.revocations(now))
                    .await?,
            );
        }
        Ok(all)
    }

    /// Marks the start of a shutdown (readiness probes fail from now on).
    pub fn begin_drain(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Time since the service was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Checks every store; returns the name and error of each that failed.
    pub async fn health(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::with_capacity(self.inner.stores.len());
        for (name, store) in &self.inner.stores {
            let result = match tokio::time::timeout(self.inner.store_timeout, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            out.push((name.clone(), result));
        }
        out
    }
}

/// Convenience for a single-document write.
impl Service {
    pub async fn write_one(
        &self,
        caller: &Caller,
        game: &str,
        key: DocKey,
        op: WriteOp,
        pre: Precondition,
        settled: Option<Settled>,
    ) -> Result<OpOutcome, ServiceError> {
        let op = KeyedOp { key, op, pre };
        let mut written = self
            .write(caller, game, vec![op], settled)
            .await
            .map_err(|mut e| {
                e.op_index = None;
                e
            })?;
        written
            .outcomes
            .pop()
            .ok_or_else(|| ServiceError::internal("write returned no outcome"))
    }
}

/// What a single-document read returns for a cached entry.
fn to_cached(id: &str, row: Option<&StoredDoc>) -> Cached {
    match row {
        Some(StoredDoc {
            version,
            owner,
            updated_at,
            value: Some(value),
        }) => Cached::Doc {
            version: *version,
            body: encode_document(id, owner.as_deref(), *version, updated_at, value),
        },
        Some(row) => Cached::Missing {
            version: row.version,
        },
        None => Cached::Missing { version: 0 },
    }
}

fn store_error(e: StoreError) -> ServiceError {
    if e.is_overload() {
        ServiceError::new(
            ErrorCode::Overloaded,
            "the store has no free connection; retry later",
        )
    } else if e.is_unreachable() {
        tracing::warn!(error = %e, "store unreachable");
        ServiceError::new(
            ErrorCode::Overloaded,
            "the store cannot be reached; retry later",
        )
    } else {
        ServiceError::internal(e)
    }
}

/// Strips credentials from a store URL before it is shown in health output. The user
/// information ends at the *last* `@` of the authority (a password may hold a raw `@`); the
/// authority ends at the first `/`, `?` or `#` after the scheme.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let shown = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    };
    // A password may also come as a query parameter (`?password=…`).
    match shown.find('?') {
        Some(query) => {
            let params: Vec<String> = shown[query + 1..]
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            format!("{}?{}", &shown[..query], params.join("&"))
        }
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_lose_their_credentials() {
        for (url, shown) in [
            ("postgres://u:secret@db:5432/x", "postgres://***@db:5432/x"),
            (
                "postgres://u:p@ss@w@rd@db/x?sslmode=require",
                "postgres://***@db/x?sslmode=require",
            ),
            (
                "mysql://root@127.0.0.1:3306/test",
                "mysql://***@127.0.0.1:3306/test",
            ),
            ("sqlite://data/a@b.db", "sqlite://data/a@b.db"),
            ("postgres://db/x?user=u@corp", "postgres://db/x?user=u@corp"),
            (
                "postgres://db/x?user=u&password=secret&x=1",
                "postgres://db/x?user=u&password=***&x=1",
            ),
            ("no scheme u:p@host", "no scheme u:p@host"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("secret") && !redact_url(url).contains("ss@w"));
        }
    }
}
