//! The store's connection pool: deadpool over sqlx `AnyConnection`s, with a lease that puts a
//! connection back only when its last operation finished cleanly.
//!
//! Why not sqlx's own pool: it pings every connection it takes back (`return_to_pool` runs a
//! `Sync`/`ReadyForQuery` round trip, in a spawned task, and has no option to skip it), so a
//! one-statement read cost two round trips to the database. The ping is there to catch
//! connections left mid-protocol by a cancelled query; a [`Lease`] does the same without a
//! round trip: a connection whose operation did not finish (the future was dropped) or failed
//! below SQL (I/O, protocol) is discarded instead of returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Connection};

use super::StoreError;
use crate::config::StoreConfig;

/// One statement with its bound arguments.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments>;

/// Opens connections and runs the session setup on each; replaces, when next taken, those
/// idle longer than `idle_timeout` (firewalls and NATs drop idle connections silently, and a
/// dead connection costs a failed query) or older than `max_lifetime`.
pub(super) struct Manager {
    url: String,
    setup: Vec<&'static str>,
    idle_timeout: Duration,
    max_lifetime: Duration,
}

impl managed::Manager for Manager {
    type Type = AnyConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut conn = AnyConnection::connect(&self.url).await?;
        for statement in &self.setup {
            sqlx::query(*statement).execute(&mut conn).await?;
        }
        Ok(conn)
    }

    async fn recycle(
        &self,
        _: &mut AnyConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if metrics.age() > self.max_lifetime {
            Err(RecycleError::message("past its maximum lifetime"))
        } else if metrics.last_used() > self.idle_timeout {
            Err(RecycleError::message("idle too long"))
        } else {
            Ok(())
        }
    }
}

/// A pool of database connections.
#[derive(Clone)]
pub(super) struct Pool {
    inner: managed::Pool<Manager>,
    waits: Arc<Waits>,
}

/// Connections taken, and the time spent waiting for them (for the metrics).
#[derive(Default)]
struct Waits {
    leases: AtomicU64,
    wait_ns: AtomicU64,
}

impl Pool {
    /// A pool of at most `max_size` connections; waiting for one gives up after 90 % of
    /// `config.timeout` and opening one after `config.timeout`, and `config.idle_timeout` /
    /// `config.max_lifetime` retire them.
    /// Nothing is opened until the first [`Pool::lease`].
    pub fn new(
        url: String,
        setup: Vec<&'static str>,
        max_size: usize,
        config: &StoreConfig,
    ) -> Result<Pool, String> {
        let manager = Manager {
            url,
            setup,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
        };
        let inner = managed::Pool::builder(manager)
            .max_size(max_size)
            // Before the caller's own budget (also `config.timeout`) runs out: a request that
            // found no free connection is answered `overloaded` (nothing was sent to the
            // database) rather than `timeout` (outcome unknown). With equal deadlines either
            // timer could fire first.
            .wait_timeout(Some(config.timeout.mul_f64(0.9)))
            .create_timeout(Some(config.timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Pool {
            inner,
            waits: Arc::default(),
        })
    }

    /// Takes a connection. Waiting too long is `sqlx::Error::PoolTimedOut` (overload); failing
    /// to open one is [`StoreError::Unavailable`].
    pub async fn lease(&self) -> Result<Lease, StoreError> {
        let asked = Instant::now();
        let taken = self.inner.get().await;
        let waited = u64::try_from(asked.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waits.leases.fetch_add(1, Ordering::Relaxed);
        self.waits.wait_ns.fetch_add(waited, Ordering::Relaxed);
        match taken {
            Ok(conn) => Ok(Lease {
                conn: Some(conn),
                clean: false,
            }),
            Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {
                Err(StoreError::Database(sqlx::Error::PoolTimedOut))
            }
            Err(PoolError::Timeout(_)) => Err(StoreError::Unavailable(
                "timed out connecting to the database".into(),
            )),
            Err(PoolError::Backend(e)) => Err(StoreError::Unavailable(format!(
                "cannot connect to the database: {e}"
            ))),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Runs one read statement (built by `query`, once per attempt) and returns its rows. A
    /// connection the database dropped (they are not pinged) fails the attempt and is closed;
    /// the read then runs again on another, at most once per pooled connection plus one. Reads
    /// are idempotent; writes are not retried, since a lost connection leaves their outcome
    /// unknown.
    pub async fn read_all<'q>(
        &self,
        query: impl Fn() -> AnyQuery<'q>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut attempts_left = self.size() + 1;
        loop {
            attempts_left -= 1;
            let mut lease = self.lease().await?;
            let result = query().fetch_all(lease.conn()).await;
            match lease.finish(result) {
                Err(e) if attempts_left > 0 && super::connection_lost(&e) => {
                    tracing::debug!(error = %e, "store connection lost; retrying the read on another");
                }
                other => return Ok(other?),
            }
        }
    }

    /// Like [`Pool::read_all`], for the first row only.
    pub async fn read_optional<'q>(
        &self,
        query: impl Fn() -> AnyQuery<'q>,
    ) -> Result<Option<AnyRow>, StoreError> {
        Ok(self.read_all(query).await?.into_iter().next())
    }

    /// Connections currently open (idle or leased).
    pub fn size(&self) -> usize {
        self.inner.status().size
    }

    /// A handle that reads the pool's state without keeping it alive (for the metrics).
    pub fn watch(&self) -> PoolWatch {
        PoolWatch(self.inner.weak(), self.waits.clone())
    }
}

/// Reads a pool's state while the pool exists.
pub struct PoolWatch(managed::WeakPool<Manager>, Arc<Waits>);

impl std::fmt::Debug for PoolWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PoolWatch").field(&self.status()).finish()
    }
}

/// A pool's state at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    /// Most connections it opens.
    pub max: usize,
    /// Connections open (idle or leased).
    pub open: usize,
    pub idle: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
    /// Connections taken so far (attempts that gave up included).
    pub leases: u64,
    /// Time spent waiting for them (and opening them), in all.
    pub wait_seconds: f64,
}

impl PoolWatch {
    /// `None` once the pool is gone.
    pub fn status(&self) -> Option<PoolStatus> {
        let status = self.0.upgrade()?.status();
        Some(PoolStatus {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
            leases: self.1.leases.load(Ordering::Relaxed),
            wait_seconds: self.1.wait_ns.load(Ordering::Relaxed) as f64 / 1e9,
        })
    }
}

/// One leased connection. It goes back to the pool only if [`Lease::finish`] saw its last
/// operation complete with the connection still in step with the server; otherwise dropping
/// the lease closes it.
pub(super) struct Lease {
    conn: Option<Object<Manager>>,
    clean: bool,
}

impl Lease {
    /// The connection, for one operation whose result then goes through [`Lease::finish`].
    pub fn conn(&mut self) -> &mut AnyConnection {
        self.clean = false;
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// Records how the operation ended and passes its result on.
    pub fn finish<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.clean = result.as_ref().err().is_none_or(reusable_after);
        result
    }

    /// Records that the operation ended with the connection in step (or not) with the server.
    pub fn finish_with(&mut self, reusable: bool) {
        self.clean = reusable;
    }
}

/// An error the server sent (constraint, conflict, syntax) leaves the connection usable, unless
/// it says the connection is going away; I/O and protocol errors do not.
pub(super) fn reusable_after(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_)) && !super::connection_lost(error)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.clean
            && let Some(conn) = self.conn.take()
        {
            // Detached from the pool (which opens a new one when needed) and closed here.
            drop(Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool() -> Pool {
        pool_with(&StoreConfig::default())
    }

    fn pool_with(config: &StoreConfig) -> Pool {
        sqlx::any::install_default_drivers();
        Pool::new("sqlite::memory:".into(), vec![], 2, config).unwrap()
    }

    async fn select_one(lease: &mut Lease) -> Result<i64, sqlx::Error> {
        let result = sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(lease.conn())
            .await;
        lease.finish(result)
    }

    #[tokio::test]
    async fn a_finished_lease_returns_its_connection() {
        let pool = pool().await;
        let mut lease = pool.lease().await.unwrap();
        assert_eq!(select_one(&mut lease).await.unwrap(), 1);
        let first = Object::id(lease.conn.as_ref().unwrap());
        drop(lease);
        assert_eq!(pool.size(), 1);
        let mut again = pool.lease().await.unwrap();
        assert_eq!(Object::id(again.conn.as_ref().unwrap()), first);
        assert_eq!(select_one(&mut again).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_unfinished_or_broken_lease_closes_its_connection() {
        let pool = pool().await;
        // Taken for an operation that never finished (its future was dropped).
        let mut lease = pool.lease().await.unwrap();
        let _ = lease.conn();
        drop(lease);
        assert_eq!(pool.size(), 0);
        // An error below SQL.
        let mut lease = pool.lease().await.unwrap();
        let _ = lease.finish::<()>(Err(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into())));
        drop(lease);
        assert_eq!(pool.size(), 0);
        // An error the database answered with keeps the connection.
        let mut lease = pool.lease().await.unwrap();
        let result = sqlx::query("SELECT * FROM no_such_table")
            .execute(lease.conn())
            .await;
        assert!(lease.finish(result).is_err());
        drop(lease);
        assert_eq!(pool.size(), 1);
    }

    #[tokio::test]
    async fn idle_and_old_connections_are_replaced_when_next_taken() {
        for config in [
            StoreConfig {
                idle_timeout: Duration::from_millis(50),
                ..StoreConfig::default()
            },
            StoreConfig {
                max_lifetime: Duration::from_millis(50),
                ..StoreConfig::default()
            },
        ] {
            let pool = pool_with(&config);
            let mut lease = pool.lease().await.unwrap();
            assert_eq!(select_one(&mut lease).await.unwrap(), 1);
            let first = Object::id(lease.conn.as_ref().unwrap());
            drop(lease);
            let mut soon = pool.lease().await.unwrap();
            assert_eq!(
                Object::id(soon.conn.as_ref().unwrap()),
                first,
                "reused while fresh"
            );
            assert_eq!(select_one(&mut soon).await.unwrap(), 1);
            drop(soon);
            tokio::time::sleep(Duration::from_millis(80)).await;
            let mut later = pool.lease().await.unwrap();
            assert_ne!(Object::id(later.conn.as_ref().unwrap()), first, "replaced");
            assert_eq!(select_one(&mut later).await.unwrap(), 1);
        }
    }
}
