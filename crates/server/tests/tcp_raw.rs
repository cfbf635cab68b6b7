//! TCP protocol conformance through raw bytes (not through our client): every opcode, the
//! framing edge cases, and the limits. Each bad input gets its documented error frame, nothing
//! is applied, and the server keeps serving others.

mod support;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use datamiddleware::config::Config;
use datamiddleware_protocol::{
    Credential, DocRef, Header, Hello, Message, Opcode, OwnerChange, Precondition, Tier, decode,
};
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw protocol connection.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(s: &TestServer) -> Raw {
        let stream = TcpStream::connect(s.running.tcp_addr.unwrap())
            .await
            .unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake.
    async fn ready(s: &TestServer) -> Raw {
        let mut raw = Raw::connect(s).await;
        raw.send(1, hello()).await;
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

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
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
        self.try_recv(Duration::from_secs(5))
            .await
            .expect("a frame")
    }

    /// Expects an error frame with `code` and request id `id`, then the connection closing.
    async fn expect_error_then_close(&mut self, code: &str, id: u32) {
        let (header, message) = self.recv().await;
        match message {
            Message::Error { code: got, .. } => {
                assert_eq!((got.as_str(), header.request_id), (code, id))
            }
            other => panic!("expected error {code}, got {other:?}"),
        }
        self.expect_closed().await;
    }

    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the server closes the connection"
        );
        assert!(rest.is_empty(), "nothing after the error frame: {rest:?}");
    }
}

fn hello() -> Message {
    Message::Hello(Hello {
        version: 1,
        client_name: "raw-test".into(),
        credential: Credential::ApiKey(support::TEST_KEY.to_string()),
    })
}

fn doc(s: &TestServer, collection: &str, id: &str) -> DocRef {
    DocRef {
        game: s.game.clone(),
        collection: collection.into(),
        id: id.into(),
    }
}

fn put(s: &TestServer, id: &str, value: Value, pre: Precondition) -> Message {
    Message::Put {
        doc: doc(s, "players", id),
        pre,
        owner: OwnerChange::Keep,
        value: Bytes::from(value.to_string()),
    }
}

fn header_bytes(opcode: u8, request_id: u32, body_len: u32) -> Vec<u8> {
    let mut out = vec![b'D', b'M', 1, opcode, 0, 0, 0, 0];
    out.put_u32(request_id);
    out.put_u32(body_len);
    out
}

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(Backend::Sqlite, tweak)
        .await
        .expect("SQLite is always available")
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn every_opcode() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    c.send(9, hello()).await;
    let (header, message) = c.recv().await;
    let Message::HelloOk(ok) = message else {
        panic!("{message:?}")
    };
    assert_eq!(
        (header.request_id, ok.version, ok.heartbeat_interval_ms),
        (9, 1, 30_000)
    );
    assert_eq!(ok.max_in_flight, 128);

    c.send(2, Message::Ping(77)).await;
    assert_eq!(c.recv().await.1, Message::Pong(77));

    c.send(3, put(&s, "p1", json!({"gold": 10}), Precondition::Absent))
        .await;
    let (h, m) = c.recv().await;
    let Message::Doc {
        tier,
        created,
        version,
        doc: body,
    } = m
    else {
        panic!("{m:?}")
    };
    assert_eq!(
        (h.request_id, tier, created, version),
        (3, Tier::None, true, 1)
    );
    assert_eq!(json_of(&body)["value"], json!({"gold": 10}));

    c.send(4, Message::Get(doc(&s, "players", "p1"))).await;
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 4);
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

    let patch = Message::Patch {
        doc: doc(&s, "players", "p1"),
        pre: Precondition::Version(1),
        patch: Bytes::from(r#"{"name":"x"}"#),
    };
    c.send(5, patch).await;
    let Message::Doc {
        version, doc: body, ..
    } = c.recv().await.1
    else {
        panic!()
    };
    assert_eq!(
        (version, json_of(&body)["value"].clone()),
        (2, json!({"gold": 10, "name": "x"}))
    );

    let incr = Message::Incr {
        doc: doc(&s, "players", "p1"),
        pre: Precondition::None,
        incr: Bytes::from(r#"{"path":"/gold","by":-11,"min":0}"#),
    };
    c.send(6, incr).await;
    let (h, m) = c.recv().await;
    assert_eq!(h.request_id, 6);
    assert!(
        matches!(m, Message::Error { ref code, .. } if code == "bound_violation"),
        "{m:?}"
    );

    c.send(
        7,
        Message::BatchGet {
            game: s.game.clone(),
            collection: "players".into(),
            ids: vec!["p1".into(), "none".into()],
        },
    )
    .await;
    let Message::Docs { docs, .. } = c.recv().await.1 else {
        panic!()
    };
    assert_eq!((docs.len(), docs[1].is_none()), (2, true));
    assert_eq!(json_of(docs[0].as_ref().unwrap())["version"], 2);

    c.send(
        8,
        Message::List {
            game: s.game.clone(),
            collection: "players".into(),
            owner: None,
            cursor: None,
            limit: 0,
        },
    )
    .await;
    let Message::Docs {
        docs,
        next_cursor,
        tier,
    } = c.recv().await.1
    else {
        panic!()
    };
    assert_eq!((docs.len(), next_cursor, tier), (1, None, Tier::Db));

    let ops = json!({"ops": [{"op": "incr", "collection": "players", "id": "p1", "path": "/gold", "by": 5},
                             {"op": "check", "collection": "items", "id": "i", "version": 0}]});
    c.send(
        10,
        Message::Txn {
            game: s.game.clone(),
            ops: Bytes::from(ops.to_string()),
        },
    )
    .await;
    let Message::TxnResult { results } = c.recv().await.1 else {
        panic!()
    };
    assert_eq!(json_of(&results)["results"][0]["doc"]["value"]["gold"], 15);

    c.send(
        11,
        Message::Delete {
            doc: doc(&s, "players", "p1"),
            pre: Precondition::Version(3),
        },
    )
    .await;
    assert_eq!(c.recv().await.1, Message::Done { version: 4 });
    c.send(12, Message::Get(doc(&s, "players", "p1"))).await;
    assert!(matches!(c.recv().await.1, Message::Error { ref code, .. } if code == "not_found"));

    // A server-to-client opcode sent by a client: an error, then close.
    c.send(13, Message::Done { version: 1 }).await;
    c.expect_error_then_close("unknown_opcode", 13).await;
}

#[tokio::test]
async fn responses_come_out_of_order() {
    let s = server().await;
    let mut c = Raw::ready(&s).await;
    c.send(2, put(&s, "cached", json!({}), Precondition::None))
        .await;
    c.recv().await;
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    c.send(3, put(&s, "slow", json!({}), Precondition::None))
        .await; // waits for the lock
    c.send(4, Message::Get(doc(&s, "players", "cached"))).await;
    let (first, _) = c.recv().await;
    assert_eq!(first.request_id, 4, "the later cache hit is answered first");
    blocker.release().await;
    let (second, message) = c.recv().await;
    assert_eq!(second.request_id, 3);
    assert!(matches!(message, Message::Doc { created: true, .. }));
}

#[tokio::test]
async fn a_thousand_pipelined_requests_in_one_write() {
    let s = server().await;
    let mut c = Raw::ready(&s).await;
    c.send(1, put(&s, "hot", json!({"n": 1}), Precondition::None))
        .await;
    c.recv().await;
    let mut batch = BytesMut::new();
    for id in 1000..2000u32 {
        // Mostly cache hits, some misses (each miss is one store read in a task).
        let target = if id % 10 == 0 {
            format!("cold{id}")
        } else {
            "hot".to_string()
        };
        Message::Get(doc(&s, "players", &target)).encode(id, &mut batch);
    }
    c.send_bytes(&batch).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let (header, message) = c.recv().await;
        let ok = match message {
            Message::Doc { .. } => header.request_id % 10 != 0,
            Message::Error { code, .. } => code == "not_found" && header.request_id % 10 == 0,
            _ => false,
        };
        assert!(ok, "request {} got the wrong answer", header.request_id);
        assert!(seen.insert(header.request_id));
    }
    assert_eq!(seen.len(), 1000);
}

#[tokio::test]
async fn a_frame_delivered_one_byte_at_a_time() {
    let s = server().await;
    let mut c = Raw::connect(&s).await;
    let mut bytes = BytesMut::new();
    hello().encode(1, &mut bytes);
    Message::Get(doc(&s, "players", "nobody")).encode(2, &mut bytes);
    for byte in bytes.iter() {
        c.send_bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(matches!(c.recv().await.1, Message::HelloOk(_)));
    let (header, message) = c.recv().await;
    assert_eq!(header.request_id, 2);
    assert!(matches!(message, Message::Error { ref code, .. } if code == "not_found"));
}

#[tokio::test]
async fn a_truncated_frame_then_eof_applies_nothing_but_what_came_before_is_answered() {
    let s = server().await;
    let mut c = Raw::ready(&s).await;
    let mut frames = BytesMut::new();
    put(&s, "whole", json!({"x": 1}), Precondition::None).encode(2, &mut frames);
    let whole = frames.len();
    put(&s, "half", json!({"x": 1}), Precondition::None).encode(3, &mut frames);
    // The whole PUT and all but the last 3 bytes of the second, then EOF.
    c.send_bytes(&frames[..frames.len() - 3]).await;
    c.stream.shutdown().await.unwrap();
    let (header, message) = c.recv().await;
    assert_eq!(header.request_id, 2);
    assert!(
        matches!(message, Message::Doc { created: true, .. }),
        "{message:?}"
    );
    c.expect_closed().await;
    assert!(whole < frames.len() - 3);
    assert_eq!(
        s.client.get(&s.path("players/whole")).await.status,
        hyper::StatusCode::OK
    );
    assert_eq!(
        s.client.get(&s.path("players/half")).await.code(),
        "not_found"
    );
}

#[tokio::test]
async fn bad_headers_get_an_error_frame_then_close() {
    let s = server().await;
    // (code, the request id the error must carry: 0 only when the magic is wrong)
    let cases: Vec<(Vec<u8>, &str, u32)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "protocol_error", 0),
        ([b"DX".as_slice(), &[0; 14]].concat(), "protocol_error", 0),
        (
            {
                let mut h = header_bytes(0x01, 4, 0);
                h[2] = 2;
                h
            },
            "unsupported_version",
            4,
        ),
        (header_bytes(0x42, 5, 0), "unknown_opcode", 5),
        (header_bytes(0x01, 6, u32::MAX), "frame_too_large", 6),
        (header_bytes(0x01, 7, 5000), "frame_too_large", 7), // over the 4 KiB pre-handshake limit
        (
            {
                let mut h = header_bytes(0x01, 8, 0);
                h[7] = 1;
                h
            },
            "protocol_error",
            8,
        ),
    ];
    for (bytes, code, id) in cases {
        let mut c = Raw::connect(&s).await;
        c.send_bytes(&bytes).await;
        c.expect_error_then_close(code, id).await;
    }
    // A well-formed request before HELLO is refused by the handshake rule, not the decoder.
    let mut c = Raw::connect(&s).await;
    c.send(9, Message::Get(doc(&s, "players", "p"))).await;
    c.expect_error_then_close("protocol_error", 9).await;
    // After the handshake a malformed body is refused with the frame's id.
    let mut c = Raw::ready(&s).await;
    c.send_bytes(&header_bytes(Opcode::Get as u8, 5, 3)).await;
    c.send_bytes(&[9, b'a', b'b']).await;
    c.expect_error_then_close("protocol_error", 5).await;
    let mut c = Raw::ready(&s).await;
    c.send(2, hello()).await;
    c.expect_error_then_close("protocol_error", 2).await;
    // The server still serves.
    let mut c = Raw::ready(&s).await;
    c.send(2, Message::Ping(1)).await;
    assert_eq!(c.recv().await.1, Message::Pong(1));
}

#[tokio::test]
async fn garbage_after_a_valid_frame() {
    let s = server().await;
    let mut c = Raw::ready(&s).await;
    let mut bytes = BytesMut::new();
    Message::Ping(5).encode(2, &mut bytes);
    bytes.extend_from_slice(b"\x00garbage");
    c.send_bytes(&bytes).await;
    assert_eq!(c.recv().await.1, Message::Pong(5));
    c.expect_error_then_close("protocol_error", 0).await;
}

/// Heartbeats start when the handshake completes, not at the handshake deadline: with the
/// default 5 s handshake timeout, a 200 ms interval still pings within a few hundred ms.
#[tokio::test]
async fn heartbeats_start_right_after_the_handshake() {
    let s = server_with(|c| {
        c.tcp.heartbeat_interval = Duration::from_millis(200);
        c.tcp.heartbeat_timeout = Some(Duration::from_millis(600));
    })
    .await;
    let mut c = Raw::ready(&s).await;
    let started = Instant::now();
    let (header, message) = c.recv().await;
    assert_eq!((header.request_id, message), (0, Message::Ping(0)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    loop {
        match c.recv().await.1 {
            Message::Ping(_) => {}
            Message::Error { code, .. } => break assert_eq!(code, "timeout"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}, the silence timeout is 600 ms",
        started.elapsed()
    );
}

#[tokio::test]
async fn handshake_and_heartbeat_timeouts() {
    let s = server_with(|c| {
        c.tcp.handshake_timeout = Duration::from_millis(300);
        c.tcp.heartbeat_interval = Duration::from_millis(200);
        c.tcp.heartbeat_timeout = Some(Duration::from_millis(700));
    })
    .await;
    let started = Instant::now();
    let mut silent = Raw::connect(&s).await;
    silent.expect_error_then_close("timeout", 0).await;
    assert!(started.elapsed() < Duration::from_secs(2));

    let mut c = Raw::ready(&s).await;
    let started = Instant::now();
    let (header, message) = c.recv().await;
    assert_eq!(
        (header.request_id, message),
        (0, Message::Ping(0)),
        "the server pings a silent peer"
    );
    let mut pings = 1;
    loop {
        match c.recv().await.1 {
            Message::Ping(_) => pings += 1,
            Message::Error { code, .. } => {
                assert_eq!(code, "timeout");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.expect_closed().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // At most one PING per 200 ms interval of the 700 ms of silence (plus the tick's slack).
    assert!(pings <= 4, "{pings} PINGs in {elapsed:?}");

    // A peer that answers keeps its connection.
    let mut alive = Raw::ready(&s).await;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        alive.send(0, Message::Pong(0)).await;
        if let Some((_, message)) = alive.try_recv(Duration::from_millis(150)).await {
            assert_eq!(message, Message::Ping(0));
        }
    }
    alive.send(3, Message::Ping(3)).await;
    let reply = loop {
        let (header, message) = alive.recv().await;
        if header.request_id == 3 {
            break message;
        }
    };
    assert_eq!(reply, Message::Pong(3));
}

#[tokio::test]
async fn a_peer_that_never_reads_is_disconnected() {
    let s = server_with(|c| {
        c.tcp.max_output_bytes = 256 * 1024;
        c.tcp.write_timeout = Duration::from_millis(500);
        c.tcp.heartbeat_interval = Duration::from_secs(5);
        c.tcp.heartbeat_timeout = Some(Duration::from_secs(15));
    })
    .await;
    let big = json!({"blob": "x".repeat(3000)});
    s.client
        .put(&s.path("players/big"), &json!({"value": big}).to_string())
        .await;
    let mut c = Raw::ready(&s).await;
    c.send(1, Message::Get(doc(&s, "players", "big"))).await;
    c.recv().await; // cached now
    // Send GETs and never read: responses pile up in the kernel buffers, then in the server's
    // bounded output; then the server stops reading us, and after the write timeout it hangs up.
    let started = Instant::now();
    let mut sent_all = true;
    // 400 × 88 KB: far more than the kernel's socket buffers on both sides can absorb.
    for batch in 0..400 {
        // Request ids must keep increasing (else the server closes for a protocol error,
        // and writes would fail for the wrong reason).
        let mut frames = BytesMut::new();
        for id in 0..2000 {
            Message::Get(doc(&s, "players", "big")).encode(2 + batch * 2000 + id, &mut frames);
        }
        if tokio::time::timeout(Duration::from_secs(2), c.stream.write_all(&frames))
            .await
            .map_or(true, |r| r.is_err())
        {
            sent_all = false;
            break;
        }
    }
    assert!(
        !sent_all,
        "the server stopped reading a peer that does not read"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.running.service.metrics().tcp.open.get() > 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        s.client.get(&s.path("players/big")).await.status,
        StatusCode::OK,
        "others are served"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let s = server_with(|c| c.tcp.max_connections = 2).await;
    let _a = Raw::ready(&s).await;
    let mut b = Raw::ready(&s).await;
    let mut over = Raw::connect(&s).await;
    over.expect_error_then_close("overloaded", 0).await;
    assert_eq!(s.running.service.metrics().tcp.refused.get(), 1);
    b.send(2, Message::Ping(2)).await;
    assert_eq!(
        b.recv().await.1,
        Message::Pong(2),
        "admitted connections are unaffected"
    );
}

#[tokio::test]
async fn a_hello_without_a_valid_key_is_refused_then_closed() {
    let s = server_with(|_| {}).await;
    for credential in [Credential::None, Credential::ApiKey("dmw_wrong".into())] {
        let mut c = Raw::connect(&s).await;
        c.send(
            1,
            Message::Hello(Hello {
                version: 1,
                client_name: "t".into(),
                credential,
            }),
        )
        .await;
        c.expect_error_then_close("unauthorized", 1).await;
    }
}

/// A request still running when the shutdown grace period ends does not hold the server up:
/// its connection is closed after the GOAWAY, without an answer (such a write's outcome is
/// unknown to the client, as after any lost connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_busy_when_the_grace_period_ends_are_closed() {
    let s = server_with(|c| c.http.shutdown_grace = Duration::from_millis(300)).await;
    let mut c = Raw::ready(&s).await;
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    c.send(7, put(&s, "stuck", json!({}), Precondition::None))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(s.running.stop());
    let (_, message) = c.recv().await;
    // The PUT was read (so the grace period had a request to wait for), and never answered.
    assert!(
        matches!(
            message,
            Message::GoAway {
                last_request_id: 7,
                ..
            }
        ),
        "{message:?}"
    );
    c.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("the stop ends soon after the grace period")
        .unwrap()
        .unwrap();
    blocker.release().await;
}

#[tokio::test]
async fn shutdown_sends_goaway_and_finishes_in_flight_requests() {
    let s = server().await;
    let mut c = Raw::ready(&s).await;
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    c.send(7, put(&s, "late", json!({}), Precondition::None))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(s.running.stop());
    let (header, message) = c.recv().await;
    assert_eq!(header.request_id, 0);
    assert!(
        matches!(
            message,
            Message::GoAway {
                last_request_id: 7,
                ..
            }
        ),
        "{message:?}"
    );
    blocker.release().await;
    let (header, message) = c.recv().await;
    assert_eq!(header.request_id, 7);
    assert!(
        matches!(message, Message::Doc { created: true, .. }),
        "the in-flight write completed: {message:?}"
    );
    c.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
