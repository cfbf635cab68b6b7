//! Rate limits through both front ends: a caller over its role's rate gets `rate_limited`
//! (HTTP 429 with `Retry-After`, TCP an ERROR frame on a connection that stays open) and
//! recovers; other callers are not affected; the per-address limit applies before
//! authentication. Bounds are computed from the measured elapsed time, so a slow machine
//! cannot make the tests fail.

mod support;

use std::time::{Duration, Instant};

use datamiddleware::auth::Role;
use datamiddleware_client::{Client, ClientOptions, Credential, ErrorCode};
use futures::future::join_all;
use support::{Backend, Http, TestServer, api_key};

const SERVER_KEY: &str = "dmw_c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a8c1e9c1e3b5d7f9a0";
const RATE: u32 = 5;

async fn server(per_ip: u32) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        let game = c.games.keys().next().unwrap().clone();
        c.auth
            .keys
            .push(api_key("limited", SERVER_KEY, Role::Server, &[&game]));
        c.rate_limits.server = RATE;
        c.rate_limits.per_ip = per_ip;
    })
    .await
    .expect("SQLite is always available")
}

/// Most requests a bucket of `RATE`/s (holding 2 × `RATE`) lets through in `elapsed`.
fn most_allowed(elapsed: Duration) -> usize {
    (2 * RATE) as usize + (elapsed.as_secs_f64() * RATE as f64).ceil() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_refused_then_recovers_over_http() {
    let s = server(0).await;
    let path = s.path("players/p1");
    s.client.put(&path, r#"{"value":{}}"#).await;
    let limited = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    let started = Instant::now();
    let replies = join_all((0..60).map(|_| limited.get(&path))).await;
    let elapsed = started.elapsed();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 60, "only 200 and 429 are expected");
    assert!(
        !refused.is_empty() && ok <= most_allowed(elapsed),
        "{ok} of 60 passed in {elapsed:?} at {RATE}/s"
    );
    assert_eq!(refused[0].code(), "rate_limited");
    assert_eq!(refused[0].header("retry-after"), Some("1"));
    // Another caller (the admin test key, unlimited) is not affected meanwhile.
    assert_eq!(s.client.get(&path).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(limited.get(&path).await.status, 200, "the bucket refilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_refused_then_recovers_over_tcp() {
    let s = server(0).await;
    s.client.put(&s.path("players/p1"), r#"{"value":{}}"#).await;
    let options = ClientOptions {
        credential: Credential::ApiKey(SERVER_KEY.to_string()),
        ..ClientOptions::default()
    };
    let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options);
    client.connect().await.unwrap();
    let started = Instant::now();
    let results = join_all((0..60).map(|_| client.get(&s.game, "players", "p1"))).await;
    let elapsed = started.elapsed();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
        .count();
    assert_eq!(
        ok + refused,
        60,
        "only documents and rate_limited are expected"
    );
    assert!(
        refused > 0 && ok <= most_allowed(elapsed),
        "{ok} of 60 passed in {elapsed:?} at {RATE}/s"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .get(&s.game, "players", "p1")
        .await
        .expect("the same connection works again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_applies_before_authentication() {
    let s = server(RATE).await;
    let anonymous = Http::with_key(format!("http://{}", s.running.addr), None);
    let path = s.path("players/p1");
    let started = Instant::now();
    let replies = join_all((0..60).map(|_| anonymous.get(&path))).await;
    let elapsed = started.elapsed();
    let unauthorized = replies.iter().filter(|r| r.status == 401).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(unauthorized + limited, 60);
    assert!(
        limited > 0 && unauthorized <= most_allowed(elapsed),
        "{unauthorized} of 60 were looked at in {elapsed:?} at {RATE}/s"
    );
    // TCP handshakes from the same address share the bucket.
    let attempts = join_all((0..30).map(|_| {
        let options = ClientOptions {
            credential: Credential::ApiKey(support::TEST_KEY.to_string()),
            max_connect_attempts: 1,
            ..ClientOptions::default()
        };
        let client = Client::new(s.running.tcp_addr.unwrap().to_string(), options);
        async move { client.connect().await }
    }))
    .await;
    let refused = attempts
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
        .count();
    assert!(refused > 0, "no HELLO was refused: {attempts:?}");
}
