//! Golden bytes: every frame here is written out by hand from `docs/protocol.md`, section
//! "TCP protocol, version 1" (frame header, opcode table, composite fields, enumerations, the
//! worked example), never produced by the crate's encoder. Each positive case checks that
//! `Message::encode` yields exactly those bytes and that `decode` gives the message back; the
//! negative cases are bodies and headers the spec says must be refused, with the error code
//! and the request id the spec names.
//!
//! Header layout (16 bytes, big-endian): magic `44 4d`, version `01`, opcode, flags `00 00`,
//! reserved `00 00`, request_id (u32), body_len (u32).
//! `str8` = u8 length + UTF-8, `str16` = u16 length + UTF-8, `json32` = u32 length + JSON.

use bytes::{BufMut, Bytes, BytesMut};
use datamiddleware_protocol::{
    Credential, DocRef, FrameError, Hello, HelloOk, Message, OwnerChange, PRE_HANDSHAKE_MAX_BODY,
    Precondition, Tier, check, decode, request_id_of,
};

/// `max_frame` default from the spec's Limits table: 1 MiB + 4 KiB.
const MAX_FRAME: u32 = 1_052_672;
/// The frame body limit before HELLO_OK (Limits table).
const HANDSHAKE_MAX_BODY: u32 = 4096;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Turns lines of spaced hex pairs ("44 4d 01") into bytes.
fn hex(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|line| line.split_whitespace())
        .map(|pair| {
            assert_eq!(pair.len(), 2, "hex token {pair:?} is not one byte");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex token {pair:?}"))
        })
        .collect()
}

/// Spaced lowercase hex, for readable assertion failures.
fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().expect("4 bytes"))
}

/// A frame around a hand-written body, with the header built field by field as the spec's
/// header table says (used by the negative cases, whose point is the body).
fn frame(opcode: u8, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x44, 0x4d, 0x01, opcode, 0x00, 0x00, 0x00, 0x00];
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn doc_ref(game: &str, collection: &str, id: &str) -> DocRef {
    DocRef {
        game: game.into(),
        collection: collection.into(),
        id: id.into(),
    }
}

/// `default/players/42`, the document of the worked example.
fn doc42() -> DocRef {
    doc_ref("default", "players", "42")
}

fn json(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

/// The positive golden check: `message` encodes with `request_id` to exactly `golden`, and
/// `golden` decodes to `message` with the right header, consuming exactly the frame. Also:
/// every strict prefix is incomplete, and the body one byte short or with one trailing byte is
/// a malformed body.
fn golden(request_id: u32, message: Message, golden: &[u8]) {
    // The literal itself must be consistent: its request id and body_len.
    assert!(golden.len() >= 16, "golden literal shorter than a header");
    assert_eq!(
        be32(&golden[8..12]),
        request_id,
        "golden literal request id"
    );
    let body_len = be32(&golden[12..16]);
    assert_eq!(
        body_len as usize,
        golden.len() - 16,
        "golden literal: body_len does not match the body written out for {message:?}"
    );

    // Encoding.
    let mut out = BytesMut::new();
    message.encode(request_id, &mut out);
    assert_eq!(
        show(&out),
        show(golden),
        "encode({request_id}, {message:?}) differs from the spec's bytes"
    );

    // Decoding, with the first byte of a following frame behind it, which must stay.
    let mut buf = BytesMut::from(golden);
    buf.put_u8(0x44);
    let (header, decoded) = decode(&mut buf, MAX_FRAME)
        .unwrap_or_else(|e| panic!("decode of {message:?} failed: {e}"))
        .expect("a whole frame is buffered");
    assert_eq!(header.opcode as u8, golden[3], "decoded opcode");
    assert_eq!(header.opcode, message.opcode(), "decoded opcode");
    assert_eq!(header.flags, 0, "decoded flags");
    assert_eq!(header.request_id, request_id, "decoded request id");
    assert_eq!(header.body_len, body_len, "decoded body_len");
    assert_eq!(decoded, message, "decoded message");
    assert_eq!(&buf[..], &[0x44], "decode must consume exactly one frame");
    assert_eq!(request_id_of(golden), Some(request_id));

    // Every strict prefix: "read more", nothing consumed.
    for n in 0..golden.len() {
        let mut part = BytesMut::from(&golden[..n]);
        assert_eq!(
            decode(&mut part, MAX_FRAME),
            Ok(None),
            "prefix of {n} bytes"
        );
        assert_eq!(part.len(), n, "prefix of {n} bytes was consumed");
    }

    // "The body must be consumed exactly by the opcode's layout; missing or trailing bytes
    // are a protocol_error."
    let body = &golden[16..];
    assert_malformed(
        &frame(golden[3], request_id, &body[..body.len() - 1]),
        request_id,
        "body one byte short",
    );
    let mut longer = body.to_vec();
    longer.push(0x00);
    assert_malformed(
        &frame(golden[3], request_id, &longer),
        request_id,
        "one trailing byte",
    );
}

/// `decode` must refuse `frame` as a malformed body: `protocol_error`, answered with the
/// frame's request id.
fn assert_malformed(frame: &[u8], request_id: u32, why: &str) {
    let mut buf = BytesMut::from(frame);
    let err = match decode(&mut buf, MAX_FRAME) {
        Err(err) => err,
        Ok(ok) => panic!("{why}: accepted {ok:?} from {}", show(frame)),
    };
    assert!(
        matches!(err, FrameError::Malformed { opcode, .. } if opcode as u8 == frame[3]),
        "{why}: expected a malformed body, got {err:?}"
    );
    assert_eq!(err.code().as_str(), "protocol_error", "{why}");
    assert_eq!(request_id_of(frame), Some(request_id), "{why}: request id");
}

/// A hand-written body that must be refused as malformed.
fn bad_body(opcode: u8, request_id: u32, body: &[&str], why: &str) {
    assert_malformed(&frame(opcode, request_id, &hex(body)), request_id, why);
}

/// `decode` must refuse `bytes` at the header with the spec's `code`, and the ERROR must carry
/// `answer_id` (`None`: request id 0).
fn assert_header_error(bytes: &[u8], max_body: u32, code: &str, answer_id: Option<u32>, why: &str) {
    let mut buf = BytesMut::from(bytes);
    let err = match decode(&mut buf, max_body) {
        Err(err) => err,
        Ok(ok) => panic!("{why}: accepted {ok:?} from {}", show(bytes)),
    };
    assert_eq!(err.code().as_str(), code, "{why}: {err:?}");
    assert_eq!(
        request_id_of(bytes),
        answer_id,
        "{why}: request id of the ERROR"
    );
    // The header alone decides: the same error with only the header buffered.
    let head = &bytes[..bytes.len().min(16)];
    let err_head = check(head, max_body).expect_err(why);
    assert_eq!(err_head, err, "{why}: header-only check");
}

// ---------------------------------------------------------------------------------------------
// Handshake: HELLO, HELLO_OK
// ---------------------------------------------------------------------------------------------

#[test]
fn hello() {
    // The worked example, verbatim.
    golden(
        1,
        Message::Hello(Hello {
            version: 1,
            client_name: "demo".into(),
            credential: Credential::None,
        }),
        &hex(&[
            "44 4d 01 01 00 00 00 00 00 00 00 01 00 00 00 0a", // header: HELLO, id 1, body 10
            "01",                                              // version 1
            "00 04 64 65 6d 6f",                               // client_name str16 "demo"
            "00",                                              // credential_kind 0: none
            "00 00",                                           // credential str16 ""
        ]),
    );
    // credential_kind 1: API key.
    golden(
        2,
        Message::Hello(Hello {
            version: 1,
            client_name: "go".into(),
            credential: Credential::ApiKey("k1".into()),
        }),
        &hex(&[
            "44 4d 01 01 00 00 00 00 00 00 00 02 00 00 00 0a", // header: HELLO, id 2, body 10
            "01",                                              // version 1
            "00 02 67 6f",                                     // client_name str16 "go"
            "01",                                              // credential_kind 1: API key
            "00 02 6b 31",                                     // credential str16 "k1"
        ]),
    );
    // credential_kind 2: token; a client that speaks version 2, with an empty name.
    golden(
        3,
        Message::Hello(Hello {
            version: 2,
            client_name: String::new(),
            credential: Credential::Token("tok".into()),
        }),
        &hex(&[
            "44 4d 01 01 00 00 00 00 00 00 00 03 00 00 00 09", // header: HELLO, id 3, body 9
            "02",                                              // version 2
            "00 00",                                           // client_name str16 ""
            "02",                                              // credential_kind 2: token
            "00 03 74 6f 6b",                                  // credential str16 "tok"
        ]),
    );
}

#[test]
fn hello_ok() {
    // The worked example, verbatim.
    golden(
        1,
        Message::HelloOk(HelloOk {
            version: 1,
            heartbeat_interval_ms: 30_000,
            max_frame: 1_052_672,
            max_in_flight: 128,
            server: "datamiddleware/0.1.0".into(),
        }),
        &hex(&[
            "44 4d 01 81 00 00 00 00 00 00 00 01 00 00 00 21", // header: HELLO_OK, id 1, body 33
            "01",                                              // version 1
            "00 00 75 30",                                     // heartbeat_interval_ms 30000
            "00 10 10 00",                                     // max_frame 1052672
            "00 80",                                           // max_in_flight 128
            "00 14",                                           // server: str16 length 20
            "64 61 74 61 6d 69 64 64 6c 65 77 61 72 65 2f 30", // "datamiddleware/0"
            "2e 31 2e 30",                                     // ".1.0"
        ]),
    );
}

// ---------------------------------------------------------------------------------------------
// Connection-level: PING, PONG, GOAWAY
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_pong() {
    // The server's PING carries request id 0.
    golden(
        0,
        Message::Ping(0x0102_0304_0506_0708),
        &hex(&[
            "44 4d 01 02 00 00 00 00 00 00 00 00 00 00 00 08", // header: PING, id 0, body 8
            "01 02 03 04 05 06 07 08",                         // u64 payload
        ]),
    );
    golden(
        0,
        Message::Pong(0x0102_0304_0506_0708),
        &hex(&[
            "44 4d 01 03 00 00 00 00 00 00 00 00 00 00 00 08", // header: PONG, id 0, body 8
            "01 02 03 04 05 06 07 08",                         // u64 payload (the PING's)
        ]),
    );
    // PING ids are free (any value, echoed).
    golden(
        0xdead_beef,
        Message::Ping(u64::MAX),
        &hex(&[
            "44 4d 01 02 00 00 00 00 de ad be ef 00 00 00 08", // header: PING, id 0xdeadbeef
            "ff ff ff ff ff ff ff ff",                         // u64 payload
        ]),
    );
    golden(
        0xdead_beef,
        Message::Pong(u64::MAX),
        &hex(&[
            "44 4d 01 03 00 00 00 00 de ad be ef 00 00 00 08", // header: PONG, id 0xdeadbeef
            "ff ff ff ff ff ff ff ff",                         // u64 payload
        ]),
    );
}

#[test]
fn goaway() {
    golden(
        0,
        Message::GoAway {
            last_request_id: 41,
            message: "bye".into(),
        },
        &hex(&[
            "44 4d 01 82 00 00 00 00 00 00 00 00 00 00 00 09", // header: GOAWAY, id 0, body 9
            "00 00 00 29",                                     // last_request_id 41
            "00 03 62 79 65",                                  // message str16 "bye"
        ]),
    );
    // No request read yet: last_request_id 0.
    golden(
        0,
        Message::GoAway {
            last_request_id: 0,
            message: String::new(),
        },
        &hex(&[
            "44 4d 01 82 00 00 00 00 00 00 00 00 00 00 00 06", // header: GOAWAY, id 0, body 6
            "00 00 00 00",                                     // last_request_id 0
            "00 00",                                           // message str16 ""
        ]),
    );
}

// ---------------------------------------------------------------------------------------------
// Reads: GET, BATCH_GET, LIST
// ---------------------------------------------------------------------------------------------

#[test]
fn get() {
    // The worked example, verbatim.
    golden(
        7,
        Message::Get(doc42()),
        &hex(&[
            "44 4d 01 10 00 00 00 00 00 00 00 07 00 00 00 13", // header: GET, id 7, body 19
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "02 34 32",                                        // id str8 "42"
        ]),
    );
}

#[test]
fn batch_get() {
    golden(
        8,
        Message::BatchGet {
            game: "default".into(),
            collection: "players".into(),
            ids: vec!["42".into(), "43".into(), "x".into()],
        },
        &hex(&[
            "44 4d 01 11 00 00 00 00 00 00 00 08 00 00 00 1a", // header: BATCH_GET, id 8, body 26
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "00 03",                                           // count 3
            "02 34 32",                                        // id str8 "42"
            "02 34 33",                                        // id str8 "43"
            "01 78",                                           // id str8 "x"
        ]),
    );
    golden(
        9,
        Message::BatchGet {
            game: "default".into(),
            collection: "players".into(),
            ids: vec![],
        },
        &hex(&[
            "44 4d 01 11 00 00 00 00 00 00 00 09 00 00 00 12", // header: BATCH_GET, id 9, body 18
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "00 00",                                           // count 0
        ]),
    );
}

#[test]
fn list() {
    // No owner (any), no cursor (from the start), limit 0 (default).
    golden(
        23,
        Message::List {
            game: "default".into(),
            collection: "players".into(),
            owner: None,
            cursor: None,
            limit: 0,
        },
        &hex(&[
            "44 4d 01 15 00 00 00 00 00 00 00 17 00 00 00 14", // header: LIST, id 23, body 20
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "00",                                              // owner str8 "" (any)
            "00",                                              // cursor str8 "" (start)
            "00 00",                                           // limit 0 (default)
        ]),
    );
    // Owner and cursor, limit 1000.
    golden(
        24,
        Message::List {
            game: "default".into(),
            collection: "players".into(),
            owner: Some("alice".into()),
            cursor: Some("c1".into()),
            limit: 1000,
        },
        &hex(&[
            "44 4d 01 15 00 00 00 00 00 00 00 18 00 00 00 1b", // header: LIST, id 24, body 27
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "05 61 6c 69 63 65",                               // owner str8 "alice"
            "02 63 31",                                        // cursor str8 "c1"
            "03 e8",                                           // limit 1000
        ]),
    );
    // Cursor without owner, limit 100.
    golden(
        25,
        Message::List {
            game: "default".into(),
            collection: "players".into(),
            owner: None,
            cursor: Some("c1".into()),
            limit: 100,
        },
        &hex(&[
            "44 4d 01 15 00 00 00 00 00 00 00 19 00 00 00 16", // header: LIST, id 25, body 22
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "00",                                              // owner str8 "" (any)
            "02 63 31",                                        // cursor str8 "c1"
            "00 64",                                           // limit 100
        ]),
    );
    // Owner without cursor; limit 65535 is well-formed: beyond 1000 is the request error
    // `bad_request` (Limits table), not a malformed body.
    golden(
        26,
        Message::List {
            game: "default".into(),
            collection: "players".into(),
            owner: Some("alice".into()),
            cursor: None,
            limit: u16::MAX,
        },
        &hex(&[
            "44 4d 01 15 00 00 00 00 00 00 00 1a 00 00 00 19", // header: LIST, id 26, body 25
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // collection str8 "players"
            "05 61 6c 69 63 65",                               // owner str8 "alice"
            "00",                                              // cursor str8 "" (start)
            "ff ff",                                           // limit 65535
        ]),
    );
}

// ---------------------------------------------------------------------------------------------
// Writes: PUT, PATCH, DELETE (every precondition kind), INCR, TXN
// ---------------------------------------------------------------------------------------------

#[test]
fn put() {
    // owner_kind 0 (keep), pre kind 0 (none).
    golden(
        10,
        Message::Put {
            doc: doc42(),
            pre: Precondition::None,
            owner: OwnerChange::Keep,
            value: json(r#"{"gold":10}"#),
        },
        &hex(&[
            "44 4d 01 12 00 00 00 00 00 00 00 0a 00 00 00 2d", // header: PUT, id 10, body 45
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "00 00 00 00 00 00 00 00 00",                      // pre: kind 0 none, version 0
            "00",                                              // owner_kind 0: keep
            "00",                                              // owner str8 ""
            "00 00 00 0b",                                     // value json32 length 11
            "7b 22 67 6f 6c 64 22 3a 31 30 7d",                // {"gold":10}
        ]),
    );
    // owner_kind 1 (set "alice"), pre kind 3 (absent: create only).
    golden(
        11,
        Message::Put {
            doc: doc42(),
            pre: Precondition::Absent,
            owner: OwnerChange::Set("alice".into()),
            value: json("{}"),
        },
        &hex(&[
            "44 4d 01 12 00 00 00 00 00 00 00 0b 00 00 00 29", // header: PUT, id 11, body 41
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "03 00 00 00 00 00 00 00 00",                      // pre: kind 3 absent, version 0
            "01",                                              // owner_kind 1: set
            "05 61 6c 69 63 65",                               // owner str8 "alice"
            "00 00 00 02 7b 7d",                               // value json32 {}
        ]),
    );
    // owner_kind 2 (clear), pre kind 1 (version 3).
    golden(
        12,
        Message::Put {
            doc: doc42(),
            pre: Precondition::Version(3),
            owner: OwnerChange::Clear,
            value: json(r#"{"gold":10}"#),
        },
        &hex(&[
            "44 4d 01 12 00 00 00 00 00 00 00 0c 00 00 00 2d", // header: PUT, id 12, body 45
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "01 00 00 00 00 00 00 00 03",                      // pre: kind 1 version, 3
            "02",                                              // owner_kind 2: clear
            "00",                                              // owner str8 ""
            "00 00 00 0b",                                     // value json32 length 11
            "7b 22 67 6f 6c 64 22 3a 31 30 7d",                // {"gold":10}
        ]),
    );
    // owner_kind 0 (keep), pre kind 2 (exists).
    golden(
        13,
        Message::Put {
            doc: doc42(),
            pre: Precondition::Exists,
            owner: OwnerChange::Keep,
            value: json("{}"),
        },
        &hex(&[
            "44 4d 01 12 00 00 00 00 00 00 00 0d 00 00 00 24", // header: PUT, id 13, body 36
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "02 00 00 00 00 00 00 00 00",                      // pre: kind 2 exists, version 0
            "00",                                              // owner_kind 0: keep
            "00",                                              // owner str8 ""
            "00 00 00 02 7b 7d",                               // value json32 {}
        ]),
    );
    // owner_kind 1 (set), pre kind 1 with version 0 ("no live document").
    golden(
        14,
        Message::Put {
            doc: doc42(),
            pre: Precondition::Version(0),
            owner: OwnerChange::Set("alice".into()),
            value: json(r#"{"gold":10}"#),
        },
        &hex(&[
            "44 4d 01 12 00 00 00 00 00 00 00 0e 00 00 00 32", // header: PUT, id 14, body 50
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "01 00 00 00 00 00 00 00 00",                      // pre: kind 1 version, 0
            "01",                                              // owner_kind 1: set
            "05 61 6c 69 63 65",                               // owner str8 "alice"
            "00 00 00 0b",                                     // value json32 length 11
            "7b 22 67 6f 6c 64 22 3a 31 30 7d",                // {"gold":10}
        ]),
    );
}

#[test]
fn patch() {
    golden(
        15,
        Message::Patch {
            doc: doc42(),
            pre: Precondition::Version(0x0000_0001_0000_0002),
            patch: json(r#"{"gold":null}"#),
        },
        &hex(&[
            "44 4d 01 13 00 00 00 00 00 00 00 0f 00 00 00 2d", // header: PATCH, id 15, body 45
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "01 00 00 00 01 00 00 00 02",                      // pre: kind 1, version 2^32+2
            "00 00 00 0d",                                     // patch json32 length 13
            "7b 22 67 6f 6c 64 22 3a 6e 75 6c 6c 7d",          // {"gold":null}
        ]),
    );
    golden(
        16,
        Message::Patch {
            doc: doc42(),
            pre: Precondition::None,
            patch: json("{}"),
        },
        &hex(&[
            "44 4d 01 13 00 00 00 00 00 00 00 10 00 00 00 22", // header: PATCH, id 16, body 34
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "00 00 00 00 00 00 00 00 00",                      // pre: kind 0 none, version 0
            "00 00 00 02 7b 7d",                               // patch json32 {}
        ]),
    );
}

/// Every precondition kind, in a DELETE (body = doc, pre).
#[test]
fn delete_with_every_precondition() {
    let cases: [(u32, Precondition, &str, &str); 6] = [
        // id, pre, header, pre bytes (u8 kind, u64 version)
        (
            17,
            Precondition::None,
            "44 4d 01 14 00 00 00 00 00 00 00 11 00 00 00 1c", // DELETE, id 17, body 28
            "00 00 00 00 00 00 00 00 00",                      // kind 0 none, version 0
        ),
        (
            18,
            Precondition::Version(0),
            "44 4d 01 14 00 00 00 00 00 00 00 12 00 00 00 1c", // DELETE, id 18, body 28
            "01 00 00 00 00 00 00 00 00", // kind 1, version 0: no live document
        ),
        (
            19,
            Precondition::Version(7),
            "44 4d 01 14 00 00 00 00 00 00 00 13 00 00 00 1c", // DELETE, id 19, body 28
            "01 00 00 00 00 00 00 00 07",                      // kind 1, version 7
        ),
        (
            20,
            Precondition::Version(u64::MAX),
            "44 4d 01 14 00 00 00 00 00 00 00 14 00 00 00 1c", // DELETE, id 20, body 28
            "01 ff ff ff ff ff ff ff ff",                      // kind 1, version 2^64-1
        ),
        (
            21,
            Precondition::Exists,
            "44 4d 01 14 00 00 00 00 00 00 00 15 00 00 00 1c", // DELETE, id 21, body 28
            "02 00 00 00 00 00 00 00 00",                      // kind 2 exists, version 0
        ),
        (
            22,
            Precondition::Absent,
            "44 4d 01 14 00 00 00 00 00 00 00 16 00 00 00 1c", // DELETE, id 22, body 28
            "03 00 00 00 00 00 00 00 00",                      // kind 3 absent, version 0
        ),
    ];
    for (id, pre, header, pre_bytes) in cases {
        golden(
            id,
            Message::Delete { doc: doc42(), pre },
            &hex(&[
                header,
                "07 64 65 66 61 75 6c 74", // doc.game str8 "default"
                "07 70 6c 61 79 65 72 73", // doc.collection str8 "players"
                "02 34 32",                // doc.id str8 "42"
                pre_bytes,
            ]),
        );
    }
}

#[test]
fn incr() {
    golden(
        27,
        Message::Incr {
            doc: doc42(),
            pre: Precondition::None,
            incr: json(r#"{"path":"/gold","by":-5}"#),
        },
        &hex(&[
            "44 4d 01 16 00 00 00 00 00 00 00 1b 00 00 00 38", // header: INCR, id 27, body 56
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "00 00 00 00 00 00 00 00 00",                      // pre: kind 0 none, version 0
            "00 00 00 18",                                     // json32 length 24
            "7b 22 70 61 74 68 22 3a 22 2f 67 6f 6c 64 22 2c", // {"path":"/gold",
            "22 62 79 22 3a 2d 35 7d",                         // "by":-5}
        ]),
    );
    golden(
        28,
        Message::Incr {
            doc: doc42(),
            pre: Precondition::Version(4),
            incr: json(r#"{"path":"/gold","by":-5}"#),
        },
        &hex(&[
            "44 4d 01 16 00 00 00 00 00 00 00 1c 00 00 00 38", // header: INCR, id 28, body 56
            "07 64 65 66 61 75 6c 74",                         // doc.game str8 "default"
            "07 70 6c 61 79 65 72 73",                         // doc.collection str8 "players"
            "02 34 32",                                        // doc.id str8 "42"
            "01 00 00 00 00 00 00 00 04",                      // pre: kind 1, version 4
            "00 00 00 18",                                     // json32 length 24
            "7b 22 70 61 74 68 22 3a 22 2f 67 6f 6c 64 22 2c", // {"path":"/gold",
            "22 62 79 22 3a 2d 35 7d",                         // "by":-5}
        ]),
    );
}

#[test]
fn txn() {
    golden(
        29,
        Message::Txn {
            game: "default".into(),
            ops: json(r#"{"ops":[]}"#),
        },
        &hex(&[
            "44 4d 01 17 00 00 00 00 00 00 00 1d 00 00 00 16", // header: TXN, id 29, body 22
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "00 00 00 0a",                                     // json32 length 10
            "7b 22 6f 70 73 22 3a 5b 5d 7d",                   // {"ops":[]}
        ]),
    );
    golden(
        30,
        Message::Txn {
            game: "default".into(),
            ops: json(r#"{"ops":[{"op":"get","collection":"players","id":"42"}]}"#),
        },
        &hex(&[
            "44 4d 01 17 00 00 00 00 00 00 00 1e 00 00 00 43", // header: TXN, id 30, body 67
            "07 64 65 66 61 75 6c 74",                         // game str8 "default"
            "00 00 00 37",                                     // json32 length 55
            "7b 22 6f 70 73 22 3a 5b 7b 22 6f 70 22 3a 22 67", // {"ops":[{"op":"g
            "65 74 22 2c 22 63 6f 6c 6c 65 63 74 69 6f 6e 22", // et","collection"
            "3a 22 70 6c 61 79 65 72 73 22 2c 22 69 64 22 3a", // :"players","id":
            "22 34 32 22 7d 5d 7d",                            // "42"}]}
        ]),
    );
}

#[test]
fn mint_and_token() {
    golden(
        31,
        Message::Mint {
            game: "rpg".into(),
            request: json(r#"{"sub":"p1"}"#),
        },
        &hex(&[
            "44 4d 01 18 00 00 00 00 00 00 00 1f 00 00 00 14", // header: MINT, id 31, body 20
            "03 72 70 67",                                     // game str8 "rpg"
            "00 00 00 0c",                                     // json32 length 12
            "7b 22 73 75 62 22 3a 22 70 31 22 7d",             // {"sub":"p1"}
        ]),
    );
    golden(
        31,
        Message::Token {
            token: json(r#"{"token":"t"}"#),
        },
        &hex(&[
            "44 4d 01 94 00 00 00 00 00 00 00 1f 00 00 00 11", // header: TOKEN, id 31, body 17
            "00 00 00 0d",                                     // json32 length 13
            "7b 22 74 6f 6b 65 6e 22 3a 22 74 22 7d",          // {"token":"t"}
        ]),
    );
}

// ---------------------------------------------------------------------------------------------
// Answers: DOC, DOCS, DONE, TXN_RESULT, ERROR
// ---------------------------------------------------------------------------------------------

#[test]
fn doc() {
    // The worked example's answer from L1, with a concrete document of N = 92 bytes:
    // body_len N + 14 = 106.
    golden(
        7,
        Message::Doc {
            tier: Tier::L1,
            created: false,
            version: 3,
            doc: json(
                r#"{"id":"42","owner":null,"version":3,"updated_at":"2026-01-01T00:00:00Z","value":{"gold":10}}"#,
            ),
        },
        &hex(&[
            "44 4d 01 90 00 00 00 00 00 00 00 07 00 00 00 6a", // header: DOC, id 7, body 106
            "01",                                              // tier 1: L1
            "00",                                              // created 0: no
            "00 00 00 00 00 00 00 03",                         // version 3
            "00 00 00 5c",                                     // document json32 length 92
            "7b 22 69 64 22 3a 22 34 32 22 2c 22 6f 77 6e 65", // {"id":"42","owne
            "72 22 3a 6e 75 6c 6c 2c 22 76 65 72 73 69 6f 6e", // r":null,"version
            "22 3a 33 2c 22 75 70 64 61 74 65 64 5f 61 74 22", // ":3,"updated_at"
            "3a 22 32 30 32 36 2d 30 31 2d 30 31 54 30 30 3a", // :"2026-01-01T00:
            "30 30 3a 30 30 5a 22 2c 22 76 61 6c 75 65 22 3a", // 00:00Z","value":
            "7b 22 67 6f 6c 64 22 3a 31 30 7d 7d",             // {"gold":10}}
        ]),
    );
    // The answer to a PUT that created the document: tier 0, created 1.
    golden(
        11,
        Message::Doc {
            tier: Tier::None,
            created: true,
            version: 1,
            doc: json("{}"),
        },
        &hex(&[
            "44 4d 01 90 00 00 00 00 00 00 00 0b 00 00 00 10", // header: DOC, id 11, body 16
            "00",                                              // tier 0: none (a write)
            "01",                                              // created 1: yes
            "00 00 00 00 00 00 00 01",                         // version 1
            "00 00 00 02 7b 7d",                               // document json32 {}
        ]),
    );
    golden(
        31,
        Message::Doc {
            tier: Tier::L2,
            created: false,
            version: 0x0102_0304_0506_0708,
            doc: json(r#"{"id":"42"}"#),
        },
        &hex(&[
            "44 4d 01 90 00 00 00 00 00 00 00 1f 00 00 00 19", // header: DOC, id 31, body 25
            "02",                                              // tier 2: L2
            "00",                                              // created 0: no
            "01 02 03 04 05 06 07 08",                         // version
            "00 00 00 0b",                                     // document json32 length 11
            "7b 22 69 64 22 3a 22 34 32 22 7d",                // {"id":"42"}
        ]),
    );
    golden(
        32,
        Message::Doc {
            tier: Tier::Db,
            created: false,
            version: 3,
            doc: json("{}"),
        },
        &hex(&[
            "44 4d 01 90 00 00 00 00 00 00 00 20 00 00 00 10", // header: DOC, id 32, body 16
            "03",                                              // tier 3: database
            "00",                                              // created 0: no
            "00 00 00 00 00 00 00 03",                         // version 3
            "00 00 00 02 7b 7d",                               // document json32 {}
        ]),
    );
}

#[test]
fn docs() {
    // A BATCH_GET answer: present, absent, present; no cursor.
    golden(
        8,
        Message::Docs {
            tier: Tier::Db,
            docs: vec![Some(json(r#"{"id":"42"}"#)), None, Some(json("{}"))],
            next_cursor: None,
        },
        &hex(&[
            "44 4d 01 91 00 00 00 00 00 00 00 08 00 00 00 1c", // header: DOCS, id 8, body 28
            "03",                                              // tier 3: database
            "00 03",                                           // count 3
            "01",                                              // slot 0: present
            "00 00 00 0b",                                     //   json32 length 11
            "7b 22 69 64 22 3a 22 34 32 22 7d",                //   {"id":"42"}
            "00",                                              // slot 1: absent
            "01",                                              // slot 2: present
            "00 00 00 02 7b 7d",                               //   json32 {}
            "00",                                              // next_cursor str8 "" (none)
        ]),
    );
    // A LIST page with a next_cursor.
    golden(
        24,
        Message::Docs {
            tier: Tier::Db,
            docs: vec![Some(json("{}"))],
            next_cursor: Some("c1".into()),
        },
        &hex(&[
            "44 4d 01 91 00 00 00 00 00 00 00 18 00 00 00 0d", // header: DOCS, id 24, body 13
            "03",                                              // tier 3: database
            "00 01",                                           // count 1
            "01",                                              // slot 0: present
            "00 00 00 02 7b 7d",                               //   json32 {}
            "02 63 31",                                        // next_cursor str8 "c1"
        ]),
    );
    // Every id remembered missing by L1.
    golden(
        33,
        Message::Docs {
            tier: Tier::L1,
            docs: vec![None, None],
            next_cursor: None,
        },
        &hex(&[
            "44 4d 01 91 00 00 00 00 00 00 00 21 00 00 00 06", // header: DOCS, id 33, body 6
            "01",                                              // tier 1: L1
            "00 02",                                           // count 2
            "00",                                              // slot 0: absent
            "00",                                              // slot 1: absent
            "00",                                              // next_cursor str8 "" (none)
        ]),
    );
    // An empty page.
    golden(
        9,
        Message::Docs {
            tier: Tier::L1,
            docs: vec![],
            next_cursor: None,
        },
        &hex(&[
            "44 4d 01 91 00 00 00 00 00 00 00 09 00 00 00 04", // header: DOCS, id 9, body 4
            "01",                                              // tier 1: L1
            "00 00",                                           // count 0
            "00",                                              // next_cursor str8 "" (none)
        ]),
    );
}

#[test]
fn done() {
    golden(
        17,
        Message::Done { version: 6 },
        &hex(&[
            "44 4d 01 92 00 00 00 00 00 00 00 11 00 00 00 08", // header: DONE, id 17, body 8
            "00 00 00 00 00 00 00 06",                         // version 6 (the tombstone's)
        ]),
    );
}

#[test]
fn txn_result() {
    golden(
        29,
        Message::TxnResult {
            results: json(r#"{"results":[]}"#),
        },
        &hex(&[
            "44 4d 01 93 00 00 00 00 00 00 00 1d 00 00 00 12", // header: TXN_RESULT, id 29, body 18
            "00 00 00 0e",                                     // json32 length 14
            "7b 22 72 65 73 75 6c 74 73 22 3a 5b 5d 7d",       // {"results":[]}
        ]),
    );
}

#[test]
fn error() {
    // The worked example: not_found for request 7, no op_index.
    golden(
        7,
        Message::Error {
            code: "not_found".into(),
            message: "no such document".into(),
            op_index: None,
        },
        &hex(&[
            "44 4d 01 ff 00 00 00 00 00 00 00 07 00 00 00 20", // header: ERROR, id 7, body 32
            "09 6e 6f 74 5f 66 6f 75 6e 64",                   // code str8 "not_found"
            "00 10",                                           // message str16 length 16
            "6e 6f 20 73 75 63 68 20 64 6f 63 75 6d 65 6e 74", // "no such document"
            "ff ff ff ff",                                     // op_index: none
        ]),
    );
    // A TXN op that failed: op_index 2.
    golden(
        30,
        Message::Error {
            code: "version_conflict".into(),
            message: "op 2".into(),
            op_index: Some(2),
        },
        &hex(&[
            "44 4d 01 ff 00 00 00 00 00 00 00 1e 00 00 00 1b", // header: ERROR, id 30, body 27
            "10",                                              // code str8 length 16
            "76 65 72 73 69 6f 6e 5f 63 6f 6e 66 6c 69 63 74", // "version_conflict"
            "00 04 6f 70 20 32",                               // message str16 "op 2"
            "00 00 00 02",                                     // op_index 2
        ]),
    );
    // op_index 0 is an index, not "none".
    golden(
        30,
        Message::Error {
            code: "bad_request".into(),
            message: String::new(),
            op_index: Some(0),
        },
        &hex(&[
            "44 4d 01 ff 00 00 00 00 00 00 00 1e 00 00 00 12", // header: ERROR, id 30, body 18
            "0b 62 61 64 5f 72 65 71 75 65 73 74",             // code str8 "bad_request"
            "00 00",                                           // message str16 ""
            "00 00 00 00",                                     // op_index 0
        ]),
    );
    // A connection-level error (request id 0).
    golden(
        0,
        Message::Error {
            code: "protocol_error".into(),
            message: String::new(),
            op_index: None,
        },
        &hex(&[
            "44 4d 01 ff 00 00 00 00 00 00 00 00 00 00 00 15", // header: ERROR, id 0, body 21
            "0e 70 72 6f 74 6f 63 6f 6c 5f 65 72 72 6f 72",    // code str8 "protocol_error"
            "00 00",                                           // message str16 ""
            "ff ff ff ff",                                     // op_index: none
        ]),
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies: protocol_error, answered with the frame's request id
// ---------------------------------------------------------------------------------------------

/// `str8 "default"`, `str8 "players"`, `str8 "42"`: the doc composite used below.
const DOC42: &str = "07 64 65 66 61 75 6c 74  07 70 6c 61 79 65 72 73  02 34 32";

#[test]
fn malformed_enumerations() {
    // credential_kind: 0, 1 or 2.
    bad_body(
        0x01,
        100,
        &[
            "01",                // version 1
            "00 04 64 65 6d 6f", // client_name "demo"
            "03",                // credential_kind 3: not listed
            "00 00",             // credential ""
        ],
        "HELLO credential_kind 3",
    );
    bad_body(
        0x01,
        100,
        &["01", "00 00", "ff", "00 02 6b 31"],
        "HELLO credential_kind 255",
    );
    // owner_kind: 0, 1 or 2.
    bad_body(
        0x12,
        101,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "03",                         // owner_kind 3: not listed
            "00",                         // owner ""
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner_kind 3, empty owner",
    );
    bad_body(
        0x12,
        101,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "ff",                         // owner_kind 255: not listed
            "05 61 6c 69 63 65",          // owner "alice"
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner_kind 255, non-empty owner",
    );
    // tier: 0..=3.
    bad_body(
        0x90,
        102,
        &[
            "04",                      // tier 4: not listed
            "00",                      // created 0
            "00 00 00 00 00 00 00 01", // version 1
            "00 00 00 02 7b 7d",       // document {}
        ],
        "DOC tier 4",
    );
    bad_body(
        0x91,
        102,
        &[
            "ff",    // tier 255: not listed
            "00 00", // count 0
            "00",    // next_cursor ""
        ],
        "DOCS tier 255",
    );
    // created, present: 0 or 1.
    bad_body(
        0x90,
        103,
        &[
            "00",                      // tier 0
            "02",                      // created 2: not listed
            "00 00 00 00 00 00 00 01", // version 1
            "00 00 00 02 7b 7d",       // document {}
        ],
        "DOC created 2",
    );
    bad_body(
        0x91,
        104,
        &[
            "03",                // tier 3
            "00 02",             // count 2
            "01",                // slot 0 present
            "00 00 00 02 7b 7d", //   {}
            "02",                // slot 1 present 2: not listed
            "00 00 00 02 7b 7d", //   {}
            "00",                // next_cursor ""
        ],
        "DOCS present 2",
    );
}

#[test]
fn malformed_owner_rules() {
    bad_body(
        0x12,
        110,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "00",                         // owner_kind 0: keep ...
            "05 61 6c 69 63 65",          // ... with owner "alice"
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner_kind 0 with a non-empty owner",
    );
    bad_body(
        0x12,
        111,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "02",                         // owner_kind 2: clear ...
            "05 61 6c 69 63 65",          // ... with owner "alice"
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner_kind 2 with a non-empty owner",
    );
    bad_body(
        0x12,
        112,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "01",                         // owner_kind 1: set ...
            "00",                         // ... with owner ""
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner_kind 1 with an empty owner",
    );
}

#[test]
fn malformed_preconditions() {
    // DELETE body = doc, pre.
    let unlisted = [
        ("00 00 00 00 00 00 00 00 01", "kind 0 with version 1"),
        ("00 80 00 00 00 00 00 00 00", "kind 0 with version 2^63"),
        ("02 00 00 00 00 00 00 00 05", "kind 2 with version 5"),
        ("03 00 00 00 00 00 00 00 01", "kind 3 with version 1"),
        ("04 00 00 00 00 00 00 00 00", "kind 4"),
        ("ff 00 00 00 00 00 00 00 00", "kind 255"),
    ];
    for (pre, why) in unlisted {
        bad_body(0x14, 120, &[DOC42, pre], &format!("DELETE pre {why}"));
    }
    // The same rule in every opcode with a pre.
    bad_body(
        0x12,
        121,
        &[
            DOC42,
            "02 00 00 00 00 00 00 00 01", // pre kind 2 with version 1
            "00",                         // owner_kind 0
            "00",                         // owner ""
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT pre kind 2 with a version",
    );
    bad_body(
        0x13,
        122,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 09", // pre kind 0 with version 9
            "00 00 00 02 7b 7d",          // patch {}
        ],
        "PATCH pre kind 0 with a version",
    );
    bad_body(
        0x16,
        123,
        &[
            DOC42,
            "05 00 00 00 00 00 00 00 00", // pre kind 5
            "00 00 00 02 7b 7d",          // incr {}
        ],
        "INCR pre kind 5",
    );
}

#[test]
fn malformed_strings() {
    bad_body(
        0x10,
        130,
        &[
            "07 64 65 66 61 75 6c 74", // game "default"
            "07 70 6c 61 79 65 72 73", // collection "players"
            "01 ff",                   // id str8: 0xff is never UTF-8
        ],
        "GET id not UTF-8",
    );
    bad_body(
        0x11,
        131,
        &[
            "07 64 65 66 61 75 6c 74", // game "default"
            "07 70 6c 61 79 65 72 73", // collection "players"
            "00 01",                   // count 1
            "02 c3 28",                // id str8: a 2-byte lead then a non-continuation
        ],
        "BATCH_GET id not UTF-8",
    );
    bad_body(
        0x15,
        132,
        &[
            "07 64 65 66 61 75 6c 74", // game "default"
            "07 70 6c 61 79 65 72 73", // collection "players"
            "00",                      // owner ""
            "03 ed a0 80",             // cursor str8: an encoded surrogate, not UTF-8
            "00 00",                   // limit 0
        ],
        "LIST cursor not UTF-8",
    );
    bad_body(
        0x12,
        133,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "01",                         // owner_kind 1
            "02 c0 80",                   // owner str8: overlong NUL, not UTF-8
            "00 00 00 02 7b 7d",          // value {}
        ],
        "PUT owner not UTF-8",
    );
    bad_body(
        0x91,
        134,
        &[
            "03",    // tier 3
            "00 00", // count 0
            "01 80", // next_cursor str8: a lone continuation byte
        ],
        "DOCS next_cursor not UTF-8",
    );
    bad_body(
        0xff,
        135,
        &[
            "02 fe ff",    // code str8: not UTF-8
            "00 00",       // message ""
            "ff ff ff ff", // op_index none
        ],
        "ERROR code not UTF-8",
    );
    // str16 too.
    bad_body(
        0x01,
        136,
        &[
            "01",          // version 1
            "00 02 ff fe", // client_name str16: not UTF-8
            "00",          // credential_kind 0
            "00 00",       // credential ""
        ],
        "HELLO client_name not UTF-8",
    );
    bad_body(
        0x82,
        137,
        &[
            "00 00 00 01", // last_request_id 1
            "00 01 ff",    // message str16: not UTF-8
        ],
        "GOAWAY message not UTF-8",
    );
}

#[test]
fn malformed_lengths() {
    // Too short / trailing, written out (every golden case above also checks both).
    bad_body(
        0x02,
        140,
        &["00 00 00 00 00 00 00"],
        "PING payload of 7 bytes",
    );
    bad_body(
        0x02,
        140,
        &["00 00 00 00 00 00 00 00 00"],
        "PING payload of 9 bytes",
    );
    bad_body(0x92, 141, &["00 00 00 00 00 00 00"], "DONE of 7 bytes");
    bad_body(0x10, 142, &[DOC42, "00"], "GET with a trailing byte");
    // Every opcode of the table has a non-empty body: an empty one is too short.
    for opcode in [
        0x01, 0x81, 0x02, 0x03, 0x82, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x90,
        0x91, 0x92, 0x93, 0x94, 0xff,
    ] {
        assert_malformed(
            &frame(opcode, 143, &[]),
            143,
            &format!("opcode {opcode:#04x} with an empty body"),
        );
    }
    // A length prefix that runs past the body.
    bad_body(
        0x13,
        144,
        &[
            DOC42,
            "00 00 00 00 00 00 00 00 00", // pre none
            "00 00 00 64 7b 7d",          // patch json32 length 100, 2 bytes follow
        ],
        "PATCH json32 longer than the body",
    );
    bad_body(
        0x10,
        145,
        &[
            "07 64 65 66 61 75 6c 74",
            "07 70 6c 61 79 65 72 73",
            "03 34 32",
        ],
        "GET id str8 longer than the body",
    );
    bad_body(
        0x11,
        146,
        &[
            "07 64 65 66 61 75 6c 74", // game "default"
            "07 70 6c 61 79 65 72 73", // collection "players"
            "00 02",                   // count 2 ...
            "02 34 32",                // ... but one id
        ],
        "BATCH_GET count larger than the ids",
    );
    bad_body(
        0x91,
        147,
        &[
            "03",    // tier 3
            "00 05", // count 5 ...
            "00",    // ... one slot (absent)
            "00",    // next_cursor ""
        ],
        "DOCS count larger than the slots",
    );
}

// ---------------------------------------------------------------------------------------------
// Header errors, and the request id an ERROR carries
// ---------------------------------------------------------------------------------------------

#[test]
fn header_errors() {
    // Wrong magic: protocol_error, request id 0 (request_id_of gives None).
    assert_header_error(
        &hex(&["44 4e 01 10 00 00 00 00 00 00 00 07 00 00 00 13", DOC42]),
        MAX_FRAME,
        "protocol_error",
        None,
        "second magic byte wrong",
    );
    assert_header_error(
        &hex(&["4d 44 01 10 00 00 00 00 00 00 00 07 00 00 00 13", DOC42]),
        MAX_FRAME,
        "protocol_error",
        None,
        "magic swapped",
    );
    // "The first byte is checked on arrival": one byte is enough to refuse.
    let mut one = BytesMut::from(&[0x45u8][..]);
    let err = decode(&mut one, MAX_FRAME).expect_err("first byte 0x45");
    assert_eq!(err.code().as_str(), "protocol_error");
    assert_eq!(request_id_of(&[0x45]), None);
    // "... the second with the header": `44 4e` alone is not yet an error.
    let mut two = BytesMut::from(&[0x44u8, 0x4e][..]);
    assert_eq!(decode(&mut two, MAX_FRAME), Ok(None));
    assert_eq!(two.len(), 2);

    // Version byte not 1: unsupported_version, the frame's id.
    for version in [0x00, 0x02, 0xff] {
        let mut bytes = hex(&["44 4d 01 10 00 00 00 00 00 00 00 07 00 00 00 13", DOC42]);
        bytes[2] = version;
        assert_header_error(
            &bytes,
            MAX_FRAME,
            "unsupported_version",
            Some(7),
            &format!("header version {version}"),
        );
    }

    // Reserved bytes 6-7 not 0: protocol_error, the frame's id.
    assert_header_error(
        &hex(&["44 4d 01 10 00 00 00 01 00 00 00 08 00 00 00 13", DOC42]),
        MAX_FRAME,
        "protocol_error",
        Some(8),
        "reserved 00 01",
    );
    assert_header_error(
        &hex(&["44 4d 01 10 00 00 80 00 00 00 00 09 00 00 00 13", DOC42]),
        MAX_FRAME,
        "protocol_error",
        Some(9),
        "reserved 80 00",
    );

    // body_len over the limit: frame_too_large, the frame's id, refused from the header alone.
    assert_header_error(
        &hex(&["44 4d 01 01 00 00 00 00 00 00 00 0a 00 00 10 01"]), // HELLO, body 4097
        HANDSHAKE_MAX_BODY,
        "frame_too_large",
        Some(10),
        "body 4097 before HELLO_OK",
    );
    assert_header_error(
        &hex(&["44 4d 01 12 00 00 00 00 00 00 00 0b 00 10 10 01"]), // PUT, body 1052673
        MAX_FRAME,
        "frame_too_large",
        Some(11),
        "body max_frame + 1",
    );
    assert_header_error(
        &hex(&["44 4d 01 12 00 00 00 00 ff ff ff ff ff ff ff ff"]), // PUT, body 2^32-1
        MAX_FRAME,
        "frame_too_large",
        Some(u32::MAX),
        "body 2^32-1",
    );
    // Exactly the limit is allowed: "read more".
    let at_limit = hex(&["44 4d 01 01 00 00 00 00 00 00 00 0a 00 00 10 00"]); // body 4096
    assert_eq!(
        check(&at_limit, HANDSHAKE_MAX_BODY).map(|h| h.is_some()),
        Ok(false)
    );
    assert_eq!(
        PRE_HANDSHAKE_MAX_BODY, 4096,
        "the spec's pre-handshake limit"
    );

    // request_id_of: None until the 16 header bytes are there.
    let get = hex(&["44 4d 01 10 00 00 00 00 00 00 00 07 00 00 00 13", DOC42]);
    assert_eq!(request_id_of(&get[..15]), None);
    assert_eq!(request_id_of(&get[..16]), Some(7));
}

/// Every opcode byte not in the spec's table is `unknown_opcode`, answered with the frame's id;
/// every byte in the table passes the header check.
#[test]
fn unknown_opcodes() {
    let table = [
        0x01, 0x81, 0x02, 0x03, 0x82, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x90,
        0x91, 0x92, 0x93, 0x94, 0xff,
    ];
    for byte in 0..=u8::MAX {
        let header = [
            0x44, 0x4d, 0x01, byte, 0x00, 0x00, 0x00,
            0x00, // magic, version, opcode, flags, rsvd
            0x00, 0x00, 0x01, 0x00, // request_id 256
            0x00, 0x00, 0x00, 0x00, // body_len 0
        ];
        if table.contains(&byte) {
            let parsed = check(&header, MAX_FRAME)
                .unwrap_or_else(|e| panic!("opcode {byte:#04x} refused: {e}"))
                .expect("whole header");
            assert_eq!(parsed.opcode as u8, byte);
            assert_eq!(parsed.request_id, 256);
        } else {
            assert_header_error(
                &header,
                MAX_FRAME,
                "unknown_opcode",
                Some(256),
                &format!("opcode {byte:#04x}"),
            );
        }
    }
}

/// Flags: "senders send 0, receivers ignore unknown bits".
#[test]
fn flags_are_ignored() {
    let mut buf = BytesMut::from(
        &hex(&[
            "44 4d 01 10 80 01 00 00 00 00 00 07 00 00 00 13", // header: GET, flags 0x8001
            DOC42,
        ])[..],
    );
    let (header, message) = decode(&mut buf, MAX_FRAME)
        .expect("flags are ignored")
        .expect("whole frame");
    assert_eq!(message, Message::Get(doc42()));
    assert_eq!(header.request_id, 7);
    assert_eq!(header.body_len, 19);
    assert!(buf.is_empty());
}
