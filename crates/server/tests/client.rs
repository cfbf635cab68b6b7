//! The Rust client against a real server: multiplexing, request timeouts, reconnect with
//! backoff after the server goes away, and GOAWAY handling.

mod support;

use std::time::Duration;

use datamiddleware_client::{Client, ClientOptions, Error, ErrorCode, Precondition, Tier};
use serde_json::json;
use support::{Backend, TestServer};

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(800),
        max_connect_attempts: 3,
        backoff_initial: Duration::from_millis(20),
        ..support::client_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_multiplexed_connection() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options());
    let doc = client
        .put(
            &s.game,
            "players",
            "p",
            &json!({"gold": 1}),
            Precondition::None,
        )
        .await
        .unwrap();
    assert!(doc.created);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let client = client.clone();
            let game = s.game.clone();
            tokio::spawn(async move {
                if i % 5 == 0 {
                    client
                        .incr(
                            &game,
                            "players",
                            "p",
                            "/gold",
                            1,
                            None,
                            None,
                            Precondition::None,
                        )
                        .await
                        .map(|_| ())
                } else {
                    client.get(&game, "players", "p").await.map(|_| ())
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let doc = client.get(&s.game, "players", "p").await.unwrap();
    assert_eq!(doc.value::<serde_json::Value>().unwrap()["gold"], 101);
    assert_eq!((doc.version, doc.tier), (101, Tier::L1));
    let tcp = &s.running.service.metrics().tcp;
    assert_eq!(
        (tcp.accepted.get(), tcp.open.get()),
        (1, 1),
        "every request went over the one connection ever opened"
    );
    assert!(client.ping().await.unwrap() < Duration::from_secs(1));
    let err = client.get(&s.game, "players", "missing").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_answer_times_out() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options());
    client.connect().await.unwrap();
    let blocker = s.hold_sqlite_write_lock().await; // writes wait for this lock
    let err = client
        .put(&s.game, "players", "slow", &json!({}), Precondition::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    blocker.release().await;
    // The client gave up, but the server kept the write and committed it once the lock was
    // released: a timeout means "unknown", and reading back tells. The connection still works.
    let mut doc = client.get(&s.game, "players", "slow").await;
    for _ in 0..50 {
        if doc.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        doc = client.get(&s.game, "players", "slow").await;
    }
    assert_eq!(doc.unwrap().version, 1, "the timed-out write landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.url(&dir).unwrap();
    let game = support::unique_game();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = || {
        let mut config = support::config(&game, &url);
        config.tcp.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.http.shutdown_grace = Duration::from_secs(2);
        datamiddleware::app::start(config)
    };
    let server = start().await.unwrap();
    let client = Client::new(format!("127.0.0.1:{port}"), options());
    client
        .put(&game, "players", "p", &json!({"n": 1}), Precondition::None)
        .await
        .unwrap();
    server.stop().await.unwrap();
    // Down: the request fails after its connection attempts, with a connect error.
    let err = client.get(&game, "players", "p").await.unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    // Back: the next request reconnects by itself.
    let server = start().await.unwrap();
    let doc = client.get(&game, "players", "p").await.unwrap();
    assert_eq!((doc.version, doc.tier), (1, Tier::Db));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_not_retried() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let wrong_key = ClientOptions {
        credential: datamiddleware_client::Credential::ApiKey("dmw_wrong".into()),
        ..options()
    };
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), wrong_key);
    let started = std::time::Instant::now();
    let err = client.connect().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no backoff loop for a refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_connection_open() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.tcp.heartbeat_interval = Duration::from_millis(200);
        c.tcp.heartbeat_timeout = Some(Duration::from_millis(700));
    })
    .await
    .unwrap();
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options());
    client.connect().await.unwrap();
    assert_eq!(
        client.heartbeat_interval().await.unwrap(),
        Duration::from_millis(200)
    );
    // Idle for several heartbeat timeouts: the client's PINGs (and PONGs) keep it alive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.ping().await.unwrap();
    let tcp = &s.running.service.metrics().tcp;
    assert_eq!(tcp.accepted.get(), 1, "never reconnected");
    assert_eq!(tcp.open.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_two_listeners_share_a_port() {
    let first = datamiddleware::ingress::tcp::bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = first.local_addr().unwrap();
    let second = datamiddleware::ingress::tcp::bind(addr, true);
    assert!(second.is_ok(), "SO_REUSEPORT: {second:?}");
    let without = datamiddleware::ingress::tcp::bind(addr, false);
    assert!(without.is_err(), "without SO_REUSEPORT the port is taken");
}

/// Dropping every handle of a client closes its connection: nothing keeps it (and its tasks)
/// alive behind the application's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_closes_its_connection() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options());
    let copy = client.clone();
    client.ping().await.unwrap();
    let tcp = &s.running.service.metrics().tcp;
    assert_eq!(tcp.open.get(), 1);
    drop(client);
    copy.ping().await.expect("a clone still holds it");
    assert_eq!(tcp.open.get(), 1);
    drop(copy);
    let started = std::time::Instant::now();
    while tcp.open.get() != 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
