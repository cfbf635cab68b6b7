//! Coherent L1s across instances: a write on one instance reaches the others' L1 through the
//! invalidation bus, and when the bus fails (a frozen Redis, a writer cut off from Redis, Redis
//! stopped or restarted empty) no instance serves a version older than an acknowledged write
//! past the stated bound, and no request fails.
//!
//! The fault tests run their own redis-server process on a spare port (so freezing it disturbs
//! no other test), and put a TCP proxy they can freeze between one instance and Redis.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datamiddleware::auth::Caller;
use datamiddleware::config::Config;
use support::{Backend, Redis, TestServer, free_port, unique_prefix};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How long after an acknowledged write another instance may still serve the older version
/// when the bus fails: `cache.bus_silence` (set to 300 ms here) plus room for a loaded machine.
const BOUND: Duration = Duration::from_millis(300 + 500);

fn with_l2(url: String, prefix: &str) -> impl Fn(&mut Config) + '_ {
    move |config: &mut Config| {
        config.cache.l2_url = Some(url.clone());
        config.cache.l2_prefix = prefix.to_string();
        config.cache.bus_heartbeat = Duration::from_millis(50);
        config.cache.bus_silence = Duration::from_millis(300);
    }
}

/// A redis-server of this test's own, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, &dir, &[]);
        OwnRedis {
            port,
            child,
            _dir: dir,
        }
    }

    /// Starts redis-server on `port` with its files in `dir` and `extra` arguments; waits until
    /// it accepts connections.
    fn spawn(port: u16, dir: &tempfile::TempDir, extra: &[&str]) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the server and starts an empty one on the same port.
    fn restart_empty(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, &self._dir, &[]);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `target` that can be frozen: it then forwards nothing, in either direction,
/// and closes nothing, like a network partition.
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, flag.clone()));
                tokio::spawn(pipe(server_read, client_write, flag.clone()));
            }
        });
        Proxy { port, frozen }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn version_on(server: &TestServer, id: &str) -> (u64, String) {
    version_at(server, &server.path(&format!("players/{id}"))).await
}

async fn version_at(server: &TestServer, path: &str) -> (u64, String) {
    let reply = server.client.get(path).await;
    assert_eq!(reply.status, 200, "a read failed: {:?}", reply.body);
    let tier = reply.header("x-cache").unwrap_or_default().to_string();
    (reply.json()["version"].as_u64().unwrap(), tier)
}

async fn put(server: &TestServer, id: &str, n: u64) -> u64 {
    put_path(server, &server.path(&format!("players/{id}")), n).await
}

async fn put_path(server: &TestServer, path: &str, n: u64) -> u64 {
    let reply = server
        .client
        .put(path, &format!(r#"{{"value":{{"n":{n}}}}}"#))
        .await;
    assert!(
        reply.status.is_success(),
        "a write failed: {} {:?}",
        reply.status,
        reply.body
    );
    reply.json()["version"].as_u64().unwrap()
}

/// Polls `reader` until it serves `version` or newer; the time it took.
async fn until_served(reader: &TestServer, id: &str, version: u64, limit: Duration) -> Duration {
    until_served_path(
        reader,
        &reader.path(&format!("players/{id}")),
        version,
        limit,
    )
    .await
}

async fn until_served_path(
    reader: &TestServer,
    path: &str,
    version: u64,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (served, _) = version_at(reader, path).await;
        if served >= version {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still version {served} {:?} after version {version} was acknowledged",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn a_write_on_one_instance_reaches_the_l1_of_the_others(redis: Redis) {
    let prefix = unique_prefix();
    let Some(_) = redis.urls() else { return };
    let l2 = |config: &mut Config| {
        redis.configure(config, &prefix);
    };
    let Some(a) = TestServer::start_with(Backend::Postgres, l2).await else {
        return;
    };
    let b = a.sibling_with(l2).await;
    put(&a, "p", 1).await;
    for round in 2..=20 {
        // b holds the current version in L1 (a read whose fill raced the invalidation of the
        // previous write does not fill, so it may take another read)...
        let mut tiers = Vec::new();
        while tiers.last().is_none_or(|tier| tier != "L1") {
            assert!(tiers.len() < 50, "b never served from L1: {tiers:?}");
            tiers.push(version_on(&b, "p").await.1);
        }
        // ...and serves the next one soon after a writes it.
        let version = put(&a, "p", round).await;
        until_served(&b, "p", version, Duration::from_secs(2)).await;
    }
    let bus = b.running.service.cache().bus().unwrap().counters();
    assert!(
        bus.applied.load(Ordering::SeqCst) >= 19,
        "the bus carried the writes"
    );
    assert_eq!(
        bus.gaps.load(Ordering::SeqCst),
        0,
        "no message lost at rest"
    );
}

redis_tests!(a_write_on_one_instance_reaches_the_l1_of_the_others);

/// Reads on `reader` in a loop until stopped: counts failures, and reads that began more than
/// [`BOUND`] after `floor` was acknowledged yet served an older version.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    stale: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    floor: Arc<parking_lot::Mutex<(u64, Instant)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(reader: &TestServer, id: &str) -> Load {
        Self::start_path(reader, reader.path(&format!("players/{id}")))
    }

    fn start_path(reader: &TestServer, path: String) -> Load {
        let client = reader.client.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (errors, stale, reads) = Default::default();
        let floor = Arc::new(parking_lot::Mutex::new((0, Instant::now())));
        let task = tokio::spawn({
            let (stop, errors, stale, reads, floor): (
                Arc<AtomicBool>,
                Arc<AtomicU64>,
                Arc<AtomicU64>,
                Arc<AtomicU64>,
                _,
            ) = (
                stop.clone(),
                Arc::clone(&errors),
                Arc::clone(&stale),
                Arc::clone(&reads),
                floor.clone(),
            );
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let began = Instant::now();
                    let (expected, acknowledged) = *floor.lock();
                    let reply = client.get(&path).await;
                    reads.fetch_add(1, Ordering::SeqCst);
                    if reply.status != 200 {
                        errors.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let served = reply.json()["version"].as_u64().unwrap_or(0);
                    if served < expected && began > acknowledged + BOUND {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Load {
            stop,
            errors,
            stale,
            reads,
            floor,
            task,
        }
    }

    fn acknowledged(&self, version: u64) {
        *self.floor.lock() = (version, Instant::now());
    }

    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.reads.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
            self.stale.load(Ordering::SeqCst),
        )
    }
}

/// Redis frozen (`SIGSTOP`: no socket closes): within the bound the other instance stops
/// serving its L1, so it reads the writer's new version from the store; nothing fails; after
/// `SIGCONT` the caches are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_makes_every_instance_bypass_its_caches() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let Some((a, b, _)) = pair_on(redis.url(), redis.url(), false).await else {
        return;
    };
    let mut version = put(&a, "f", 0).await;
    until_served(&b, "f", version, Duration::from_secs(2)).await;
    let load = Load::start(&b, "f");
    load.acknowledged(version);
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.signal("-STOP");
    for n in 1..=5 {
        version = put(&a, "f", n).await;
        load.acknowledged(version);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    until_served(&b, "f", version, BOUND).await;
    let health = b.client.get("/healthz").await;
    assert_eq!(
        health.status, 200,
        "Redis failing does not make an instance unhealthy"
    );
    assert_eq!(health.json()["cache"]["bus"], "broken");
    assert_eq!(
        a.client.get("/healthz").await.json()["cache"]["l2"],
        "failing"
    );
    redis.signal("-CONT");
    let cache = b.running.service.cache();
    assert!(
        cache.wait_trusted(Duration::from_secs(10)).await,
        "trust comes back"
    );
    version = put(&a, "f", 99).await;
    load.acknowledged(version);
    until_served(&b, "f", version, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (reads, errors, stale) = load.finish().await;
    assert!(reads > 50, "the load ran ({reads} reads)");
    assert_eq!(
        (errors, stale),
        (0, 0),
        "no failed and no stale read in {reads}"
    );
    let (_, tier) = version_on(&b, "f").await;
    assert_eq!(tier, "L1", "caches are served again after the freeze");
    assert_eq!(
        b.client.get("/healthz").await.json()["cache"]["bus"],
        "whole"
    );
}

/// One writer cut off from Redis (its traffic goes through a proxy that freezes), the bus up
/// for everyone else: the writer's heartbeat goes silent, so the other instance bypasses its
/// caches and serves the writer's commits from the store within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cut_off_from_redis_makes_the_others_bypass_their_caches() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.port).await;
    let Some((a, b, prefix)) = pair_on(proxy.url(), redis.url(), false).await else {
        return;
    };
    let mut version = put(&a, "c", 0).await;
    until_served(&b, "c", version, Duration::from_secs(2)).await;
    let load = Load::start(&b, "c");
    load.acknowledged(version);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.freeze(true);
    for n in 1..=5 {
        version = put(&a, "c", n).await;
        load.acknowledged(version);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    until_served(&b, "c", version, BOUND).await;
    proxy.freeze(false);
    let cache = b.running.service.cache();
    assert!(
        cache.wait_trusted(Duration::from_secs(10)).await,
        "trust comes back"
    );
    // The writer repairs what it could not write to L2, then says it is caught up again.
    let third = a.sibling_with(with_l2(redis.url(), &prefix)).await;
    until_served(&third, "c", version, Duration::from_secs(5)).await;
    let (reads, errors, stale) = load.finish().await;
    assert!(reads > 50, "the load ran ({reads} reads)");
    assert_eq!(
        (errors, stale),
        (0, 0),
        "no failed and no stale read in {reads}"
    );
}

/// Redis stopped, then started again empty: nothing fails meanwhile, and afterwards the
/// instances serve the current versions (none older survives anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_empty_fails_nothing() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let mut redis = OwnRedis::start();
    let Some((a, b, _)) = pair_on(redis.url(), redis.url(), false).await else {
        return;
    };
    let mut version = put(&a, "r", 0).await;
    until_served(&b, "r", version, Duration::from_secs(2)).await;
    let load = Load::start(&b, "r");
    load.acknowledged(version);
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    for n in 1..=3 {
        version = put(&a, "r", n).await;
        load.acknowledged(version);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    until_served(&b, "r", version, BOUND).await;
    redis.restart_empty();
    let cache = b.running.service.cache();
    assert!(
        cache.wait_trusted(Duration::from_secs(10)).await,
        "trust comes back"
    );
    version = put(&a, "r", 50).await;
    load.acknowledged(version);
    until_served(&b, "r", version, Duration::from_secs(2)).await;
    let (reads, errors, stale) = load.finish().await;
    assert!(reads > 50, "the load ran ({reads} reads)");
    assert_eq!(
        (errors, stale),
        (0, 0),
        "no failed and no stale read in {reads}"
    );
}

/// A Redis Cluster of this test's own: 3 masters and 3 replicas on spare ports.
struct OwnCluster {
    nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let nodes: Vec<OwnRedis> = (0..6)
            .map(|_| {
                let port = free_port();
                let dir = tempfile::tempdir().unwrap();
                let child = OwnRedis::spawn(
                    port,
                    &dir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "1000",
                        // A replica may take over however long ago it synced, and syncs at once.
                        "--cluster-replica-validity-factor",
                        "0",
                        "--repl-diskless-sync",
                        "yes",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                );
                OwnRedis {
                    port,
                    child,
                    _dir: dir,
                }
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = OwnCluster { nodes };
        cluster.wait_ok(0);
        cluster.wait_replicas_synced();
        cluster
    }

    /// Waits until every replica has synced with its master (a failover needs one).
    fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for index in 0..self.nodes.len() {
            loop {
                let info = self.cli(index, &["info", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until node `index` (a live one) reports `cluster_state:ok`.
    fn wait_ok(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.cli(index, &["cluster", "info"]);
            if info.contains("cluster_state:ok") {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster is not ok: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, index: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.nodes[index].port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }
}

/// On a cluster, the master holding a document's slot (and the bus's first node) is killed
/// under load; its replica takes over. Nothing fails, no read is older than an acknowledged
/// write past the bound, and the caches are served again after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_fails_nothing() {
    if support::Redis::Cluster.urls().is_none() {
        return;
    }
    let mut cluster = OwnCluster::start();
    let prefix = unique_prefix();
    // A document whose slot the first node (a master: the first three of `create` are) holds.
    let id = (0..1000)
        .map(|n| format!("m{n}"))
        .find(|id| {
            let key = format!("{prefix}:{{default/players/{id}}}");
            let slot: u32 = cluster
                .cli(0, &["cluster", "keyslot", &key])
                .trim()
                .parse()
                .unwrap();
            slot < 5461
        })
        .unwrap();
    let urls = cluster.urls();
    let configure = |config: &mut Config| {
        config.cache.l2_cluster_nodes = urls.clone();
        config.cache.l2_prefix = prefix.clone();
        config.cache.bus_heartbeat = Duration::from_millis(50);
        config.cache.bus_silence = Duration::from_millis(300);
    };
    let Some(a) = TestServer::start_with(Backend::Postgres, configure).await else {
        return;
    };
    let b = a.sibling_with(configure).await;
    let path = |s: &TestServer| s.path(&format!("players/{id}"));
    let mut version = put_path(&a, &path(&a), 0).await;
    until_served_path(&b, &path(&b), version, Duration::from_secs(2)).await;
    let load = Load::start_path(&b, path(&b));
    load.acknowledged(version);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.nodes[0].child.kill().unwrap();
    for n in 1..=10 {
        version = put_path(&a, &path(&a), n).await;
        load.acknowledged(version);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.wait_ok(1);
    let cache = b.running.service.cache();
    assert!(
        cache.wait_trusted(Duration::from_secs(15)).await,
        "trust comes back"
    );
    version = put_path(&a, &path(&a), 99).await;
    load.acknowledged(version);
    until_served_path(&b, &path(&b), version, Duration::from_secs(5)).await;
    let (reads, errors, stale) = load.finish().await;
    assert!(reads > 50, "the load ran ({reads} reads)");
    assert_eq!(
        (errors, stale),
        (0, 0),
        "no failed and no stale read in {reads}"
    );
    // And L2 is in use again on the new master.
    let c = a.sibling_with(configure).await;
    let read = c.client.get(&path(&c)).await;
    assert_eq!(read.json()["version"].as_u64(), Some(version));
    drop(cluster.nodes.remove(0));
}

/// Two instances on one PostgreSQL store and one key prefix, `a` reaching Redis at `a_url` and
/// `b` at `b_url` (the same server, or `a` through a proxy); `forget_quickly` sets
/// `bus_forget_after` to 1 s. `None` to skip.
async fn pair_on(
    a_url: String,
    b_url: String,
    forget_quickly: bool,
) -> Option<(TestServer, TestServer, String)> {
    let prefix = unique_prefix();
    let configure = |url: String| {
        let prefix = prefix.clone();
        move |config: &mut Config| {
            with_l2(url, &prefix)(config);
            if forget_quickly {
                config.cache.bus_forget_after = Duration::from_millis(1000);
            }
        }
    };
    let a = TestServer::start_with(Backend::Postgres, configure(a_url)).await?;
    let b = a.sibling_with(configure(b_url)).await;
    Some((a, b, prefix))
}

/// Readers of one key share an L2 lookup, but one who starts after the instance learnt of a
/// newer version must not receive the answer of a lookup sent before: it starts its own.
/// This test's own Redis is paused (`CLIENT PAUSE`) so the first lookup is still on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_invalidation_does_not_join_an_older_lookup() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let prefix = unique_prefix();
    let Some(a) = TestServer::start_with(Backend::Postgres, |config| {
        with_l2(redis.url(), &prefix)(config);
        // Room for the pause below: Redis answers after it, within the L2 budget, and the bus
        // (which the pause holds up too) stays whole.
        config.cache.bus_silence = Duration::from_secs(1);
        config.cache.l2_timeout = Duration::from_millis(400);
    })
    .await
    else {
        return;
    };
    let put = a
        .client
        .put(&a.path("players/j"), r#"{"value":{"v":1}}"#)
        .await;
    assert_eq!(put.status, 201);
    let cache = a.running.service.cache();
    cache.l1().invalidate(&format!("{}/players/j", a.game));
    let before = a.l2_lookups();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .query_async(&mut conn)
        .await
        .unwrap();
    let read = |server: &TestServer| {
        let (service, game) = (server.running.service.clone(), server.game.clone());
        tokio::spawn(async move { service.get(&Caller::trusted(), &game, "players", "j").await })
    };
    let first = read(&a);
    let joined = read(&a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(a.l2_lookups() - before, 1, "two readers, one lookup");
    // Another instance committed version 2 (as the bus would report it).
    cache.l1().remote_write(&format!("{}/players/j", a.game), 2);
    let after = read(&a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        a.l2_lookups() - before,
        2,
        "the reader after the invalidation started its own lookup"
    );
    for read in [first, joined, after] {
        assert_eq!(read.await.unwrap().unwrap().version, 1);
    }
}

/// A writer cut off from Redis for longer than `bus_forget_after` is still alive in the store's
/// list of instances, so the others keep bypassing their caches: no stale read however long
/// the cut lasts (it used to be forgotten after 10 s, and L2's older version served again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cut_off_longer_than_the_forget_bound_is_still_waited_for() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.port).await;
    let Some((a, b, _)) = pair_on(proxy.url(), redis.url(), true).await else {
        return;
    };
    let mut version = put(&a, "q", 0).await;
    until_served(&b, "q", version, Duration::from_secs(2)).await;
    proxy.freeze(true);
    version = put(&a, "q", 1).await;
    // Past the forget bound (1 s) and a few presence rounds (every 250 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (served, tier) = version_on(&b, "q").await;
    assert_eq!(served, version, "served {tier} version {served}");
    assert_eq!(
        b.client.get("/healthz").await.json()["cache"]["bus"],
        "broken"
    );
    proxy.freeze(false);
    let cache = b.running.service.cache();
    assert!(
        cache.wait_trusted(Duration::from_secs(10)).await,
        "trust comes back"
    );
    assert_eq!(version_on(&b, "q").await.0, version);
}

/// An instance that stops without a goodbye (a crash: nothing on the bus, no presence) holds
/// the others back for `bus_forget_after`, then is forgotten and the caches serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_forgotten_after_the_bound() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let Some((a, b, _)) = pair_on(redis.url(), redis.url(), true).await else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(600)).await; // presence rounds have seen both
    let cache = b.running.service.cache();
    assert!(cache.trusted());
    a.running
        .service
        .cache()
        .bus()
        .unwrap()
        .mute
        .store(true, Ordering::SeqCst);
    let muted = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!cache.trusted(), "a silent instance is waited for");
    assert!(
        cache.wait_trusted(Duration::from_secs(10)).await,
        "then forgotten"
    );
    let waited = muted.elapsed();
    // Counted from its last heartbeat, up to one interval (50 ms) before the mute.
    assert!(
        waited >= Duration::from_millis(950),
        "forgotten after {waited:?}, before bus_forget_after"
    );
}

/// A clean shutdown says goodbye: the other instance does not stop trusting its caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_does_not_hold_the_others_back() {
    if support::Redis::Standalone.urls().is_none() {
        return;
    }
    let redis = OwnRedis::start();
    let Some((a, b, _)) = pair_on(redis.url(), redis.url(), true).await else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counters = a.running.service.cache().bus().unwrap().counters();
    let before = counters.distrusted.load(Ordering::SeqCst);
    b.running.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        counters.distrusted.load(Ordering::SeqCst),
        before,
        "the goodbye was heard: no bypass"
    );
    assert!(a.running.service.cache().trusted());
}
