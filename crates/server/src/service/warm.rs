//! Warming the caches (the seed's start-up and adaptive warm-up).
//!
//! - **At start**, before the instance says it is ready: each collection's `warm_recent` most
//!   recently updated documents, then the hot keys this instance saved at its last shutdown
//!   (`warmup.hot_keys_file`), read in batches through the normal read path (so L2 is used and
//!   filled too), at most `warmup.rate` documents per second, with a progress line in the log.
//! - **Adaptively**, while serving: a key that misses L1 `warmup.hot_after_misses` times in a
//!   short window is hot (`cache/sketch.rs`); the documents its owner has in the collection's
//!   `related` collections are then loaded into the caches in the background, so a player's
//!   characters and items are warm when the player is.

use crate::ops::metrics::StoreOp;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Inner, Service};
use crate::config::WarmupConfig;
use crate::model::{is_valid_id, is_valid_name};

/// Documents of one owner loaded per related collection, at most.
const MAX_RELATED: usize = 100;
/// An owner whose related documents were loaded is not loaded again for this long.
const RELATED_AGAIN_AFTER: Duration = Duration::from_secs(30);
/// Hot keys waiting for their related documents, at most (more are dropped).
pub(super) const HOT_QUEUE: usize = 1024;

/// Warm-up progress, shown by `/healthz`.
#[derive(Debug, Default)]
pub struct Warming {
    pub active: AtomicBool,
    /// Documents asked for so far, and in all.
    pub loaded: AtomicU64,
    pub total: AtomicU64,
}

/// Owners whose related documents were loaded lately.
#[derive(Default)]
pub(super) struct RecentOwners(Mutex<HashMap<String, Instant>>);

impl Service {
    /// The warm-up progress.
    pub fn warming(&self) -> &Warming {
        &self.inner.warming
    }

    /// Warms the caches at start (see the module documentation); returns the documents found.
    pub async fn warm_up(&self, config: &WarmupConfig) -> u64 {
        let warming = &self.inner.warming;
        let gauges = &self.inner.metrics.warmup;
        warming.active.store(true, Ordering::Release);
        gauges.active.set(1);
        let mut plan: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (game_name, game) in &self.inner.games {
            for (collection, rules) in &game.collections {
                if rules.warm_recent == 0 {
                    continue;
                }
                match self
                    .budget(
                        StoreOp::Ids,
                        game.store
                            .ids(game_name, collection, None, rules.warm_recent),
                    )
                    .await
                {
                    Ok(ids) => plan
                        .entry((game_name.clone(), collection.clone()))
                        .or_default()
                        .extend(ids),
                    Err(e) => {
                        tracing::warn!(game = %game_name, %collection, error = %e, "warm-up: cannot list recent documents")
                    }
                }
            }
        }
        if let Some(path) = &config.hot_keys_file {
            for (game, collection, id) in read_hot_keys(path) {
                if self
                    .game(&game)
                    .and_then(|g| self.collection(g, &collection))
                    .is_ok()
                {
                    plan.entry((game, collection)).or_default().push(id);
                }
            }
        }
        for ids in plan.values_mut() {
            ids.sort_unstable();
            ids.dedup();
        }
        let total: usize = plan.values().map(Vec::len).sum();
        warming.total.store(total as u64, Ordering::Relaxed);
        gauges.total.set(total as i64);
        let started = Instant::now();
        let mut found = 0u64;
        let mut done = 0usize;
        let mut last_line = Instant::now();
        for ((game, collection), ids) in &plan {
            for chunk in ids.chunks(config.batch) {
                match self
                    .batch_get(&self.inner.itself, game, collection, chunk)
                    .await
                {
                    Ok(batch) => found += batch.docs.iter().flatten().count() as u64,
                    Err(e) => {
                        tracing::warn!(%game, %collection, error = %e, "warm-up: a batch failed")
                    }
                }
                done += chunk.len();
                warming.loaded.store(done as u64, Ordering::Relaxed);
                gauges.loaded.set(done as i64);
                // The rate cap: never ahead of `rate` documents per second since the start.
                let due = Duration::from_secs_f64(done as f64 / f64::from(config.rate));
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
                if last_line.elapsed() >= Duration::from_secs(1) {
                    last_line = Instant::now();
                    tracing::info!("warming: {done} of {total} documents ({found} found)");
                }
            }
        }
        if total > 0 {
            tracing::info!(
                "warm-up done: {found} of {total} documents in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        warming.active.store(false, Ordering::Release);
        gauges.active.set(0);
        found
    }

    /// Writes this instance's hot keys to `path` (replacing it atomically); returns how many.
    pub fn save_hot_keys(&self, path: &Path) -> std::io::Result<usize> {
        let keys = self.inner.cache.hot_keys();
        let partial = path.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        for key in &keys {
            writeln!(file, "{key}")?;
        }
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(keys.len())
    }

    /// Loads the documents the owner of hot `key` has in the related collections.
    async fn preload_related(&self, key: &str) {
        let mut parts = key.splitn(3, '/');
        let (Some(game_name), Some(collection), Some(id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(game) = self.game(game_name) else {
            return;
        };
        let Ok(rules) = self.collection(game, collection) else {
            return;
        };
        if rules.related.is_empty() {
            return;
        }
        let Ok(doc) = self.read(game_name, collection, id).await else {
            return;
        };
        let Some(owner) = crate::model::owner_of(&doc.body) else {
            return;
        };
        {
            let mut recent = self.inner.recent_owners.0.lock();
            let now = Instant::now();
            if recent.len() > 10_000 {
                recent.retain(|_, at| now.duration_since(*at) < RELATED_AGAIN_AFTER);
            }
            let owner_key = format!("{game_name}/{owner}");
            if recent
                .get(&owner_key)
                .is_some_and(|at| now.duration_since(*at) < RELATED_AGAIN_AFTER)
            {
                return;
            }
            recent.insert(owner_key, now);
        }
        for related in &rules.related {
            let ids = match self
                .budget(
                    StoreOp::Ids,
                    game.store.ids(game_name, related, Some(owner), MAX_RELATED),
                )
                .await
            {
                Ok(ids) => ids,
                Err(_) => continue,
            };
            if !ids.is_empty() {
                let _ = self
                    .batch_get(&self.inner.itself, game_name, related, &ids)
                    .await;
            }
        }
    }
}

/// Runs the related-documents preloader until the service is gone.
pub(super) fn start_preloader(service: Weak<Inner>, mut hot: mpsc::Receiver<String>) {
    tokio::spawn(async move {
        while let Some(key) = hot.recv().await {
            let Some(inner) = service.upgrade() else {
                return;
            };
            Service { inner }.preload_related(&key).await;
        }
    });
}

/// The saved hot keys `game/collection/id`, one per line; malformed lines are skipped. A
/// missing file (a first start) is no keys.
fn read_hot_keys(path: &Path) -> Vec<(String, String, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "warm-up: cannot read the hot keys");
            return Vec::new();
        }
    };
    let mut skipped = 0;
    let keys = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '/');
            let key = match (parts.next(), parts.next(), parts.next()) {
                (Some(g), Some(c), Some(id))
                    if is_valid_name(g) && is_valid_name(c) && is_valid_id(id) =>
                {
                    Some((g.to_string(), c.to_string(), id.to_string()))
                }
                _ => None,
            };
            if key.is_none() && !line.trim().is_empty() {
                skipped += 1;
            }
            key
        })
        .collect();
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "warm-up: malformed hot-key lines skipped");
    }
    keys
}
