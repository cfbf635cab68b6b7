//! Operational faults, checked against what the documentation promises (README "Errors" and
//! "Configuration", docs/operations.md, docs/protocol.md, docs/architecture.md "Store
//! connections", "Write path"):
//!
//! - SIGTERM / SIGINT to the real binary drain both front ends and exit 0 within the grace;
//! - `/healthz` turns 503 when the store cannot be reached, with the store URL's credentials
//!   masked;
//! - all store connections busy past `store.timeout`: 503 `overloaded`, `Retry-After: 1`;
//! - the store connection lost in the middle of a write: 504 `timeout` (outcome unknown), never
//!   500, and reads afterwards give the store's truth;
//! - an internal error (an unparseable stored value) answers `internal` without any detail.
//!
//! PostgreSQL cases skip (printing SKIPPED) without `DATAMIDDLEWARE_TEST_POSTGRES_URL`, except
//! under CI. Everything they touch in the shared database is scoped to their own game.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use datamiddleware_protocol::{
    Credential, DocRef, ErrorCode, Header, Hello, Message, OwnerChange, Precondition, decode,
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use support::{Backend, Http, Reply, TestServer, unique_game};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// How long a test waits for any one TCP frame.
const FRAME_WAIT: Duration = Duration::from_secs(15);

/// A raw TCP protocol connection (frames encoded and decoded by `datamiddleware_protocol`).
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects and completes the handshake (HELLO → HELLO_OK).
    async fn ready(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(FRAME_WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.send(
            1,
            Message::Hello(Hello {
                version: 1,
                client_name: "ops-faults".into(),
                credential: Credential::ApiKey(support::TEST_KEY.to_string()),
            }),
        )
        .await;
        let (header, message) = raw.recv().await;
        assert_eq!(header.request_id, 1);
        assert!(matches!(message, Message::HelloOk(_)), "{message:?}");
        raw
    }

    async fn send(&mut self, id: u32, message: Message) {
        let mut frame = BytesMut::new();
        message.encode(id, &mut frame);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<(Header, Message)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(frame) =
                decode(&mut self.buf, u32::MAX).expect("the server sends valid frames")
            {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn recv(&mut self) -> (Header, Message) {
        self.try_recv(FRAME_WAIT)
            .await
            .expect("a frame within the bound")
    }

    /// The server closes the connection with nothing more to read.
    async fn expect_closed(&mut self) {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(FRAME_WAIT, self.stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the server closes the connection"
        );
        assert!(rest.is_empty(), "nothing after the last answer: {rest:?}");
    }
}

fn doc_ref(game: &str, collection: &str, id: &str) -> DocRef {
    DocRef {
        game: game.into(),
        collection: collection.into(),
        id: id.into(),
    }
}

fn tcp_put(game: &str, id: &str, value: &Value) -> Message {
    Message::Put {
        doc: doc_ref(game, "players", id),
        pre: Precondition::None,
        owner: OwnerChange::Keep,
        value: Bytes::from(value.to_string()),
    }
}

/// Connection attempts to `addr` are refused (the listener is closed) within `within`.
async fn wait_refused(addr: SocketAddr, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            // A connect that landed in the backlog as the listener closed is reset by the
            // kernel: not served, but not yet the refusal either; try again.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(e)) => panic!("{what}: unexpected connect error {e}"),
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{what}: new connections were still accepted {within:?} after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Text that would betray an internal error's cause (parser, driver, SQL, stored bytes).
fn assert_no_internal_detail(text: &str, context: &str) {
    let lower = text.to_ascii_lowercase();
    for word in [
        "serde",
        "sqlx",
        "sqlite",
        "eof",
        "line",
        "column",
        "broken",
        "key must",
        "expected",
        "dmw_documents",
        "panic",
    ] {
        assert!(
            !lower.contains(word),
            "{context} leaks internal detail ({word:?}): {text}"
        );
    }
}

/// The PostgreSQL URL from the environment, or `None` (skip; a failure under CI).
fn postgres_url() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    Backend::Postgres.url(&dir)
}

/// `url` with an `application_name`, so this test's server connections can be found in
/// `pg_stat_activity` among those of every other test.
fn with_application_name(url: &str, app: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={app}")
}

/// The server's backend for `app` that is `state = 'active'` and matches `condition`, waited
/// for up to 10 s; returns its pid.
async fn find_backend(admin: &mut sqlx::PgConnection, app: &str, condition: &str) -> i32 {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND {condition}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(app)
            .fetch_all(&mut *admin)
            .await
            .unwrap();
        if let [pid] = pids[..] {
            return pid;
        }
        assert!(
            pids.len() <= 1,
            "several server backends match {condition}: {pids:?}"
        );
        assert!(
            Instant::now() < deadline,
            "no server backend with {condition} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn terminate_backend(admin: &mut sqlx::PgConnection, pid: i32) {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    assert!(done, "backend {pid} terminated");
}

/// The stored row (version, value) of `players/{id}` of `game`, read directly.
async fn pg_row(
    admin: &mut sqlx::PgConnection,
    game: &str,
    id: &str,
) -> Option<(i64, Option<String>)> {
    sqlx::query_as(
        "SELECT version, value FROM dmw_documents WHERE game = $1 AND collection = 'players' AND id = $2",
    )
    .bind(game)
    .bind(id)
    .fetch_optional(&mut *admin)
    .await
    .unwrap()
}

/// Runs DDL on the shared `dmw_documents` table. Its table lock would queue every other
/// test's statements behind it while it waits, so it waits at most 200 ms at a time and is
/// retried (for up to ~20 s) instead.
async fn ddl(admin: &mut sqlx::PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SET lock_timeout = '200ms'")
        .execute(&mut *admin)
        .await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *admin)
            .await
        {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && attempt < 60 =>
            {
                tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(..200))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Database objects created by a test (a trigger and its function), dropped when the guard is
/// dropped — also when the test panics. The drop runs on its own thread and runtime, so it
/// works from `Drop` inside the test's runtime.
struct PgObjects {
    url: String,
    drops: Vec<String>,
}

impl PgObjects {
    fn cleanup(&mut self) {
        let url = self.url.clone();
        let drops = std::mem::take(&mut self.drops);
        if drops.is_empty() {
            return;
        }
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut admin = sqlx::PgConnection::connect(&url).await?;
                for statement in drops {
                    ddl(&mut admin, &statement).await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("WARNING: cleanup of test database objects failed: {e}"),
            Err(_) => eprintln!("WARNING: cleanup of test database objects panicked"),
        }
    }
}

impl Drop for PgObjects {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Makes the COMMIT of any transaction that wrote a row of `game` sleep 2 s (per written row),
/// through a deferred constraint trigger scoped to the game. Dropped with the guard.
async fn slow_commits_for(url: &str, game: &str) -> PgObjects {
    let function = format!("dmw_sleep_{game}");
    let trigger = format!("dmw_slow_commit_{game}");
    let guard = PgObjects {
        url: url.to_string(),
        drops: vec![
            format!("DROP TRIGGER IF EXISTS {trigger} ON dmw_documents"),
            format!("DROP FUNCTION IF EXISTS {function}()"),
        ],
    };
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    ddl(
        &mut admin,
        &format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        ),
    )
    .await
    .unwrap();
    ddl(
        &mut admin,
        &format!(
            "CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT OR UPDATE ON dmw_documents \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.game = '{game}') \
             EXECUTE FUNCTION {function}()"
        ),
    )
    .await
    .unwrap();
    admin.close().await.unwrap();
    guard
}

/// Reads `players/{id}` through the server and directly from PostgreSQL: they must agree (no
/// stale cache). Returns the stored version (0: no row).
async fn server_agrees_with_store(
    client: &Http,
    admin: &mut sqlx::PgConnection,
    game: &str,
    id: &str,
) -> i64 {
    let reply = client.get(&format!("/api/v1/{game}/players/{id}")).await;
    let row = pg_row(admin, game, id).await;
    match row {
        Some((version, Some(value))) => {
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            let doc = reply.json();
            assert_eq!(
                doc["version"].as_i64(),
                Some(version),
                "the server serves version {} while the store holds {version}: {doc}",
                doc["version"]
            );
            let stored: Value = serde_json::from_str(&value).unwrap();
            assert_eq!(doc["value"], stored, "the server serves another value");
            assert_eq!(
                reply.header("etag"),
                Some(format!("\"{version}\"").as_str())
            );
            version
        }
        other => panic!("the document must exist in the store, found {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. SIGTERM / SIGINT to the real binary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_http_and_tcp_in_flight_then_exits_0() {
    signal_drains_and_exits("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_http_and_tcp_in_flight_then_exits_0() {
    signal_drains_and_exits("INT").await;
}

/// The real binary, killed on drop unless it has exited.
struct Binary {
    child: Child,
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_healthy(http: &Http, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the binary exited during start: {status}");
        }
        if let Some(reply) = http.try_send(Method::GET, "/healthz", &[], None).await
            && reply.status == StatusCode::OK
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not become healthy in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn signal_drains_and_exits(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.db");
    let game = unique_game();
    let grace = Duration::from_secs(5);
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[http]\nshutdown_grace = \"5s\"\n[store]\ntimeout = \"15s\"\n\
             [games.{game}]\nstore = \"sqlite://{}\"\n[games.{game}.collections.players]\n",
            file.display()
        ),
    )
    .unwrap();
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let http_addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg(http_addr.to_string())
        .arg("--tcp-listen")
        .arg(tcp_addr.to_string())
        .env("DMW_LOG__FILTER", "warn")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let mut binary = Binary { child };
    let http = Http::new(format!("http://{http_addr}"));
    wait_healthy(&http, &mut binary.child).await;
    let mut tcp = Raw::ready(tcp_addr).await;

    // Writes wait for the store file's write lock, held here.
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let http_path = format!("/api/v1/{game}/players/http_late");
    let put = {
        let http = http.clone();
        let path = http_path.clone();
        tokio::spawn(async move { http.try_put(&path, r#"{"value":{"via":"http"}}"#).await })
    };
    tcp.send(7, tcp_put(&game, "tcp_late", &json!({"via": "tcp"})))
        .await;
    // Both requests have been read by now (the GOAWAY below must name request 7).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!put.is_finished(), "the HTTP write waits for the lock");

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-s", signal, &binary.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal}");

    // The TCP connection hears GOAWAY (request id 0, naming request 7) before its answer.
    let (header, message) = tcp.recv().await;
    assert_eq!(header.request_id, 0, "GOAWAY is a connection-level frame");
    assert!(
        matches!(
            message,
            Message::GoAway {
                last_request_id: 7,
                ..
            }
        ),
        "expected GOAWAY naming request 7, got {message:?}"
    );
    // The listeners close: new connections are refused while the in-flight writes still wait.
    wait_refused(http_addr, Duration::from_secs(2), "HTTP listener").await;
    wait_refused(tcp_addr, Duration::from_secs(2), "TCP listener").await;
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "the process waits for its in-flight requests"
    );
    assert!(!put.is_finished(), "the HTTP write is still waiting");
    // The drain waits for the writes as long as they take (within the grace period).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "the process still waits for its in-flight requests"
    );
    assert!(!put.is_finished(), "the HTTP write is still waiting");

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    let reply = tokio::time::timeout(grace, put)
        .await
        .expect("the HTTP write answers within the grace period")
        .unwrap()
        .expect("the HTTP write gets an answer, not a closed connection");
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.json()["version"], 1);
    let (header, message) = tcp.recv().await;
    assert_eq!(header.request_id, 7);
    match message {
        Message::Doc {
            created: true,
            version: 1,
            ..
        } => {}
        other => panic!("the in-flight TCP write completes after GOAWAY, got {other:?}"),
    }
    tcp.expect_closed().await;

    // The process exits with status 0 within the grace period.
    let status = loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < grace,
            "the process did not exit within the grace period ({grace:?}) after SIG{signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}: {status}"
    );
    eprintln!("SIG{signal}: exited 0 after {:?}", signalled.elapsed());

    // Both acknowledged writes are in the store file.
    let mut store = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    for id in ["http_late", "tcp_late"] {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM dmw_documents WHERE game = ? AND collection = 'players' AND id = ? AND value IS NOT NULL",
        )
        .bind(&game)
        .bind(id)
        .fetch_optional(&mut store)
        .await
        .unwrap();
        assert_eq!(version, Some(1), "{id} is committed");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. /healthz degraded, credentials masked
// ---------------------------------------------------------------------------------------------

/// A TCP forwarder to the database: closing its port makes new connections fail (a database
/// that cannot be reached), and stopping it also cuts every forwarded connection.
struct Forwarder {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(listen: SocketAddr, upstream: String) -> Forwarder {
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tracked.lock().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Forwarder {
            addr,
            accept,
            connections,
        }
    }

    /// Closes the listening port (new connections are refused); forwarded connections stay.
    async fn close_port(&mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }

    /// Closes the listening port and cuts every forwarded connection.
    async fn stop(&mut self) {
        self.close_port().await;
        let connections: Vec<_> = self.connections.lock().drain(..).collect();
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
    }
}

/// `(userinfo, host:port, "/db…")` of a `postgres://` URL (userinfo `postgres` when absent).
fn split_postgres_url(url: &str) -> (String, String, String) {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .expect("a URL with a scheme");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.to_string(), host.to_string(), path),
        None => ("postgres".to_string(), authority.to_string(), path),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_an_unreachable_store_with_credentials_masked() {
    let Some(base) = postgres_url() else { return };
    let (userinfo, upstream, path) = split_postgres_url(&base);
    let user = userinfo.split(':').next().unwrap_or("postgres");
    let mut forwarder = Forwarder::start("127.0.0.1:0".parse().unwrap(), upstream.clone()).await;
    let proxy = forwarder.addr;
    // PostgreSQL's trust authentication ignores the password; the server must never show it.
    let url = format!("postgres://{user}:s3cr%40t@{proxy}{path}");
    let game = unique_game();
    let mut config = support::config(&game, &url);
    config.store.timeout = Duration::from_secs(2);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    let doc = format!("/api/v1/{game}/players/p1");
    assert_eq!(
        client.put(&doc, r#"{"value":{"n":1}}"#).await.status,
        StatusCode::CREATED
    );

    let healthy = client.get("/healthz").await;
    assert_eq!(healthy.status, StatusCode::OK, "{:?}", healthy.body);
    let body = String::from_utf8_lossy(&healthy.body).to_string();
    eprintln!("healthy: {body}");
    assert_eq!(healthy.json()["status"], "ok", "{body}");
    assert_store_entry_masked(&healthy.json(), &body, proxy);

    // The database becomes unreachable: the port closes and pooled connections are cut.
    forwarder.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let degraded = client.get("/healthz").await;
    let elapsed = started.elapsed();
    let body = String::from_utf8_lossy(&degraded.body).to_string();
    eprintln!("degraded after {elapsed:?}: {body}");
    assert_eq!(degraded.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(degraded.json()["status"], "degraded", "{body}");
    assert_store_entry_masked(&degraded.json(), &body, proxy);
    assert!(
        elapsed < Duration::from_secs(5),
        "/healthz answered after {elapsed:?} (store.timeout is 2 s)"
    );

    // The database is back (same address): health recovers without a restart.
    let forwarder = Forwarder::start(proxy, upstream).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.get("/healthz").await;
        if reply.status == StatusCode::OK {
            assert_eq!(reply.json()["status"], "ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz did not recover within 10 s: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
    drop(forwarder);
}

/// The store entry names the store (its address) but neither the password nor a hint of it.
fn assert_store_entry_masked(health: &Value, body: &str, proxy: SocketAddr) {
    for secret in ["s3cr", "%40t", "s3cr@t"] {
        assert!(
            !body.contains(secret),
            "/healthz shows the password ({secret}): {body}"
        );
    }
    let stores = health["stores"].as_array().expect("a stores array");
    assert_eq!(stores.len(), 1, "{body}");
    let entry = stores[0].to_string();
    assert!(
        entry.contains(&proxy.to_string()),
        "the store entry names the store's address {proxy}: {entry}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Store connections exhausted
// ---------------------------------------------------------------------------------------------

/// `store.max_connections = 1`: while the only connection is held by a write stuck on a row
/// lock, a read that needs the store waits for it and, getting no usable connection within
/// `store.timeout`, answers 503 `overloaded` with `Retry-After: 1` about `store.timeout` after
/// the connection became busy. Once the lock is gone the server serves again.
///
/// Every store call runs within the same `store.timeout`, so the write, which took the
/// connection before the read asked for one, is cut off a little *before* the read's budget
/// ends; its connection is then closed rather than returned (operations.md), and a new one
/// would be opened in the read's remaining time. So the database is reached through a
/// forwarder whose port closes once the write holds the connection (the forwarded connection
/// keeps working): no connection frees, and none can be opened, within the read's budget —
/// 503 `overloaded` either way (operations.md: "When no connection can be opened, requests get
/// 503 `overloaded` …; when all are busy past `store.timeout`, 503 too").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_store_connection_answers_503_overloaded_after_the_timeout() {
    let Some(base) = postgres_url() else { return };
    let (userinfo, upstream, db) = split_postgres_url(&base);
    let mut forwarder = Forwarder::start("127.0.0.1:0".parse().unwrap(), upstream.clone()).await;
    let game = unique_game();
    let app = format!("dmw_{game}");
    let url = with_application_name(
        &format!("postgres://{userinfo}@{}{db}", forwarder.addr),
        &app,
    );
    let mut config = support::config(&game, &url);
    config.store.max_connections = 1;
    config.store.timeout = Duration::from_secs(1);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    let path = format!("/api/v1/{game}/players/p1");
    let created = client.put(&path, r#"{"value":{"n":1}}"#).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    let mut blocker = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(
        "SELECT version FROM dmw_documents WHERE game = $1 AND collection = 'players' AND id = 'p1' FOR UPDATE",
    )
    .bind(&game)
    .execute(&mut blocker)
    .await
    .unwrap();
    let write_started = Instant::now();
    let write = {
        let client = client.clone();
        let path = path.clone();
        tokio::spawn(async move { client.put(&path, r#"{"value":{"n":2}}"#).await })
    };
    // The write holds the only connection and waits for the row lock.
    find_backend(&mut admin, &app, "wait_event_type = 'Lock'").await;
    forwarder.close_port().await;

    let started = Instant::now();
    let reply = client
        .get(&format!("/api/v1/{game}/players/uncached"))
        .await;
    let elapsed = started.elapsed();
    let since_busy = write_started.elapsed();
    eprintln!(
        "GET with no free connection: {} after {elapsed:?} ({since_busy:?} after the write took the connection): {:?}",
        reply.status, reply.body
    );
    let written = write.await.unwrap();
    eprintln!("the blocked write: {} {:?}", written.status, written.body);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    // It waited for the busy connection (the write's budget of 1 s), not failing at once, and
    // answered within a bound close to store.timeout.
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_secs(3),
        "503 after {elapsed:?}; store.timeout is 1 s"
    );
    // The wait for a connection gives up at 90 % of store.timeout, before the request's own
    // budget, so that it is answered `overloaded` and never `timeout` (both timers at 1 s raced).
    assert!(
        since_busy >= Duration::from_millis(880),
        "503 only {since_busy:?} after the connection became busy; the wait is 0.9 s"
    );
    // The write itself ran into its budget while waiting for the lock.
    assert_eq!(
        (written.status, written.code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        "{:?}",
        written.body
    );

    // Recovery: the lock goes, the database accepts connections again.
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let forwarder = Forwarder::start(forwarder.addr, upstream).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.get(&format!("/api/v1/{game}/players/after")).await;
        if reply.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not recover within 10 s: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let current = client.get(&path).await;
    assert_eq!(current.status, StatusCode::OK, "{:?}", current.body);
    let current = current.json()["version"].as_u64().unwrap();
    assert_eq!(current, 1, "the timed-out write did not commit");
    let reply = client
        .send(
            Method::PUT,
            &path,
            &[("if-match", &format!("\"{current}\""))],
            Some(r#"{"value":{"n":9}}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["version"].as_u64(), Some(current + 1));
    running.stop().await.unwrap();
    drop(forwarder);
}

// ---------------------------------------------------------------------------------------------
// 4. Store connection lost in the middle of a write
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL server whose connections carry an application name of their own.
struct PgCase {
    url: String,
    app: String,
    game: String,
    running: datamiddleware::app::Running,
    client: Http,
    admin: sqlx::PgConnection,
}

async fn pg_case() -> Option<PgCase> {
    let url = postgres_url()?;
    let game = unique_game();
    let app = format!("dmw_{game}");
    let mut config = support::config(&game, &with_application_name(&url, &app));
    // The budget must not be what ends these writes: the lost connection must.
    config.store.timeout = Duration::from_secs(15);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    let admin = sqlx::PgConnection::connect(&url).await.unwrap();
    Some(PgCase {
        url,
        app,
        game,
        running,
        client,
        admin,
    })
}

impl PgCase {
    fn path(&self, id: &str) -> String {
        format!("/api/v1/{}/players/{id}", self.game)
    }
}

/// The README's wording is "a write's outcome is then unknown — read it back"; the exact
/// detail text is not specified, so either phrasing of "unknown" counts.
fn says_outcome_unknown(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("unknown")
}

fn assert_outcome_unknown_timeout(reply: &Reply) {
    assert_ne!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a write whose store connection was lost must be 504 timeout, not 500: {:?}",
        reply.body
    );
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        "{:?}",
        reply.body
    );
    let problem = reply.json();
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        says_outcome_unknown(detail),
        "the detail says the outcome is unknown: {detail:?}"
    );
    assert_no_internal_detail(detail, "the timeout's detail");
}

/// (a) The connection is killed while PostgreSQL runs the COMMIT: the outcome is unknown, so
/// the answer is 504 `timeout`, and a read afterwards gives what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_during_commit_is_504_timeout_and_reads_give_the_store_truth() {
    let Some(mut case) = pg_case().await else {
        return;
    };
    let created = case
        .client
        .put(&case.path("p1"), r#"{"value":{"n":1}}"#)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let slow = slow_commits_for(&case.url, &case.game).await;

    let put = {
        let client = case.client.clone();
        let path = case.path("p1");
        tokio::spawn(async move { client.put(&path, r#"{"value":{"n":2}}"#).await })
    };
    let pid = find_backend(&mut case.admin, &case.app, "query ILIKE 'commit%'").await;
    tokio::time::sleep(Duration::from_millis(200)).await; // well inside the 2 s sleep
    terminate_backend(&mut case.admin, pid).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the write answers soon after its connection is lost")
        .unwrap();
    eprintln!(
        "write lost during COMMIT: {} {:?}",
        reply.status, reply.body
    );
    drop(slow); // before the checks below, which may fail
    assert_outcome_unknown_timeout(&reply);

    let version = server_agrees_with_store(&case.client, &mut case.admin, &case.game, "p1").await;
    assert!(
        version == 1 || version == 2,
        "the write applied at most once: {version}"
    );
    // The server goes on serving writes on its pool.
    let reply = case
        .client
        .send(
            Method::PUT,
            &case.path("p1"),
            &[("if-match", &format!("\"{version}\""))],
            Some(r#"{"value":{"n":3}}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["version"].as_i64(), Some(version + 1));
    server_agrees_with_store(&case.client, &mut case.admin, &case.game, "p1").await;
    case.running.stop().await.unwrap();
}

/// (b) The connection is killed before the commit, while the write waits for a row lock that
/// another session holds: nothing was committed, so (architecture.md, "Store connections") the
/// transaction is retried on another connection. The write succeeds once, with the version
/// advanced by exactly one — never lost, never doubled, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_before_commit_is_not_doubled_and_not_lost() {
    let Some(mut case) = pg_case().await else {
        return;
    };
    let created = case
        .client
        .put(&case.path("p1"), r#"{"value":{"n":1}}"#)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    let mut blocker = sqlx::PgConnection::connect(&case.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(
        "SELECT version FROM dmw_documents WHERE game = $1 AND collection = 'players' AND id = 'p1' FOR UPDATE",
    )
    .bind(&case.game)
    .execute(&mut blocker)
    .await
    .unwrap();
    let put = {
        let client = case.client.clone();
        let path = case.path("p1");
        tokio::spawn(async move { client.put(&path, r#"{"value":{"n":2}}"#).await })
    };
    let pid = find_backend(&mut case.admin, &case.app, "wait_event_type = 'Lock'").await;
    terminate_backend(&mut case.admin, pid).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the write answers soon after its connection is lost")
        .unwrap();
    eprintln!(
        "write lost before COMMIT: {} {:?}",
        reply.status, reply.body
    );
    let version = server_agrees_with_store(&case.client, &mut case.admin, &case.game, "p1").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["version"], 2, "{:?}", reply.body);
    assert_eq!(version, 2, "acknowledged once, stored once");
    let stored = case.client.get(&case.path("p1")).await.json();
    assert_eq!(stored["value"], json!({"n": 2}));
    case.running.stop().await.unwrap();
}

/// (c) (a) over the TCP protocol: ERROR `timeout`, and the store's truth afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_killed_during_commit_is_error_timeout() {
    let Some(mut case) = pg_case().await else {
        return;
    };
    let mut tcp = Raw::ready(case.running.tcp_addr.unwrap()).await;
    tcp.send(1, tcp_put(&case.game, "p1", &json!({"n": 1})))
        .await;
    match tcp.recv().await {
        (h, Message::Doc { created: true, .. }) if h.request_id == 1 => {}
        other => panic!("create: {other:?}"),
    }
    let slow = slow_commits_for(&case.url, &case.game).await;
    tcp.send(2, tcp_put(&case.game, "p1", &json!({"n": 2})))
        .await;
    let pid = find_backend(&mut case.admin, &case.app, "query ILIKE 'commit%'").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate_backend(&mut case.admin, pid).await;
    let (header, message) = tcp.recv().await;
    drop(slow);
    eprintln!("TCP write lost during COMMIT: {message:?}");
    assert_eq!(header.request_id, 2);
    match &message {
        Message::Error {
            code,
            message,
            op_index: None,
        } => {
            assert_eq!(
                code, "timeout",
                "a write whose store connection was lost is `timeout`, not `internal`"
            );
            assert_no_internal_detail(message, "the timeout's message");
            assert!(
                says_outcome_unknown(message),
                "the message says the outcome is unknown: {message:?}"
            );
        }
        other => panic!("expected ERROR timeout, got {other:?}"),
    }
    // The store's truth, through the protocol and directly.
    tcp.send(3, Message::Get(doc_ref(&case.game, "players", "p1")))
        .await;
    let (header, message) = tcp.recv().await;
    assert_eq!(header.request_id, 3);
    let row = pg_row(&mut case.admin, &case.game, "p1").await;
    let Some((stored_version, Some(stored_value))) = row else {
        panic!("the document is in the store: {row:?}");
    };
    match message {
        Message::Doc { version, doc, .. } => {
            assert_eq!(version as i64, stored_version, "no stale cache");
            let doc: Value = serde_json::from_slice(&doc).unwrap();
            let stored: Value = serde_json::from_str(&stored_value).unwrap();
            assert_eq!(doc["value"], stored);
        }
        other => panic!("GET: {other:?}"),
    }
    assert!(stored_version == 1 || stored_version == 2);
    server_agrees_with_store(&case.client, &mut case.admin, &case.game, "p1").await;
    case.running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. An internal error leaks nothing
// ---------------------------------------------------------------------------------------------

/// A stored value that does not parse (written behind the server's back) makes a PATCH fail
/// with `internal`: a complete problem document over HTTP, ERROR `internal` over TCP, the same
/// safe message, and no word of the parser's or the database's error. Nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_answers_internal_and_leaks_nothing() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let created = s
        .client
        .put(&s.path("players/p1"), r#"{"value":{"n":1}}"#)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let file = s.store_url.trim_start_matches("sqlite://").to_string();
    let mut store = sqlx::SqliteConnection::connect(&format!("sqlite://{file}"))
        .await
        .unwrap();
    let updated = sqlx::query(
        "UPDATE dmw_documents SET value = '{broken' WHERE game = ? AND collection = 'players' AND id = 'p1'",
    )
    .bind(&s.game)
    .execute(&mut store)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    // A fresh instance on the same store: its L1 has never seen p1.
    let fresh = s.sibling().await;

    let reply = fresh
        .client
        .send(
            Method::PATCH,
            &fresh.path("players/p1"),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"n":2}"#),
        )
        .await;
    let body = String::from_utf8_lossy(&reply.body).to_string();
    eprintln!(
        "PATCH of an unparseable stored value: {} {body}",
        reply.status
    );
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(reply.code(), "internal", "{body}");
    let problem = reply.json();
    assert_eq!(
        problem["type"], "urn:datamiddleware:error:internal",
        "{body}"
    );
    assert_eq!(problem["title"], ErrorCode::Internal.title(), "{body}");
    assert_eq!(problem["status"], 500, "{body}");
    let detail = problem["detail"].as_str().expect("a detail").to_string();
    assert!(!detail.is_empty());
    assert!(
        problem.get("op_index").is_none(),
        "no op_index outside transactions: {body}"
    );
    assert_no_internal_detail(&body, "the problem document");

    let mut tcp = Raw::ready(fresh.running.tcp_addr.unwrap()).await;
    tcp.send(
        1,
        Message::Patch {
            doc: doc_ref(&fresh.game, "players", "p1"),
            pre: Precondition::None,
            patch: Bytes::from_static(br#"{"n":3}"#),
        },
    )
    .await;
    let (header, message) = tcp.recv().await;
    assert_eq!(header.request_id, 1);
    match message {
        Message::Error {
            code,
            message,
            op_index: None,
        } => {
            assert_eq!(code, "internal");
            assert_no_internal_detail(&message, "the ERROR frame");
            assert_eq!(message, detail, "the same safe message over both protocols");
        }
        other => panic!("expected ERROR internal, got {other:?}"),
    }
    // "the write was not committed" (protocol.md): the row is as it was left.
    let row: (i64, Option<String>) = sqlx::query_as(
        "SELECT version, value FROM dmw_documents WHERE game = ? AND collection = 'players' AND id = 'p1'",
    )
    .bind(&s.game)
    .fetch_one(&mut store)
    .await
    .unwrap();
    assert_eq!(row, (1, Some("{broken".to_string())));
}

/// A write answered `timeout` after its COMMIT was sent is still landing: a read of the same
/// document pipelined behind it on the connection must not run before the database decided
/// (protocol.md: same-document requests are applied in send order). The commit here takes
/// 2 s (a deferred trigger), the store budget 800 ms: the PUT answers `timeout` at ~0.8 s, and
/// the GET only after the commit, with the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_timed_out_write_waits_until_the_commit_has_landed() {
    let Some(url) = postgres_url() else {
        return;
    };
    let game = unique_game();
    let mut config = support::config(&game, &url);
    config.store.timeout = Duration::from_millis(800);
    let running = datamiddleware::app::start(config).await.unwrap();
    let mut tcp = Raw::ready(running.tcp_addr.unwrap()).await;
    tcp.send(2, tcp_put(&game, "p1", &json!({"n": 1}))).await;
    assert!(matches!(
        tcp.recv().await.1,
        Message::Doc { version: 1, .. }
    ));
    let slow = slow_commits_for(&url, &game).await;
    let started = Instant::now();
    let mut frames = BytesMut::new();
    tcp_put(&game, "p1", &json!({"n": 2})).encode(3, &mut frames);
    Message::Get(doc_ref(&game, "players", "p1")).encode(4, &mut frames);
    tcp.stream.write_all(&frames).await.unwrap();
    let (header, message) = tcp.recv().await;
    let timed_out = started.elapsed();
    assert_eq!(header.request_id, 3);
    assert!(
        matches!(&message, Message::Error { code, .. } if code == "timeout"),
        "{message:?}"
    );
    let (header, message) = tcp.recv().await;
    let read_at = started.elapsed();
    drop(slow);
    assert_eq!(header.request_id, 4);
    assert!(
        read_at >= Duration::from_millis(1800),
        "the GET ran at {read_at:?}, before the COMMIT (2 s) landed (the PUT timed out at {timed_out:?})"
    );
    match message {
        Message::Doc { version, doc, .. } => {
            let doc: Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!((version, doc["value"].clone()), (2, json!({"n": 2})));
        }
        other => panic!("GET: {other:?}"),
    }
    running.stop().await.unwrap();
}
