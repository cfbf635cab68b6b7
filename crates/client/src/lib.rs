//! Async Rust client for the datamiddleware TCP protocol.
//!
//! A [`Client`] is a cheap-to-clone handle; any number of tasks may use it at once and their
//! requests are multiplexed (pipelined) over one connection, answered out of order and matched
//! by request id. The client performs the handshake, answers and sends heartbeats, applies a
//! per-request timeout, and reconnects with exponential backoff when the connection is lost or
//! the server sends GOAWAY; a request the GOAWAY says was never read is sent again on the new
//! connection. Errors from the server carry the same stable codes as the HTTP API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), datamiddleware_client::Error> {
//! use datamiddleware_client::{Client, ClientOptions, Precondition};
//! let client = Client::new("127.0.0.1:7070", ClientOptions::default());
//! let doc = client.put("default", "players", "42", &serde_json::json!({"gold": 100}), Precondition::None).await?;
//! let again = client.get("default", "players", "42").await?;
//! assert_eq!(doc.version, again.version);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - this file: [`Client`], options, errors and the typed operations;
//! - `connection`: one live connection (handshake, reader, writer, heartbeats);
//! - `tls`: [`TlsOptions`], for a server's TLS listener.

mod connection;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use datamiddleware_protocol::{Credential, ErrorCode, OwnerChange, Precondition, Tier};
use datamiddleware_protocol::{DocRef, Message};
use serde::de::DeserializeOwned;

use connection::{CallError, Connection};
pub use tls::{TlsOptions, config_with_ca_file, host_of};

/// How many times one request may be sent when each connection goes away before reading it.
const MAX_SENDS_OF_UNREAD: u32 = 3;

/// How the client connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub client_name: String,
    pub credential: Credential,
    /// How long one request may wait for its response.
    pub request_timeout: Duration,
    /// How long connecting, the TLS handshake (with `tls`) and HELLO may take together; past
    /// it the attempt fails with [`Error::Connect`] (`TimedOut`) and is retried.
    pub connect_timeout: Duration,
    /// Connection attempts per request before giving up (with backoff in between).
    pub max_connect_attempts: u32,
    /// First backoff delay; doubled after each failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Connect over TLS (to the server's `tcp.tls_listen`); `None`: plain TCP.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_name: "datamiddleware-client".to_string(),
            credential: Credential::None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connect_attempts: 5,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (the same codes as the HTTP problem documents).
    #[error("{code}: {message}")]
    Server {
        code: String,
        message: String,
        op_index: Option<u32>,
    },
    /// No response within the request timeout: the outcome is unknown (read it back).
    #[error("the request timed out")]
    Timeout,
    /// The connection died before the response arrived: the outcome is unknown.
    #[error("the connection was lost")]
    ConnectionLost,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS configuration or handshake failed (an untrusted certificate, a wrong name):
    /// not retried.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The server's error code, if this is a server error with a known code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => ErrorCode::parse(code),
            _ => None,
        }
    }
}

/// One document as the server returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub version: u64,
    /// True when a write created the document (HTTP 201).
    pub created: bool,
    /// Which tier answered a read ([`Tier::None`] for writes).
    pub tier: Tier,
    /// The document, `{"id","owner","version","updated_at","value"}`, as bytes.
    pub json: Bytes,
}

impl Doc {
    /// Parses the whole document.
    pub fn parse(&self) -> Result<serde_json::Value, Error> {
        Ok(serde_json::from_slice(&self.json)?)
    }

    /// Deserializes the document's `value`.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, Error> {
        #[derive(serde::Deserialize)]
        struct Envelope<T> {
            value: T,
        }
        Ok(serde_json::from_slice::<Envelope<T>>(&self.json)?.value)
    }
}

/// Several documents: a batch get (one slot per requested id) or a list page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docs {
    pub tier: Tier,
    pub docs: Vec<Option<Bytes>>,
    /// For a list: where the next page starts.
    pub next_cursor: Option<String>,
}

/// A client for one server address. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    options: ClientOptions,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Client {
    /// A client for `addr` (`host:port`). Connects lazily, on the first request.
    pub fn new(addr: impl Into<String>, options: ClientOptions) -> Client {
        Client {
            inner: Arc::new(Inner {
                addr: addr.into(),
                options,
                connection: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Connects now (performing the handshake) instead of on the first request.
    pub async fn connect(&self) -> Result<(), Error> {
        self.connection().await.map(|_| ())
    }

    /// The heartbeat interval the server announced (after connecting).
    pub async fn heartbeat_interval(&self) -> Result<Duration, Error> {
        let connection = self.connection().await?;
        Ok(Duration::from_millis(u64::from(
            connection.hello.heartbeat_interval_ms,
        )))
    }

    async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.is_usable()) {
            return Ok(connection.clone());
        }
        let options = &self.inner.options;
        let mut delay = options.backoff_initial;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Connection::open(&self.inner.addr, options).await {
                Ok(connection) => {
                    *slot = Some(connection.clone());
                    return Ok(connection);
                }
                // The server said no (unauthorized, unsupported version): retrying won't help,
                // except when it is only overloaded.
                Err(e @ Error::Server { .. }) if e.code() != Some(ErrorCode::Overloaded) => {
                    return Err(e);
                }
                Err(e @ Error::Tls(_)) => return Err(e),
                Err(e) if attempt >= options.max_connect_attempts.max(1) => return Err(e),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, ?delay, "connect failed; backing off");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(options.backoff_max);
                }
            }
        }
    }

    /// Sends one request and returns the response, or the server's error as [`Error::Server`].
    ///
    /// A request the server did not read before going away is sent again on a new connection;
    /// one it may have read fails with [`Error::ConnectionLost`] and is never repeated.
    pub async fn request(&self, message: Message) -> Result<Message, Error> {
        let mut sends = 0;
        let response = loop {
            sends += 1;
            let connection = self.connection().await?;
            match connection
                .call(&message, self.inner.options.request_timeout)
                .await
            {
                Ok(response) => break response,
                // Bounded so that a server that keeps going away cannot hold a request forever.
                Err(CallError::Unread) if sends < MAX_SENDS_OF_UNREAD => continue,
                Err(CallError::Unread) => return Err(Error::ConnectionLost),
                Err(CallError::Failed(e)) => return Err(e),
            }
        };
        match response {
            Message::Error {
                code,
                message,
                op_index,
            } => Err(Error::Server {
                code,
                message,
                op_index,
            }),
            response => Ok(response),
        }
    }

    /// Round-trip time of a PING.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        match self.request(Message::Ping(0)).await? {
            Message::Pong(_) => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn get(&self, game: &str, collection: &str, id: &str) -> Result<Doc, Error> {
        doc(self
            .request(Message::Get(doc_ref(game, collection, id)))
            .await?)
    }

    pub async fn batch_get(
        &self,
        game: &str,
        collection: &str,
        ids: &[&str],
    ) -> Result<Docs, Error> {
        let request = Message::BatchGet {
            game: game.into(),
            collection: collection.into(),
            ids: ids.iter().map(|id| id.to_string()).collect(),
        };
        docs(self.request(request).await?)
    }

    /// Live documents by id; `limit` 0 means the server's default page size.
    pub async fn list(
        &self,
        game: &str,
        collection: &str,
        owner: Option<&str>,
        cursor: Option<&str>,
        limit: u16,
    ) -> Result<Docs, Error> {
        let request = Message::List {
            game: game.into(),
            collection: collection.into(),
            owner: owner.map(Into::into),
            cursor: cursor.map(Into::into),
            limit,
        };
        docs(self.request(request).await?)
    }

    /// Creates or replaces a document, keeping its owner.
    pub async fn put(
        &self,
        game: &str,
        collection: &str,
        id: &str,
        value: &serde_json::Value,
        pre: Precondition,
    ) -> Result<Doc, Error> {
        self.put_owned(game, collection, id, value, OwnerChange::Keep, pre)
            .await
    }

    /// Creates or replaces a document, setting or clearing its owner.
    pub async fn put_owned(
        &self,
        game: &str,
        collection: &str,
        id: &str,
        value: &serde_json::Value,
        owner: OwnerChange,
        pre: Precondition,
    ) -> Result<Doc, Error> {
        let request = Message::Put {
            doc: doc_ref(game, collection, id),
            pre,
            owner,
            value: Bytes::from(serde_json::to_vec(value)?),
        };
        doc(self.request(request).await?)
    }

    /// JSON Merge Patch (RFC 7396) of the document's value.
    pub async fn patch(
        &self,
        game: &str,
        collection: &str,
        id: &str,
        patch: &serde_json::Value,
        pre: Precondition,
    ) -> Result<Doc, Error> {
        let request = Message::Patch {
            doc: doc_ref(game, collection, id),
            pre,
            patch: Bytes::from(serde_json::to_vec(patch)?),
        };
        doc(self.request(request).await?)
    }

    /// Deletes a document; returns the tombstone's version.
    pub async fn delete(
        &self,
        game: &str,
        collection: &str,
        id: &str,
        pre: Precondition,
    ) -> Result<u64, Error> {
        let request = Message::Delete {
            doc: doc_ref(game, collection, id),
            pre,
        };
        match self.request(request).await? {
            Message::Done { version } => Ok(version),
            other => Err(unexpected(&other)),
        }
    }

    /// Atomically adds `by` to the number at JSON Pointer `path`, refusing results outside
    /// `[min, max]` with `bound_violation`.
    #[allow(clippy::too_many_arguments)] // mirrors the operation's fields one to one
    pub async fn incr(
        &self,
        game: &str,
        collection: &str,
        id: &str,
        path: &str,
        by: impl Into<serde_json::Number>,
        min: Option<serde_json::Number>,
        max: Option<serde_json::Number>,
        pre: Precondition,
    ) -> Result<Doc, Error> {
        let body = serde_json::json!({"path": path, "by": by.into(), "min": min, "max": max});
        let request = Message::Incr {
            doc: doc_ref(game, collection, id),
            pre,
            incr: Bytes::from(serde_json::to_vec(&body)?),
        };
        doc(self.request(request).await?)
    }

    /// Runs a transaction (`{"ops": [...]}` as for HTTP `_txn`); returns `{"results": [...]}`.
    pub async fn txn(
        &self,
        game: &str,
        ops: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let request = Message::Txn {
            game: game.into(),
            ops: Bytes::from(serde_json::to_vec(ops)?),
        };
        match self.request(request).await? {
            Message::TxnResult { results } => Ok(serde_json::from_slice(&results)?),
            other => Err(unexpected(&other)),
        }
    }

    /// Mints a player token for `subject` in `game` (the connection's key must be a `server`
    /// or `admin` key of the game); `ttl` such as `"10m"`, at most the server's `mint_ttl`.
    /// Returns `{"token", "token_type", "expires_at"}`.
    pub async fn mint(
        &self,
        game: &str,
        subject: &str,
        ttl: Option<&str>,
    ) -> Result<serde_json::Value, Error> {
        let mut body = serde_json::json!({ "sub": subject });
        if let Some(ttl) = ttl {
            body["ttl"] = ttl.into();
        }
        let request = Message::Mint {
            game: game.into(),
            request: Bytes::from(serde_json::to_vec(&body)?),
        };
        match self.request(request).await? {
            Message::Token { token } => Ok(serde_json::from_slice(&token)?),
            other => Err(unexpected(&other)),
        }
    }
}

fn doc_ref(game: &str, collection: &str, id: &str) -> DocRef {
    DocRef {
        game: game.into(),
        collection: collection.into(),
        id: id.into(),
    }
}

fn doc(message: Message) -> Result<Doc, Error> {
    match message {
        Message::Doc {
            tier,
            created,
            version,
            doc,
        } => Ok(Doc {
            version,
            created,
            tier,
            json: doc,
        }),
        other => Err(unexpected(&other)),
    }
}

fn docs(message: Message) -> Result<Docs, Error> {
    match message {
        Message::Docs {
            tier,
            docs,
            next_cursor,
        } => Ok(Docs {
            tier,
            docs,
            next_cursor,
        }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(message: &Message) -> Error {
    Error::Protocol(format!("unexpected {:?} response", message.opcode()))
}
