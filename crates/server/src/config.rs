//! Configuration: serde structs with defaults, loading (TOML file, then `DMW_…` environment
//! variables, then CLI flags) and validation that names the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::model::{DOCUMENT_ENVELOPE_BYTES, is_valid_name};

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A machine size whose limits and memory budgets replace the built-in defaults (keys set
    /// in the file or the environment still win); see [`profiles`].
    pub profile: Option<profiles::Profile>,
    pub http: HttpConfig,
    pub tcp: TcpConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitsConfig,
    pub tls: TlsConfig,
    pub responses: ResponsesConfig,
    pub cache: CacheConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub ops: OpsConfig,
    pub warmup: WarmupConfig,
    /// Games (tenants) by name. When none is configured, a game `default` on an embedded
    /// SQLite file under `./data/` is used (see [`Config::with_default_game`]).
    pub games: BTreeMap<String, GameConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; loopback by default so nothing is exposed by accident.
    pub listen: SocketAddr,
    /// Also serve the API over TLS here (HTTP/1.1 and HTTP/2 by ALPN), with `[tls]`.
    pub tls_listen: Option<SocketAddr>,
    /// Open connections beyond this are closed at once after accept.
    pub max_connections: usize,
    /// Requests being processed at once, over all connections; beyond it: 503 `overloaded`.
    pub max_in_flight: usize,
    /// Largest request body accepted; beyond it: 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// A connection that makes no progress for this long (no request starting or running, no
    /// response bytes leaving: silent, slow head, idle keep-alive, response not read) is
    /// closed; a request body must arrive within it too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before connections are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On a shutdown, `/readyz` answers 503 `draining` for this long while everything else
    /// still serves, before the listeners close: set it to the balancer's probe interval so
    /// that it stops sending new connections first (0: close at once).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_listen: None,
            max_connections: 10_000,
            max_in_flight: 4_096,
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            http2_max_streams: 256,
        }
    }
}

/// The native TCP protocol for game servers (see docs/protocol.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to listen on; `enabled = false` turns the TCP front end off.
    pub listen: SocketAddr,
    pub enabled: bool,
    /// Also serve the TCP protocol over TLS here, with `[tls]` (needs `enabled`).
    pub tls_listen: Option<SocketAddr>,
    /// Let several processes bind the same port (`SO_REUSEPORT`): the kernel spreads
    /// connections across them.
    pub reuse_port: bool,
    /// Open connections beyond this get an `overloaded` error frame and are closed.
    pub max_connections: usize,
    /// Requests outstanding per connection; when reached, the server stops reading that
    /// socket until responses have gone out (back-pressure, announced in HELLO_OK).
    pub max_in_flight: u16,
    /// Largest frame body accepted after the handshake (before it: 4 KiB).
    pub max_frame_bytes: u32,
    /// HELLO must arrive within this time after connecting.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The server pings a connection it has heard nothing from for this long.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed. Unset: three times `heartbeat_interval`
    /// (see [`TcpConfig::heartbeat_timeout`]).
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_timeout: Option<Duration>,
    /// Responses waiting to be written per connection; beyond it the server stops reading.
    pub max_output_bytes: usize,
    /// A connection whose pending output makes no progress for this long is closed (a peer
    /// that never reads).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            enabled: true,
            tls_listen: None,
            reuse_port: false,
            max_connections: 10_000,
            max_in_flight: 128,
            max_frame_bytes: 1024 * 1024 + 4096,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: None,
            max_output_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl TcpConfig {
    /// The silence after which a connection is closed: the configured value, else three
    /// heartbeat intervals.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
            .unwrap_or(self.heartbeat_interval.saturating_mul(3))
    }
}

/// Authentication (see `crate::auth` and the README's Security section). With `enabled = false`
/// (the default) every caller may do everything, and the server refuses to listen on a
/// non-loopback address unless `allow_insecure = true`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    /// Allows `enabled = false` on a non-loopback address (a private network you trust).
    pub allow_insecure: bool,
    /// API keys, by the SHA-256 of the key (`datamiddleware key new` makes one). Replaced on
    /// SIGHUP without a restart.
    pub keys: Vec<ApiKeyConfig>,
    /// JWT bearer tokens (players, web back ends); none accepted without keys here.
    pub tokens: TokensConfig,
}

/// `[auth.tokens]`: how JWTs are verified (and minted by `_token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// `iss` every token must carry.
    pub issuer: String,
    /// A value `aud` must hold.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Lifetime of tokens minted by `_token` (and the most a caller may ask for).
    #[serde(with = "humantime_serde")]
    pub mint_ttl: Duration,
    /// A JWKS file of public keys (RS256, EdDSA), each with its `kid` and `alg`.
    pub jwks_file: Option<std::path::PathBuf>,
    /// Verification keys, each pinned to one algorithm.
    pub keys: Vec<TokenKeyConfig>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            issuer: "datamiddleware".to_string(),
            audience: "datamiddleware".to_string(),
            leeway: Duration::from_secs(5),
            mint_ttl: Duration::from_secs(15 * 60),
            jwks_file: None,
            keys: Vec::new(),
        }
    }
}

/// One `[[auth.tokens.keys]]` entry. Its `secret` is never printed (`config print` leaves it
/// out, `Debug` redacts it).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// Selects this key for tokens whose header names it; tokens without `kid` try the keys
    /// without one.
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `EdDSA`; a token signed with anything else is refused.
    pub algorithm: String,
    /// HS256: the shared secret (at least 32 bytes), here or in `secret_file`.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    pub secret_file: Option<std::path::PathBuf>,
    /// RS256 / EdDSA: the PEM public key that verifies.
    pub public_key_file: Option<std::path::PathBuf>,
    /// RS256 / EdDSA: the PEM private key, only to mint tokens with `_token`.
    pub private_key_file: Option<std::path::PathBuf>,
}

/// `[rate_limits]`: token buckets per client address (before authentication) and per caller
/// (by role), for both front ends. Rates are requests per second, 0 is unlimited, and a bucket
/// holds twice its rate (a burst).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Per client IP address, checked before authentication (it protects the verification).
    pub per_ip: u32,
    /// Per key or token, by role.
    pub admin: u32,
    pub server: u32,
    pub readonly: u32,
    pub player: u32,
    /// Addresses and callers tracked at most; idle ones are dropped every 10 s.
    pub max_tracked: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            per_ip: 0,
            admin: 0,
            server: 0,
            readonly: 0,
            player: 100,
            max_tracked: 100_000,
        }
    }
}

impl std::fmt::Debug for TokenKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeyConfig")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

/// `[tls]`: the certificate of the TLS listeners (`http.tls_listen`, `tcp.tls_listen`), PEM
/// files read at start
/// and again on SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<std::path::PathBuf>,
}

/// One API key (`[[auth.keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and for the audit trail.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits; never the key itself.
    pub sha256: String,
    pub role: crate::auth::Role,
    /// The games it may touch; `["*"]` for every game.
    pub games: Vec<String>,
}

/// Bounds of multi-document answers (batch get, list pages, transaction results); see
/// `service::budget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponsesConfig {
    /// Most bytes of documents in one answer: beyond, a batch or transaction is refused with
    /// `response_too_large` and a list page ends early.
    pub max_bytes: usize,
    /// Most bytes of such answers being assembled or sent at once, over all requests; beyond,
    /// requests wait up to `store.timeout`, then get `overloaded`.
    pub max_total_bytes: usize,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            max_bytes: 16 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Upper bound of the in-process cache (L1), counted in bytes of keys and encoded bodies.
    pub l1_max_bytes: u64,
    /// Standalone Redis for the shared tier (L2) and the invalidation bus, such as
    /// `redis://127.0.0.1:6379/0`. At most one of this and `l2_cluster_nodes`; neither: no L2,
    /// no bus (a single instance).
    pub l2_url: Option<String>,
    /// Seed nodes of a Redis Cluster for L2 and the bus, such as `["redis://10.0.0.1:7000"]`.
    pub l2_cluster_nodes: Vec<String>,
    /// Prefix of every Redis key and channel this deployment uses, so that several
    /// deployments can share one Redis: `[a-z0-9_.-]`, 1-32 characters.
    pub l2_prefix: String,
    /// Time budget of one Redis call; past it the call counts as failed and the request goes on
    /// without L2 (a read goes to the store).
    #[serde(with = "humantime_serde")]
    pub l2_timeout: Duration,
    /// How often every instance says on the bus that it is alive and caught up.
    #[serde(with = "humantime_serde")]
    pub bus_heartbeat: Duration,
    /// An instance that has not heard a live instance (itself included) for this long, or saw
    /// a message lost, stops serving from its caches until the bus is whole again: the bound on
    /// staleness when the bus fails.
    #[serde(with = "humantime_serde")]
    pub bus_silence: Duration,
    /// An instance silent on the bus that has not said goodbye is waited for (every other
    /// instance bypassing its caches) until it has also been absent from the store's list of
    /// live instances for this long: how long an instance that crashed holds the others back.
    #[serde(with = "humantime_serde")]
    pub bus_forget_after: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1_max_bytes: 256 * 1024 * 1024,
            l2_url: None,
            l2_cluster_nodes: Vec::new(),
            l2_prefix: "dmw".to_string(),
            l2_timeout: Duration::from_millis(50),
            bus_heartbeat: Duration::from_millis(100),
            bus_silence: Duration::from_millis(400),
            bus_forget_after: Duration::from_secs(10),
        }
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| {
            Err(ConfigError::Invalid {
                key: format!("cache.{key}"),
                problem: problem.to_string(),
            })
        };
        if self.l2_url.is_some() && !self.l2_cluster_nodes.is_empty() {
            return invalid(
                "l2_cluster_nodes",
                "give l2_url (standalone Redis) or l2_cluster_nodes (Redis Cluster), not both",
            );
        }
        let redis_url = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        if self.l2_url.as_deref().is_some_and(|url| !redis_url(url)) {
            return invalid(
                "l2_url",
                "must be a URL starting with redis:// or rediss://",
            );
        }
        if self.l2_cluster_nodes.iter().any(|url| !redis_url(url)) {
            return invalid(
                "l2_cluster_nodes",
                "every node must be a URL starting with redis:// or rediss://",
            );
        }
        let prefix_ok = (1..=32).contains(&self.l2_prefix.len())
            && self.l2_prefix.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !prefix_ok {
            return invalid("l2_prefix", "must be 1-32 characters of [a-z0-9_.-]");
        }
        for (key, value) in [
            ("l2_timeout", self.l2_timeout),
            ("bus_heartbeat", self.bus_heartbeat),
        ] {
            if value < Duration::from_millis(1) {
                return invalid(key, "must be at least 1ms");
            }
        }
        if self.bus_silence < 2 * self.bus_heartbeat {
            return invalid("bus_silence", "must be at least twice cache.bus_heartbeat");
        }
        // A heartbeat may wait for a repair call and its own PUBLISH, each up to l2_timeout.
        if 2 * self.l2_timeout >= self.bus_silence {
            return invalid("l2_timeout", "must be less than half of cache.bus_silence");
        }
        if self.bus_forget_after < 2 * self.bus_silence {
            return invalid(
                "bus_forget_after",
                "must be at least twice cache.bus_silence",
            );
        }
        Ok(())
    }

    /// True when an L2 (and so the bus) is configured.
    pub fn has_l2(&self) -> bool {
        self.l2_url.is_some() || !self.l2_cluster_nodes.is_empty()
    }
}

/// How SQLite syncs a commit to disk. `full` survives power loss; `normal` (WAL) survives a
/// crash of the process (`kill -9`) but may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Time budget of one store call (a read, or a whole write transaction); beyond it:
    /// 504 `timeout`, and for a write the outcome is unknown until read back.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Connections per store (one pool per distinct store URL).
    pub max_connections: u32,
    /// A pooled connection idle longer than this is replaced when next taken, before a
    /// firewall, NAT or load balancer drops it silently (AWS NAT: 350 s, Azure: 4 min).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A pooled connection older than this is replaced when next taken (failovers behind a
    /// DNS name are picked up; server-side session state does not grow without bound).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    pub sqlite_synchronous: SqliteSync,
    /// Writes in progress at once, over both front ends — a write whose client went away still
    /// runs to its end and counts until then; beyond, 503 `overloaded`.
    pub max_pending_writes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            timeout: Duration::from_secs(5),
            max_connections: 16,
            idle_timeout: Duration::from_secs(3 * 60),
            max_lifetime: Duration::from_secs(30 * 60),
            sqlite_synchronous: SqliteSync::Full,
            max_pending_writes: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupConfig {
    /// Where this instance saves its hot keys at shutdown and reads them back at start (none:
    /// not saved). Each collection's `warm_recent` is loaded too.
    pub hot_keys_file: Option<std::path::PathBuf>,
    /// Documents loaded per second at most while warming (the store serves traffic too).
    pub rate: u32,
    /// Ids read per store query while warming.
    pub batch: usize,
    /// Listeners accept while warming (`/healthz` answers 503 `warming` until done); off, they
    /// open once warming is done.
    pub accept_while_warming: bool,
    /// A key that misses L1 this many times within a short window is hot: it is saved in the
    /// hot keys, and the documents its owner has in the collection's `related` collections are
    /// loaded into the caches. 0 turns the adaptive part off.
    pub hot_after_misses: u32,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            hot_keys_file: None,
            rate: 20_000,
            batch: 200,
            accept_while_warming: false,
            hot_after_misses: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `datamiddleware=debug` (`RUST_LOG` wins if set).
    pub filter: String,
    /// `human` (one readable line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Write to this file instead of standard error; it is rotated (`rotation`) by renaming
    /// to `<file>.<date>` and at most `max_files` are kept.
    pub file: Option<std::path::PathBuf>,
    pub rotation: LogRotation,
    pub max_files: usize,
    /// Lines waiting for the writer thread beyond this are dropped (and counted in
    /// `log_lines_dropped_total`) rather than blocking a request on a slow disk.
    pub buffered_lines: usize,
    /// The fraction of HTTP requests written to the access log (target
    /// `datamiddleware::access`), from 0 (none) to 1 (every request).
    pub access_sample: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".to_string(),
            format: LogFormat::Human,
            file: None,
            rotation: LogRotation::Daily,
            max_files: 7,
            buffered_lines: 128_000,
            access_sample: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Hourly,
    Daily,
    Never,
}

/// `[ops]`: where the operations endpoints are served.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// A listener of their own for the operations endpoints (`/metrics`, `/admin`,
    /// `/debug/pprof/…`, and the probes and `/openapi.json` too), so that they can be kept off
    /// the network the API faces. When set, the API listeners no longer serve `/metrics`,
    /// `/admin` and `/debug/pprof/…` (the probes and `/openapi.json` stay there as well).
    pub listen: Option<SocketAddr>,
}

/// `[metrics]`: the Prometheus metrics at `GET /metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record request counts and durations (connection counts and store work are always
    /// counted).
    pub enabled: bool,
    /// A runtime worker running this long without a break is reported (a warning and
    /// `tokio_worker_stalls_total`): a blocking call inside a task, or a saturated worker.
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// Sample allocations (one per 512 KiB allocated on average) from the start, so that
    /// `GET /debug/pprof/heap` can show where the memory held was allocated. Off by default:
    /// it cost ~830 instructions of a cached HTTP GET's ~15,600 (callgrind).
    pub heap_sampling: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            stall_threshold: Duration::from_secs(2),
            heap_sampling: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameConfig {
    /// Database URL: `sqlite://path`, `postgres://…` or `mysql://…`. Games may share one.
    pub store: String,
    /// Required, except for the game `default`, which gets the default collections when it
    /// declares none (so `DMW_GAMES__DEFAULT__STORE=postgres://…` alone switches its store).
    #[serde(default)]
    pub collections: BTreeMap<String, CollectionConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionConfig {
    /// Lifetime of a document in L1 (±10 % random jitter is applied); 0: the collection's
    /// documents are not kept in L1 (reads go to L2, else the store).
    #[serde(with = "humantime_serde")]
    pub l1_ttl: Duration,
    /// Lifetime of a document in L2 (Redis; ±10 % random jitter is applied).
    #[serde(with = "humantime_serde")]
    pub l2_ttl: Duration,
    /// How long a missing id is remembered as missing in L1 (protects the store from floods).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How long a missing id is remembered as missing in L2.
    #[serde(with = "humantime_serde")]
    pub l2_negative_ttl: Duration,
    /// Largest encoded `value` accepted; beyond it: 413 `payload_too_large`.
    pub max_document_bytes: usize,
    /// `_incr` on fractions too, in IEEE double precision (inexact). Off: counters are exact
    /// 64-bit integers and anything else is refused.
    pub float_counters: bool,
    /// At start, the caches are warmed with this many of the collection's most recently
    /// updated documents.
    pub warm_recent: usize,
    /// Collections of the same game whose documents of the same owner are loaded into the
    /// caches when a document of this collection becomes hot (e.g. a player's characters).
    pub related: Vec<String>,
    /// Players (token role `player`) may read every document here, not only their own.
    pub public_read: bool,
    /// Players may create, change and delete their own documents here.
    pub player_write: bool,
}

impl Default for CollectionConfig {
    fn default() -> Self {
        CollectionConfig::with_ttls(Duration::from_secs(300), Duration::from_secs(1800))
    }
}

impl CollectionConfig {
    fn with_ttls(l1_ttl: Duration, l2_ttl: Duration) -> Self {
        CollectionConfig {
            l1_ttl,
            l2_ttl,
            negative_ttl: Duration::from_secs(5),
            l2_negative_ttl: Duration::from_secs(5),
            max_document_bytes: 256 * 1024,
            float_counters: false,
            warm_recent: 0,
            related: Vec::new(),
            public_read: false,
            player_write: false,
        }
    }
}

impl GameConfig {
    /// The game `default`: players, characters, items and orders with the seed's lifetimes.
    pub fn default_game(store: String) -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        let collections = [
            ("players", CollectionConfig::with_ttls(min(10), min(60))),
            ("characters", CollectionConfig::with_ttls(min(5), min(30))),
            ("items", CollectionConfig::with_ttls(min(3), min(15))),
            ("orders", CollectionConfig::with_ttls(min(1), min(5))),
        ]
        .into_iter()
        .map(|(name, c)| (name.to_string(), c))
        .collect();
        GameConfig { store, collections }
    }
}

/// The store of the built-in `default` game.
pub const DEFAULT_STORE_URL: &str = "sqlite://data/default.db";

/// Overrides given on the command line; they win over file and environment.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("{0}")]
    Parse(Box<figment::Error>),
    #[error("invalid config: {key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `DMW_` environment variables
    /// (`__` separates levels: `DMW_HTTP__LISTEN=0.0.0.0:8080`), then CLI overrides; validates.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
        // The file, then the environment: what the operator set.
        let mut set = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            set = set.merge(Toml::file(path));
        }
        // DMW_CONFIG names the file (a CLI concern), not a setting.
        set = set.merge(Env::prefixed("DMW_").split("__").ignore(&["config"]));
        let profile: Option<profiles::Profile> = set
            .extract_inner("profile")
            .map_err(|e| ConfigError::Parse(Box::new(e)))
            .or_else(|e| match e {
                ConfigError::Parse(e) if e.missing() => Ok(None),
                e => Err(e),
            })?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(profile) = profile {
            figment = figment.merge(Serialized::defaults(profile.settings()));
        }
        let mut config: Config = figment
            .merge(set)
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        if let Some(listen) = cli.listen {
            config.http.listen = listen;
        }
        if let Some(listen) = cli.tcp_listen {
            config.tcp.listen = listen;
        }
        let config = config.with_default_game();
        config.validate()?;
        Ok(config)
    }

    /// Adds the game `default` when no game is configured, and gives a configured `default`
    /// game without collections the default ones.
    pub fn with_default_game(mut self) -> Self {
        if self.games.is_empty() {
            self.games.insert(
                "default".to_string(),
                GameConfig::default_game(DEFAULT_STORE_URL.to_string()),
            );
        }
        if let Some(game) = self.games.get_mut("default")
            && game.collections.is_empty()
        {
            game.collections = GameConfig::default_game(String::new()).collections;
        }
        self
    }

    /// Checks every value a serde type cannot express, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                problem: problem.to_string(),
            })
        };
        let positive = [
            ("http.max_connections", self.http.max_connections),
            ("http.max_in_flight", self.http.max_in_flight),
            ("http.max_body_bytes", self.http.max_body_bytes),
            (
                "http.http2_max_streams",
                self.http.http2_max_streams as usize,
            ),
            ("store.max_connections", self.store.max_connections as usize),
            ("store.max_pending_writes", self.store.max_pending_writes),
            ("tcp.max_connections", self.tcp.max_connections),
            ("tcp.max_in_flight", self.tcp.max_in_flight as usize),
            ("tcp.max_output_bytes", self.tcp.max_output_bytes),
            ("log.max_files", self.log.max_files),
            ("log.buffered_lines", self.log.buffered_lines),
        ];
        if !(0.0..=1.0).contains(&self.log.access_sample) {
            return invalid("log.access_sample", "a fraction from 0 to 1");
        }
        if let Some(file) = &self.log.file
            && file.file_name().is_none()
        {
            return invalid("log.file", "must name a file, not a directory");
        }
        if self.metrics.stall_threshold < Duration::from_secs(1) {
            return invalid(
                "metrics.stall_threshold",
                "at least 1s (the runtime is sampled every second)",
            );
        }
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        let store_durations = [
            ("store.timeout", self.store.timeout),
            ("store.idle_timeout", self.store.idle_timeout),
            ("store.max_lifetime", self.store.max_lifetime),
        ];
        for (key, value) in store_durations {
            if value.is_zero() {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.http.header_read_timeout.is_zero() {
            return invalid("http.header_read_timeout", "must be greater than 0");
        }
        let tcp_durations = [
            ("tcp.handshake_timeout", self.tcp.handshake_timeout),
            ("tcp.heartbeat_interval", self.tcp.heartbeat_interval),
            ("tcp.write_timeout", self.tcp.write_timeout),
        ];
        for (key, value) in tcp_durations {
            if value.is_zero() {
                return invalid(key, "must be greater than 0");
            }
        }
        // HELLO_OK announces the interval in whole milliseconds, and never as 0.
        if self.tcp.heartbeat_interval < Duration::from_millis(1) {
            return invalid("tcp.heartbeat_interval", "must be at least 1ms");
        }
        if self.tcp.heartbeat_timeout() <= self.tcp.heartbeat_interval {
            return invalid(
                "tcp.heartbeat_timeout",
                "must be longer than tcp.heartbeat_interval",
            );
        }
        if (self.tcp.max_frame_bytes as usize) < self.http.max_body_bytes.min(64 * 1024) {
            return invalid(
                "tcp.max_frame_bytes",
                "must be at least 65536 (or http.max_body_bytes if smaller)",
            );
        }
        if self.responses.max_total_bytes < self.responses.max_bytes {
            return invalid(
                "responses.max_total_bytes",
                "must be at least responses.max_bytes",
            );
        }
        if self.cache.l1_max_bytes < 1024 * 1024 {
            return invalid("cache.l1_max_bytes", "must be at least 1048576 (1 MiB)");
        }
        self.cache.validate()?;
        if self.warmup.rate == 0 || self.warmup.batch == 0 {
            return invalid(
                "warmup.rate",
                "warmup.rate and warmup.batch must be greater than 0",
            );
        }
        if self.games.is_empty() {
            return invalid("games", "at least one game is required");
        }
        for (name, game) in &self.games {
            let key = format!("games.{name}");
            if !is_valid_name(name) {
                return invalid(&key, "game names must match [a-z][a-z0-9_]{0,63}");
            }
            let scheme = game.store.split("://").next().unwrap_or_default();
            if !game.store.contains("://")
                || !matches!(
                    scheme,
                    "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb"
                )
            {
                return invalid(
                    &format!("{key}.store"),
                    "must be a URL starting with sqlite://, postgres:// or mysql://",
                );
            }
            if game.collections.is_empty() {
                return invalid(
                    &format!("{key}.collections"),
                    "at least one collection is required",
                );
            }
            for (cname, collection) in &game.collections {
                let ckey = format!("{key}.collections.{cname}");
                if !is_valid_name(cname) {
                    return invalid(&ckey, "collection names must match [a-z][a-z0-9_]{0,63}");
                }
                if let Some(unknown) = collection
                    .related
                    .iter()
                    .find(|r| !game.collections.contains_key(*r))
                {
                    return invalid(
                        &format!("{ckey}.related"),
                        &format!("{unknown:?} is not a collection of this game"),
                    );
                }
                if collection.l2_ttl.is_zero() {
                    return invalid(&format!("{ckey}.l2_ttl"), "must be greater than 0");
                }
                if collection.max_document_bytes == 0 {
                    return invalid(
                        &format!("{ckey}.max_document_bytes"),
                        "must be greater than 0",
                    );
                }
                if collection.max_document_bytes > self.http.max_body_bytes {
                    return invalid(
                        &format!("{ckey}.max_document_bytes"),
                        "must not exceed http.max_body_bytes",
                    );
                }
                // One document must always fit an answer (with its id, owner and timestamps).
                if collection.max_document_bytes + DOCUMENT_ENVELOPE_BYTES
                    > self.responses.max_bytes
                {
                    return invalid(
                        "responses.max_bytes",
                        &format!(
                            "must be at least {ckey}.max_document_bytes + {DOCUMENT_ENVELOPE_BYTES}"
                        ),
                    );
                }
            }
        }
        self.validate_auth()
    }

    /// The effective configuration as TOML (for `datamiddleware config print`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

pub mod profiles;
mod security;
#[cfg(test)]
mod tests;
