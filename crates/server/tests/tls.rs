//! HTTPS beside plain HTTP: the same API (auth included) over TLS, HTTP/2 or HTTP/1.1 chosen by
//! ALPN, curl as a client, and the certificate replaced on reload without a restart.

mod support;

use std::path::Path;
use std::process::Command;

use datamiddleware::config::Config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{Backend, TestServer, fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a server whose TLS files are copies in `dir` (so a test can replace them).
async fn server(dir: &Path) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.http.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        support::use_test_certificate(c, dir);
    })
    .await
    .expect("SQLite is always available")
}

/// Connects over TLS: the negotiated ALPN protocol and the server's certificate.
async fn handshake(
    s: &TestServer,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
    Vec<u8>,
) {
    let stream = support::tls_connect(s.running.tls_addr.unwrap(), alpn)
        .await
        .expect("handshake");
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let cert = session.peer_certificates().unwrap()[0].to_vec();
    (stream, alpn, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_with_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    s.client
        .put(&s.path("players/p1"), r#"{"value":{"gold":7}}"#)
        .await;
    let (_, alpn, _) = handshake(&s, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        alpn.as_deref(),
        Some(b"h2".as_slice()),
        "HTTP/2 chosen by ALPN"
    );
    let (mut stream, alpn, _) = handshake(&s, &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(b"http/1.1".as_slice()));
    // HTTP/1.1 over TLS, with the test key: the same answer as plain HTTP.
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
        s.path("players/p1"),
        support::TEST_KEY
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""gold":7"#), "{answer}");
    // Without a key: refused over TLS as over plain HTTP.
    let (mut stream, ..) = handshake(&s, &[b"http/1.1"]).await;
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        s.path("players/p1")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_a_document_over_https_with_http2() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(!support::in_ci(), "curl is needed in CI");
        eprintln!("SKIPPED: no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    s.client
        .put(&s.path("players/p1"), r#"{"value":{"gold":7}}"#)
        .await;
    let url = format!(
        "https://localhost:{}{}",
        s.running.tls_addr.unwrap().port(),
        s.path("players/p1")
    );
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(fixture("test_tls_ca.pem"))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", s.running.tls_addr.unwrap().port()),
        ])
        .args(["-H", &format!("x-api-key: {}", support::TEST_KEY)])
        .args(["-w", "\n%{http_version} %{http_code}", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(r#""gold":7"#), "{text}");
    assert!(text.trim_end().ends_with("2 200"), "HTTP/2 and 200: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let first = CertificateDer::from_pem_file(fixture("test_tls_cert_1.pem")).unwrap();
    let second = CertificateDer::from_pem_file(fixture("test_tls_cert_2.pem")).unwrap();
    let (_, _, served) = handshake(&s, &[b"http/1.1"]).await;
    assert_eq!(served, first.to_vec());

    let mut config = support::config(&s.game, &s.store_url);
    config.http.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls.cert_file = Some(dir.path().join("cert.pem"));
    config.tls.key_file = Some(dir.path().join("key.pem"));
    // A broken file is refused: the certificate in force stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    s.running.reload(&config);
    let (_, _, served) = handshake(&s, &[b"http/1.1"]).await;
    assert_eq!(served, first.to_vec(), "kept after an invalid file");
    // The new pair is served from the next handshake on.
    std::fs::copy(fixture("test_tls_cert_2.pem"), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(fixture("test_tls_key_2.pem"), dir.path().join("key.pem")).unwrap();
    s.running.reload(&config);
    let (_, _, served) = handshake(&s, &[b"http/1.1"]).await;
    assert_eq!(served, second.to_vec(), "replaced on reload");
}
