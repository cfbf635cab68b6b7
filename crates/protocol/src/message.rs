//! Message bodies: one [`Message`] variant per opcode, with its binary encoding.
//!
//! Field types (all integers big-endian):
//! `u8`, `u16`, `u32`, `u64`; `str8` = `u8` length + UTF-8 bytes (names, ids);
//! `str16` = `u16` length + UTF-8 bytes (messages, credentials);
//! `json32` = `u32` length + JSON text (document values travel as the stored bytes, never
//! re-encoded). A body must be consumed exactly: trailing bytes are a protocol error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{FrameError, HEADER_LEN, Header, Opcode};

/// The credential presented in HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    ApiKey(String),
    Token(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The highest protocol version the client speaks.
    pub version: u8,
    pub client_name: String,
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloOk {
    /// The version both sides now speak.
    pub version: u8,
    /// The server pings a connection silent for this long; it closes one silent for
    /// `3 ×` this (or the configured timeout).
    pub heartbeat_interval_ms: u32,
    /// Largest frame body the server accepts after the handshake.
    pub max_frame: u32,
    /// Requests a client may have outstanding on this connection; beyond it the server stops
    /// reading until responses have gone out.
    pub max_in_flight: u16,
    pub server: String,
}

/// A document address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    pub game: String,
    pub collection: String,
    pub id: String,
}

/// A write's precondition: `u8` kind (0 none, 1 version, 2 exists, 3 absent) + `u64` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The live document has exactly this version (0: no live document).
    Version(u64),
    /// A live document exists (HTTP `If-Match: *`).
    Exists,
    /// No live document exists: create only (HTTP `If-None-Match: *`).
    Absent,
}

/// A put's owner: `u8` kind (0 keep the current owner, 1 set, 2 clear) + `str8` owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerChange {
    Keep,
    Set(String),
    Clear,
}

/// Which tier answered a read: 0 none (a write), 1 L1, 2 L2, 3 database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    None = 0,
    L1 = 1,
    L2 = 2,
    Db = 3,
}

/// Every message, by opcode. See `docs/protocol.md` for the byte layout of each body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloOk(HelloOk),
    Ping(u64),
    Pong(u64),
    GoAway {
        last_request_id: u32,
        message: String,
    },
    Get(DocRef),
    BatchGet {
        game: String,
        collection: String,
        ids: Vec<String>,
    },
    Put {
        doc: DocRef,
        pre: Precondition,
        owner: OwnerChange,
        value: Bytes,
    },
    Patch {
        doc: DocRef,
        pre: Precondition,
        patch: Bytes,
    },
    Delete {
        doc: DocRef,
        pre: Precondition,
    },
    List {
        game: String,
        collection: String,
        owner: Option<String>,
        cursor: Option<String>,
        /// 0 means the server's default page size.
        limit: u16,
    },
    Incr {
        doc: DocRef,
        pre: Precondition,
        /// JSON `{"path": "/gold", "by": -5, "min": 0, "max": null}`.
        incr: Bytes,
    },
    Txn {
        game: String,
        /// JSON `{"ops": [...]}`, the same as the HTTP `_txn` body.
        ops: Bytes,
    },
    /// A player token for `game`, minted for a key with the right (the HTTP `_token`).
    Mint {
        game: String,
        /// JSON `{"sub": "...", "ttl": "10m"}`, the same as the HTTP `_token` body.
        request: Bytes,
    },
    Doc {
        tier: Tier,
        created: bool,
        version: u64,
        doc: Bytes,
    },
    Docs {
        tier: Tier,
        docs: Vec<Option<Bytes>>,
        next_cursor: Option<String>,
    },
    Done {
        version: u64,
    },
    TxnResult {
        /// JSON `{"results": [...]}`, the same as the HTTP `_txn` response.
        results: Bytes,
    },
    /// The answer to MINT: JSON `{"token", "token_type", "expires_at"}` (the HTTP answer).
    Token {
        token: Bytes,
    },
    Error {
        code: String,
        message: String,
        op_index: Option<u32>,
    },
}

impl Message {
    pub fn opcode(&self) -> Opcode {
        match self {
            Message::Hello(_) => Opcode::Hello,
            Message::HelloOk(_) => Opcode::HelloOk,
            Message::Ping(_) => Opcode::Ping,
            Message::Pong(_) => Opcode::Pong,
            Message::GoAway { .. } => Opcode::GoAway,
            Message::Get(_) => Opcode::Get,
            Message::BatchGet { .. } => Opcode::BatchGet,
            Message::Put { .. } => Opcode::Put,
            Message::Patch { .. } => Opcode::Patch,
            Message::Delete { .. } => Opcode::Delete,
            Message::List { .. } => Opcode::List,
            Message::Incr { .. } => Opcode::Incr,
            Message::Txn { .. } => Opcode::Txn,
            Message::Mint { .. } => Opcode::Mint,
            Message::Doc { .. } => Opcode::Doc,
            Message::Docs { .. } => Opcode::Docs,
            Message::Done { .. } => Opcode::Done,
            Message::TxnResult { .. } => Opcode::TxnResult,
            Message::Token { .. } => Opcode::Token,
            Message::Error { .. } => Opcode::Error,
        }
    }

    /// Appends the whole frame (header and body) for this message to `out`.
    pub fn encode(&self, request_id: u32, out: &mut BytesMut) {
        let start = out.len();
        out.put_bytes(0, HEADER_LEN);
        self.encode_body(out);
        let body_len = (out.len() - start - HEADER_LEN) as u32;
        let mut header = &mut out[start..start + HEADER_LEN];
        Header {
            opcode: self.opcode(),
            flags: 0,
            request_id,
            body_len,
        }
        .encode(&mut header);
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Message::Hello(hello) => {
                out.put_u8(hello.version);
                put_str16(out, &hello.client_name);
                let (kind, secret) = match &hello.credential {
                    Credential::None => (0, ""),
                    Credential::ApiKey(key) => (1, key.as_str()),
                    Credential::Token(token) => (2, token.as_str()),
                };
                out.put_u8(kind);
                put_str16(out, secret);
            }
            Message::HelloOk(ok) => {
                out.put_u8(ok.version);
                out.put_u32(ok.heartbeat_interval_ms);
                out.put_u32(ok.max_frame);
                out.put_u16(ok.max_in_flight);
                put_str16(out, &ok.server);
            }
            Message::Ping(payload) | Message::Pong(payload) => out.put_u64(*payload),
            Message::GoAway {
                last_request_id,
                message,
            } => {
                out.put_u32(*last_request_id);
                put_str16(out, message);
            }
            Message::Get(doc) => put_doc(out, doc),
            Message::BatchGet {
                game,
                collection,
                ids,
            } => {
                put_str8(out, game);
                put_str8(out, collection);
                out.put_u16(ids.len() as u16);
                for id in ids {
                    put_str8(out, id);
                }
            }
            Message::Put {
                doc,
                pre,
                owner,
                value,
            } => {
                put_doc(out, doc);
                put_pre(out, *pre);
                let (kind, name) = match owner {
                    OwnerChange::Keep => (0, ""),
                    OwnerChange::Set(name) => (1, name.as_str()),
                    OwnerChange::Clear => (2, ""),
                };
                out.put_u8(kind);
                put_str8(out, name);
                put_json32(out, value);
            }
            Message::Patch { doc, pre, patch } => {
                put_doc(out, doc);
                put_pre(out, *pre);
                put_json32(out, patch);
            }
            Message::Delete { doc, pre } => {
                put_doc(out, doc);
                put_pre(out, *pre);
            }
            Message::List {
                game,
                collection,
                owner,
                cursor,
                limit,
            } => {
                put_str8(out, game);
                put_str8(out, collection);
                put_str8(out, owner.as_deref().unwrap_or_default());
                put_str8(out, cursor.as_deref().unwrap_or_default());
                out.put_u16(*limit);
            }
            Message::Incr { doc, pre, incr } => {
                put_doc(out, doc);
                put_pre(out, *pre);
                put_json32(out, incr);
            }
            Message::Txn { game, ops } => {
                put_str8(out, game);
                put_json32(out, ops);
            }
            Message::Mint { game, request } => {
                put_str8(out, game);
                put_json32(out, request);
            }
            Message::Doc {
                tier,
                created,
                version,
                doc,
            } => encode_doc_body(out, *tier, *created, *version, doc),
            Message::Docs {
                tier,
                docs,
                next_cursor,
            } => {
                out.put_u8(*tier as u8);
                out.put_u16(docs.len() as u16);
                for doc in docs {
                    match doc {
                        Some(doc) => {
                            out.put_u8(1);
                            put_json32(out, doc);
                        }
                        None => out.put_u8(0),
                    }
                }
                put_str8(out, next_cursor.as_deref().unwrap_or_default());
            }
            Message::Done { version } => out.put_u64(*version),
            Message::TxnResult { results } => put_json32(out, results),
            Message::Token { token } => put_json32(out, token),
            Message::Error {
                code,
                message,
                op_index,
            } => {
                put_str8(out, code);
                put_str16(out, message);
                out.put_u32(op_index.unwrap_or(u32::MAX));
            }
        }
    }

    /// Step two of decoding: parses the body of a frame whose header [`crate::check`] accepted.
    pub fn decode(header: &Header, body: Bytes) -> Result<Message, FrameError> {
        let mut r = Reader {
            buf: body,
            opcode: header.opcode,
        };
        let message = match header.opcode {
            Opcode::Hello => {
                let version = r.u8()?;
                let client_name = r.str16()?;
                let kind = r.u8()?;
                let secret = r.str16()?;
                let credential = match kind {
                    0 if secret.is_empty() => Credential::None,
                    0 => return Err(r.malformed("credential must be empty with credential_kind 0")),
                    1 => Credential::ApiKey(secret),
                    2 => Credential::Token(secret),
                    _ => return Err(r.malformed("unknown credential kind")),
                };
                Message::Hello(Hello {
                    version,
                    client_name,
                    credential,
                })
            }
            Opcode::HelloOk => Message::HelloOk(HelloOk {
                version: r.u8()?,
                heartbeat_interval_ms: r.u32()?,
                max_frame: r.u32()?,
                max_in_flight: r.u16()?,
                server: r.str16()?,
            }),
            Opcode::Ping => Message::Ping(r.u64()?),
            Opcode::Pong => Message::Pong(r.u64()?),
            Opcode::GoAway => Message::GoAway {
                last_request_id: r.u32()?,
                message: r.str16()?,
            },
            Opcode::Get => Message::Get(r.doc()?),
            Opcode::BatchGet => {
                let game = r.str8()?;
                let collection = r.str8()?;
                let count = r.u16()? as usize;
                // Each id takes at least its length byte: a count the body cannot hold is
                // refused before anything is allocated for it.
                if count > r.buf.remaining() {
                    return Err(r.malformed("id count exceeds the body"));
                }
                let ids = (0..count).map(|_| r.str8()).collect::<Result<_, _>>()?;
                Message::BatchGet {
                    game,
                    collection,
                    ids,
                }
            }
            Opcode::Put => {
                let doc = r.doc()?;
                let pre = r.pre()?;
                let kind = r.u8()?;
                let name = r.str8()?;
                let owner = match (kind, name.is_empty()) {
                    (0, true) => OwnerChange::Keep,
                    (1, false) => OwnerChange::Set(name),
                    (2, true) => OwnerChange::Clear,
                    (1, true) => return Err(r.malformed("owner_kind 1 needs a non-empty owner")),
                    (0 | 2, false) => {
                        return Err(r.malformed("owner must be empty unless owner_kind is 1"));
                    }
                    _ => return Err(r.malformed("unknown owner kind")),
                };
                Message::Put {
                    doc,
                    pre,
                    owner,
                    value: r.json32()?,
                }
            }
            Opcode::Patch => Message::Patch {
                doc: r.doc()?,
                pre: r.pre()?,
                patch: r.json32()?,
            },
            Opcode::Delete => Message::Delete {
                doc: r.doc()?,
                pre: r.pre()?,
            },
            Opcode::List => Message::List {
                game: r.str8()?,
                collection: r.str8()?,
                owner: non_empty(r.str8()?),
                cursor: non_empty(r.str8()?),
                limit: r.u16()?,
            },
            Opcode::Incr => Message::Incr {
                doc: r.doc()?,
                pre: r.pre()?,
                incr: r.json32()?,
            },
            Opcode::Txn => Message::Txn {
                game: r.str8()?,
                ops: r.json32()?,
            },
            Opcode::Mint => Message::Mint {
                game: r.str8()?,
                request: r.json32()?,
            },
            Opcode::Doc => {
                let tier = r.tier()?;
                let created = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("created must be 0 or 1")),
                };
                Message::Doc {
                    tier,
                    created,
                    version: r.u64()?,
                    doc: r.json32()?,
                }
            }
            Opcode::Docs => {
                let tier = r.tier()?;
                let count = r.u16()? as usize;
                if count > r.buf.remaining() {
                    return Err(r.malformed("document count exceeds the body"));
                }
                let mut docs = Vec::with_capacity(count);
                for _ in 0..count {
                    docs.push(match r.u8()? {
                        0 => None,
                        1 => Some(r.json32()?),
                        _ => return Err(r.malformed("presence must be 0 or 1")),
                    });
                }
                Message::Docs {
                    tier,
                    docs,
                    next_cursor: non_empty(r.str8()?),
                }
            }
            Opcode::Done => Message::Done { version: r.u64()? },
            Opcode::TxnResult => Message::TxnResult {
                results: r.json32()?,
            },
            Opcode::Token => Message::Token { token: r.json32()? },
            Opcode::Error => Message::Error {
                code: r.str8()?,
                message: r.str16()?,
                op_index: Some(r.u32()?).filter(|i| *i != u32::MAX),
            },
        };
        if r.buf.has_remaining() {
            return Err(r.malformed("trailing bytes after the body"));
        }
        Ok(message)
    }
}

/// The fields of a GET body (`str8` game, `str8` collection, `str8` id), borrowed from the
/// buffer: lets a server answer a cache hit without allocating. `None` when the body is not a
/// well-formed GET body (decode it normally to get the error).
pub fn get_fields(body: &[u8]) -> Option<(&str, &str, &str)> {
    let mut rest = body;
    let mut next = || {
        let (&len, tail) = rest.split_first()?;
        let (field, tail) = tail.split_at_checked(len as usize)?;
        rest = tail;
        std::str::from_utf8(field).ok()
    };
    let fields = (next()?, next()?, next()?);
    rest.is_empty().then_some(fields)
}

/// Encodes the body of a `DOC` response without building a [`Message`] (the hot path).
pub fn encode_doc_body(out: &mut BytesMut, tier: Tier, created: bool, version: u64, doc: &[u8]) {
    out.put_u8(tier as u8);
    out.put_u8(created as u8);
    out.put_u64(version);
    put_json32(out, doc);
}

/// Appends a whole `DOC` frame (the cache-hit response) to `out`.
pub fn encode_doc_frame(out: &mut BytesMut, request_id: u32, tier: Tier, version: u64, doc: &[u8]) {
    Header {
        opcode: Opcode::Doc,
        flags: 0,
        request_id,
        body_len: (1 + 1 + 8 + 4 + doc.len()) as u32,
    }
    .encode(out);
    encode_doc_body(out, tier, false, version, doc);
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn put_str8(out: &mut BytesMut, s: &str) {
    // Names and ids are at most 128 bytes; longer input is cut at 255 (and will fail
    // validation on the other side rather than corrupt the framing).
    let bytes = &s.as_bytes()[..s.len().min(u8::MAX as usize)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn put_str16(out: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

fn put_json32(out: &mut BytesMut, json: &[u8]) {
    out.put_u32(json.len() as u32);
    out.put_slice(json);
}

fn put_doc(out: &mut BytesMut, doc: &DocRef) {
    put_str8(out, &doc.game);
    put_str8(out, &doc.collection);
    put_str8(out, &doc.id);
}

fn put_pre(out: &mut BytesMut, pre: Precondition) {
    let (kind, version) = match pre {
        Precondition::None => (0, 0),
        Precondition::Version(v) => (1, v),
        Precondition::Exists => (2, 0),
        Precondition::Absent => (3, 0),
    };
    out.put_u8(kind);
    out.put_u64(version);
}

/// A bounds-checked cursor over a body; every read can fail with a malformed-body error.
struct Reader {
    buf: Bytes,
    opcode: Opcode,
}

impl Reader {
    fn malformed(&self, reason: &'static str) -> FrameError {
        FrameError::Malformed {
            opcode: self.opcode,
            reason,
        }
    }

    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.buf.remaining() < n {
            Err(self.malformed("body too short"))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn take(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn string(&mut self, n: usize) -> Result<String, FrameError> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed("string is not UTF-8"))
    }

    fn str8(&mut self) -> Result<String, FrameError> {
        let n = self.u8()? as usize;
        self.string(n)
    }

    fn str16(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        self.string(n)
    }

    fn json32(&mut self) -> Result<Bytes, FrameError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn doc(&mut self) -> Result<DocRef, FrameError> {
        Ok(DocRef {
            game: self.str8()?,
            collection: self.str8()?,
            id: self.str8()?,
        })
    }

    fn pre(&mut self) -> Result<Precondition, FrameError> {
        let kind = self.u8()?;
        let version = self.u64()?;
        match (kind, version) {
            (0, 0) => Ok(Precondition::None),
            (1, v) => Ok(Precondition::Version(v)),
            (2, 0) => Ok(Precondition::Exists),
            (3, 0) => Ok(Precondition::Absent),
            _ => Err(self.malformed("unknown precondition")),
        }
    }

    fn tier(&mut self) -> Result<Tier, FrameError> {
        match self.u8()? {
            0 => Ok(Tier::None),
            1 => Ok(Tier::L1),
            2 => Ok(Tier::L2),
            3 => Ok(Tier::Db),
            _ => Err(self.malformed("unknown tier")),
        }
    }
}
