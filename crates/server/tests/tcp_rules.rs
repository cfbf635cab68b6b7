mod support;

// Black-box conformance tests of the TCP protocol's rules, written from `docs/protocol.md`
// ("TCP protocol, version 1": request ids, order of answers, connection lifecycle, the error
// table, limits, changelog) and the README's HTTP API and configuration keys.
//
// Every socket read has a bound: a server that hangs fails the test instead of hanging it.
// Sleeps only give the server a chance to misbehave; the assertions that follow them are
// the proof.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use datamiddleware::config::Config;
use datamiddleware_protocol::{
    Credential, DocRef, Header, Hello, HelloOk, Message, OwnerChange, Precondition, Tier, decode,
};
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for any one expected frame, or for the connection to close.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// A raw connection
// ---------------------------------------------------------------------------------------------

/// What the next read from the server produced.
#[derive(Debug)]
enum Next {
    Frame(Header, Message),
    /// An orderly close (FIN); `partial` holds bytes of an incomplete frame, if any.
    Eof {
        partial: usize,
    },
    /// The read failed (e.g. the connection was reset).
    Failed(std::io::Error),
    /// Nothing within the bound.
    Timeout,
}

/// A protocol connection spoken byte by byte.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(s: &TestServer) -> Raw {
        let addr = s.running.tcp_addr.expect("the TCP front end is enabled");
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect within the bound")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake with HELLO id 1; returns the HELLO_OK.
    async fn ready(s: &TestServer) -> (Raw, HelloOk) {
        let mut raw = Raw::connect(s).await;
        raw.send(1, &hello(1)).await;
        let (header, message) = raw.recv().await;
        assert_eq!(header.request_id, 1, "HELLO_OK echoes HELLO's id");
        let Message::HelloOk(ok) = message else {
            panic!("expected HELLO_OK, got {message:?}")
        };
        (raw, ok)
    }

    async fn send(&mut self, id: u32, message: &Message) {
        self.send_bytes(&frame(id, message)).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("the write completes within the bound")
            .expect("write");
    }

    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((header, message)) =
                decode(&mut self.buf, u32::MAX).expect("the server sends valid frames")
            {
                return Next::Frame(header, message);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) => {
                    return Next::Eof {
                        partial: self.buf.len(),
                    };
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Next::Failed(e),
            }
        }
    }

    /// The next frame; fails the test on a timeout or a closed connection.
    async fn recv(&mut self) -> (Header, Message) {
        match self.next(WAIT).await {
            Next::Frame(header, message) => (header, message),
            other => panic!("expected a frame within {WAIT:?}, got {other:?}"),
        }
    }

    /// The next frame must be ERROR `code` with request id `id`.
    async fn expect_error(&mut self, id: u32, code: &str) {
        let (header, message) = self.recv().await;
        match &message {
            Message::Error { code: got, .. } => assert_eq!(
                (got.as_str(), header.request_id),
                (code, id),
                "ERROR (code, request id): {message:?}"
            ),
            other => panic!(
                "expected ERROR {code} with id {id}, got {other:?} with id {}",
                header.request_id
            ),
        }
    }

    /// The connection must end with an orderly EOF within the bound, nothing more arriving.
    async fn expect_eof(&mut self) {
        match self.next(WAIT).await {
            Next::Eof { partial: 0 } => {}
            Next::Eof { partial } => panic!("EOF after {partial} bytes of an incomplete frame"),
            Next::Frame(header, message) => panic!(
                "expected EOF, got another frame: {message:?} with id {}",
                header.request_id
            ),
            Next::Failed(e) => panic!("expected an orderly EOF, the read failed: {e}"),
            Next::Timeout => panic!("the connection is still open after {WAIT:?}"),
        }
    }

    /// The connection must end (EOF or reset) within the bound, with no further frame. Used
    /// where the server closes with bytes of ours it never read, which may reset the stream.
    async fn expect_closed(&mut self) {
        match self.next(WAIT).await {
            Next::Eof { partial: 0 } | Next::Failed(_) => {}
            Next::Eof { partial } => panic!("EOF after {partial} bytes of an incomplete frame"),
            Next::Frame(header, message) => panic!(
                "expected the close, got another frame: {message:?} with id {}",
                header.request_id
            ),
            Next::Timeout => panic!("the connection is still open after {WAIT:?}"),
        }
    }

    async fn error_then_eof(&mut self, id: u32, code: &str) {
        self.expect_error(id, code).await;
        self.expect_eof().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and frames
// ---------------------------------------------------------------------------------------------

fn hello(version: u8) -> Message {
    Message::Hello(Hello {
        version,
        client_name: "tcp-rules".into(),
        credential: Credential::ApiKey(support::TEST_KEY.to_string()),
    })
}

fn frame(id: u32, message: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    message.encode(id, &mut out);
    out
}

fn frames(messages: &[(u32, Message)]) -> BytesMut {
    let mut out = BytesMut::new();
    for (id, message) in messages {
        message.encode(*id, &mut out);
    }
    out
}

/// Rewrites `body_len` (bytes 12–15) from the frame's actual length.
fn fix_body_len(frame: &mut [u8]) {
    let len = (frame.len() - 16) as u32;
    frame[12..16].copy_from_slice(&len.to_be_bytes());
}

/// The frame of `message` with one extra byte at the end of its body (body_len adjusted).
fn with_trailing_byte(id: u32, message: &Message) -> BytesMut {
    let mut f = frame(id, message);
    f.extend_from_slice(&[0]);
    fix_body_len(&mut f);
    f
}

/// A bare header with the given fields.
fn raw_header(opcode: u8, id: u32, body_len: u32) -> Vec<u8> {
    let mut out = vec![b'D', b'M', 1, opcode, 0, 0, 0, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out
}

fn doc(s: &TestServer, id: &str) -> DocRef {
    DocRef {
        game: s.game.clone(),
        collection: "players".into(),
        id: id.into(),
    }
}

/// Bytes of the `doc` part of a body (`str8` game, collection, id).
fn doc_len(s: &TestServer, id: &str) -> usize {
    3 + s.game.len() + "players".len() + id.len()
}

fn get(s: &TestServer, id: &str) -> Message {
    Message::Get(doc(s, id))
}

fn put(s: &TestServer, id: &str, value: Value) -> Message {
    Message::Put {
        doc: doc(s, id),
        pre: Precondition::None,
        owner: OwnerChange::Keep,
        value: value.to_string().into(),
    }
}

fn incr(s: &TestServer, id: &str, path: &str, by: i64) -> Message {
    Message::Incr {
        doc: doc(s, id),
        pre: Precondition::None,
        incr: json!({"path": path, "by": by}).to_string().into(),
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

/// A DOC answer's (version, created, document).
fn expect_doc(header: &Header, message: &Message, id: u32) -> (u64, bool, Value) {
    match message {
        Message::Doc {
            version,
            created,
            doc,
            ..
        } if header.request_id == id => (*version, *created, json_of(doc)),
        other => panic!(
            "expected DOC for request {id}, got {other:?} with id {}",
            header.request_id
        ),
    }
}

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(Backend::Sqlite, tweak)
        .await
        .expect("SQLite is always available")
}

/// The document's HTTP status and (when found) its JSON, read through `s.client`.
async fn http_doc(client: &support::Http, path: &str) -> (StatusCode, Option<Value>) {
    let reply = client.get(path).await;
    let body = (reply.status == StatusCode::OK).then(|| reply.json());
    (reply.status, body)
}

// ---------------------------------------------------------------------------------------------
// 1. Handshake
// ---------------------------------------------------------------------------------------------

/// "The client's first frame must be HELLO. Any other frame before HELLO_OK … gets ERROR
/// `protocol_error` and the connection is closed." The ERROR carries the frame's id; a PUT
/// sent before HELLO is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_get_before_hello_is_protocol_error_with_its_id() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    c.send(7, &get(&s, "nobody")).await;
    c.error_then_eof(7, "protocol_error").await;

    // A PUT before HELLO: the same, and nothing is written.
    let mut c = Raw::connect(&s).await;
    c.send(9, &put(&s, "early", json!({"x": 1}))).await;
    c.error_then_eof(9, "protocol_error").await;
    let (status, _) = http_doc(&s.client, &s.path("players/early")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the pre-HELLO PUT was applied"
    );
}

/// "PING and PONG included": a PING before HELLO gets `protocol_error` with its id and no PONG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_ping_before_hello_is_protocol_error_and_no_pong() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    c.send(11, &Message::Ping(0xABCD)).await;
    let (header, message) = c.recv().await;
    assert!(
        !matches!(message, Message::Pong(_)),
        "a PING before HELLO was answered with {message:?}"
    );
    match message {
        Message::Error { code, .. } => {
            assert_eq!((code.as_str(), header.request_id), ("protocol_error", 11))
        }
        other => panic!("expected ERROR protocol_error, got {other:?}"),
    }
    c.expect_eof().await;

    // A PONG before HELLO: the same.
    let mut c = Raw::connect(&s).await;
    c.send(12, &Message::Pong(1)).await;
    c.error_then_eof(12, "protocol_error").await;
}

/// "A second HELLO is a `protocol_error`", with the second HELLO's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_second_hello_is_protocol_error() {
    let s = server().await;
    let (mut c, ok) = Raw::ready(&s).await;
    assert_eq!(ok.version, 1);
    c.send(2, &hello(1)).await;
    c.error_then_eof(2, "protocol_error").await;

    // Also after a request has been answered, and with an id that is not in the sequence.
    let (mut c, _) = Raw::ready(&s).await;
    c.send(40, &get(&s, "nobody")).await;
    c.expect_error(40, "not_found").await;
    c.send(3, &hello(1)).await;
    c.error_then_eof(3, "protocol_error").await;
}

/// HELLO version 0 → `unsupported_version` with HELLO's id, then close; a client speaking a
/// higher version than 1 is answered with version 1 ("the version both will use").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_hello_version_zero_is_unsupported_version() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    c.send(21, &hello(0)).await;
    c.error_then_eof(21, "unsupported_version").await;

    let mut c = Raw::connect(&s).await;
    c.send(22, &hello(7)).await;
    let (header, message) = c.recv().await;
    match message {
        Message::HelloOk(ok) => assert_eq!((header.request_id, ok.version), (22, 1)),
        other => panic!("expected HELLO_OK version 1 for a version-7 client, got {other:?}"),
    }
}

/// "Until HELLO_OK, frame bodies over 4096 bytes are refused (`frame_too_large`)": a HELLO
/// whose body is exactly 4096 bytes is accepted, one of 4097 is refused with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_body_limit_is_4096_bytes() {
    let s = server().await;
    let hello_of = |name_len: usize| {
        Message::Hello(Hello {
            version: 1,
            client_name: "n".repeat(name_len),
            credential: Credential::ApiKey(support::TEST_KEY.to_string()),
        })
    };
    // body = 1 (version) + 2 + name + 1 (kind) + 2 + credential
    let fixed = 6 + support::TEST_KEY.len();
    let exact = frame(31, &hello_of(4096 - fixed));
    assert_eq!(exact.len(), 16 + 4096);
    let mut c = Raw::connect(&s).await;
    c.send_bytes(&exact).await;
    let (header, message) = c.recv().await;
    assert!(
        matches!(message, Message::HelloOk(_)) && header.request_id == 31,
        "a 4096-byte HELLO body is within the limit: {message:?}"
    );

    let mut c = Raw::connect(&s).await;
    c.send_bytes(&raw_header(0x01, 32, 4097)).await; // the header alone: refused before the body
    c.error_then_eof(32, "frame_too_large").await;
}

// ---------------------------------------------------------------------------------------------
// 2. The error table: code, request id, close
// ---------------------------------------------------------------------------------------------

/// After HELLO_OK, `bytes` is a protocol violation: ERROR `code` with request id `id`, then EOF.
async fn violation(s: &TestServer, bytes: &[u8], id: u32, code: &str) {
    let (mut c, _) = Raw::ready(s).await;
    c.send_bytes(bytes).await;
    c.error_then_eof(id, code).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_malformed_body_carries_the_frames_id() {
    let s = server().await;
    // A GET with a trailing byte.
    violation(
        &s,
        &with_trailing_byte(5, &get(&s, "a")),
        5,
        "protocol_error",
    )
    .await;
    // A GET cut short (body_len says so: a complete but too-short body).
    let mut short = frame(6, &get(&s, "abc"));
    short.truncate(short.len() - 1);
    fix_body_len(&mut short);
    violation(&s, &short, 6, "protocol_error").await;
    // A PUT with a trailing byte: nothing of it is applied.
    let bad_put = with_trailing_byte(8, &put(&s, "trail", json!({"x": 1})));
    violation(&s, &bad_put, 8, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/trail")).await.0,
        StatusCode::NOT_FOUND,
        "the malformed PUT was applied"
    );
    // A precondition combination not listed: kind 2 (exists) with a non-zero version.
    let mut pre = frame(9, &put(&s, "pre", json!({})));
    let at = 16 + doc_len(&s, "pre");
    pre[at] = 2;
    pre[at + 1..at + 9].copy_from_slice(&5u64.to_be_bytes());
    violation(&s, &pre, 9, "protocol_error").await;
    // An enumeration value not listed: precondition kind 4.
    let mut pre = frame(10, &put(&s, "pre", json!({})));
    pre[at] = 4;
    violation(&s, &pre, 10, "protocol_error").await;
}

/// Wrong magic → `protocol_error` with id 0; the first byte is checked on arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_wrong_magic_has_id_zero() {
    let s = server().await;
    let mut bad = frame(7, &get(&s, "a"));
    bad[1] = b'X';
    violation(&s, &bad, 0, "protocol_error").await;
    // The whole header of a wrong second byte only, body not sent.
    let mut h = raw_header(0x10, 7, 0);
    h[1] = b'X';
    violation(&s, &h, 0, "protocol_error").await;
    // One wrong first byte alone is enough: "the first byte already must be 0x44".
    violation(&s, &[0x00], 0, "protocol_error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_header_version_two_is_unsupported_version_with_the_frames_id() {
    let s = server().await;
    let mut bad = frame(6, &get(&s, "a"));
    bad[2] = 2;
    violation(&s, &bad, 6, "unsupported_version").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_unknown_opcode_carries_the_frames_id() {
    let s = server().await;
    violation(&s, &raw_header(0x42, 8, 0), 8, "unknown_opcode").await;
    violation(&s, &raw_header(0x19, 9, 0), 9, "unknown_opcode").await;
    violation(&s, &raw_header(0x00, 10, 0), 10, "unknown_opcode").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reserved_bytes_set_is_protocol_error_with_the_frames_id() {
    let s = server().await;
    let mut bad = frame(12, &get(&s, "a"));
    bad[7] = 1;
    violation(&s, &bad, 12, "protocol_error").await;
    let mut bad = frame(13, &get(&s, "a"));
    bad[6] = 0x80;
    violation(&s, &bad, 13, "protocol_error").await;
}

/// "flags: senders send 0, receivers ignore unknown bits": a GET with every flag bit set is
/// an ordinary GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flag_bits_are_ignored() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut f = frame(4, &get(&s, "nobody"));
    f[4] = 0xFF;
    f[5] = 0xFF;
    c.send_bytes(&f).await;
    c.expect_error(4, "not_found").await;
    c.send(5, &Message::Ping(5)).await;
    let (header, message) = c.recv().await;
    assert_eq!((header.request_id, message), (5, Message::Pong(5)));
}

/// Every server-to-client opcode sent by a client is `unknown_opcode` with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_server_opcodes_from_the_client_are_unknown_opcode() {
    let s = server().await;
    let messages = [
        Message::HelloOk(HelloOk {
            version: 1,
            heartbeat_interval_ms: 1000,
            max_frame: 4096,
            max_in_flight: 1,
            server: "x".into(),
        }),
        Message::GoAway {
            last_request_id: 1,
            message: "bye".into(),
        },
        Message::Doc {
            tier: Tier::L1,
            created: false,
            version: 1,
            doc: "{}".into(),
        },
        Message::Docs {
            tier: Tier::Db,
            docs: vec![None],
            next_cursor: None,
        },
        Message::Done { version: 1 },
        Message::TxnResult {
            results: r#"{"results":[]}"#.into(),
        },
        Message::Error {
            code: "internal".into(),
            message: "x".into(),
            op_index: None,
        },
    ];
    for (i, message) in messages.iter().enumerate() {
        let id = 100 + i as u32;
        let (mut c, _) = Raw::ready(&s).await;
        c.send(id, message).await;
        c.error_then_eof(id, "unknown_opcode").await;
    }
}

/// `body_len` over the announced `max_frame` → `frame_too_large` with the frame's id, refused
/// from the header alone (the body is never sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_body_over_max_frame_is_frame_too_large() {
    let s = server_with(|c| c.tcp.max_frame_bytes = 65536).await;
    let (mut c, ok) = Raw::ready(&s).await;
    assert_eq!(
        ok.max_frame, 65536,
        "HELLO_OK announces tcp.max_frame_bytes"
    );
    c.send_bytes(&raw_header(0x12, 14, 65537)).await;
    c.error_then_eof(14, "frame_too_large").await;

    let (mut c, _) = Raw::ready(&s).await;
    c.send_bytes(&raw_header(0x10, 15, u32::MAX)).await;
    c.error_then_eof(15, "frame_too_large").await;
}

/// A frame whose body is exactly `max_frame` bytes is accepted: a PUT padded to the limit is
/// applied (DOC created, version 1), and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_exactly_max_frame_is_accepted() {
    let s = server_with(|c| {
        c.tcp.max_frame_bytes = 65536;
        for game in c.games.values_mut() {
            for collection in game.collections.values_mut() {
                collection.max_document_bytes = 256 * 1024;
            }
        }
    })
    .await;
    let (mut c, ok) = Raw::ready(&s).await;
    let max = ok.max_frame as usize;
    assert_eq!(max, 65536);
    let base = frame(2, &put(&s, "big", json!({"pad": ""}))).len() - 16;
    let pad = "p".repeat(max - base);
    let exact = frame(2, &put(&s, "big", json!({ "pad": pad })));
    assert_eq!(
        exact.len() - 16,
        max,
        "the test's PUT body is exactly max_frame"
    );
    c.send_bytes(&exact).await;
    let (header, message) = c.recv().await;
    if let Message::Error { code, .. } = &message {
        assert_ne!(
            code, "frame_too_large",
            "a body of exactly max_frame was refused"
        );
    }
    let (version, created, body) = expect_doc(&header, &message, 2);
    assert_eq!((version, created), (1, true));
    assert_eq!(
        body["value"]["pad"].as_str().map(str::len),
        Some(max - base)
    );
    c.send(3, &Message::Ping(3)).await;
    let (header, message) = c.recv().await;
    assert_eq!(
        (header.request_id, message),
        (3, Message::Pong(3)),
        "still open"
    );
}

/// HELLO with credential_kind 3 is a malformed body: `protocol_error` with HELLO's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_credential_kind_three_is_protocol_error() {
    let s = server().await;
    let mut f = frame(
        3,
        &Message::Hello(Hello {
            version: 1,
            client_name: "abc".into(),
            credential: Credential::ApiKey("k".into()),
        }),
    );
    let at = 16 + 1 + 2 + 3; // version, str16 client_name "abc"
    assert_eq!(f[at], 1, "credential_kind offset");
    f[at] = 3;
    let mut c = Raw::connect(&s).await;
    c.send_bytes(&f).await;
    c.error_then_eof(3, "protocol_error").await;
}

/// PUT owner rules: a non-empty owner with kind 0 or 2, an empty one with kind 1, or kind 3,
/// are `protocol_error` with the PUT's id, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_put_owner_rules_are_protocol_error() {
    let s = server().await;
    let owned = |id: &str| Message::Put {
        doc: doc(&s, id),
        pre: Precondition::None,
        owner: OwnerChange::Set("bob".into()),
        value: "{}".into(),
    };
    for (i, kind) in [0u8, 2, 3].into_iter().enumerate() {
        let id = format!("own{kind}");
        let mut f = frame(20 + i as u32, &owned(&id));
        let at = 16 + doc_len(&s, &id) + 9;
        assert_eq!(f[at], 1, "owner_kind offset");
        f[at] = kind;
        violation(&s, &f, 20 + i as u32, "protocol_error").await;
        assert_eq!(
            http_doc(&s.client, &s.path(&format!("players/{id}")))
                .await
                .0,
            StatusCode::NOT_FOUND,
            "a PUT with owner_kind {kind} and owner \"bob\" was applied"
        );
    }
    // Kind 1 with an empty owner.
    let empty = Message::Put {
        doc: doc(&s, "own1"),
        pre: Precondition::None,
        owner: OwnerChange::Set(String::new()),
        value: "{}".into(),
    };
    violation(&s, &frame(30, &empty), 30, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/own1")).await.0,
        StatusCode::NOT_FOUND
    );
    // An owner that breaks the id rules is the request error invalid_id: the connection stays.
    let (mut c, _) = Raw::ready(&s).await;
    let bad_owner = Message::Put {
        doc: doc(&s, "own4"),
        pre: Precondition::None,
        owner: OwnerChange::Set("_bad owner".into()),
        value: "{}".into(),
    };
    c.send(31, &bad_owner).await;
    c.expect_error(31, "invalid_id").await;
    c.send(32, &get(&s, "own4")).await;
    c.expect_error(32, "not_found").await;
}

/// A `str8` id that is not UTF-8 is a malformed body: `protocol_error` with the frame's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_invalid_utf8_id_is_protocol_error() {
    let s = server().await;
    let mut f = frame(17, &get(&s, "ab"));
    let n = f.len();
    f[n - 2] = 0xFF;
    f[n - 1] = 0xFE;
    violation(&s, &f, 17, "protocol_error").await;
    // In a PUT: not applied either (the valid spelling "ab" must not appear).
    let mut f = frame(18, &put(&s, "ab", json!({})));
    let at = 16 + doc_len(&s, "ab") - 2;
    assert_eq!(&f[at..at + 2], b"ab");
    f[at] = 0xC3; // a lone lead byte followed by ASCII: not UTF-8
    violation(&s, &f, 18, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/ab")).await.0,
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Request ids
// ---------------------------------------------------------------------------------------------

/// A request with the previous request's id: `protocol_error` with that id, after the earlier
/// request's answer; the offending PUT is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_equal_to_previous_is_protocol_error() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    c.send(10, &get(&s, "nobody")).await;
    c.expect_error(10, "not_found").await;
    c.send(10, &put(&s, "dup", json!({}))).await;
    c.error_then_eof(10, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/dup")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_smaller_than_previous_is_protocol_error() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    c.send(10, &get(&s, "nobody")).await;
    c.expect_error(10, "not_found").await;
    c.send(9, &put(&s, "smaller", json!({}))).await;
    c.error_then_eof(9, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/smaller")).await.0,
        StatusCode::NOT_FOUND
    );

    // "(id − previous_id) mod 2³² must be between 1 and 2³¹ − 1": 2³¹ ahead is not after.
    let (mut c, _) = Raw::ready(&s).await;
    c.send(5, &get(&s, "nobody")).await;
    c.expect_error(5, "not_found").await;
    c.send(5 + (1 << 31), &get(&s, "nobody")).await;
    c.error_then_eof(5 + (1 << 31), "protocol_error").await;

    // 2³¹ − 1 ahead is after.
    let (mut c, _) = Raw::ready(&s).await;
    c.send(5, &get(&s, "nobody")).await;
    c.expect_error(5, "not_found").await;
    c.send(5 + (1 << 31) - 1, &get(&s, "nobody")).await;
    c.expect_error(5 + (1 << 31) - 1, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_zero_is_protocol_error() {
    let s = server().await;
    // As the first request.
    let (mut c, _) = Raw::ready(&s).await;
    c.send(0, &put(&s, "zero", json!({}))).await;
    c.error_then_eof(0, "protocol_error").await;
    // After another.
    let (mut c, _) = Raw::ready(&s).await;
    c.send(3, &get(&s, "nobody")).await;
    c.expect_error(3, "not_found").await;
    c.send(0, &put(&s, "zero", json!({}))).await;
    c.error_then_eof(0, "protocol_error").await;
    assert_eq!(
        http_doc(&s.client, &s.path("players/zero")).await.0,
        StatusCode::NOT_FOUND
    );
}

/// Ids wrap: 0xFFFFFFFE, 0xFFFFFFFF, then 1, 2 are accepted; HELLO and PING ids are not part
/// of the sequence (a PING with id 0 in the middle is answered and breaks nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_wrap_around() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    c.send(0xFFFF_FFFF, &hello(1)).await; // HELLO's id is not part of the sequence
    let (header, message) = c.recv().await;
    assert!(matches!(message, Message::HelloOk(_)), "{message:?}");
    assert_eq!(header.request_id, 0xFFFF_FFFF);

    c.send(0xFFFF_FFFE, &put(&s, "w", json!({"n": 0}))).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 0xFFFF_FFFE).0, 1);
    c.send(0, &Message::Ping(77)).await;
    let (h, m) = c.recv().await;
    assert_eq!((h.request_id, m), (0, Message::Pong(77)));
    c.send(0xFFFF_FFFF, &incr(&s, "w", "/n", 1)).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 0xFFFF_FFFF).0, 2);
    c.send(1, &incr(&s, "w", "/n", 1)).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 1).0, 3);
    c.send(2, &get(&s, "w")).await;
    let (h, m) = c.recv().await;
    let (version, _, body) = expect_doc(&h, &m, 2);
    assert_eq!((version, body["value"]["n"].as_i64()), (3, Some(2)));

    // The same, pipelined in one write.
    let (mut c, _) = Raw::ready(&s).await;
    c.send_bytes(&frames(&[
        (0xFFFF_FFFE, get(&s, "w")),
        (0xFFFF_FFFF, get(&s, "w")),
        (1, get(&s, "w")),
    ]))
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (h, m) = c.recv().await;
        assert!(matches!(m, Message::Doc { version: 3, .. }), "{m:?}");
        ids.push(h.request_id);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 0xFFFF_FFFE, 0xFFFF_FFFF]);
}

// ---------------------------------------------------------------------------------------------
// 4. Order of answers
// ---------------------------------------------------------------------------------------------

/// A PUT of a new id and a GET of it in one write: the PUT is answered first (created,
/// version 1), then the GET with version 1 — never `not_found`, even though the id was
/// remembered as missing just before. 20 times on fresh ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_put_then_get_of_a_new_id() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut next = 10u32;
    for round in 0..20 {
        let id = format!("new{round}");
        c.send(next, &get(&s, &id)).await; // now remembered as missing
        c.expect_error(next, "not_found").await;
        let (p, g) = (next + 1, next + 2);
        next += 3;
        c.send_bytes(&frames(&[
            (p, put(&s, &id, json!({"round": round}))),
            (g, get(&s, &id)),
        ]))
        .await;
        let (h, m) = c.recv().await;
        let (version, created, _) = expect_doc(&h, &m, p);
        assert_eq!(
            (version, created),
            (1, true),
            "round {round}: the PUT first"
        );
        let (h, m) = c.recv().await;
        let (version, _, body) = expect_doc(&h, &m, g);
        assert_eq!(
            (version, body["value"]["round"].as_i64()),
            (1, Some(round)),
            "round {round}: the GET sees the PUT"
        );
    }
}

/// A GET that L1 cannot answer, then a PUT and a GET of the same id in one write: the first GET
/// is answered before the PUT applies (version n), the PUT next (n+1), the last GET sees it.
/// The collection is kept out of L1, so every GET reads the store. 200 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_get_of_an_uncached_document_then_put_then_get() {
    let s = server_with(support::without_l1).await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut next = 10u32;
    c.send(next, &put(&s, "kept-out", json!({"round": 0})))
        .await;
    let (h, m) = c.recv().await;
    expect_doc(&h, &m, next);
    for round in 1..=200u64 {
        let (g1, p, g2) = (next + 1, next + 2, next + 3);
        next += 3;
        c.send_bytes(&frames(&[
            (g1, get(&s, "kept-out")),
            (p, put(&s, "kept-out", json!({"round": round}))),
            (g2, get(&s, "kept-out")),
        ]))
        .await;
        let (h, m) = c.recv().await;
        let (version, _, _) = expect_doc(&h, &m, g1);
        assert_eq!(
            version, round,
            "round {round}: the first GET reads before the PUT"
        );
        let (h, m) = c.recv().await;
        let (version, _, _) = expect_doc(&h, &m, p);
        assert_eq!(version, round + 1, "round {round}: then the PUT");
        let (h, m) = c.recv().await;
        let (version, _, _) = expect_doc(&h, &m, g2);
        assert_eq!(version, round + 1, "round {round}: the last GET sees it");
    }
}

/// INCR, PATCH, GET of one id pipelined in one write are answered in that order, with
/// versions n+1, n+2, n+2. 20 times on fresh ids (each already cached at version n = 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_incr_patch_get_of_one_id() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut next = 10u32;
    for round in 0..20 {
        let id = format!("c{round}");
        c.send(next, &put(&s, &id, json!({"gold": 10}))).await;
        let (h, m) = c.recv().await;
        assert_eq!(expect_doc(&h, &m, next).0, 1);
        c.send(next + 1, &get(&s, &id)).await; // cached at version 1
        let (h, m) = c.recv().await;
        assert_eq!(expect_doc(&h, &m, next + 1).0, 1);
        let (i, p, g) = (next + 2, next + 3, next + 4);
        next += 5;
        let patch = Message::Patch {
            doc: doc(&s, &id),
            pre: Precondition::None,
            patch: json!({"name": format!("r{round}")}).to_string().into(),
        };
        c.send_bytes(&frames(&[
            (i, incr(&s, &id, "/gold", 5)),
            (p, patch),
            (g, get(&s, &id)),
        ]))
        .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let (h, m) = c.recv().await;
            match m {
                Message::Doc { version, doc, .. } => {
                    got.push((h.request_id, version, json_of(&doc)["value"].clone()))
                }
                other => panic!("round {round}: request {} got {other:?}", h.request_id),
            }
        }
        let want = vec![
            (i, 2, json!({"gold": 15})),
            (p, 3, json!({"gold": 15, "name": format!("r{round}")})),
            (g, 3, json!({"gold": 15, "name": format!("r{round}")})),
        ];
        assert_eq!(
            got, want,
            "round {round}: (id, version, value) in answer order"
        );
    }
}

/// A DELETE then a GET of a cached document in one write: DONE with the tombstone's version,
/// then `not_found`. 20 times on fresh ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_delete_then_get() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut next = 10u32;
    for round in 0..20 {
        let id = format!("d{round}");
        c.send(next, &put(&s, &id, json!({}))).await;
        let (h, m) = c.recv().await;
        assert_eq!(expect_doc(&h, &m, next).0, 1);
        c.send(next + 1, &get(&s, &id)).await; // cached
        let (h, m) = c.recv().await;
        assert_eq!(expect_doc(&h, &m, next + 1).0, 1);
        let (d, g) = (next + 2, next + 3);
        next += 4;
        let delete = Message::Delete {
            doc: doc(&s, &id),
            pre: Precondition::None,
        };
        c.send_bytes(&frames(&[(d, delete), (g, get(&s, &id))]))
            .await;
        let (h, m) = c.recv().await;
        assert_eq!(
            (h.request_id, m),
            (d, Message::Done { version: 2 }),
            "round {round}: the DELETE first"
        );
        c.expect_error(g, "not_found").await;
    }
}

/// A BATCH_GET touches every id it names and a LIST every document of its collection: after a
/// PUT in the same write, both see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_put_then_batch_get_and_list() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let mut next = 10u32;
    for round in 0..5 {
        let id = format!("b{round}");
        let batch = Message::BatchGet {
            game: s.game.clone(),
            collection: "players".into(),
            ids: vec![id.clone()],
        };
        c.send(next, &batch).await; // remembered as missing
        let (_, m) = c.recv().await;
        assert!(
            matches!(&m, Message::Docs { docs, .. } if docs == &vec![None]),
            "{m:?}"
        );
        let list = Message::List {
            game: s.game.clone(),
            collection: "players".into(),
            owner: None,
            cursor: None,
            limit: 0,
        };
        let (p, b, l) = (next + 1, next + 2, next + 3);
        next += 4;
        c.send_bytes(&frames(&[
            (p, put(&s, &id, json!({"r": round}))),
            (b, batch),
            (l, list),
        ]))
        .await;
        let (h, m) = c.recv().await;
        assert_eq!(expect_doc(&h, &m, p).0, 1);
        let (h, m) = c.recv().await;
        match m {
            Message::Docs { docs, .. } if h.request_id == b => {
                assert_eq!(docs.len(), 1);
                let slot = docs[0].as_ref().expect("the BATCH_GET sees the PUT");
                assert_eq!(json_of(slot)["version"], 1);
            }
            other => panic!("expected DOCS for {b}, got {other:?} id {}", h.request_id),
        }
        let (h, m) = c.recv().await;
        match m {
            Message::Docs { docs, .. } if h.request_id == l => {
                assert_eq!(docs.len(), round as usize + 1, "the LIST sees the PUT");
            }
            other => panic!("expected DOCS for {l}, got {other:?} id {}", h.request_id),
        }
    }
}

/// Requests on different documents do not wait for each other: with the SQLite write lock
/// held, a cached GET sent after a PUT of another document is answered first; after the lock
/// is released the PUT is answered, and a mix of requests on several documents in one write is
/// all answered (no deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_unrelated_cached_get_overtakes_a_slow_write() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    c.send(2, &put(&s, "k2", json!({"k": 2}))).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 2).0, 1);
    c.send(3, &get(&s, "k2")).await; // cached
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 3).0, 1);

    let lock = s.hold_sqlite_write_lock().await;
    c.send_bytes(&frames(&[
        (4, put(&s, "k1", json!({"k": 1}))),
        (5, get(&s, "k2")),
    ]))
    .await;
    let (h, m) = c.recv().await;
    assert_eq!(
        h.request_id, 5,
        "the cached GET of k2 overtakes the blocked PUT of k1: {m:?}"
    );
    assert!(
        matches!(
            m,
            Message::Doc {
                tier: Tier::L1,
                version: 1,
                ..
            }
        ),
        "{m:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // let the PUT misbehave, if it would
    lock.release().await;
    let (h, m) = c.recv().await;
    let (version, created, _) = expect_doc(&h, &m, 4);
    assert_eq!((version, created), (1, true));

    // Many documents, one write: every request is answered exactly once, each document's
    // answers in send order.
    let mut batch = Vec::new();
    let mut id = 10u32;
    for d in 0..8 {
        let name = format!("m{d}");
        batch.push((id, put(&s, &name, json!({"n": 0}))));
        batch.push((id + 1, incr(&s, &name, "/n", 1)));
        batch.push((id + 2, get(&s, &name)));
        id += 3;
    }
    c.send_bytes(&frames(&batch)).await;
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    let mut per_doc: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for _ in 0..batch.len() {
        let (h, m) = c.recv().await;
        let Message::Doc { version, .. } = m else {
            panic!("request {} got {m:?}", h.request_id)
        };
        assert!(
            answers.insert(h.request_id, version).is_none(),
            "answered twice"
        );
        per_doc
            .entry(((h.request_id - 10) / 3) as usize)
            .or_default()
            .push(h.request_id);
    }
    for (d, ids) in per_doc {
        let first = 10 + 3 * d as u32;
        assert_eq!(ids, vec![first, first + 1, first + 2], "document m{d}");
        assert_eq!(
            (
                answers[&first],
                answers[&(first + 1)],
                answers[&(first + 2)]
            ),
            (1, 2, 2)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A violation answers what was read before it
// ---------------------------------------------------------------------------------------------

/// `[INCR id 50 of an existing counter, malformed frame id 51]` in one write, the INCR slowed
/// by the write lock: DOC for 50 (the increment applied), then ERROR `protocol_error` id 51 as
/// the last frame, then EOF. Nothing of the malformed frame is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_answers_every_request_read_before_it() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    c.send(10, &put(&s, "counter", json!({"n": 1}))).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 10).0, 1);

    let lock = s.hold_sqlite_write_lock().await;
    let mut bytes = frame(50, &incr(&s, "counter", "/n", 5));
    bytes.extend_from_slice(&with_trailing_byte(51, &put(&s, "never", json!({}))));
    c.send_bytes(&bytes).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the ERROR must not overtake
    lock.release().await;

    let (h, m) = c.recv().await;
    let (version, _, body) = expect_doc(&h, &m, 50);
    assert_eq!((version, body["value"]["n"].as_i64()), (2, Some(6)));
    c.error_then_eof(51, "protocol_error").await;

    let (status, body) = http_doc(&s.client, &s.path("players/counter")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap()["version"], 2);
    assert_eq!(
        http_doc(&s.client, &s.path("players/never")).await.0,
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// 6. EOF from the client
// ---------------------------------------------------------------------------------------------

/// A complete PUT, the first half of another, then EOF: the first PUT is answered (even though
/// it is still waiting for the store when the EOF arrives), then EOF; the cut-off PUT is
/// discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_answers_requests_read_and_discards_a_cut_frame() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let lock = s.hold_sqlite_write_lock().await;
    let mut bytes = frame(2, &put(&s, "whole", json!({"w": 1})));
    let second = frame(3, &put(&s, "half", json!({"h": 1})));
    bytes.extend_from_slice(&second[..second.len() / 2]);
    c.send_bytes(&bytes).await;
    c.stream.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // a chance to close too early
    lock.release().await;

    let (h, m) = c.recv().await;
    let (version, created, _) = expect_doc(&h, &m, 2);
    assert_eq!((version, created), (1, true));
    c.expect_eof().await;

    let (status, body) = http_doc(&s.client, &s.path("players/whole")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap()["value"], json!({"w": 1}));
    assert_eq!(
        http_doc(&s.client, &s.path("players/half")).await.0,
        StatusCode::NOT_FOUND,
        "the cut-off PUT was applied"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The in-flight window
// ---------------------------------------------------------------------------------------------

/// With `tcp.max_in_flight = 2` and writes blocked, 10 pipelined PUTs: the server reads two
/// and stops. GOAWAY names the 2nd; after the lock is released exactly those two are answered
/// and applied, and requests 3..10 never are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_window_stops_reading_at_max_in_flight() {
    let s = server_with(|c| c.tcp.max_in_flight = 2).await;
    let sibling = s.sibling().await; // reads the same store after this one stopped
    let (mut c, ok) = Raw::ready(&s).await;
    assert_eq!(ok.max_in_flight, 2, "HELLO_OK announces tcp.max_in_flight");

    let lock = s.hold_sqlite_write_lock().await;
    let puts: Vec<(u32, Message)> = (1..=10u32)
        .map(|i| (100 + i, put(&s, &format!("w{i}"), json!({"i": i}))))
        .collect();
    c.send_bytes(&frames(&puts)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a chance to read too much

    let stop = tokio::spawn(s.running.stop());
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 0, "GOAWAY has request id 0: {m:?}");
    match m {
        Message::GoAway {
            last_request_id, ..
        } => assert_eq!(
            last_request_id, 102,
            "only two requests were read (window of 2): GOAWAY must name the 2nd"
        ),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    lock.release().await;

    let mut answered = Vec::new();
    for _ in 0..2 {
        let (h, m) = c.recv().await;
        let (version, created, _) = expect_doc(&h, &m, h.request_id);
        assert_eq!((version, created), (1, true), "request {}", h.request_id);
        answered.push(h.request_id);
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![101, 102]);
    c.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("the server stops within the bound")
        .unwrap()
        .unwrap();

    for i in 1..=10 {
        let (status, body) =
            http_doc(&sibling.client, &sibling.path(&format!("players/w{i}"))).await;
        if i <= 2 {
            assert_eq!(status, StatusCode::OK, "w{i} was read and answered");
            assert_eq!(body.unwrap()["version"], 1);
        } else {
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "w{i} was never read, yet applied"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. PING rate
// ---------------------------------------------------------------------------------------------

/// "The server answers at most 16 PINGs per tick — half of the shorter of the heartbeat
/// interval and `tcp.write_timeout` —; further PINGs in that tick are read and not answered."
/// With a 10 s tick, 40 PINGs in one write get exactly 16 PONGs (the first 16, in order), and
/// the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_rate_is_16_per_tick() {
    let s = server_with(|c| {
        c.tcp.heartbeat_interval = Duration::from_secs(20);
        c.tcp.write_timeout = Duration::from_secs(30);
    })
    .await;
    let (mut c, ok) = Raw::ready(&s).await;
    assert_eq!(ok.heartbeat_interval_ms, 20_000);
    let pings: Vec<(u32, Message)> = (0..40u32)
        .map(|i| (1000 + i, Message::Ping(u64::from(i))))
        .collect();
    c.send_bytes(&frames(&pings)).await;

    // Collect PONGs for up to WAIT; once 16 have come, wait one more second for extra ones.
    let mut deadline = Instant::now() + WAIT;
    let mut pongs = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next(left).await {
            Next::Frame(h, Message::Pong(payload)) => {
                pongs.push((h.request_id, payload));
                if pongs.len() == 16 {
                    deadline = deadline.min(Instant::now() + Duration::from_secs(1));
                }
            }
            Next::Timeout => break,
            other => panic!("unexpected while collecting PONGs: {other:?}"),
        }
    }
    let want: Vec<(u32, u64)> = (0..16u32).map(|i| (1000 + i, u64::from(i))).collect();
    assert_eq!(
        pongs.len(),
        16,
        "exactly 16 of 40 PINGs are answered in one tick: {pongs:?}"
    );
    assert_eq!(pongs, want, "the first 16 PINGs, in order");

    // Still open and serving; no late PONG comes in between.
    c.send(2, &get(&s, "nobody")).await;
    c.expect_error(2, "not_found").await;
}

// ---------------------------------------------------------------------------------------------
// 9. Tiers
// ---------------------------------------------------------------------------------------------

/// BATCH_GET of ids L1 remembers as missing → DOCS tier 1 with absent slots (tier 3 the first
/// time); LIST → always tier 3. Over HTTP the same requests say `X-Cache: L1` / `DB`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_of_batch_get_and_list() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    let batch = |ids: &[&str]| Message::BatchGet {
        game: s.game.clone(),
        collection: "players".into(),
        ids: ids.iter().map(|id| id.to_string()).collect(),
    };
    let list = Message::List {
        game: s.game.clone(),
        collection: "players".into(),
        owner: None,
        cursor: None,
        limit: 0,
    };
    // Cold: the database answers.
    c.send(2, &batch(&["m1", "m2", "m3"])).await;
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 2);
    assert_eq!(
        m,
        Message::Docs {
            tier: Tier::Db,
            docs: vec![None, None, None],
            next_cursor: None
        }
    );
    // Now every id is remembered as missing: L1 answers.
    c.send(3, &batch(&["m1", "m2", "m3"])).await;
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 3);
    assert_eq!(
        m,
        Message::Docs {
            tier: Tier::L1,
            docs: vec![None, None, None],
            next_cursor: None
        },
        "ids L1 remembers as missing are answered by L1"
    );
    // A cached document among them: still L1.
    c.send(4, &put(&s, "p", json!({"p": 1}))).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 4).0, 1);
    c.send(5, &get(&s, "p")).await;
    let (h, m) = c.recv().await;
    expect_doc(&h, &m, 5);
    c.send(6, &batch(&["m1", "p", "m3"])).await;
    let (h, m) = c.recv().await;
    match m {
        Message::Docs { tier, docs, .. } if h.request_id == 6 => {
            assert_eq!(tier, Tier::L1);
            assert_eq!(docs.len(), 3);
            assert!(docs[0].is_none() && docs[2].is_none());
            assert_eq!(json_of(docs[1].as_ref().unwrap())["version"], 1);
        }
        other => panic!("{other:?}"),
    }
    // LIST: always the database, also when repeated.
    for id in [7, 8] {
        c.send(id, &list).await;
        let (h, m) = c.recv().await;
        match m {
            Message::Docs {
                tier,
                docs,
                next_cursor,
            } if h.request_id == id => {
                assert_eq!((tier, docs.len(), next_cursor), (Tier::Db, 1, None));
            }
            other => panic!("{other:?}"),
        }
    }

    // HTTP: the same requests, the same tiers.
    let batch_path = s.path("players/_batch_get");
    let body = json!({"ids": ["h1", "h2"]}).to_string();
    let cold = s.client.post(&batch_path, &body).await;
    assert_eq!(cold.status, StatusCode::OK);
    assert_eq!(cold.header("x-cache"), Some("DB"));
    let warm = s.client.post(&batch_path, &body).await;
    assert_eq!(warm.json()["docs"], json!([null, null]));
    assert_eq!(
        warm.header("x-cache"),
        Some("L1"),
        "all ids remembered missing"
    );
    let tcp_ids = json!({"ids": ["m1", "p", "m3"]}).to_string();
    let mixed = s.client.post(&batch_path, &tcp_ids).await;
    assert_eq!(mixed.header("x-cache"), Some("L1"));
    for _ in 0..2 {
        let page = s.client.get(&s.path("players")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(
            page.header("x-cache"),
            Some("DB"),
            "a list page is always DB"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. GOAWAY
// ---------------------------------------------------------------------------------------------

/// On shutdown: GOAWAY (request id 0) names the last request sent (and read) before the stop;
/// the requests in flight are then answered, and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_names_the_last_request_and_in_flight_requests_are_answered() {
    let s = server().await;
    let (mut c, _) = Raw::ready(&s).await;
    c.send(2, &put(&s, "cached", json!({}))).await;
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 2).0, 1);

    let lock = s.hold_sqlite_write_lock().await;
    c.send_bytes(&frames(&[
        (4, put(&s, "a", json!({"a": 1}))),
        (6, put(&s, "b", json!({"b": 1}))),
        (7, get(&s, "cached")),
        (9, put(&s, "c", json!({"c": 1}))),
    ]))
    .await;
    // The cached GET is answered while the writes wait.
    let (h, m) = c.recv().await;
    assert_eq!(expect_doc(&h, &m, 7).0, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = tokio::spawn(s.running.stop());
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 0, "GOAWAY has request id 0");
    match m {
        Message::GoAway {
            last_request_id, ..
        } => assert_eq!(last_request_id, 9, "the last request sent before the stop"),
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    lock.release().await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        let (h, m) = c.recv().await;
        let (version, created, _) = expect_doc(&h, &m, h.request_id);
        assert_eq!((version, created), (1, true), "request {}", h.request_id);
        answered.push(h.request_id);
    }
    answered.sort_unstable();
    assert_eq!(
        answered,
        vec![4, 6, 9],
        "every in-flight request answered after GOAWAY"
    );
    c.expect_eof().await;
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("the server stops within the bound")
        .unwrap()
        .unwrap();
}
