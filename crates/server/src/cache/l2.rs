//! L2: the Redis tier shared by every instance (standalone Redis or a Redis Cluster).
//!
//! Each document has two Redis keys in one hash slot: the value `<prefix>:{<key>}` holding
//! `<version>|D<document>` or `<version>|M` (missing), and the write marker
//! `<prefix>:{<key>}:w`, a hash with one field per write in progress (`w<id>`) and the highest
//! version written lately (`f`, the floor). Three Lua scripts change them, so every compare runs
//! on the server, and each is idempotent (a retried call changes nothing more):
//!
//! - **fill** (a store read or a miss): stores a version only if no write is in progress on the
//!   key, the version is not below the floor, and the value held is older. A fill arriving after
//!   its deadline (sent late, or queued on a frozen Redis) is dropped by the server's clock.
//! - **begin** (before the COMMIT): adds the write's field, deletes the value and arms the
//!   marker for at least [`L2::mark_ttl`] (never shortening it).
//! - **end** (after it): a committed version raises the floor; the write's field goes; the
//!   value is set only when no other write is in progress (else it stays deleted, so an
//!   instance told of the first of two overlapping writes cannot read it back after the second)
//!   and it is newer.
//!
//! So no fill can park a version older than a commit, even when the writer dies between its
//! commit and its `end`: its marker blocks fills until it expires, `mark_ttl` after the write
//! began, and a fill is only sent within [`L2::fill_window`] of the lookup that missed, which is
//! shorter. See docs/architecture.md ("L2 and the write marker") for the whole argument.
//!
//! Redis failing degrades, never fails: every call has a small time budget, a [`Breaker`] stops
//! calling a failing Redis and probes it, and a failed call is a miss. A committed write whose
//! L2 steps failed leaves its keys in a repair set that is deleted from Redis once it answers
//! again; until then this instance does not say on the bus that it is caught up, so the other
//! instances bypass their caches (see `bus.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisFuture, Script, Value};

use super::breaker::Breaker;
use super::l1::Cached;
use crate::config::CacheConfig;

/// Keys remembered for repair after failed L2 steps. Past this (a long Redis outage under heavy
/// writes) the set is dropped and the instance stays "not caught up" until it restarts, so the
/// other instances keep bypassing their caches: degraded, never stale.
const MAX_REPAIR_KEYS: usize = 100_000;

// The marker hash: one field `w<id>` per write in progress (so every script is idempotent and
// a write only ever removes its own), and `f`, the floor.
const FILL: &str = r"
local writes = redis.call('HLEN', KEYS[2])
local f = redis.call('HGET', KEYS[2], 'f')
if f then writes = writes - 1 end
if writes > 0 then return 0 end
local v = tonumber(ARGV[1])
if f and tonumber(f) > v then return 0 end
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[4]) then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local bar = string.find(cur, '|', 1, true)
  if bar and tonumber(string.sub(cur, 1, bar - 1)) >= v then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

const BEGIN: &str = r"
redis.call('HSET', KEYS[2], ARGV[2], 1)
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
redis.call('DEL', KEYS[1])
return 1
";

const END: &str = r"
local v = tonumber(ARGV[1])
if v and redis.call('EXISTS', KEYS[2]) == 1 then
  local f = redis.call('HGET', KEYS[2], 'f')
  if not f or tonumber(f) < v then redis.call('HSET', KEYS[2], 'f', ARGV[1]) end
end
redis.call('HDEL', KEYS[2], ARGV[4])
if not v then return 0 end
local others = redis.call('HLEN', KEYS[2])
local f = redis.call('HGET', KEYS[2], 'f')
if f then others = others - 1 end
if f and tonumber(f) > v then return 0 end
if others > 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local bar = string.find(cur, '|', 1, true)
  if bar and tonumber(string.sub(cur, 1, bar - 1)) >= v then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// A connection to a standalone Redis or to a cluster; both multiplex every request of the
/// process over one connection per node, pipelining concurrent calls.
#[derive(Clone)]
enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Counters of L2 calls, read by tests and (later) the metrics endpoint.
#[derive(Debug, Default)]
pub struct L2Counters {
    /// Lookups made: one per key a task reads (shared by the tasks reading it at once), one per
    /// `_batch_get`, one per connection's batch of GETs (see `coalesce.rs`).
    pub lookups: AtomicU64,
    /// Keys found (so a multi-key lookup may count several).
    pub hits: AtomicU64,
    /// Fills Redis accepted.
    pub fills: AtomicU64,
    /// Fills Redis refused (a write in progress, an older version, or too late).
    pub fills_refused: AtomicU64,
    /// Calls that failed or ran out of time.
    pub failures: AtomicU64,
}

/// The L2 tier. Cheap to share behind an `Arc`.
pub struct L2 {
    conn: RedisConn,
    prefix: String,
    breaker: Breaker,
    timeout: Duration,
    mark_ttl: Duration,
    fill_window: Duration,
    fill: Script,
    begin: Script,
    end: Script,
    counters: L2Counters,
    /// Keys whose L2 steps failed after a commit: Redis may hold an older version of them.
    repair: Mutex<HashSet<String>>,
    /// The repair set overflowed: what Redis holds can no longer be repaired key by key.
    repair_lost: std::sync::atomic::AtomicBool,
}

impl L2 {
    /// Sets up the connection without waiting for Redis: an instance starts (without L2) when
    /// Redis is down, and uses it once it answers. Errors only for a malformed URL.
    pub fn connect(config: &CacheConfig, store_timeout: Duration) -> Result<Arc<L2>, String> {
        let timeout = config.l2_timeout;
        let conn = if let Some(url) = &config.l2_url {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            RedisConn::Single(
                ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            let client = ClusterClientBuilder::new(config.l2_cluster_nodes.clone())
                .connection_timeout(timeout.max(Duration::from_millis(200)))
                .response_timeout(timeout)
                .retries(2)
                .build()
                .map_err(|e| e.to_string())?;
            let cluster_config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeout.max(Duration::from_millis(200)))
                .set_response_timeout(timeout);
            RedisConn::Cluster(client.get_pending_async_connection_with_config(cluster_config))
        };
        // A write's marker must outlive the longest a write can take to commit (its time
        // budget) plus the longest a reader's lookup can be followed by its fill.
        let fill_window = store_timeout + timeout;
        let mark_ttl = store_timeout + fill_window + Duration::from_secs(1);
        Ok(Arc::new(L2 {
            conn,
            prefix: config.l2_prefix.clone(),
            breaker: Breaker::new(Duration::from_millis(250)),
            timeout,
            mark_ttl,
            fill_window,
            fill: Script::new(FILL),
            begin: Script::new(BEGIN),
            end: Script::new(END),
            counters: L2Counters::default(),
            repair: Mutex::new(HashSet::new()),
            repair_lost: Default::default(),
        }))
    }

    /// The time budget of one Redis call (`cache.l2_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn counters(&self) -> &L2Counters {
        &self.counters
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// How long a write marker blocks fills after the write began.
    pub fn mark_ttl(&self) -> Duration {
        self.mark_ttl
    }

    /// A fill is sent only this soon after the lookup that missed.
    pub fn fill_window(&self) -> Duration {
        self.fill_window
    }

    /// The cached answer for `key`, or `None` on a miss, a failure or an open breaker. (Reads
    /// through the cache share lookups instead, see `coalesce.rs`.)
    pub async fn get(&self, key: &str) -> Option<Cached> {
        self.get_many(&[key]).await.pop().flatten()
    }

    /// The cached answers for `keys`, in order: one `MGET` (split by hash slot on a cluster,
    /// the parts sent to their nodes at once). All `None` on a failure or an open breaker.
    pub async fn get_many(&self, keys: &[&str]) -> Vec<Option<Cached>> {
        if keys.is_empty() || !self.breaker.allow() {
            return vec![None; keys.len()];
        }
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let redis_keys: Vec<String> = keys.iter().map(|key| self.value_key(key)).collect();
        let redis_keys: Vec<&str> = redis_keys.iter().map(String::as_str).collect();
        let found = self.mget(&redis_keys).await;
        let hits = found.iter().flatten().count() as u64;
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        found
    }

    /// One `MGET` of Redis keys (see [`L2::value_key`]), decoded, in order; all `None` on a
    /// failure. Counts nothing.
    pub async fn mget(&self, redis_keys: &[&str]) -> Vec<Option<Cached>> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(redis_keys);
        let Ok(values) = self.call::<Vec<Option<Vec<u8>>>>("MGET", &cmd).await else {
            return vec![None; redis_keys.len()];
        };
        let mut found: Vec<Option<Cached>> =
            values.into_iter().map(|v| v.and_then(decode)).collect();
        found.resize(redis_keys.len(), None);
        found
    }

    /// Stores what the store answered for `key` after a lookup that missed at `looked_up`,
    /// unless Redis knows better (see the module documentation). Best effort.
    pub async fn fill(&self, key: &str, value: &Cached, ttl: Duration, looked_up: Instant) {
        let left = self.fill_window.saturating_sub(looked_up.elapsed());
        if left.is_zero() || !self.breaker.allow() {
            return;
        }
        let deadline_ms = unix_ms(SystemTime::now() + left);
        let mut call = self.fill.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.mark_key(key))
            .arg(value.version())
            .arg(encode(value))
            .arg(ttl_ms(ttl))
            .arg(deadline_ms);
        let mut conn = self.conn.clone();
        match self
            .bounded("fill", call.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(1) => self.counters.fills.fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.counters.fills_refused.fetch_add(1, Ordering::Relaxed),
            Err(()) => 0,
        };
    }

    /// Marks `keys` as being written (before the transaction). False when any mark failed:
    /// Redis may then still hold an older version after the commit, so the caller must end
    /// the write with [`L2::end_write`] or hand the keys to [`L2::needs_repair`].
    pub async fn begin_write(&self, keys: &[String], write: u64) -> bool {
        if !self.breaker.allow() {
            return false;
        }
        let field = format!("w{write:x}");
        let calls = keys.iter().map(|key| self.mark(key, &field));
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// Runs *begin* for one key with the marker field `field`: true when Redis took it.
    async fn mark(&self, key: &str, field: &str) -> bool {
        let mut call = self.begin.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.mark_key(key))
            .arg(ttl_ms(self.mark_ttl))
            .arg(field);
        let mut conn = self.conn.clone();
        self.bounded("begin", call.invoke_async::<i64>(&mut conn))
            .await
            .is_ok()
    }

    /// Re-arms the markers of `keys` for `ttl` (a write still waiting for its COMMIT's verdict).
    pub async fn extend_marks(&self, keys: &[String], ttl: Duration) {
        let calls = keys.iter().map(|key| async move {
            let mut cmd = redis::cmd("PEXPIRE");
            cmd.arg(self.mark_key(key)).arg(ttl_ms(ttl));
            self.call::<i64>("PEXPIRE", &cmd).await
        });
        futures_util::future::join_all(calls).await;
    }

    /// Ends a write of `key` begun with [`L2::begin_write`]: `Some` with the committed state,
    /// `None` when nothing was committed. True when Redis took it.
    pub async fn end_write(
        &self,
        key: &str,
        write: u64,
        committed: Option<(&Cached, Duration)>,
    ) -> bool {
        if !self.breaker.allow() {
            return false;
        }
        let mut call = self.end.prepare_invoke();
        call.key(self.value_key(key)).key(self.mark_key(key));
        match committed {
            Some((value, ttl)) => call
                .arg(value.version())
                .arg(encode(value))
                .arg(ttl_ms(ttl)),
            None => call.arg("").arg("").arg(0),
        };
        call.arg(format!("w{write:x}"));
        let mut conn = self.conn.clone();
        self.bounded("end", call.invoke_async::<i64>(&mut conn))
            .await
            .is_ok()
    }

    /// Remembers keys whose committed state may not have reached Redis.
    pub fn needs_repair(&self, keys: impl IntoIterator<Item = String>) {
        let mut repair = self.repair.lock();
        repair.extend(keys);
        if repair.len() > MAX_REPAIR_KEYS {
            repair.clear();
            if !self.repair_lost.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "more than {MAX_REPAIR_KEYS} written keys wait for L2 repair: this instance \
                     stops vouching for L2, so every instance bypasses its caches until it restarts"
                );
            }
        }
    }

    /// True while keys wait for repair (this instance must not say it is caught up).
    pub fn has_pending_repair(&self) -> bool {
        self.repair_lost.load(Ordering::Relaxed) || !self.repair.lock().is_empty()
    }

    /// Deletes from Redis the values of keys waiting for repair (and blocks fills of them for
    /// `mark_ttl`), if Redis answers. True when none is left.
    pub async fn repair(&self) -> bool {
        let keys: Vec<String> = self.repair.lock().iter().take(1000).cloned().collect();
        if keys.is_empty() {
            return true;
        }
        if !self.breaker.allow() {
            return false;
        }
        // The *begin* script, left without its *end*: it deletes the value and blocks fills for
        // `mark_ttl`, so a fill of an older version read before the commit (at most
        // `fill_window` old) cannot land after the repair either. One call per key (a cluster
        // slot each).
        let field = format!("r{:x}", fastrand::u64(..));
        let calls = keys.iter().map(|key| self.mark(key, &field));
        let done = futures_util::future::join_all(calls).await;
        let mut repair = self.repair.lock();
        for (key, ok) in keys.iter().zip(done) {
            if ok {
                repair.remove(key);
            }
        }
        repair.is_empty()
    }

    /// Sends `PING`: true when Redis answered in time.
    pub async fn ping(&self) -> bool {
        self.call::<String>("PING", &redis::cmd("PING"))
            .await
            .is_ok()
    }

    async fn call<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T, ()> {
        let mut conn = self.conn.clone();
        self.bounded(what, cmd.query_async(&mut conn)).await
    }

    /// Runs one Redis call within the time budget, feeding the breaker.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ()> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.breaker.failure(what, &e);
                Err(())
            }
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.breaker.failure(what, &"timed out");
                Err(())
            }
        }
    }

    /// The Redis key of `key`'s value.
    pub fn value_key(&self, key: &str) -> String {
        let mut value_key = String::with_capacity(self.prefix.len() + key.len() + 3);
        value_key.push_str(&self.prefix);
        value_key.push_str(":{");
        value_key.push_str(key);
        value_key.push('}');
        value_key
    }

    fn mark_key(&self, key: &str) -> String {
        format!("{}:{{{key}}}:w", self.prefix)
    }
}

/// `<version>|D<document>` or `<version>|M`.
fn encode(value: &Cached) -> Vec<u8> {
    match value {
        Cached::Doc { version, body } => {
            let mut out = Vec::with_capacity(24 + body.len());
            out.extend_from_slice(format!("{version}|D").as_bytes());
            out.extend_from_slice(body);
            out
        }
        Cached::Missing { version } => format!("{version}|M").into_bytes(),
    }
}

fn decode(raw: Vec<u8>) -> Option<Cached> {
    let bar = raw.iter().position(|b| *b == b'|')?;
    let version: u64 = std::str::from_utf8(&raw[..bar]).ok()?.parse().ok()?;
    match raw.get(bar + 1)? {
        b'D' => Some(Cached::Doc {
            version,
            body: Bytes::from(raw).slice(bar + 2..),
        }),
        b'M' => Some(Cached::Missing { version }),
        _ => None,
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for value in [
            Cached::Doc {
                version: 7,
                body: Bytes::from_static(br#"{"id":"a|b","value":{}}"#),
            },
            Cached::Missing { version: 0 },
            Cached::Missing { version: u64::MAX },
        ] {
            assert_eq!(decode(encode(&value)), Some(value));
        }
        assert_eq!(decode(b"7|X".to_vec()), None);
        assert_eq!(decode(b"x|D{}".to_vec()), None);
        assert_eq!(decode(b"7".to_vec()), None);
    }

    /// The README's limit, exactly: 100,000 keys wait for repair; one more and the set is
    /// given up (the instance stays "not caught up" until it restarts).
    #[tokio::test]
    async fn the_repair_set_holds_exactly_max_repair_keys() {
        let config = CacheConfig {
            l2_url: Some("redis://127.0.0.1:1/0".to_string()), // never asked here
            ..CacheConfig::default()
        };
        let l2 = L2::connect(&config, Duration::from_secs(5)).unwrap();
        l2.needs_repair((0..MAX_REPAIR_KEYS).map(|i| format!("g/c/{i}")));
        assert_eq!(l2.repair.lock().len(), MAX_REPAIR_KEYS);
        assert!(
            !l2.repair_lost.load(Ordering::Relaxed),
            "at the limit: kept"
        );
        l2.needs_repair(std::iter::once("g/c/one-more".to_string()));
        assert!(l2.repair.lock().is_empty(), "past it: given up");
        assert!(l2.repair_lost.load(Ordering::Relaxed));
        assert!(l2.has_pending_repair());
        assert_eq!(MAX_REPAIR_KEYS, 100_000, "the number the README states");
    }
}
