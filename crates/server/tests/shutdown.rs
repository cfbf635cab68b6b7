//! Shutdown drains: a request in flight when shutdown starts still completes.

mod support;

/// The test servers' API key, for requests written by hand.
const KEY: &str = support::TEST_KEY;

use std::time::Duration;

use hyper::StatusCode;
use support::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_during_shutdown() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.shutdown_grace = Duration::from_secs(10)
    })
    .await
    .unwrap();
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    let client = s.client.clone();
    let path = s.path("players/late");
    let put = tokio::spawn(async move { client.put(&path, r#"{"value":{"ok":true}}"#).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = s.running.addr;
    let stop = tokio::spawn(s.running.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown started"
    );
    assert!(
        !stop.is_finished(),
        "shutdown waits for the request in flight"
    );
    blocker.release().await;
    let reply = put.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "the in-flight write completed"
    );
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("shutdown finishes")
        .unwrap()
        .unwrap();
}

/// A request still running when the grace period ends does not hold the server up: its
/// connection is closed without an answer (the client then knows the outcome is unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_busy_when_the_grace_period_ends_are_closed() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.shutdown_grace = Duration::from_millis(300)
    })
    .await
    .unwrap();
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    let mut stream = TcpStream::connect(s.running.addr).await.unwrap();
    let body = r#"{"value":{"stuck":true}}"#;
    let request = format!(
        "PUT {} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.path("players/stuck"),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), s.running.stop())
        .await
        .expect("the stop ends soon after the grace period")
        .unwrap();
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    blocker.release().await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection was closed"
    );
    assert!(
        response.is_empty(),
        "no answer was sent: {:?}",
        String::from_utf8_lossy(&response)
    );
}
