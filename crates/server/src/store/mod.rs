//! The store: the SQL database that is the only source of truth. One implementation serves
//! SQLite, PostgreSQL and MySQL/MariaDB through sqlx's `Any` driver; the per-backend
//! differences (placeholders, row locks, upsert syntax, pragmas, migrations) live in
//! [`dialect`].
//!
//! Writes run as transactions through [`Store::transact`]: every touched key is locked in a
//! fixed order (so concurrent transactions cannot deadlock each other), the current rows are
//! handed to a *plan* (pure service logic deciding the new rows or an error), the new rows are
//! written and the transaction commits. Transient conflicts (deadlock, serialization failure,
//! SQLite busy) are retried a bounded number of times.

mod dialect;
mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Mutex;

use crate::config::{SqliteSync, StoreConfig};
use crate::model::{DocKey, StoredDoc};
pub use dialect::Dialect;
use tokio::sync::watch;

/// How many times a transaction is retried after a transient conflict.
const MAX_TXN_ATTEMPTS: usize = 8;

/// A store failure. [`StoreError::Unavailable`] maps to 503 (pool exhausted / cannot connect);
/// the rest are internal errors whose detail is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid store url {0}: {1}")]
    Url(String, String),
}

/// The rows [`Store::get_many`] read, by id.
#[derive(Debug, Default)]
pub struct Many {
    pub rows: HashMap<String, StoredDoc>,
    /// Bytes of the values of every requested row, including rows left out by the byte cap.
    pub value_bytes: usize,
}

/// One page [`Store::list`] read.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<(String, StoredDoc)>,
    /// True when the byte cap ended the page before its row limit.
    pub cut: bool,
}

fn cap(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX).max(1)
}

fn count(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

/// The new row for each locked key (`None`: unchanged) and the caller's result.
pub type Planned<T> = (Vec<Option<StoredDoc>>, T);

/// Decides a transaction's writes from the current rows of its keys (see [`Store::transact`]).
pub type Plan<'a, T, E> = dyn FnMut(&[StoredDoc]) -> Result<Planned<T>, E> + Send + 'a;

/// A write transaction failed either in the plan (a client-visible error) or in the store.
#[derive(Debug)]
pub enum TxnError<E> {
    Plan(E),
    Store(StoreError),
}

/// A handle to one database. Cloning is cheap (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: pool::Pool,
    dialect: Dialect,
    /// SQLite allows one writer at a time; serialising writers here avoids busy-waiting in
    /// the database and SQLITE_BUSY upgrade failures. Unused for server databases.
    write_lock: std::sync::Arc<Mutex<()>>,
}

pub use pool::{PoolStatus, PoolWatch};

impl Store {
    /// Watches the connection pool (for the metrics).
    pub fn pool_watch(&self) -> PoolWatch {
        self.pool.watch()
    }

    /// Connects (creating a SQLite file and its directory if needed) and migrates the schema.
    pub async fn connect(url: &str, config: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let url = dialect.normalize_url(url)?;
        let pragmas = dialect.session_setup(config.sqlite_synchronous == SqliteSync::Full);
        let max_connections = match dialect {
            // One writer at a time anyway; readers share a few connections.
            Dialect::Sqlite => config.max_connections.min(8),
            _ => config.max_connections,
        };
        // Connections are not pinged before use or after (see `pool`): a dead one fails its
        // query, reads are retried on another, and the connection is discarded.
        let pool = pool::Pool::new(url, pragmas, max_connections as usize, config)
            .map_err(StoreError::Unavailable)?;
        let store = Store {
            pool,
            dialect,
            write_lock: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
            Dialect::MySql => sqlx::migrate!("./migrations/mysql"),
        };
        // Instances starting together on a fresh database race to create the migrations
        // table; the loser fails once and succeeds on a retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut lease = self.pool.lease().await?;
            let result = migrator.run(lease.conn()).await;
            lease.finish_with(result.is_ok());
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 => {
                    tracing::warn!(attempt, error = %e, "schema migration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool.read_optional(|| sqlx::query("SELECT 1")).await?;
        Ok(())
    }

    /// Reads one row, tombstones included (`None` if the key was never written).
    pub async fn get(&self, game: &str, key: &DocKey) -> Result<Option<StoredDoc>, StoreError> {
        let row = self
            .pool
            .read_optional(|| {
                sqlx::query(self.dialect.select_one())
                    .bind(game)
                    .bind(key.collection.as_str())
                    .bind(key.id.as_str())
            })
            .await?;
        row.map(|r| decode_doc(&r, 0)).transpose()
    }

    /// Reads many rows of one collection in one query. The database sends at most
    /// `max_value_bytes` of values (plus one value): rows beyond that are left out, and
    /// [`Many::value_bytes`] says whether they were.
    pub async fn get_many(
        &self,
        game: &str,
        collection: &str,
        ids: &[&str],
        max_value_bytes: usize,
    ) -> Result<Many, StoreError> {
        if ids.is_empty() {
            return Ok(Many::default());
        }
        let rows = self
            .pool
            .read_all(|| {
                let sql = self.dialect.select_many(ids.len());
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(game).bind(collection);
                for id in ids {
                    query = query.bind(*id);
                }
                query.bind(cap(max_value_bytes))
            })
            .await?;
        let mut many = Many::default();
        for row in &rows {
            many.value_bytes = count(row.try_get(5)?);
            many.rows
                .insert(row.try_get::<String, _>(0)?, decode_doc(row, 1)?);
        }
        Ok(many)
    }

    /// Records that instance `id` of bus `bus` is alive now (`now_ms`, its own clock).
    pub async fn touch_instance(&self, bus: &str, id: &str, now_ms: u64) -> Result<(), StoreError> {
        // Idempotent, so it may go through the retrying read path.
        self.pool
            .read_all(|| {
                sqlx::query(self.dialect.touch_instance())
                    .bind(bus)
                    .bind(id)
                    .bind(now_ms as i64)
            })
            .await
            .map(drop)
    }

    /// The instances of bus `bus` alive since `since_ms`.
    pub async fn instances_since(
        &self,
        bus: &str,
        since_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pool
            .read_all(|| {
                sqlx::query(self.dialect.instances_since())
                    .bind(bus)
                    .bind(since_ms as i64)
            })
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(0)?))
            .collect()
    }

    /// Records a revocation of game `game`: `kind` 'jti' (one token) or 'sub' (a subject's
    /// tokens issued at or before `cutoff_s`), in force until `expires_s`.
    pub async fn revoke(
        &self,
        game: &str,
        kind: &str,
        value: &str,
        cutoff_s: u64,
        expires_s: u64,
    ) -> Result<(), StoreError> {
        // Idempotent (an upsert), so it may go through the retrying read path.
        self.pool
            .read_all(|| {
                sqlx::query(self.dialect.upsert_revocation())
                    .bind(game)
                    .bind(kind)
                    .bind(value)
                    .bind(cutoff_s as i64)
                    .bind(expires_s as i64)
            })
            .await
            .map(drop)
    }

    /// The revocations in force at `now_s`: (game, kind, value, cutoff_s).
    pub async fn revocations(
        &self,
        now_s: u64,
    ) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        let rows = self
            .pool
            .read_all(|| sqlx::query(self.dialect.revocations_in_force()).bind(now_s as i64))
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<String, _>(2)?,
                    row.try_get::<i64, _>(3)?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// Instance `id` of bus `bus` leaves (a clean shutdown).
    pub async fn leave_instance(&self, bus: &str, id: &str) -> Result<(), StoreError> {
        self.pool
            .read_all(|| {
                sqlx::query(self.dialect.delete_instance())
                    .bind(bus)
                    .bind(id)
            })
            .await
            .map(drop)
    }

    /// Ids of live documents of a collection, for warming caches: the `limit` most recently
    /// updated, or (with `owner`) those of one owner in id order.
    pub async fn ids(
        &self,
        game: &str,
        collection: &str,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .pool
            .read_all(|| {
                let sql = self.dialect.select_ids(owner.is_some());
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(game).bind(collection);
                if let Some(owner) = owner {
                    query = query.bind(owner);
                }
                query.bind(limit as i64)
            })
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>(0)?))
            .collect()
    }

    /// Live documents of a collection ordered by id, optionally of one owner, after `after`:
    /// at most `limit`, and no more than `max_value_bytes` of values (plus one value).
    pub async fn list(
        &self,
        game: &str,
        collection: &str,
        owner: Option<&str>,
        after: Option<&str>,
        limit: usize,
        max_value_bytes: usize,
    ) -> Result<Page, StoreError> {
        let rows = self
            .pool
            .read_all(|| {
                let sql = self.dialect.select_list(owner.is_some(), after.is_some());
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(game).bind(collection);
                if let Some(owner) = owner {
                    query = query.bind(owner);
                }
                if let Some(after) = after {
                    query = query.bind(after);
                }
                query.bind(limit as i64).bind(cap(max_value_bytes))
            })
            .await?;
        let mut page = Page {
            rows: Vec::with_capacity(rows.len()),
            cut: false,
        };
        for row in &rows {
            page.cut = count(row.try_get(5)?) > rows.len();
            page.rows
                .push((row.try_get::<String, _>(0)?, decode_doc(row, 1)?));
        }
        Ok(page)
    }

    /// Runs a write transaction over `keys` (sorted and unique: the lock order). `plan` gets
    /// the current rows (absent keys as [`StoredDoc::absent`]) and returns the new row for
    /// each key (`None`: unchanged) plus a result for the caller, or an error that aborts the
    /// transaction. `plan` may run more than once when a transient conflict, or a connection
    /// lost before anything was committed, forces a retry. Returns the new rows (as planned)
    /// and the plan's result once committed.
    ///
    /// `committing` is set while the COMMIT is on its way: from then on, a lost connection or
    /// an abandoned call leaves the outcome unknown (the database may still commit). The
    /// COMMIT waits until `commit_gate` turns true (or its sender is gone): the cache takes its
    /// markers meanwhile, in parallel with the locking and writing.
    pub async fn transact<T, E>(
        &self,
        game: &str,
        keys: &[DocKey],
        plan: &mut Plan<'_, T, E>,
        committing: &AtomicBool,
        commit_gate: &watch::Receiver<bool>,
    ) -> Result<Planned<T>, TxnError<E>> {
        debug_assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "keys must be sorted and unique"
        );
        let _writer = match self.dialect {
            Dialect::Sqlite => Some(self.write_lock.lock().await),
            _ => None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            committing.store(false, Ordering::Release);
            match self
                .try_transact(game, keys, plan, committing, commit_gate)
                .await
            {
                Err(TxnError::Store(StoreError::Database(e)))
                    if attempt < MAX_TXN_ATTEMPTS
                        && (self.dialect.is_transient(&e)
                            || (connection_lost(&e) && !committing.load(Ordering::Acquire))) =>
                {
                    // A lost connection before the COMMIT was sent rolled everything back.
                    tracing::debug!(attempt, error = %e, "retrying transaction after a transient conflict or a lost connection");
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(
                        1..=5 * attempt as u64,
                    )))
                    .await;
                }
                other => return other,
            }
        }
    }

    async fn try_transact<T, E>(
        &self,
        game: &str,
        keys: &[DocKey],
        plan: &mut Plan<'_, T, E>,
        committing: &AtomicBool,
        commit_gate: &watch::Receiver<bool>,
    ) -> Result<Planned<T>, TxnError<E>> {
        let mut lease = self.pool.lease().await.map_err(TxnError::Store)?;
        let result = self
            .transact_on(lease.conn(), game, keys, plan, committing, commit_gate)
            .await;
        lease.finish_with(match &result {
            Ok(_) | Err(TxnError::Plan(_)) => true,
            Err(TxnError::Store(StoreError::Database(e))) => pool::reusable_after(e),
            Err(TxnError::Store(_)) => false,
        });
        result
    }

    async fn transact_on<T, E>(
        &self,
        conn: &mut sqlx::AnyConnection,
        game: &str,
        keys: &[DocKey],
        plan: &mut Plan<'_, T, E>,
        committing: &AtomicBool,
        commit_gate: &watch::Receiver<bool>,
    ) -> Result<Planned<T>, TxnError<E>> {
        let store_err = |e: sqlx::Error| TxnError::Store(StoreError::Database(e));
        let mut tx = conn.begin().await.map_err(store_err)?;
        let mut current = Vec::with_capacity(keys.len());
        for key in keys {
            sqlx::query(self.dialect.insert_placeholder())
                .bind(game)
                .bind(key.collection.as_str())
                .bind(key.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            let row = sqlx::query(self.dialect.select_for_update())
                .bind(game)
                .bind(key.collection.as_str())
                .bind(key.id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_err)?;
            current.push(decode_doc(&row, 0).map_err(TxnError::Store)?);
        }
        let (new_rows, result) = match plan(&current) {
            Ok(planned) => planned,
            Err(e) => {
                // Rolled back now, so the connection goes back to the pool with no transaction.
                tx.rollback().await.map_err(store_err)?;
                return Err(TxnError::Plan(e));
            }
        };
        for (key, (new, old)) in keys.iter().zip(new_rows.iter().zip(&current)) {
            let final_state = new.as_ref().unwrap_or(old);
            if final_state.version == 0 {
                // Only locked, never written: drop the placeholder row again.
                sqlx::query(self.dialect.delete_placeholder())
                    .bind(game)
                    .bind(key.collection.as_str())
                    .bind(key.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(store_err)?;
                continue;
            }
            let Some(new) = new else { continue };
            sqlx::query(self.dialect.update_row())
                .bind(new.owner.as_deref())
                .bind(new.version as i64)
                .bind(new.updated_at.as_str())
                .bind(new.value.as_deref())
                .bind(game)
                .bind(key.collection.as_str())
                .bind(key.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
        }
        // A gate whose sender is gone (Err) lets the COMMIT go as well.
        let _ = commit_gate.clone().wait_for(|open| *open).await;
        committing.store(true, Ordering::Release);
        tx.commit().await.map_err(store_err)?;
        Ok((new_rows, result))
    }
}

/// I/O failures and the SQLSTATEs of a connection the server closed (class 08, and 57P01-03:
/// admin shutdown, crash shutdown, cannot connect now; MySQL reports 08S01).
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// Decodes `version, owner, updated_at, value` starting at column `first`.
fn decode_doc(row: &AnyRow, first: usize) -> Result<StoredDoc, StoreError> {
    let version: i64 = row.try_get(first)?;
    Ok(StoredDoc {
        version: u64::try_from(version).unwrap_or(0),
        owner: row.try_get(first + 1)?,
        updated_at: row.try_get(first + 2)?,
        value: row.try_get(first + 3)?,
    })
}

impl StoreError {
    /// True when the pool could not give a connection in time (load, not a fault).
    pub fn is_overload(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut))
    }

    /// True when no connection to the database could be opened.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// True when the connection to the database broke during the call.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, StoreError::Database(e) if connection_lost(e))
    }
}
