//! Shared test infrastructure: which real backends are reachable, servers on port 0 with a
//! fresh game per test, and a small HTTP client.
//!
//! Backends: SQLite always (a temporary file); PostgreSQL when `DATAMIDDLEWARE_TEST_POSTGRES_URL` is set;
//! MySQL/MariaDB when `DATAMIDDLEWARE_TEST_MYSQL_URL` is set (`scripts/test.sh` sets both after starting
//! the servers). A missing backend is a skip with a printed line, except under CI (`CI=true`, `1`, …),
//! where it fails the test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use datamiddleware::app::{self, Running};
use datamiddleware::auth::{Role, digest_hex};
use datamiddleware::config::{ApiKeyConfig, AuthConfig, CollectionConfig, Config, GameConfig};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    fn env_var(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("DATAMIDDLEWARE_TEST_POSTGRES_URL"),
            Backend::MySql => Some("DATAMIDDLEWARE_TEST_MYSQL_URL"),
        }
    }

    /// A store URL for this backend, or `None` (skip) when it is not configured outside CI.
    pub fn url(self, dir: &tempfile::TempDir) -> Option<String> {
        let Some(var) = self.env_var() else {
            return Some(format!("sqlite://{}/store.db", dir.path().display()));
        };
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if in_ci() => {
                panic!("{var} is not set, and CI forbids skipping the {self:?} suite")
            }
            _ => {
                announce_skip(self, var);
                None
            }
        }
    }
}

/// True under CI (`CI` set to anything but empty, `0` or `false`): skipping is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// How long a test waits for any one HTTP answer: a server that stops answering fails the
/// test instead of hanging the suite.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Says once per test binary and backend that its suite is skipped. Writes to the stderr
/// handle directly: libtest captures `eprintln!` of passing tests, and the point is to be seen.
fn announce_skip(backend: Backend, var: &str) {
    use std::io::Write;
    static SKIPPED: [std::sync::Once; 3] = [const { std::sync::Once::new() }; 3];
    SKIPPED[backend as usize].call_once(|| {
        let binary = std::env::args().next().unwrap_or_default();
        let binary = binary.rsplit('/').next().unwrap_or_default();
        let binary = binary.rsplit_once('-').map_or(binary, |(name, _hash)| name);
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the {backend:?} suite of {binary} ({var} is not set; scripts/test.sh sets it)"
        );
    });
}

/// A port free on 127.0.0.1 right now, for a server process a test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A unique game name, so tests sharing one database never see each other's rows.
pub fn unique_game() -> String {
    format!("t{:016x}", fastrand::u64(..))
}

/// A collection config with a long TTL (tests control invalidation themselves).
pub fn collection() -> CollectionConfig {
    CollectionConfig {
        l1_ttl: Duration::from_secs(600),
        l2_ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(60),
        l2_negative_ttl: Duration::from_secs(60),
        max_document_bytes: 4096,
        float_counters: false,
        warm_recent: 0,
        related: Vec::new(),
        ..CollectionConfig::default()
    }
}

/// Keeps no collection's documents in L1 (`l1_ttl = 0`; "missing" answers are still kept for
/// the negative TTL).
pub fn without_l1(config: &mut Config) {
    for collection in config
        .games
        .values_mut()
        .flat_map(|game| game.collections.values_mut())
    {
        collection.l1_ttl = Duration::ZERO;
    }
}

/// The API key of every test client: every test server runs with auth on and knows it as an
/// admin key (`tests`), so the suites go through authentication on every request.
pub const TEST_KEY: &str = "dmw_1f0c6a3e9b5d47c2a8e4f6b1d3c5a7e9f0b2d4c6a8e1f3b5d7c9a0e2f4b6d8c1";

/// An `[[auth.keys]]` entry for `key`.
pub fn api_key(name: &str, key: &str, role: Role, games: &[&str]) -> ApiKeyConfig {
    ApiKeyConfig {
        name: name.to_string(),
        sha256: digest_hex(key),
        role,
        games: games.iter().map(|g| g.to_string()).collect(),
    }
}

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Points `[tls]` at copies of the first test certificate and key made in `dir` (where a test
/// may replace them; the test CA `test_tls_ca.pem` signed them, for `localhost`/127.0.0.1).
pub fn use_test_certificate(config: &mut Config, dir: &std::path::Path) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("test_tls_cert_1.pem"), &cert).unwrap();
    std::fs::copy(fixture("test_tls_key_1.pem"), &key).unwrap();
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key);
}

/// A TLS connection to `addr` (as `localhost`) trusting only the test CA, offering `alpn`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(fixture("test_tls_ca.pem")).unwrap();
    roots.add(ca).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Client options that present [`TEST_KEY`].
pub fn client_options() -> datamiddleware_client::ClientOptions {
    datamiddleware_client::ClientOptions {
        credential: datamiddleware_client::Credential::ApiKey(TEST_KEY.to_string()),
        ..Default::default()
    }
}

/// A config for one game with collections `players`, `items` and `orders` on `store_url`,
/// with auth on and [`TEST_KEY`] an admin key.
pub fn config(game: &str, store_url: &str) -> Config {
    let mut config = Config {
        auth: AuthConfig {
            enabled: true,
            allow_insecure: false,
            keys: vec![api_key("tests", TEST_KEY, Role::Admin, &["*"])],
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.tcp.listen = "127.0.0.1:0".parse().unwrap();
    config.http.max_body_bytes = 64 * 1024;
    let collections: BTreeMap<String, CollectionConfig> = ["players", "items", "orders"]
        .into_iter()
        .map(|c| (c.to_string(), collection()))
        .collect();
    config.games.insert(
        game.to_string(),
        GameConfig {
            store: store_url.to_string(),
            collections,
        },
    );
    config.validate().unwrap();
    config
}

/// A running server on port 0 with its own game, plus a client.
pub struct TestServer {
    pub running: Running,
    pub game: String,
    pub store_url: String,
    pub client: Http,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on `backend`, or returns `None` when the backend is skipped.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.url(&dir)?;
        let game = unique_game();
        let mut config = config(&game, &url);
        tweak(&mut config);
        Some(Self::start_config(config, game, url, Some(dir)).await)
    }

    /// A second server for the same game and store (another instance of the middleware).
    pub async fn sibling(&self) -> TestServer {
        self.sibling_with(|_| {}).await
    }

    /// Like [`TestServer::sibling`], with the configuration changed by `tweak`.
    pub async fn sibling_with(&self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = config(&self.game, &self.store_url);
        tweak(&mut config);
        Self::start_config(config, self.game.clone(), self.store_url.clone(), None).await
    }

    async fn start_config(
        config: Config,
        game: String,
        store_url: String,
        dir: Option<tempfile::TempDir>,
    ) -> TestServer {
        let running = app::start(config).await.expect("server starts");
        let client = Http::new(format!("http://{}", running.addr));
        TestServer {
            running,
            game,
            store_url,
            client,
            _dir: dir,
        }
    }

    /// An HTTP client of this server presenting no credential.
    pub fn anonymous(&self) -> Http {
        Http::with_key(format!("http://{}", self.running.addr), None)
    }

    /// A TCP client of this server presenting `credential`, trying to connect once.
    pub fn tcp_client(
        &self,
        credential: datamiddleware_client::Credential,
    ) -> datamiddleware_client::Client {
        let options = datamiddleware_client::ClientOptions {
            credential,
            max_connect_attempts: 1,
            ..Default::default()
        };
        let addr = self.running.tcp_addr.expect("TCP is on").to_string();
        datamiddleware_client::Client::new(addr, options)
    }

    /// `/api/v1/{game}/{rest}`
    pub fn path(&self, rest: &str) -> String {
        format!("/api/v1/{}/{rest}", self.game)
    }

    pub fn store_reads(&self) -> u64 {
        self.running.service.metrics().store.reads.get()
    }

    /// A counter of this instance's L2 (which must be configured).
    pub fn l2_counter(&self, read: impl Fn(&datamiddleware::cache::l2::L2Counters) -> u64) -> u64 {
        let cache = self.running.service.cache();
        read(cache.l2().expect("L2 is configured").counters())
    }

    /// L2 lookups made so far (see `L2Counters::lookups`).
    pub fn l2_lookups(&self) -> u64 {
        self.l2_counter(|c| c.lookups.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A second connection holding SQLite's write lock: writes through the server wait (and run
/// into their time budget) until [`WriteLock::release`]. For SQLite test servers only.
pub struct WriteLock(sqlx::SqliteConnection);

impl TestServer {
    pub async fn hold_sqlite_write_lock(&self) -> WriteLock {
        use sqlx::Connection;
        let file = self.store_url.trim_start_matches("sqlite://");
        let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{file}"))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut connection)
            .await
            .unwrap();
        WriteLock(connection)
    }
}

impl WriteLock {
    pub async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}

/// A lock that makes the server's next write of this game wait: SQLite's write lock, or on
/// PostgreSQL / MySQL a row lock (`FOR UPDATE` in an open transaction) on `collection/id`,
/// which must exist.
pub enum StoreLock {
    Sqlite(WriteLock),
    Row(sqlx::AnyConnection),
}

impl TestServer {
    pub async fn lock_for_writes(&self, collection: &str, id: &str) -> StoreLock {
        use sqlx::Connection;
        if self.store_url.starts_with("sqlite:") {
            return StoreLock::Sqlite(self.hold_sqlite_write_lock().await);
        }
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.store_url).await.unwrap();
        let sql = if self.store_url.starts_with("postgres") {
            "SELECT version FROM dmw_documents WHERE game = $1 AND collection = $2 AND id = $3 FOR UPDATE"
        } else {
            "SELECT version FROM dmw_documents WHERE game = ? AND collection = ? AND id = ? FOR UPDATE"
        };
        sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
        let locked = sqlx::query(sql)
            .bind(self.game.as_str())
            .bind(collection)
            .bind(id)
            .fetch_all(&mut connection)
            .await
            .unwrap();
        assert_eq!(locked.len(), 1, "{collection}/{id} must exist to be locked");
        StoreLock::Row(connection)
    }
}

impl StoreLock {
    pub async fn release(self) {
        match self {
            StoreLock::Sqlite(lock) => lock.release().await,
            StoreLock::Row(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        }
    }
}

/// A response, with the body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `code` of a problem document.
    pub fn code(&self) -> String {
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/problem+json"),
            "expected a problem document, got {} {:?}",
            self.status,
            self.body
        );
        self.json()["code"].as_str().unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Waits until a server process just spawned answers `/livez` (at most 20 s).
pub async fn wait_until_serving(http: &Http) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http
        .try_send(Method::GET, "/livez", &[], None)
        .await
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A small HTTP client bound to one server.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Sent with every request (header, value) unless it names its own credential header.
    credential: Option<(&'static str, String)>,
}

impl Http {
    /// A client presenting [`TEST_KEY`] (ignored by a server with auth off).
    pub fn new(base: String) -> Http {
        Http::with_key(base, Some(TEST_KEY))
    }

    /// A client presenting `key`, or no credential.
    pub fn with_key(base: String, key: Option<&str>) -> Http {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Http {
            base,
            client,
            credential: key.map(|key| ("x-api-key", key.to_string())),
        }
    }

    /// This client presenting `Authorization: Bearer <token>` instead.
    pub fn with_bearer(mut self, token: &str) -> Http {
        self.credential = Some(("authorization", format!("Bearer {token}")));
        self
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .await
            .expect("request sent")
    }

    /// Like [`Http::send`], but `None` when the connection fails (the server died). Panics
    /// when no answer comes within [`REQUEST_TIMEOUT`].
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Option<Reply> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let names_credential = headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("x-api-key") || n.eq_ignore_ascii_case("authorization")
        });
        if let (Some((name, value)), false) = (&self.credential, names_credential) {
            builder = builder.header(*name, value.as_str());
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .unwrap();
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.ok()?.to_bytes();
            Some((parts, body))
        };
        let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}"))?;
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn try_put(&self, path: &str, body: &str) -> Option<Reply> {
        self.try_send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn try_post(&self, path: &str, body: &str) -> Option<Reply> {
        self.try_send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn put(&self, path: &str, body: &str) -> Reply {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, &[], None).await
    }
}

/// Defines each listed `async fn case(backend: Backend)` as a test per backend:
/// `sqlite::case`, `postgres::case`, `mysql::case`.
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::support::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::support::Backend::Postgres).await })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::support::Backend::MySql).await })*
        }
    };
}

/// A real Redis the L2 suites run against: the standalone server of
/// `DATAMIDDLEWARE_TEST_REDIS_URL`, or the cluster of `DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES`
/// (comma-separated seed nodes). `scripts/test.sh` starts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redis {
    Standalone,
    Cluster,
}

impl Redis {
    fn env_var(self) -> &'static str {
        match self {
            Redis::Standalone => "DATAMIDDLEWARE_TEST_REDIS_URL",
            Redis::Cluster => "DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES",
        }
    }

    /// The configured URLs, or `None` (skip) when unset outside CI.
    pub fn urls(self) -> Option<Vec<String>> {
        let var = self.env_var();
        match std::env::var(var) {
            Ok(urls) if !urls.is_empty() => Some(urls.split(',').map(str::to_string).collect()),
            _ if in_ci() => panic!("{var} is not set, and CI forbids skipping the Redis suites"),
            _ => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: {var} is not set");
                None
            }
        }
    }

    /// Points `config` at this Redis, under the key prefix `prefix`.
    pub fn configure(self, config: &mut Config, prefix: &str) -> Option<()> {
        let urls = self.urls()?;
        match self {
            Redis::Standalone => config.cache.l2_url = urls.into_iter().next(),
            Redis::Cluster => config.cache.l2_cluster_nodes = urls,
        }
        config.cache.l2_prefix = prefix.to_string();
        Some(())
    }
}

/// A Redis key prefix of its own, so tests sharing one Redis never see each other's keys.
pub fn unique_prefix() -> String {
    format!("t{:012x}", fastrand::u64(..) >> 16)
}

/// Defines each listed `async fn case(redis: Redis)` as a test per Redis kind:
/// `standalone::case`, `cluster::case`.
#[macro_export]
macro_rules! redis_tests {
    ($($case:ident),* $(,)?) => {
        mod standalone {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::support::Redis::Standalone).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::support::Redis::Cluster).await })*
        }
    };
}

/// Every TCP request kind aimed at document `id` of `collection` (GET, BATCH_GET of `also`
/// and `id`, LIST of everyone's, PUT, PATCH, INCR, DELETE, and TXN `txn`), each with the
/// error code it got (`None`: it succeeded).
pub async fn tcp_every_request_on(
    client: &datamiddleware_client::Client,
    game: &str,
    collection: &str,
    (also, id): (&str, &str),
    txn: &Value,
) -> Vec<(&'static str, Option<datamiddleware_client::ErrorCode>)> {
    use datamiddleware_client::Precondition::None as Unconditional;
    let value = serde_json::json!({"gold": 0});
    let code = |e: datamiddleware_client::Error| e.code();
    vec![
        (
            "GET",
            client.get(game, collection, id).await.err().and_then(code),
        ),
        (
            "BATCH_GET",
            client
                .batch_get(game, collection, &[also, id])
                .await
                .err()
                .and_then(code),
        ),
        (
            "LIST",
            client
                .list(game, collection, None, None, 10)
                .await
                .err()
                .and_then(code),
        ),
        (
            "PUT",
            client
                .put(game, collection, id, &value, Unconditional)
                .await
                .err()
                .and_then(code),
        ),
        (
            "PATCH",
            client
                .patch(game, collection, id, &value, Unconditional)
                .await
                .err()
                .and_then(code),
        ),
        (
            "INCR",
            client
                .incr(game, collection, id, "/gold", 1, None, None, Unconditional)
                .await
                .err()
                .and_then(code),
        ),
        (
            "DELETE",
            client
                .delete(game, collection, id, Unconditional)
                .await
                .err()
                .and_then(code),
        ),
        ("TXN", client.txn(game, txn).await.err().and_then(code)),
    ]
}

/// Asserts an HTTP answer's status and problem code, showing the body otherwise.
pub fn assert_code(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (status, code.to_string()),
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
}
