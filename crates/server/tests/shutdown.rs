//! Shutdown drains: a request in flight when shutdown starts still completes.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use support::{Backend, TestServer};

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
