//! Black-box tests of the promises the README's "Running several instances" section, its
//! `[cache]` / `[warmup]` configuration block and `docs/operations.md` ("Redis (L2 and the
//! invalidation bus)", "Warm-up") make, written from those documents alone.
//!
//! Every test runs the real `datamiddleware` binary as separate processes, like an operator:
//! config files in a temporary directory, `--config <file>`, readiness by `/healthz`, SIGTERM /
//! SIGKILL / SIGSTOP from outside. The store is the PostgreSQL of
//! `DATAMIDDLEWARE_TEST_POSTGRES_URL` (a fresh game per test); the shared Redis is
//! `DATAMIDDLEWARE_TEST_REDIS_URL` (a fresh `l2_prefix` per test). A test that stops or freezes
//! Redis starts its own `redis-server` on a free port; the one that cuts a single instance off
//! Redis does it with a freezable TCP proxy in the test process. Without those variables the
//! tests are skipped, unless `CI` is set: then they fail (the two configuration tests need
//! neither: they use SQLite). Every process started here is killed by a drop guard.
//!
//! Timing bounds are the documents' own (`cache.bus_silence`, 400 ms by default) plus generous
//! slack for a loaded two-core machine; the stale windows seen are printed.

mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use support::{Http, Reply, free_port, in_ci, unique_game, unique_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary under test (Cargo builds it for integration tests of this package).
const BINARY: &str = env!("CARGO_BIN_EXE_datamiddleware");

/// `cache.bus_silence` by default (README).
const BUS_SILENCE: Duration = Duration::from_millis(400);

/// Slack on top of a documented bound, for a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1600);

// ---------------------------------------------------------------------------------------------
// Environment

/// The PostgreSQL and Redis URLs, or `None` (skip) when unset outside CI.
fn backends() -> Option<(String, String)> {
    let pg = std::env::var("DATAMIDDLEWARE_TEST_POSTGRES_URL").unwrap_or_default();
    let redis = std::env::var("DATAMIDDLEWARE_TEST_REDIS_URL").unwrap_or_default();
    if pg.is_empty() || redis.is_empty() {
        if in_ci() {
            panic!(
                "DATAMIDDLEWARE_TEST_POSTGRES_URL and DATAMIDDLEWARE_TEST_REDIS_URL must be set under CI"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: blackbox_instances needs DATAMIDDLEWARE_TEST_POSTGRES_URL and DATAMIDDLEWARE_TEST_REDIS_URL"
        );
        return None;
    }
    Some((pg, redis))
}

/// Whether `redis-server` can be started (needed by the tests that stop or freeze Redis).
fn have_redis_server() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !in_ci(),
            "redis-server is not installed, and CI forbids skipping"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED: redis-server is not installed");
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) and reaped when dropped; stdout and stderr go to files.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, dir: &Path, name: &str) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// stdout and stderr so far, escape sequences removed.
    fn logs(&self) -> String {
        let mut text = String::new();
        for path in [&self.stdout, &self.stderr] {
            if let Ok(mut f) = std::fs::File::open(path) {
                let mut s = String::new();
                let _ = f.read_to_string(&mut s);
                text.push_str(&strip_ansi(&s));
            }
        }
        text
    }

    fn stderr_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    /// The exit status once the process has ended, or `None` if it is still running.
    fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the exit, at most `limit`; `None` when it is still running then.
    async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The binary as a command, with no `DMW_*` or `RUST_LOG` inherited from the test's
/// environment (the config file alone decides), run in `dir`.
fn binary(dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("DMW_") || key_text == "RUST_LOG" {
            command.env_remove(&key);
        }
    }
    command.current_dir(dir);
    command
}

/// A `redis-server` of the test's own on `port` (no persistence).
struct RedisServer {
    proc: Proc,
    port: u16,
}

impl RedisServer {
    async fn start(dir: &Path, port: u16, name: &str) -> RedisServer {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &dir.display().to_string()]);
        let mut proc = Proc::spawn(command, dir, name);
        let url = format!("redis://127.0.0.1:{port}/0");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis_ping(&url) {
                break;
            }
            if let Some(status) = proc.try_status() {
                panic!("redis-server exited ({status}): {}", proc.logs());
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RedisServer { proc, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn redis_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(connection)
}

fn redis_ping(url: &str) -> bool {
    redis_connection(url)
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can be frozen: cuts one instance off from Redis while the others keep it.

struct FreezableProxy {
    port: u16,
    frozen: Arc<tokio::sync::watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    async fn start(upstream: SocketAddr) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(tokio::sync::watch::channel(false).0);
        let senders = frozen.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, senders.subscribe()));
                tokio::spawn(pump(sr, cw, senders.subscribe()));
            }
        });
        FreezableProxy {
            port,
            frozen,
            accept,
        }
    }

    /// Frozen: bytes are taken in and held, nothing is delivered (a partition, no socket closes).
    fn set_frozen(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Pumps end when their receivers see the sender gone.
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = frozen.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instances

/// What one instance's config file says.
#[derive(Clone)]
struct Setup {
    game: String,
    store: String,
    redis: Option<String>,
    prefix: String,
    /// Extra lines of `[cache]`.
    cache: String,
    /// Lines of `[warmup]`.
    warmup: String,
    /// (collection, its lines).
    collections: Vec<(String, String)>,
    tcp: bool,
}

impl Setup {
    fn new(store: &str, redis: Option<&str>) -> Setup {
        Setup {
            game: unique_game(),
            store: store.to_string(),
            redis: redis.map(str::to_string),
            prefix: unique_prefix(),
            cache: String::new(),
            warmup: String::new(),
            collections: vec![(
                "players".to_string(),
                "l2_ttl = \"30m\"\nnegative_ttl = \"1h\"\nl2_negative_ttl = \"1h\"\n".to_string(),
            )],
            tcp: false,
        }
    }

    fn toml(&self, http_port: u16, tcp_port: u16) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\nshutdown_grace = \"2s\"\n\n"
        ));
        t.push_str(&format!(
            "[tcp]\nenabled = {}\nlisten = \"127.0.0.1:{tcp_port}\"\n\n",
            self.tcp
        ));
        t.push_str("[log]\nfilter = \"info\"\n\n");
        t.push_str("[cache]\n");
        if let Some(url) = &self.redis {
            t.push_str(&format!("l2_url = \"{url}\"\n"));
        }
        t.push_str(&format!("l2_prefix = \"{}\"\n", self.prefix));
        t.push_str(&self.cache);
        t.push_str("\n[warmup]\n");
        t.push_str(&self.warmup);
        t.push_str(&format!(
            "\n[games.{}]\nstore = \"{}\"\n",
            self.game, self.store
        ));
        for (name, lines) in &self.collections {
            t.push_str(&format!(
                "\n[games.{}.collections.{name}]\n{lines}",
                self.game
            ));
        }
        t
    }
}

struct Instance {
    proc: Proc,
    http: Http,
    tcp_addr: SocketAddr,
    game: String,
    spawned: Instant,
}

impl Instance {
    /// Spawns the binary with `setup`; does not wait.
    fn spawn(dir: &Path, name: &str, setup: &Setup) -> Instance {
        let http_port = free_port();
        let tcp_port = free_port();
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, setup.toml(http_port, tcp_port)).unwrap();
        let mut command = binary(dir);
        command.arg("--config").arg(&config_path);
        let spawned = Instant::now();
        let proc = Proc::spawn(command, dir, name);
        Instance {
            proc,
            http: Http::new(format!("http://127.0.0.1:{http_port}")),
            tcp_addr: format!("127.0.0.1:{tcp_port}").parse().unwrap(),
            game: setup.game.clone(),
            spawned,
        }
    }

    /// Spawns the binary and waits until `/healthz` answers 200.
    async fn start(dir: &Path, name: &str, setup: &Setup) -> Instance {
        let mut instance = Instance::spawn(dir, name, setup);
        let first = instance.wait_listening(Duration::from_secs(30)).await;
        if first.status != 200 {
            instance.wait_healthz_ok(Duration::from_secs(30)).await;
        }
        instance
    }

    /// The first `/healthz` answer, whatever its status, waiting up to `limit` for the
    /// listener.
    async fn wait_listening(&mut self, limit: Duration) -> Reply {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(reply) = self.http.try_send(Method::GET, "/healthz", &[], None).await {
                return reply;
            }
            if let Some(status) = self.proc.try_status() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.proc.name,
                    self.proc.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen within {limit:?}:\n{}",
                self.proc.name,
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_healthz_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.healthz().await;
            if reply.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /healthz not 200 within {limit:?}: {} {:?}",
                self.proc.name,
                reply.status,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthz(&self) -> Reply {
        self.http
            .try_send(Method::GET, "/healthz", &[], None)
            .await
            .unwrap_or_else(|| panic!("{}: /healthz connection failed", self.proc.name))
    }

    /// `(l2, bus)` of `/healthz`'s `cache` member; also asserts the answer is 200.
    async fn cache_health(&self) -> (String, String) {
        let reply = self.healthz().await;
        assert_eq!(
            reply.status, 200,
            "{}: /healthz must stay 200 (README: \"`/healthz` stays 200\"): {:?}",
            self.proc.name, reply.body
        );
        let body = reply.json();
        let cache = &body["cache"];
        (
            cache["l2"].as_str().unwrap_or("<absent>").to_string(),
            cache["bus"].as_str().unwrap_or("<absent>").to_string(),
        )
    }

    /// Waits until `/healthz` shows `"cache": {"l2": l2, "bus": bus}`.
    async fn wait_cache_health(&self, l2: &str, bus: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let seen = self.cache_health().await;
            if seen.0 == l2 && seen.1 == bus {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{}: /healthz cache is {seen:?}, expected ({l2}, {bus}) within {limit:?}\n{}",
                self.proc.name,
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn path(&self, collection: &str, id: &str) -> String {
        format!("/api/v1/{}/{collection}/{id}", self.game)
    }

    async fn put(&self, collection: &str, id: &str, value: Value) -> Reply {
        let body = serde_json::json!({ "value": value }).to_string();
        self.http
            .try_put(&self.path(collection, id), &body)
            .await
            .unwrap_or_else(|| panic!("{}: PUT connection failed", self.proc.name))
    }

    async fn put_owned(&self, collection: &str, id: &str, owner: &str, value: Value) -> Reply {
        let body = serde_json::json!({ "value": value, "owner": owner }).to_string();
        self.http
            .try_put(&self.path(collection, id), &body)
            .await
            .unwrap_or_else(|| panic!("{}: PUT connection failed", self.proc.name))
    }

    /// PUT that must succeed; returns the new version.
    async fn write(&self, collection: &str, id: &str, value: Value) -> u64 {
        let reply = self.put(collection, id, value).await;
        assert!(
            reply.status == 200 || reply.status == 201,
            "{}: PUT {collection}/{id} failed: {} {:?}",
            self.proc.name,
            reply.status,
            reply.body
        );
        reply.json()["version"].as_u64().unwrap()
    }

    async fn get(&self, collection: &str, id: &str) -> Got {
        let reply = self
            .http
            .try_send(Method::GET, &self.path(collection, id), &[], None)
            .await
            .unwrap_or_else(|| panic!("{}: GET connection failed", self.proc.name));
        Got::from(reply)
    }

    /// Polls GET until the document's version is at least `version`; returns how long it took.
    /// Panics past `limit`. Every answer must be 200 or 404, and never older than `floor`.
    async fn wait_version(
        &self,
        collection: &str,
        id: &str,
        version: u64,
        since: Instant,
        limit: Duration,
    ) -> Duration {
        loop {
            let got = self.get(collection, id).await;
            assert!(
                got.status == 200 || got.status == 404,
                "{}: GET failed: {got:?}",
                self.proc.name
            );
            if got.version.unwrap_or(0) >= version {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < limit,
                "{}: still serves {got:?} {:?} after the acknowledgement of version {version} \
                 (bound {limit:?})",
                self.proc.name,
                since.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.proc.signal("TERM");
        self.proc
            .wait_exit(limit)
            .await
            .unwrap_or_else(|| panic!("{} did not exit after SIGTERM", self.proc.name))
    }
}

/// A document GET, reduced to what the tests look at.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    version: Option<u64>,
    tier: Option<String>,
    doc: Option<Value>,
}

impl From<Reply> for Got {
    fn from(reply: Reply) -> Got {
        let doc = (reply.status == 200).then(|| reply.json());
        Got {
            status: reply.status.as_u16(),
            version: doc.as_ref().and_then(|d| d["version"].as_u64()),
            tier: reply.header("x-cache").map(str::to_string),
            doc,
        }
    }
}

/// Per-reader check of "no cache ever keeps an older version than one it has already seen":
/// the versions one instance serves for one document never go backwards.
#[derive(Default)]
struct Monotonic {
    highest: u64,
}

impl Monotonic {
    fn see(&mut self, who: &str, got: &Got) {
        let v = got.version.unwrap_or(0);
        assert!(
            v >= self.highest,
            "{who} served version {v} after having served {} (README: \"no cache ever keeps an \
             older version than one it has already seen\"): {got:?}",
            self.highest
        );
        self.highest = v;
    }
}

// ---------------------------------------------------------------------------------------------
// TCP (docs/protocol.md): just enough for HELLO and a GET.

fn frame(opcode: u8, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x44, 0x4D, 0x01, opcode, 0, 0, 0, 0];
    f.extend_from_slice(&request_id.to_be_bytes());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

async fn read_frame(stream: &mut tokio::net::TcpStream) -> (u8, u32, Vec<u8>) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(&header[..3], &[0x44, 0x4D, 0x01], "frame header");
    let id = u32::from_be_bytes(header[8..12].try_into().unwrap());
    let len = u32::from_be_bytes(header[12..16].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    (header[3], id, body)
}

fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// GET over the TCP protocol: `(tier, version)` of the DOC answer.
async fn tcp_get(addr: SocketAddr, game: &str, collection: &str, id: &str) -> (u8, u64) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = vec![1u8];
        hello.extend_from_slice(&8u16.to_be_bytes());
        hello.extend_from_slice(b"blackbox");
        hello.push(0);
        hello.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&frame(0x01, 1, &hello)).await.unwrap();
        let (op, _, _) = read_frame(&mut stream).await;
        assert_eq!(op, 0x81, "HELLO_OK expected");
        let mut get = Vec::new();
        str8(&mut get, game);
        str8(&mut get, collection);
        str8(&mut get, id);
        stream.write_all(&frame(0x10, 7, &get)).await.unwrap();
        loop {
            let (op, rid, body) = read_frame(&mut stream).await;
            if op == 0x02 {
                continue; // a server PING; not expected this early
            }
            assert_eq!(rid, 7);
            assert_eq!(op, 0x90, "DOC expected, got opcode {op:#x}: {body:?}");
            let version = u64::from_be_bytes(body[2..10].try_into().unwrap());
            return (body[0], version);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("TCP GET answered")
}

// ---------------------------------------------------------------------------------------------
// Tests: configuration

/// One config file the binary must refuse: lines for `[cache]`, the `players` collection and
/// `[warmup]`, an environment variable, and the keys of which the message must name one.
struct Refusal {
    what: &'static str,
    cache: &'static str,
    players: &'static str,
    warmup: &'static str,
    env: Option<(&'static str, &'static str)>,
    key: &'static [&'static str],
}

const fn refusal(
    what: &'static str,
    section: &'static str,
    lines: &'static str,
    key: &'static [&'static str],
) -> Refusal {
    let (mut cache, mut players, mut warmup) = ("", "", "");
    match section.as_bytes() {
        b"cache" => cache = lines,
        b"players" => players = lines,
        _ => warmup = lines,
    }
    Refusal {
        what,
        cache,
        players,
        warmup,
        env: None,
        key,
    }
}

/// README: "An invalid value stops the start with a message naming its key."
/// operations.md: "An unknown key or invalid value stops the start (exit code 2) with a message
/// naming the key." Cases from the `[cache]` / `[warmup]` block: "(not both)" for `l2_url` and
/// `l2_cluster_nodes`, `l2_prefix` "([a-z0-9_.-], 1-32)", `bus_silence` "(at least 2 ×
/// bus_heartbeat)", `related` naming collections, "a bare number is refused" for durations. The
/// boundary `bus_silence = 2 × bus_heartbeat` and an existing `related` collection start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_refusals_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/store.db", dir.path().display());
    const PREFIX: &[&str] = &["cache.l2_prefix"];
    let cases = [
        refusal(
            "both l2_url and l2_cluster_nodes",
            "cache",
            "l2_url = \"redis://127.0.0.1:1/0\"\nl2_cluster_nodes = [\"redis://127.0.0.1:2\"]\n",
            &["cache.l2_url", "cache.l2_cluster_nodes"],
        ),
        refusal(
            "upper-case l2_prefix",
            "cache",
            "l2_prefix = \"Dmw\"\n",
            PREFIX,
        ),
        refusal("empty l2_prefix", "cache", "l2_prefix = \"\"\n", PREFIX),
        refusal(
            "33-character l2_prefix",
            "cache",
            "l2_prefix = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
            PREFIX,
        ),
        refusal(
            "l2_prefix with a colon",
            "cache",
            "l2_prefix = \"a:b\"\n",
            PREFIX,
        ),
        Refusal {
            env: Some(("DMW_CACHE__L2_PREFIX", "NOPE")),
            ..refusal("l2_prefix from the environment", "cache", "", PREFIX)
        },
        refusal(
            "bus_silence below 2 x bus_heartbeat",
            "cache",
            "bus_heartbeat = \"100ms\"\nbus_silence = \"199ms\"\n",
            &["cache.bus_silence"],
        ),
        refusal(
            "default bus_silence with a slower bus_heartbeat",
            "cache",
            "bus_heartbeat = \"300ms\"\n",
            &["cache.bus_silence", "cache.bus_heartbeat"],
        ),
        refusal(
            "related collection that does not exist",
            "players",
            "related = [\"nope\"]\n",
            &["related"],
        ),
        refusal(
            "bare-number l2_timeout",
            "cache",
            "l2_timeout = 50\n",
            &["l2_timeout"],
        ),
        refusal(
            "unknown key in [cache]",
            "cache",
            "l2_ur = \"redis://127.0.0.1:6379/0\"\n",
            &["l2_ur"],
        ),
        refusal(
            "accept_while_warming not a boolean",
            "warmup",
            "accept_while_warming = \"yes\"\n",
            &["accept_while_warming"],
        ),
        refusal(
            "unknown key in [warmup]",
            "warmup",
            "hot_key_file = \"x\"\n",
            &["hot_key_file"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let http_port = free_port();
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[tcp]\nenabled = false\n\
             [cache]\n{}\n[warmup]\n{}\n[games.g]\nstore = \"{store}\"\n\
             [games.g.collections.players]\n{}\n[games.g.collections.items]\n",
            case.cache, case.warmup, case.players
        );
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let mut command = binary(dir.path());
        command.arg("--config").arg(&path);
        if let Some((k, v)) = case.env {
            command.env(k, v);
        }
        let mut proc = Proc::spawn(command, dir.path(), &format!("bad{i}"));
        let status = proc.wait_exit(Duration::from_secs(15)).await;
        let stderr = proc.stderr_text();
        let logs = proc.logs();
        match status {
            None => failures.push(format!(
                "{}: the server started (still running after 15 s); config:\n{text}",
                case.what
            )),
            Some(status) => {
                if status.code() != Some(2) {
                    failures.push(format!(
                        "{}: exit status {status}, expected 2 (operations.md); output: {logs}",
                        case.what
                    ));
                }
                if !case.key.iter().any(|k| stderr.contains(k)) {
                    failures.push(format!(
                        "{}: stderr does not name {:?}: {stderr:?} (stdout+stderr: {logs:?})",
                        case.what, case.key
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "config refusals:\n{}",
        failures.join("\n")
    );

    // The boundary cases start: bus_silence exactly 2 × bus_heartbeat, related naming an
    // existing collection.
    let http_port = free_port();
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[tcp]\nenabled = false\n\
         [cache]\nbus_heartbeat = \"100ms\"\nbus_silence = \"200ms\"\n\
         [games.g]\nstore = \"{store}\"\n\
         [games.g.collections.players]\nrelated = [\"items\"]\n[games.g.collections.items]\n"
    );
    let path = dir.path().join("good.toml");
    std::fs::write(&path, &text).unwrap();
    let mut command = binary(dir.path());
    command.arg("--config").arg(&path);
    let proc = Proc::spawn(command, dir.path(), "good");
    let mut good = Instance {
        proc,
        http: Http::new(format!("http://127.0.0.1:{http_port}")),
        tcp_addr: "127.0.0.1:1".parse().unwrap(),
        game: "g".to_string(),
        spawned: Instant::now(),
    };
    let reply = good.wait_listening(Duration::from_secs(30)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let status = good.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM exits with status 0");
}

/// README's `[cache]` and `[warmup]` block lists the defaults; `datamiddleware config print`
/// "prints the effective configuration". A minimal file must print those defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_print_shows_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("min.toml");
    std::fs::write(
        &path,
        format!(
            "[games.g]\nstore = \"sqlite://{}/store.db\"\n[games.g.collections.players]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = binary(dir.path())
        .args(["config", "print", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "config print: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let printed: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("config print is not TOML ({e}):\n{text}"));
    let duration = |v: &toml::Value| -> Duration {
        humantime::parse_duration(v.as_str().unwrap_or_else(|| panic!("{v:?} not a string")))
            .unwrap()
    };
    let cache = printed["cache"].as_table().expect("[cache] printed");
    let warmup = printed["warmup"].as_table().expect("[warmup] printed");
    let mut wrong = Vec::new();
    let mut check = |what: &str, ok: bool, seen: String| {
        if !ok {
            wrong.push(format!("{what}: printed {seen}"));
        }
    };
    check(
        "cache.l1_max_bytes = 268435456",
        cache.get("l1_max_bytes").and_then(|v| v.as_integer()) == Some(268_435_456),
        format!("{:?}", cache.get("l1_max_bytes")),
    );
    check(
        "cache.l2_prefix = dmw",
        cache.get("l2_prefix").and_then(|v| v.as_str()) == Some("dmw"),
        format!("{:?}", cache.get("l2_prefix")),
    );
    check(
        "no l2_url",
        cache.get("l2_url").is_none_or(|v| v.as_str() == Some("")),
        format!("{:?}", cache.get("l2_url")),
    );
    for (key, want) in [
        ("l2_timeout", Duration::from_millis(50)),
        ("bus_heartbeat", Duration::from_millis(100)),
        ("bus_silence", Duration::from_millis(400)),
    ] {
        let seen = cache.get(key).map(&duration);
        check(
            &format!("cache.{key} = {want:?}"),
            seen == Some(want),
            format!("{seen:?}"),
        );
    }
    for (key, want) in [("rate", 20000), ("batch", 200), ("hot_after_misses", 3)] {
        check(
            &format!("warmup.{key} = {want}"),
            warmup.get(key).and_then(|v| v.as_integer()) == Some(want),
            format!("{:?}", warmup.get(key)),
        );
    }
    check(
        "warmup.accept_while_warming = false",
        warmup.get("accept_while_warming").and_then(|v| v.as_bool()) == Some(false),
        format!("{:?}", warmup.get("accept_while_warming")),
    );
    let players = &printed["games"]["g"]["collections"]["players"];
    check(
        "players.warm_recent = 0",
        players.get("warm_recent").and_then(|v| v.as_integer()) == Some(0),
        format!("{:?}", players.get("warm_recent")),
    );
    check(
        "players.related = []",
        players
            .get("related")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.is_empty()),
        format!("{:?}", players.get("related")),
    );
    assert!(wrong.is_empty(), "{}\nprinted:\n{text}", wrong.join("\n"));

    // An empty file: "with no [games.*] at all, exactly this game is used" — `default` on
    // sqlite://data/default.db, players 10m / 1h, "characters: 5m / 30m, items: 3m / 15m,
    // orders: 1m / 5m", negative TTLs 5s.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let output = binary(dir.path())
        .args(["config", "print", "--config"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(output.status.success(), "config print: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let printed: toml::Table = toml::from_str(&text).unwrap();
    let games = printed["games"].as_table().unwrap();
    assert_eq!(games.keys().collect::<Vec<_>>(), vec!["default"], "{text}");
    let default = &games["default"];
    assert_eq!(
        default["store"].as_str(),
        Some("sqlite://data/default.db"),
        "{text}"
    );
    let mut wrong = Vec::new();
    for (collection, l1, l2) in [
        ("players", "10m", "1h"),
        ("characters", "5m", "30m"),
        ("items", "3m", "15m"),
        ("orders", "1m", "5m"),
    ] {
        let c = &default["collections"][collection];
        for (key, want) in [
            ("l1_ttl", l1),
            ("l2_ttl", l2),
            ("negative_ttl", "5s"),
            ("l2_negative_ttl", "5s"),
        ] {
            let seen = c.get(key).map(&duration);
            if seen != Some(humantime::parse_duration(want).unwrap()) {
                wrong.push(format!(
                    "{collection}.{key}: printed {seen:?}, README {want}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}\nprinted:\n{text}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Tests: several instances on the shared Redis

/// README "Running several instances": "A store read fills L2 and L1, an L2 hit fills L1";
/// "`X-Cache` says `L1`, `L2` or `DB` (TCP: tier 1, 2, 3)"; "The writing instance serves the
/// new version from the acknowledgement on (read-your-writes). Another instance serves it, or a
/// newer one, within milliseconds while the bus is up"; `l1_ttl = "0s"`: "not kept in L1
/// (reads go to L2)". operations.md: keys `<prefix>:{game/collection/id}` and `…:w` ("expires
/// about 11 s after the last write began"), channel `<prefix>:bus`; "different `l2_prefix`es
/// never see each other".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_l2_and_follow_each_others_writes() {
    let Some((pg, redis_url)) = backends() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&pg, Some(&redis_url));
    setup
        .collections
        .push(("orders".to_string(), "l1_ttl = \"0s\"\n".to_string()));
    setup.tcp = true;
    let mut other_prefix = setup.clone();
    other_prefix.prefix = unique_prefix();
    let (a, b, c) = tokio::join!(
        Instance::start(dir.path(), "a", &setup),
        Instance::start(dir.path(), "b", &setup),
        Instance::start(dir.path(), "c", &other_prefix),
    );
    for i in [&a, &b, &c] {
        i.wait_cache_health("ok", "whole", Duration::from_secs(10))
            .await;
    }

    // The bus channel carries heartbeats.
    let channel = format!("{}:bus", setup.prefix);
    let url = redis_url.clone();
    let heard = tokio::task::spawn_blocking(move || {
        let mut con = redis_connection(&url).unwrap();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(&channel).unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        pubsub.get_message().is_ok()
    })
    .await
    .unwrap();
    assert!(
        heard,
        "nothing on the channel `<prefix>:bus` within 3 s (operations.md: channel `<prefix>:bus`; \
         README: bus_heartbeat 100ms)"
    );

    // Write on A: read-your-writes on A, an L2 hit on B, then L1 on B.
    let created = a.put("players", "p1", serde_json::json!({"gold": 1})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let on_a = a.get("players", "p1").await;
    assert_eq!(on_a.version, Some(1), "{on_a:?}");
    assert_eq!(on_a.tier.as_deref(), Some("L1"), "{on_a:?}");

    // The documented Redis keys exist.
    let key = format!("{}:{{{}/players/p1}}", setup.prefix, setup.game);
    let (value_ttl, marker_ttl) = {
        let mut con = redis_connection(&redis_url).unwrap();
        let value_ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{key}:w"))
            .query(&mut con)
            .unwrap();
        (value_ttl, ttl)
    };
    assert_ne!(
        value_ttl, -2,
        "operations.md: the document is kept at `<prefix>:{{game/collection/id}}`: {key} absent"
    );
    assert!(
        (1_620_000..=1_980_000).contains(&value_ttl),
        "README: l2_ttl = \"30m\" is the lifetime in Redis (±10 % jitter): PTTL {value_ttl} ms"
    );
    assert!(
        (1..=12_000).contains(&marker_ttl),
        "operations.md: the write marker `{key}:w` \"expires about 11 s after the last write \
         began\": PTTL {marker_ttl}"
    );

    let on_b = b.get("players", "p1").await;
    assert_eq!(on_b.version, Some(1), "{on_b:?}");
    assert_eq!(
        on_b.tier.as_deref(),
        Some("L2"),
        "first read on another instance is an L2 hit"
    );
    assert_eq!(on_b.doc, on_a.doc, "same document from both instances");
    let on_b = b.get("players", "p1").await;
    assert_eq!(
        on_b.tier.as_deref(),
        Some("L1"),
        "an L2 hit fills L1: {on_b:?}"
    );

    // Another deployment (other prefix) never sees this one's L2.
    let on_c = c.get("players", "p1").await;
    assert_eq!(on_c.version, Some(1));
    assert_eq!(
        on_c.tier.as_deref(),
        Some("DB"),
        "operations.md: different l2_prefixes never see each other: {on_c:?}"
    );

    // TCP tier 2 for an L2 answer, 1 for L1 (README: "TCP: tier 1, 2, 3").
    let v = a.write("players", "t1", serde_json::json!({"x": 1})).await;
    let (tier, version) = tcp_get(b.tcp_addr, &setup.game, "players", "t1").await;
    assert_eq!(
        (tier, version),
        (2, v),
        "TCP GET on B of a document A wrote"
    );
    let (tier, version) = tcp_get(b.tcp_addr, &setup.game, "players", "t1").await;
    assert_eq!((tier, version), (1, v), "TCP GET on B again: L1");
    let (tier, version) = tcp_get(c.tcp_addr, &setup.game, "players", "t1").await;
    assert_eq!(
        (tier, version),
        (3, v),
        "TCP GET on C (other prefix): the database"
    );

    // A missing id that B remembers as missing (negative_ttl 1h) is served once A creates it.
    let missing = b.get("players", "late").await;
    assert_eq!(missing.status, 404);
    let missing = b.get("players", "late").await;
    assert_eq!(missing.status, 404);
    // The missing id is remembered in Redis too, for l2_negative_ttl ("the same in Redis").
    let late_key = format!("{}:{{{}/players/late}}", setup.prefix, setup.game);
    let deadline = Instant::now() + Duration::from_secs(3);
    let negative_ttl = loop {
        let mut con = redis_connection(&redis_url).unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(&late_key).query(&mut con).unwrap();
        if ttl != -2 || Instant::now() > deadline {
            break ttl;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (3_240_000..=3_960_000).contains(&negative_ttl),
        "README: l2_negative_ttl = \"1h\" (\"the same in Redis\"): PTTL of {late_key} is \
         {negative_ttl} ms"
    );
    let ack = Instant::now();
    let v = a
        .write("players", "late", serde_json::json!({"n": 1}))
        .await;
    let created_window = b
        .wait_version("players", "late", v, ack, BUS_SILENCE + SLACK)
        .await;

    // Repeated writes, alternating writer: the writer reads its own write at once, the other
    // instance follows; versions served never go backwards.
    let mut seen_a = Monotonic::default();
    let mut seen_b = Monotonic::default();
    let mut windows = Vec::new();
    for i in 0..30u64 {
        let (writer, reader, wname, rname) = if i % 2 == 0 {
            (&a, &b, "A", "B")
        } else {
            (&b, &a, "B", "A")
        };
        let ack_reply = writer
            .put("players", "p1", serde_json::json!({"n": i}))
            .await;
        let ack = Instant::now();
        assert_eq!(ack_reply.status, 200, "{:?}", ack_reply.body);
        let version = ack_reply.json()["version"].as_u64().unwrap();
        let own = writer.get("players", "p1").await;
        assert_eq!(
            own.version,
            Some(version),
            "{wname} must read its own write at once (read-your-writes): {own:?}"
        );
        if wname == "A" {
            seen_a.see("A", &own)
        } else {
            seen_b.see("B", &own)
        }
        loop {
            let got = reader.get("players", "p1").await;
            if rname == "A" {
                seen_a.see("A", &got)
            } else {
                seen_b.see("B", &got)
            }
            if got.version >= Some(version) {
                windows.push(ack.elapsed());
                break;
            }
            assert!(
                ack.elapsed() < BUS_SILENCE + SLACK,
                "{rname} still serves {got:?} {:?} after {wname} acknowledged version {version}",
                ack.elapsed()
            );
        }
    }
    windows.sort();

    // _incr and DELETE travel the same way.
    let incr = a
        .http
        .post(
            &format!("{}/_incr", a.path("players", "p1")),
            r#"{"path": "/gold", "by": 5, "min": 0}"#,
        )
        .await;
    assert_eq!(incr.status, 200, "{:?}", incr.body);
    let v = incr.json()["version"].as_u64().unwrap();
    let ack = Instant::now();
    b.wait_version("players", "p1", v, ack, BUS_SILENCE + SLACK)
        .await;
    let deleted = a.http.delete(&a.path("players", "p1")).await;
    assert_eq!(deleted.status, 204);
    let ack = Instant::now();
    loop {
        let got = b.get("players", "p1").await;
        if got.status == 404 {
            break;
        }
        assert!(
            ack.elapsed() < BUS_SILENCE + SLACK,
            "B still serves a deleted document: {got:?}"
        );
    }

    // l1_ttl = "0s": reads go to L2, on the writer and on the other instance.
    a.write("orders", "o1", serde_json::json!({"total": 3}))
        .await;
    for (name, inst) in [("A", &a), ("B", &b), ("A", &a), ("B", &b)] {
        let got = inst.get("orders", "o1").await;
        assert_eq!(got.version, Some(1));
        assert_eq!(
            got.tier.as_deref(),
            Some("L2"),
            "README: l1_ttl \"0s\": not kept in L1 (reads go to L2); {name}: {got:?}"
        );
    }

    eprintln!(
        "stale window after the acknowledgement, bus up: created-after-404 {created_window:?}, \
         median {:?}, max {:?} over {} writes",
        windows[windows.len() / 2],
        windows.last().unwrap(),
        windows.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: Redis failures (own redis-server)

/// Shared part of the Redis-outage tests: two instances on `redis`, a document read by both.
async fn outage_pair(dir: &Path, pg: &str, redis: &RedisServer) -> (Setup, Instance, Instance) {
    let setup = Setup::new(pg, Some(&redis.url()));
    let (a, b) = tokio::join!(
        Instance::start(dir, "a", &setup),
        Instance::start(dir, "b", &setup),
    );
    for i in [&a, &b] {
        i.wait_cache_health("ok", "whole", Duration::from_secs(10))
            .await;
    }
    let v = a.write("players", "k", serde_json::json!({"n": 1})).await;
    assert_eq!(v, 1);
    let first = b.get("players", "k").await;
    assert_eq!(first.version, Some(1));
    let second = b.get("players", "k").await;
    assert_eq!(
        second.tier.as_deref(),
        Some("L1"),
        "B caches before the outage: {second:?}"
    );
    // `stable`: in B's L1 before the outage, not read during it, never written again.
    a.write("players", "stable", serde_json::json!({"s": 1}))
        .await;
    b.get("players", "stable").await;
    let cached = b.get("players", "stable").await;
    assert_eq!(cached.tier.as_deref(), Some("L1"), "{cached:?}");
    (setup, a, b)
}

/// Requests on both instances during an outage: every one must succeed (README: "When Redis
/// fails, requests do not"). Runs until both `/healthz` show `failing` / `broken` (README:
/// "`/healthz` stays 200 and shows `"cache": {"l2": "failing", "bus": "broken"}`"), at least
/// `min`; then a read on B must come from the store. Returns the longest mean request time of
/// one round (four requests).
async fn traffic_during_outage(
    a: &Instance,
    b: &Instance,
    seen_b: &mut Monotonic,
    min: Duration,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut n = 0u64;
    loop {
        n += 1;
        let t = Instant::now();
        let put = a
            .put(
                "players",
                &format!("o{}", n % 7),
                serde_json::json!({"n": n}),
            )
            .await;
        assert!(
            put.status == 200 || put.status == 201,
            "PUT on A during the outage failed: {} {:?}",
            put.status,
            put.body
        );
        let incr = b
            .http
            .post(
                &format!("{}/_incr", b.path("players", "counter")),
                r#"{"path": "/c", "by": 1}"#,
            )
            .await;
        assert!(
            incr.status == 200 || incr.status == 404,
            "_incr on B during the outage failed: {} {:?}",
            incr.status,
            incr.body
        );
        if incr.status == 404 {
            b.write("players", "counter", serde_json::json!({"c": 0}))
                .await;
        }
        let got = b.get("players", "k").await;
        assert_eq!(got.status, 200, "GET on B during the outage: {got:?}");
        seen_b.see("B", &got);
        let got = a.get("players", &format!("o{}", n % 7)).await;
        assert_eq!(got.status, 200, "GET on A during the outage: {got:?}");
        slowest = slowest.max(t.elapsed() / 4);
        let last_health = [a.cache_health().await, b.cache_health().await];
        let done = last_health
            .iter()
            .all(|(l2, bus)| l2 == "failing" && bus == "broken");
        if done && start.elapsed() >= min {
            let got = b.get("players", "k").await;
            assert_eq!(
                got.tier.as_deref(),
                Some("DB"),
                "README: while the bus is broken an instance \"bypasses L1 and L2 and reads the \
                 store\": {got:?}"
            );
            return slowest;
        }
        assert!(
            start.elapsed() < limit,
            "/healthz cache of (A, B) is {last_health:?}, expected (\"failing\", \"broken\") \
             within {limit:?} of the outage (README)\nA:\n{}\nB:\n{}",
            a.proc.logs(),
            b.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After Redis is back: both recover ("used again automatically"), B starts from an empty L1,
/// never serves a version older than `floor`, follows A's next write, and uses L1 and L2 again.
async fn after_recovery(a: &Instance, b: &Instance, seen_b: &mut Monotonic, floor: u64) {
    for i in [a, b] {
        let took = i
            .wait_cache_health("ok", "whole", Duration::from_secs(20))
            .await;
        eprintln!(
            "{}: cache ok / bus whole {took:?} after Redis came back",
            i.proc.name
        );
    }
    // README: the instance "reads the store until the bus is whole again, then starts from an
    // empty L1".
    let stable = b.get("players", "stable").await;
    assert_eq!(stable.version, Some(1), "{stable:?}");
    assert_ne!(
        stable.tier.as_deref(),
        Some("L1"),
        "README: after the bus is whole again an instance \"starts from an empty L1\", yet a \
         document cached before the outage is an L1 hit: {stable:?}"
    );
    let got = b.get("players", "k").await;
    seen_b.see("B", &got);
    assert!(
        got.version >= Some(floor),
        "B serves {got:?} after recovery, older than version {floor} it served during the outage"
    );
    let ack = Instant::now();
    let v = a
        .write("players", "k", serde_json::json!({"n": "after"}))
        .await;
    b.wait_version("players", "k", v, ack, BUS_SILENCE + SLACK)
        .await;
    // Caches are used again: a second read is an L1 hit.
    let mut tiers = Vec::new();
    for _ in 0..3 {
        let got = b.get("players", "k").await;
        seen_b.see("B", &got);
        tiers.push(got.tier.clone());
    }
    assert_eq!(
        tiers.last().unwrap().as_deref(),
        Some("L1"),
        "B does not use L1 again after Redis came back: {tiers:?}"
    );
    // L2 is used again: a fresh document written on A is an L2 hit on B.
    a.write("players", "fresh", serde_json::json!({"f": 1}))
        .await;
    let got = b.get("players", "fresh").await;
    assert_eq!(
        got.tier.as_deref(),
        Some("L2"),
        "L2 is not used again after Redis came back: {got:?}"
    );
}

/// README: "When Redis fails, requests do not … `/healthz` stays 200 and shows `"cache":
/// {"l2": "failing", "bus": "broken"}`. A Redis restarted empty … is used again
/// automatically." "Another instance serves it … within `cache.bus_silence` (400 ms by
/// default) when the bus fails: an instance that stops hearing every live instance (a frozen or
/// stopped Redis …) bypasses L1 and L2 and reads the store until the bus is whole again".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty() {
    let Some((pg, _)) = backends() else { return };
    if !have_redis_server() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = RedisServer::start(dir.path(), port, "redis1").await;
    let (_setup, a, b) = outage_pair(dir.path(), &pg, &redis).await;
    let mut seen_b = Monotonic::default();
    seen_b.see("B", &b.get("players", "k").await);

    drop(redis); // SIGKILL
    let reply = a.put("players", "k", serde_json::json!({"n": 2})).await;
    let ack = Instant::now();
    assert_eq!(reply.status, 200, "write with Redis gone: {:?}", reply.body);
    let v2 = reply.json()["version"].as_u64().unwrap();
    let own = a.get("players", "k").await;
    assert_eq!(own.version, Some(v2), "read-your-writes with Redis gone");
    let window = b
        .wait_version("players", "k", v2, ack, BUS_SILENCE + SLACK)
        .await;
    eprintln!("Redis killed: B served the new version {window:?} after the acknowledgement");

    let slowest = traffic_during_outage(
        &a,
        &b,
        &mut seen_b,
        Duration::from_millis(1000),
        Duration::from_secs(8),
    )
    .await;
    eprintln!("Redis killed: slowest round of requests, per request {slowest:?}");
    let logs = a.proc.logs().to_lowercase();
    assert!(
        logs.lines()
            .any(|l| l.contains("bus") && l.contains("broken")),
        "operations.md: \"the log says … when the bus is broken\":\n{logs}"
    );

    let redis = RedisServer::start(dir.path(), port, "redis1-again").await;
    after_recovery(&a, &b, &mut seen_b, v2).await;
    drop(redis);
}

/// The same promises with a frozen Redis (SIGSTOP: no socket closes), and after SIGCONT the
/// writes made meanwhile must not let an older version come back from L2 (README: "a writer
/// that dies after its commit leaves no older version in L2"; architecture.md: a writer whose
/// L2 steps failed stops heartbeating until it has repaired them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_and_resumed() {
    let Some((pg, _)) = backends() else { return };
    if !have_redis_server() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), free_port(), "redis2").await;
    let (_setup, a, b) = outage_pair(dir.path(), &pg, &redis).await;
    let mut seen_b = Monotonic::default();
    seen_b.see("B", &b.get("players", "k").await);

    redis.proc.signal("STOP");
    let reply = a.put("players", "k", serde_json::json!({"n": 2})).await;
    let ack = Instant::now();
    assert_eq!(
        reply.status, 200,
        "write with Redis frozen: {:?}",
        reply.body
    );
    let v2 = reply.json()["version"].as_u64().unwrap();
    let own = a.get("players", "k").await;
    assert_eq!(own.version, Some(v2), "read-your-writes with Redis frozen");
    let window = b
        .wait_version("players", "k", v2, ack, BUS_SILENCE + SLACK)
        .await;
    eprintln!("Redis frozen: B served the new version {window:?} after the acknowledgement");
    seen_b.see("B", &b.get("players", "k").await);

    let slowest = traffic_during_outage(
        &a,
        &b,
        &mut seen_b,
        Duration::from_millis(1000),
        Duration::from_secs(10),
    )
    .await;
    eprintln!("Redis frozen: slowest round of requests, per request {slowest:?}");

    redis.proc.signal("CONT");
    // While recovering, B must never go back to version 1 (kept in L2 before the freeze).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = b.get("players", "k").await;
        seen_b.see("B", &got);
        let (a_health, b_health) = (a.cache_health().await, b.cache_health().await);
        let whole = |h: &(String, String)| h.0 == "ok" && h.1 == "whole";
        if whole(&a_health) && whole(&b_health) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered 20 s after SIGCONT: A {a_health:?}, B {b_health:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    after_recovery(&a, &b, &mut seen_b, v2).await;
    drop(redis);
}

/// One instance cut off from Redis while the other keeps it (README: "an instance that stops
/// hearing every live instance (… itself or another instance cut off from it …) bypasses L1
/// and L2 … within `cache.bus_silence`"). The cut-off writer cannot update L2, which still holds
/// the version before its write; the other instance must serve the new version within the
/// bound and then never the older one again — also past the 10 s after which a silent publisher
/// "is taken for gone" (architecture.md), since the writer is alive (README: it "keeps the other
/// instances bypassing their caches" until its repair is done). After the cut heals, the newest
/// version is served everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_cut_off_from_redis_alone() {
    let Some((pg, redis_url)) = backends() else {
        return;
    };
    let upstream: SocketAddr = {
        let rest = redis_url.trim_start_matches("redis://");
        let host_port = rest.split('/').next().unwrap();
        let host_port = host_port.rsplit('@').next().unwrap();
        tokio::net::lookup_host(host_port)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let db = redis_url
        .rsplit_once('/')
        .map(|(_, db)| db)
        .filter(|db| db.parse::<u32>().is_ok())
        .unwrap_or("0")
        .to_string();
    let proxy = FreezableProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let setup_b = Setup::new(&pg, Some(&redis_url));
    let mut setup_a = setup_b.clone();
    setup_a.redis = Some(format!("redis://127.0.0.1:{}/{db}", proxy.port));
    let (a, b) = tokio::join!(
        Instance::start(dir.path(), "a", &setup_a),
        Instance::start(dir.path(), "b", &setup_b),
    );
    for i in [&a, &b] {
        i.wait_cache_health("ok", "whole", Duration::from_secs(10))
            .await;
    }
    a.write("players", "k", serde_json::json!({"n": 1})).await;
    let first = b.get("players", "k").await;
    assert_eq!(first.tier.as_deref(), Some("L2"), "{first:?}");
    let mut seen_b = Monotonic::default();
    seen_b.see("B", &b.get("players", "k").await);
    a.write("players", "stable", serde_json::json!({"s": 1}))
        .await;
    b.get("players", "stable").await;
    // `q`: cached by B (L2, then L1) and not read by B during the cut.
    a.write("players", "q", serde_json::json!({"n": 1})).await;
    assert_eq!(b.get("players", "q").await.tier.as_deref(), Some("L2"));
    assert_eq!(b.get("players", "q").await.tier.as_deref(), Some("L1"));

    proxy.set_frozen(true);
    let cut = Instant::now();
    let reply = a.put("players", "k", serde_json::json!({"n": 2})).await;
    let ack = Instant::now();
    assert_eq!(reply.status, 200, "write while cut off: {:?}", reply.body);
    let v2 = reply.json()["version"].as_u64().unwrap();
    let q2 = a.write("players", "q", serde_json::json!({"n": 2})).await;
    let window = b
        .wait_version("players", "k", v2, ack, BUS_SILENCE + SLACK)
        .await;
    eprintln!(
        "writer cut off: B served the new version {window:?} after the acknowledgement \
         ({:?} after the cut)",
        ack.duration_since(cut)
    );

    // Keep reading on B past 10 s + bus_silence of A's silence: never the older version.
    let mut b_bus: Vec<(String, Duration)> = Vec::new();
    let mut q_read = None;
    while cut.elapsed() < Duration::from_secs(13) {
        let got = b.get("players", "k").await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            got.version >= Some(v2),
            "B serves {got:?} {:?} after A was cut off from Redis and wrote version {v2}: the \
             older version came back (from L2)",
            cut.elapsed()
        );
        seen_b.see("B", &got);
        let own = a.get("players", "k").await;
        assert_eq!(own.version, Some(v2), "A reads its own write: {own:?}");
        let (_, bus) = b.cache_health().await;
        if b_bus.last().map(|(b, _)| b) != Some(&bus) {
            b_bus.push((bus.clone(), cut.elapsed()));
        }
        // Once B trusts its caches again while A is still cut off, `q` must not come back
        // at the version A could not remove from L2.
        if bus == "whole" && q_read.is_none() {
            q_read = Some((b.get("players", "q").await, cut.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("writer cut off: B's bus state went {b_bus:?} (time since the cut)");
    let (q_got, q_at) = match q_read {
        Some(read) => read,
        None => (b.get("players", "q").await, cut.elapsed()),
    };
    let mut failures = Vec::new();
    if q_got.version < Some(q2) {
        let q_late = b.get("players", "q").await;
        failures.push(format!(
            "B served `q` at {q_got:?} {q_at:?} after the cut, while A — alive, only cut off \
             from Redis — had acknowledged version {q2} {:?} after the cut (and at {:?} after \
             the cut B still served version {:?} from {:?}); B's bus states since the cut: \
             {b_bus:?}. README: another instance serves the new version \"within \
             `cache.bus_silence` … when the bus fails\"",
            ack.duration_since(cut),
            cut.elapsed(),
            q_late.version,
            q_late.tier
        ));
    }

    proxy.set_frozen(false);
    after_recovery(&a, &b, &mut seen_b, v2).await;
    let q_after = b.get("players", "q").await;
    if q_after.version < Some(q2) {
        failures.push(format!(
            "after the cut healed and both instances report ok / whole, B still serves `q` at \
             {q_after:?}, older than version {q2}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// operations.md "Start without Redis: the instance starts (after waiting up to 2 s for the
/// bus) and serves from the store until Redis answers."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_without_redis_then_redis_appears() {
    let Some((pg, _)) = backends() else { return };
    if !have_redis_server() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let setup = Setup::new(&pg, Some(&format!("redis://127.0.0.1:{port}/0")));
    let a = Instance::start(dir.path(), "a", &setup).await;
    let started = a.spawned.elapsed();
    assert!(
        started < Duration::from_secs(2) + Duration::from_secs(8),
        "started {started:?} after spawning without Redis (up to 2 s for the bus)"
    );
    a.write("players", "k", serde_json::json!({"n": 1})).await;
    let got = a.get("players", "k").await;
    assert_eq!(got.version, Some(1), "{got:?}");
    let got = a.get("players", "k").await;
    assert_eq!(
        got.tier.as_deref(),
        Some("DB"),
        "without Redis the bus is not whole: reads go to the store: {got:?}"
    );
    let (l2, bus) = a.cache_health().await;
    assert_eq!(bus, "broken", "/healthz without Redis: l2 {l2}, bus {bus}");

    let redis = RedisServer::start(dir.path(), port, "redis3").await;
    let took = a
        .wait_cache_health("ok", "whole", Duration::from_secs(20))
        .await;
    eprintln!("Redis appeared: cache ok / bus whole after {took:?}");
    a.write("players", "k", serde_json::json!({"n": 2})).await;
    let got = a.get("players", "k").await;
    assert_eq!(got.version, Some(2));
    assert_eq!(
        got.tier.as_deref(),
        Some("L1"),
        "caches used once Redis answers: {got:?}"
    );
    drop(redis);
}

/// README "When Redis fails": "`/healthz` stays 200 and shows `"cache": {"l2": "failing",
/// "bus": "broken"}`"; operations.md: "Redis down … `/healthz` stays 200 and shows `"cache":
/// {"l2": "failing" | "ok", …}`". An operator watching `/healthz` of an instance that gets no
/// traffic at that moment (a new instance behind a load balancer, a quiet hour) must see the
/// outage too: Redis killed under an idle instance, and an instance started with no Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instance_healthz_shows_redis_down() {
    let Some((pg, _)) = backends() else { return };
    if !have_redis_server() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), free_port(), "redis4").await;
    let setup = Setup::new(&pg, Some(&redis.url()));
    let dead_port = free_port();
    let no_redis = Setup::new(&pg, Some(&format!("redis://127.0.0.1:{dead_port}/0")));
    let (idle, fresh) = tokio::join!(
        Instance::start(dir.path(), "idle", &setup),
        Instance::start(dir.path(), "fresh", &no_redis),
    );
    idle.wait_cache_health("ok", "whole", Duration::from_secs(10))
        .await;
    drop(redis);
    // bus_silence, a breaker probe (250 ms) and slack.
    let limit = BUS_SILENCE + Duration::from_millis(250) + SLACK;
    let mut failures = Vec::new();
    for (what, instance) in [
        ("Redis killed under an idle instance", &idle),
        ("an instance started without Redis", &fresh),
    ] {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let health = instance.cache_health().await;
            if seen.last() != Some(&health) {
                seen.push(health.clone());
            }
            if health.0 == "failing" && health.1 == "broken" {
                break;
            }
            if start.elapsed() > limit {
                failures.push(format!(
                    "{what}: /healthz cache went {seen:?} over {limit:?} with no API traffic, \
                     never (\"failing\", \"broken\")"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Tests: warm-up

/// README: `warm_recent`: "at start, warm the caches with this many most recently updated
/// documents"; `related`: "when a player becomes hot, the documents its owner has there are
/// loaded into the caches"; `hot_after_misses`: "L1 misses (recent) that make a key hot";
/// `hot_keys_file`: "hot keys saved at shutdown, warmed at the next start". operations.md: "the
/// hot keys are written at a clean shutdown (SIGTERM …; atomically, via a `.partial` file) and
/// read at the next start; a missing file is a first start, malformed lines are skipped with a
/// warning. Progress: … then `warm-up done`."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_recent_related_and_hot_keys_file() {
    let Some((pg, _)) = backends() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&pg, None);
    setup.collections = vec![
        ("players".to_string(), "related = [\"items\"]\n".to_string()),
        ("items".to_string(), String::new()),
    ];
    let writer = Instance::start(dir.path(), "writer", &setup).await;
    for i in 0..10 {
        writer
            .write("players", &format!("p{i}"), serde_json::json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    writer
        .write("players", "p0", serde_json::json!({"i": "again"}))
        .await;
    // A player owned by o5, items of o5 and of o6.
    let r = writer
        .put_owned("players", "owned", "o5", serde_json::json!({"p": 1}))
        .await;
    assert_eq!(r.status, 201);
    for (id, owner) in [("i1", "o5"), ("i2", "o5"), ("i3", "o6")] {
        let r = writer
            .put_owned("items", id, owner, serde_json::json!({"it": id}))
            .await;
        assert_eq!(r.status, 201);
    }
    // `owned` and the items are now the most recent; rewrite p0, p9, p8 last so they are.
    for id in ["p8", "p9", "p0"] {
        tokio::time::sleep(Duration::from_millis(15)).await;
        writer
            .write("players", id, serde_json::json!({"last": id}))
            .await;
    }

    let hot_file = dir.path().join("hot").join("hot_keys");
    std::fs::create_dir_all(hot_file.parent().unwrap()).unwrap();
    let mut warm = setup.clone();
    warm.collections[0].1 = "related = [\"items\"]\nwarm_recent = 3\n".to_string();
    warm.warmup = format!(
        "hot_keys_file = \"{}\"\nhot_after_misses = 1\n",
        hot_file.display()
    );
    let mut a = Instance::start(dir.path(), "a", &warm).await;
    assert!(
        a.proc.logs().contains("warm-up done"),
        "operations.md: progress ends with `warm-up done`:\n{}",
        a.proc.logs()
    );
    for id in ["p0", "p9", "p8"] {
        let got = a.get("players", id).await;
        assert_eq!(
            got.tier.as_deref(),
            Some("L1"),
            "warm_recent = 3: {id} is among the 3 most recently updated: {got:?}"
        );
    }
    for id in ["p7", "p1"] {
        let got = a.get("players", id).await;
        assert_eq!(
            got.tier.as_deref(),
            Some("DB"),
            "warm_recent = 3: {id} is not among the 3 most recent: {got:?}"
        );
    }
    // `owned` becomes hot at its first miss: o5's items are loaded, o6's are not.
    let got = a.get("players", "owned").await;
    assert_eq!(got.tier.as_deref(), Some("DB"), "{got:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut related = Vec::new();
    for id in ["i1", "i2", "i3"] {
        related.push((id, a.get("items", id).await.tier));
    }
    assert_eq!(
        related,
        vec![
            ("i1", Some("L1".to_string())),
            ("i2", Some("L1".to_string())),
            ("i3", Some("DB".to_string())),
        ],
        "README related: the hot player's owner's items are loaded into the caches, others not"
    );

    // Clean shutdown writes the hot keys file (and no `.partial` is left).
    let status = a.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM: exit status 0");
    assert!(
        hot_file.exists(),
        "hot_keys_file not written at SIGTERM:\n{}",
        a.proc.logs()
    );
    let leftovers: Vec<_> = std::fs::read_dir(hot_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let saved = std::fs::read_to_string(&hot_file).unwrap();
    eprintln!("hot keys file:\n{saved}");
    // A malformed line is skipped with a warning; the rest still warms.
    std::fs::write(&hot_file, format!("%%% not a key %%%\n{saved}")).unwrap();

    let mut again = warm.clone();
    again.collections[0].1 = "related = [\"items\"]\n".to_string();
    let b = Instance::start(dir.path(), "b", &again).await;
    let logs = b.proc.logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && (l.to_lowercase().contains("malformed") || l.to_lowercase().contains("hot"))),
        "operations.md: malformed lines are skipped with a warning; no warning logged:\n{logs}"
    );
    for id in ["p7", "p1", "owned"] {
        let got = b.get("players", id).await;
        assert_eq!(
            got.tier.as_deref(),
            Some("L1"),
            "{id} was hot (a miss with hot_after_misses = 1) and saved at shutdown, so it is \
             warmed at the next start: {got:?}\nhot keys file:\n{saved}"
        );
    }
    let got = b.get("players", "p2").await;
    assert_eq!(
        got.tier.as_deref(),
        Some("DB"),
        "p2 was never read: not hot: {got:?}"
    );
    drop(b);

    // hot_after_misses = 0 "turns adaptive warming off": no key becomes hot, so neither the
    // related items are loaded nor anything is warmed at the next start.
    let off_file = dir.path().join("hot").join("off_keys");
    let mut off = setup.clone();
    off.warmup = format!(
        "hot_keys_file = \"{}\"\nhot_after_misses = 0\n",
        off_file.display()
    );
    let mut d = Instance::start(dir.path(), "d", &off).await;
    for _ in 0..3 {
        d.get("players", "owned").await;
        d.get("players", "p3").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = d.get("items", "i2").await;
    assert_eq!(
        got.tier.as_deref(),
        Some("DB"),
        "hot_after_misses = 0: no player becomes hot, so its related items are not loaded: {got:?}"
    );
    let status = d.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    let e = Instance::start(dir.path(), "e", &off).await;
    for id in ["p3", "owned"] {
        let got = e.get("players", id).await;
        assert_eq!(
            got.tier.as_deref(),
            Some("DB"),
            "hot_after_misses = 0: {id} must not be warmed at the next start: {got:?}"
        );
    }
    drop(writer);
}

/// README `[warmup]`: `rate`: "documents per second at most while warming";
/// `accept_while_warming`: "true: listeners open at once, /healthz says 503 \"warming\" until
/// done"; "by default the listeners open once warm" (operations.md), with `/healthz` answering
/// `{"status":"warming","loaded":…,"total":…}` while warming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_while_warming_and_rate() {
    let Some((pg, _)) = backends() else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&pg, None);
    let writer = Instance::start(dir.path(), "writer", &setup).await;
    for i in 0..35 {
        writer
            .write("players", &format!("w{i:02}"), serde_json::json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut warm = setup.clone();
    warm.collections[0].1 = "warm_recent = 30\n".to_string();
    warm.warmup = "rate = 10\nbatch = 5\n".to_string();
    let mut accepting = warm.clone();
    accepting.warmup.push_str("accept_while_warming = true\n");
    let mut quiet = Instance::spawn(dir.path(), "quiet", &warm);
    let mut open = Instance::spawn(dir.path(), "open", &accepting);

    let check_open = async {
        let first = open.wait_listening(Duration::from_secs(30)).await;
        let first_at = Instant::now();
        assert_eq!(
            first.status, 503,
            "accept_while_warming: the first /healthz answer (30 documents at 10/s take ~3 s) \
             must be 503 warming: {:?}",
            first.body
        );
        // The API is served while warming.
        let got = open.get("players", "w34").await;
        assert_eq!(got.status, 200, "API while warming: {got:?}");
        // `total` is 30 (warm_recent) once counted (0 may come first, before the count);
        // `loaded` never goes backwards.
        let mut reply = first;
        let mut loaded = 0;
        let mut counted: Option<(Instant, u64)> = None;
        let mut samples = Vec::new();
        while reply.status != 200 {
            assert_eq!(reply.status, 503, "{:?}", reply.body);
            let body = reply.json();
            assert_eq!(body["status"], "warming", "{body}");
            let now = body["loaded"].as_u64().expect("loaded");
            let total = body["total"].as_u64().expect("total");
            if samples.last() != Some(&(now, total)) {
                samples.push((now, total));
            }
            assert!(now >= loaded, "loaded went backwards: {samples:?}");
            assert!(total == 30 || (total == 0 && now == 0), "{samples:?}");
            loaded = now;
            if total == 30 && counted.is_none() {
                counted = Some((Instant::now(), now));
            }
            assert!(first_at.elapsed() < Duration::from_secs(30), "never warm");
            tokio::time::sleep(Duration::from_millis(50)).await;
            reply = open.healthz().await;
        }
        assert_eq!(reply.json()["status"], "ok");
        let (counted_at, first_loaded) =
            counted.unwrap_or_else(|| panic!("total = 30 never shown: {samples:?}"));
        let warming = counted_at.elapsed();
        // At most 10 per second: the documents beyond one second's worth take time.
        let floor = Duration::from_millis(((30 - first_loaded).saturating_sub(10) * 100) / 2);
        assert!(
            warming >= floor,
            "rate = 10: {} documents loaded in {warming:?}",
            30 - first_loaded
        );
        eprintln!(
            "accept_while_warming: 503 warming for {:?}; (loaded, total) went {samples:?}",
            first_at.elapsed()
        );
        let got = open.get("players", "w10").await;
        assert_eq!(got.tier.as_deref(), Some("L1"), "warmed: {got:?}");
        let got = open.get("players", "w00").await;
        assert_eq!(
            got.tier.as_deref(),
            Some("DB"),
            "not among the 30 recent: {got:?}"
        );
    };
    let check_quiet = async {
        let first = quiet.wait_listening(Duration::from_secs(30)).await;
        let took = quiet.spawned.elapsed();
        assert_eq!(
            first.status, 200,
            "by default the listeners open once warm: the first /healthz is 200: {:?}",
            first.body
        );
        assert!(
            took >= Duration::from_millis(1500),
            "rate = 10 and 30 documents, yet listening after {took:?}"
        );
        eprintln!("default: listening {took:?} after spawning");
        let logs = quiet.proc.logs();
        assert!(
            logs.contains("warming:") && logs.contains("warm-up done"),
            "operations.md: `warming: N of M documents` each second, then `warm-up done`:\n{logs}"
        );
        let got = quiet.get("players", "w20").await;
        assert_eq!(got.tier.as_deref(), Some("L1"), "warmed: {got:?}");
    };
    tokio::join!(check_open, check_quiet);
    drop(writer);
}
