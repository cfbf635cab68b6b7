use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn encoded(message: &Message, request_id: u32) -> BytesMut {
    let mut out = BytesMut::new();
    message.encode(request_id, &mut out);
    out
}

fn doc_ref() -> impl Strategy<Value = DocRef> {
    ("[a-z]{1,8}", "[a-z_]{1,8}", "[A-Za-z0-9:@.-]{1,128}").prop_map(|(game, collection, id)| {
        DocRef {
            game,
            collection,
            id,
        }
    })
}

fn json() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn pre() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        Just(Precondition::None),
        any::<u64>().prop_map(Precondition::Version),
        Just(Precondition::Exists),
        Just(Precondition::Absent),
    ]
}

fn tier() -> impl Strategy<Value = Tier> {
    prop_oneof![
        Just(Tier::None),
        Just(Tier::L1),
        Just(Tier::L2),
        Just(Tier::Db)
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_]{1,40}"
}

fn message() -> impl Strategy<Value = Message> {
    let credential = prop_oneof![
        Just(Credential::None),
        "\\PC{0,60}".prop_map(Credential::ApiKey),
        "\\PC{0,60}".prop_map(Credential::Token),
    ];
    let owner = prop_oneof![
        Just(OwnerChange::Keep),
        name().prop_map(OwnerChange::Set),
        Just(OwnerChange::Clear)
    ];
    prop_oneof![
        (any::<u8>(), "\\PC{0,40}", credential).prop_map(|(version, client_name, credential)| {
            Message::Hello(Hello {
                version,
                client_name,
                credential,
            })
        }),
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            "\\PC{0,40}"
        )
            .prop_map(|(version, hb, mf, mi, server)| {
                Message::HelloOk(HelloOk {
                    version,
                    heartbeat_interval_ms: hb,
                    max_frame: mf,
                    max_in_flight: mi,
                    server,
                })
            }),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
        (any::<u32>(), "\\PC{0,80}").prop_map(|(last_request_id, message)| Message::GoAway {
            last_request_id,
            message
        }),
        doc_ref().prop_map(Message::Get),
        (name(), name(), proptest::collection::vec(name(), 0..20)).prop_map(
            |(game, collection, ids)| Message::BatchGet {
                game,
                collection,
                ids
            }
        ),
        (doc_ref(), pre(), owner, json()).prop_map(|(doc, pre, owner, value)| Message::Put {
            doc,
            pre,
            owner,
            value
        }),
        (doc_ref(), pre(), json()).prop_map(|(doc, pre, patch)| Message::Patch { doc, pre, patch }),
        (doc_ref(), pre()).prop_map(|(doc, pre)| Message::Delete { doc, pre }),
        (
            name(),
            name(),
            proptest::option::of(name()),
            proptest::option::of(name()),
            any::<u16>()
        )
            .prop_map(|(game, collection, owner, cursor, limit)| Message::List {
                game,
                collection,
                owner,
                cursor,
                limit
            }),
        (doc_ref(), pre(), json()).prop_map(|(doc, pre, incr)| Message::Incr { doc, pre, incr }),
        (name(), json()).prop_map(|(game, ops)| Message::Txn { game, ops }),
        (name(), json()).prop_map(|(game, request)| Message::Mint { game, request }),
        (tier(), any::<bool>(), any::<u64>(), json()).prop_map(|(tier, created, version, doc)| {
            Message::Doc {
                tier,
                created,
                version,
                doc,
            }
        }),
        (
            tier(),
            proptest::collection::vec(proptest::option::of(json()), 0..10),
            proptest::option::of(name())
        )
            .prop_map(|(tier, docs, next_cursor)| Message::Docs {
                tier,
                docs,
                next_cursor
            }),
        any::<u64>().prop_map(|version| Message::Done { version }),
        json().prop_map(|results| Message::TxnResult { results }),
        json().prop_map(|token| Message::Token { token }),
        (name(), "\\PC{0,100}", proptest::option::of(0u32..u32::MAX)).prop_map(
            |(code, message, op_index)| Message::Error {
                code,
                message,
                op_index
            }
        ),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message(), request_id in any::<u32>()) {
        let mut buf = encoded(&message, request_id);
        let (header, decoded) = decode(&mut buf, u32::MAX).unwrap().expect("a whole frame");
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(header.opcode, message.opcode());
        prop_assert_eq!(decoded, message);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_prefix_is_incomplete_not_an_error(message in message(), cut in any::<prop::sample::Index>()) {
        let full = encoded(&message, 7);
        let cut = cut.index(full.len());
        let mut partial = BytesMut::from(&full[..cut]);
        prop_assert_eq!(decode(&mut partial, u32::MAX), Ok(None));
        prop_assert_eq!(partial.len(), cut, "nothing consumed");
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf, 1 << 20) {}
    }
}

proptest! {
    #[test]
    fn borrowed_get_fields_agree_with_decode(doc in doc_ref(), junk in proptest::collection::vec(any::<u8>(), 0..40)) {
        let frame = encoded(&Message::Get(doc.clone()), 1);
        let fields = message::get_fields(&frame[HEADER_LEN..]);
        prop_assert_eq!(fields, Some((doc.game.as_str(), doc.collection.as_str(), doc.id.as_str())));
        // Arbitrary bodies: borrowed parsing accepts exactly what decode accepts.
        let header = Header { opcode: Opcode::Get, flags: 0, request_id: 1, body_len: junk.len() as u32 };
        let decoded = Message::decode(&header, Bytes::from(junk.clone()));
        let borrowed = message::get_fields(&junk);
        match (decoded, borrowed) {
            (Ok(Message::Get(d)), Some((g, c, i))) => prop_assert_eq!((d.game.as_str(), d.collection.as_str(), d.id.as_str()), (g, c, i)),
            (Err(_), None) => {}
            (d, b) => prop_assert!(false, "decode {:?} vs borrowed {:?}", d, b),
        }
    }
}

#[test]
fn pipelined_frames_decode_one_by_one() {
    let mut buf = BytesMut::new();
    for id in 0..1000u32 {
        Message::Ping(id as u64).encode(id, &mut buf);
    }
    for id in 0..1000u32 {
        let (header, message) = decode(&mut buf, 16).unwrap().unwrap();
        assert_eq!((header.request_id, message), (id, Message::Ping(id as u64)));
    }
    assert_eq!(decode(&mut buf, 16), Ok(None));
}

#[test]
fn header_errors_are_reported_before_the_body_arrives() {
    let mut header = BytesMut::new();
    Header {
        opcode: Opcode::Get,
        flags: 0,
        request_id: 1,
        body_len: u32::MAX,
    }
    .encode(&mut header);
    assert_eq!(
        check(&header, 1 << 20),
        Err(FrameError::TooLarge {
            len: u32::MAX,
            max: 1 << 20
        })
    );
    assert_eq!(
        check(&header, 1 << 20).unwrap_err().code(),
        ErrorCode::FrameTooLarge
    );

    assert!(
        matches!(check(b"X", 100), Err(FrameError::BadMagic(_))),
        "one wrong byte is enough"
    );
    assert_eq!(check(b"D", 100), Ok(None));
    let mut bad = header.clone();
    bad[2] = 9;
    assert_eq!(
        check(&bad, u32::MAX),
        Err(FrameError::UnsupportedVersion(9))
    );
    let mut bad = header.clone();
    bad[3] = 0x77;
    assert_eq!(
        check(&bad, u32::MAX).unwrap_err().code(),
        ErrorCode::UnknownOpcode
    );
    let mut bad = header.clone();
    bad[7] = 1;
    assert_eq!(check(&bad, u32::MAX), Err(FrameError::Reserved));
}

#[test]
fn malformed_bodies_are_protocol_errors() {
    // A GET whose body claims a 5-byte game name but holds 2 bytes.
    let mut frame = BytesMut::new();
    Header {
        opcode: Opcode::Get,
        flags: 0,
        request_id: 3,
        body_len: 3,
    }
    .encode(&mut frame);
    frame.put_slice(&[5, b'a', b'b']);
    let err = decode(&mut frame, 100).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProtocolError);
    // Trailing bytes.
    let mut frame = encoded(&Message::Ping(1), 1);
    frame[15] += 1;
    frame.put_u8(0);
    assert!(matches!(
        decode(&mut frame, 100),
        Err(FrameError::Malformed { .. })
    ));
    // A batch count larger than the body could hold is refused without allocating for it.
    let mut frame = BytesMut::new();
    Header {
        opcode: Opcode::BatchGet,
        flags: 0,
        request_id: 3,
        body_len: 6,
    }
    .encode(&mut frame);
    frame.put_slice(&[1, b'g', 1, b'c', 0xFF, 0xFF]);
    assert!(matches!(
        decode(&mut frame, 100),
        Err(FrameError::Malformed { .. })
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_handshake_matches_the_documented_bytes() {
    // The worked example in docs/protocol.md.
    let hello = Message::Hello(Hello {
        version: 1,
        client_name: "demo".into(),
        credential: Credential::None,
    });
    assert_eq!(
        hex(&encoded(&hello, 1)),
        "44 4d 01 01 00 00 00 00 00 00 00 01 00 00 00 0a 01 00 04 64 65 6d 6f 00 00 00"
    );
    let ok = Message::HelloOk(HelloOk {
        version: 1,
        heartbeat_interval_ms: 30_000,
        max_frame: 1024 * 1024 + 4096,
        max_in_flight: 128,
        server: "datamiddleware/0.1.0".into(),
    });
    assert_eq!(
        hex(&encoded(&ok, 1)),
        "44 4d 01 81 00 00 00 00 00 00 00 01 00 00 00 21 01 00 00 75 30 00 10 10 00 00 80 00 14 \
         64 61 74 61 6d 69 64 64 6c 65 77 61 72 65 2f 30 2e 31 2e 30"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[test]
fn a_get_frame_matches_the_documented_bytes() {
    // The worked example in docs/protocol.md.
    let get = Message::Get(DocRef {
        game: "default".into(),
        collection: "players".into(),
        id: "42".into(),
    });
    let frame = encoded(&get, 7);
    let hex: Vec<String> = frame.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex.join(" "),
        "44 4d 01 10 00 00 00 00 00 00 00 07 00 00 00 13 07 64 65 66 61 75 6c 74 07 70 6c 61 79 65 72 73 02 34 32"
    );
    let mut fast = BytesMut::new();
    message::encode_doc_frame(&mut fast, 7, Tier::L1, 3, b"{}");
    assert_eq!(
        fast,
        encoded(
            &Message::Doc {
                tier: Tier::L1,
                created: false,
                version: 3,
                doc: Bytes::from_static(b"{}")
            },
            7
        )
    );
}

#[test]
fn requests_are_exactly_the_opcodes_0x10_to_0x18() {
    let requests: Vec<u8> = Opcode::ALL
        .into_iter()
        .filter(|op| op.is_request())
        .map(|op| op as u8)
        .collect();
    assert_eq!(requests, (0x10..=0x18).collect::<Vec<u8>>());
}
