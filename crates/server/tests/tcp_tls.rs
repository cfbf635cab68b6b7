//! The TCP protocol over TLS (`tcp.tls_listen`) beside the plain listener: the Rust client with
//! `TlsOptions`, answers larger than the TLS session's buffer, auth over TLS, clear failures
//! for a wrong name or the wrong kind of client, and the certificate replaced on reload.

mod support;

use std::path::Path;
use std::time::Duration;

use datamiddleware::config::Config;
use datamiddleware_client::{Client, ClientOptions, Credential, Error, Precondition, Tier};
use datamiddleware_client::{ErrorCode, TlsOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use support::{Backend, TestServer, fixture, tls_connect};

/// A server with the TCP protocol on a plain and a TLS listener; its TLS files are copies in
/// `dir` (so a test can replace them).
async fn server(dir: &Path) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.tcp.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        support::use_test_certificate(c, dir);
        for game in c.games.values_mut() {
            for collection in game.collections.values_mut() {
                collection.max_document_bytes = 60_000;
            }
        }
    })
    .await
    .expect("SQLite is always available")
}

/// `localhost:{port}` of the TCP-over-TLS listener (the certificate's DNS name).
fn tls_addr(s: &TestServer) -> String {
    format!("localhost:{}", s.running.tcp_tls_addr.unwrap().port())
}

/// A client of the TLS listener trusting the test CA, presenting `credential`.
fn tls_client(s: &TestServer, credential: Credential) -> Client {
    let tls = TlsOptions::with_ca_file(fixture("test_tls_ca.pem")).unwrap();
    let options = ClientOptions {
        credential,
        tls: Some(tls),
        max_connect_attempts: 1,
        ..ClientOptions::default()
    };
    Client::new(tls_addr(s), options)
}

fn test_key() -> Credential {
    Credential::ApiKey(support::TEST_KEY.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_speaks_the_protocol_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let client = tls_client(&s, test_key());
    let game = s.game.as_str();
    // ~50 KB: a hundred answers in flight are far more than the session's 64 KiB buffer.
    let value = json!({"gold": 7, "note": "x".repeat(50_000)});
    let put = client
        .put(game, "players", "p1", &value, Precondition::None)
        .await
        .expect("a write over TLS");
    assert!(put.created);
    let gets = (0..100).map(|_| client.get(game, "players", "p1"));
    let docs = futures::future::join_all(gets).await;
    for doc in docs {
        let doc = doc.expect("a read over TLS");
        assert_eq!(doc.version, put.version);
        assert_eq!(doc.parse().unwrap()["value"], value);
    }
    let again = client.get(game, "players", "p1").await.unwrap();
    assert_eq!(
        again.tier,
        Tier::L1,
        "served from the cache as over plain TCP"
    );
    // The same document through the plain listener of the same server.
    let plain = s.tcp_client(test_key());
    let doc = plain.get(game, "players", "p1").await.unwrap();
    assert_eq!(doc.json, again.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_over_tls_as_over_plain_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let stranger = tls_client(
        &s,
        Credential::ApiKey("dmw_not_a_key_of_this_server".into()),
    );
    let err = stranger
        .get(&s.game, "players", "p1")
        .await
        .expect_err("an unknown key");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err:?}");
    let anonymous = tls_client(&s, Credential::None);
    let err = anonymous.get(&s.game, "players", "p1").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_a_tls_error_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let tls = TlsOptions::with_ca_file(fixture("test_tls_ca.pem"))
        .unwrap()
        .server_name("elsewhere.example");
    let options = ClientOptions {
        credential: test_key(),
        tls: Some(tls),
        // Retrying would take seconds of backoff: a TLS verdict is final.
        max_connect_attempts: 5,
        backoff_initial: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let started = std::time::Instant::now();
    let err = Client::new(tls_addr(&s), options)
        .get(&s.game, "players", "p1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("elsewhere.example"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not retried with backoff"
    );
    // A file without a certificate is refused when the options are made.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = TlsOptions::with_ca_file(&empty).unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_clients_on_the_wrong_listener_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let within = Duration::from_secs(5);
    // A plain client on the TLS listener: its HELLO is not a TLS handshake.
    let options = ClientOptions {
        credential: test_key(),
        max_connect_attempts: 1,
        connect_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let plain = Client::new(tls_addr(&s), options);
    let result = tokio::time::timeout(within, plain.get(&s.game, "players", "p1")).await;
    let err = result.expect("answered, not left waiting").unwrap_err();
    assert!(err.code().is_none(), "no server answer over TLS: {err:?}");
    // A TLS client on the plain listener: the server answers a protocol error, in clear.
    let options = ClientOptions {
        credential: test_key(),
        tls: Some(TlsOptions::with_ca_file(fixture("test_tls_ca.pem")).unwrap()),
        max_connect_attempts: 1,
        connect_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let addr = format!("localhost:{}", s.running.tcp_addr.unwrap().port());
    let tls = Client::new(addr, options);
    let result = tokio::time::timeout(within, tls.get(&s.game, "players", "p1")).await;
    let err = result.expect("answered, not left waiting").unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

/// The certificate the TLS listener presents in a handshake, and the ALPN protocol chosen.
async fn presented(s: &TestServer) -> (Vec<u8>, Option<Vec<u8>>) {
    // `h2` offered, so that the answer shows the TCP listener chooses none.
    let stream = tls_connect(s.running.tcp_tls_addr.unwrap(), &[b"h2"])
        .await
        .expect("handshake");
    let (_, session) = stream.get_ref();
    let cert = session.peer_certificates().unwrap()[0].to_vec();
    (cert, session.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_certificate_of_the_tcp_listener() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let first = CertificateDer::from_pem_file(fixture("test_tls_cert_1.pem")).unwrap();
    let second = CertificateDer::from_pem_file(fixture("test_tls_cert_2.pem")).unwrap();
    let (served, alpn) = presented(&s).await;
    assert_eq!(served, first.to_vec());
    assert_eq!(alpn, None, "the TCP protocol takes no ALPN protocol");
    // A connection opened before the reload keeps working after it.
    let before = tls_client(&s, test_key());
    before.ping().await.unwrap();

    let mut config = support::config(&s.game, &s.store_url);
    config.tcp.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls.cert_file = Some(dir.path().join("cert.pem"));
    config.tls.key_file = Some(dir.path().join("key.pem"));
    std::fs::copy(fixture("test_tls_cert_2.pem"), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(fixture("test_tls_key_2.pem"), dir.path().join("key.pem")).unwrap();
    s.running.reload(&config);
    let (served, _) = presented(&s).await;
    assert_eq!(served, second.to_vec(), "replaced on reload");
    before.ping().await.expect("the open connection is kept");
    tls_client(&s, test_key())
        .ping()
        .await
        .expect("a new connection with the new certificate");
}

/// A client that reads its answers slowly keeps the server's socket full, so the last TLS
/// records of a burst wait in the session after the server's own buffer is empty: they must
/// still go out when the socket has room (the client would wait forever otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_a_slow_reader_whole() {
    use bytes::BytesMut;
    use datamiddleware_protocol::{DocRef, Hello, Message, decode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let value = json!({"note": "y".repeat(50_000)});
    let writer = tls_client(&s, test_key());
    writer
        .put(&s.game, "players", "big", &value, Precondition::None)
        .await
        .unwrap();

    let mut stream = tls_connect(s.running.tcp_tls_addr.unwrap(), &[])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "slow-reader".into(),
        credential: test_key(),
    })
    .encode(0, &mut out);
    // 200 GETs of 50 KB: 10 MB of answers, more than the loopback socket buffers hold.
    const GETS: u32 = 200;
    for id in 1..=GETS {
        Message::Get(DocRef {
            game: s.game.clone(),
            collection: "players".into(),
            id: "big".into(),
        })
        .encode(id, &mut out);
    }
    stream.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = BytesMut::new();
    let mut answered = 0;
    let mut seen = std::collections::HashSet::new();
    let read_all = async {
        while answered < GETS {
            // Small reads with a pause between them: the server keeps meeting a full socket.
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {answered} answers");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((header, message)) = decode(&mut buf, u32::MAX).unwrap() {
                match message {
                    Message::HelloOk(_) => {}
                    Message::Doc { doc, .. } => {
                        assert!(seen.insert(header.request_id), "answered once");
                        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
                        assert_eq!(doc["value"], value);
                        answered += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_all)
        .await
        .unwrap_or_else(|_| panic!("only {answered} of {GETS} answers arrived"));
}

/// A TLS handshake costs the server a signature, so it counts against the per-address rate
/// before it starts, on the TCP and the HTTPS listener alike: a flood of handshakes from one
/// address is cut off at the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_count_against_the_per_address_rate() {
    const RATE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.tcp.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        c.http.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        support::use_test_certificate(c, dir.path());
        c.rate_limits.per_ip = RATE;
    })
    .await
    .unwrap();
    for (listener, addr) in [
        ("TCP", s.running.tcp_tls_addr.unwrap()),
        ("HTTPS", s.running.tls_addr.unwrap()),
    ] {
        // Let the bucket (2 × RATE) fill up again after the previous listener's flood.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = std::time::Instant::now();
        let attempts = (0..40).map(|_| tls_connect(addr, &[b"http/1.1"]));
        let done = futures::future::join_all(attempts).await;
        let elapsed = started.elapsed();
        let ok = done.iter().filter(|r| r.is_ok()).count();
        let most = (2 * RATE) as usize + (elapsed.as_secs_f64() * RATE as f64).ceil() as usize;
        assert!(ok >= 1, "{listener}: the first handshakes pass");
        assert!(
            ok <= most,
            "{listener}: {ok} of 40 handshakes passed in {elapsed:?} at {RATE}/s"
        );
    }
}

/// On the TCP listener the handshake's charge covers HELLO: a client address gets as many TLS
/// sessions as its bucket holds, not half as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_is_charged_once() {
    const RATE: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.tcp.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        support::use_test_certificate(c, dir.path());
        c.rate_limits.per_ip = RATE;
    })
    .await
    .unwrap();
    // The bucket holds 2 × RATE: that many sessions open with their HELLO, one by one.
    for i in 0..2 * RATE {
        let client = tls_client(&s, test_key());
        let pong = client.ping().await;
        assert!(pong.is_ok(), "session {i}: {pong:?}");
    }
}
