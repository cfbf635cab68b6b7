//! Configuration reload (SIGHUP in the binary, `Running::reload` in process): what can change
//! while running is applied — rate limits, collection lifetimes, body and document bounds,
//! TCP limits for new connections — and what takes a restart (listen addresses, games,
//! stores, …) is reported and kept as it runs. Every test first shows the state before the
//! reload, so that a reload that applies nothing fails it.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use datamiddleware::auth::Role;
use datamiddleware::config::Config;
use datamiddleware_client::{Client, ClientOptions, Credential, ErrorCode};
use datamiddleware_protocol::{Hello, HelloOk, Message, decode};
use futures::future::join_all;
use support::{Backend, Http, Reply, TestServer, api_key, assert_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_KEY: &str = "dmw_7a1c3e5f7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a";

backend_tests!(
    a_lowered_rate_limit_is_enforced_and_raising_it_lifts_it,
    a_new_lifetime_applies_to_entries_filled_after_the_reload,
    lowered_body_and_document_bounds_refuse_larger_requests,
    a_change_that_takes_a_restart_is_kept_and_the_rest_applied,
);

/// A server whose game also knows [`SERVER_KEY`], a `server` key (its role is not limited
/// by default).
async fn server(backend: Backend) -> Option<TestServer> {
    TestServer::start_with(backend, |c| {
        let game = c.games.keys().next().unwrap().clone();
        c.auth
            .keys
            .push(api_key("game-server", SERVER_KEY, Role::Server, &[&game]));
    })
    .await
}

/// The configuration in force, changed by `change`, as the binary would load it (valid).
fn changed(s: &TestServer, change: impl FnOnce(&mut Config)) -> Config {
    let mut config = s.running.config();
    change(&mut config);
    config.validate().expect("a valid configuration");
    config
}

/// `GET path` `n` times at once; the statuses.
async fn burst(client: &Http, path: &str, n: usize) -> Vec<Reply> {
    join_all((0..n).map(|_| client.get(path))).await
}

fn key(s: &TestServer, collection: &str, rest: &str) -> String {
    format!("games.{}.collections.{collection}.{rest}", s.game)
}

async fn a_lowered_rate_limit_is_enforced_and_raising_it_lifts_it(backend: Backend) {
    let Some(s) = server(backend).await else {
        return;
    };
    let path = s.path("players/p1");
    s.client.put(&path, r#"{"value":{}}"#).await;
    let http = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    let tcp = Client::new(
        s.running.tcp_addr.unwrap().to_string(),
        ClientOptions {
            credential: Credential::ApiKey(SERVER_KEY.to_string()),
            ..ClientOptions::default()
        },
    );
    tcp.connect().await.unwrap();
    let tcp_burst = || join_all((0..40).map(|_| tcp.get(&s.game, "players", "p1")));

    // Before: the server role is unlimited.
    let replies = burst(&http, &path, 40).await;
    assert!(replies.iter().all(|r| r.status == 200), "unlimited before");
    assert!(tcp_burst().await.iter().all(Result::is_ok));

    let lowered = changed(&s, |c| c.rate_limits.server = 5);
    let report = s.running.reload_report(&lowered);
    assert_eq!(report.applied, ["rate_limits.server"]);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(s.running.authenticator.limits().rates()[2], 5);

    // After: at 5/s (a bucket of 10), most of 40 requests at once are refused — on a
    // connection opened before the reload too.
    let started = Instant::now();
    let replies = burst(&http, &path, 40).await;
    let passed = replies.iter().filter(|r| r.status == 200).count();
    let most = 10 + (started.elapsed().as_secs_f64() * 5.0).ceil() as usize + 1;
    assert!(passed <= most, "{passed} of 40 passed at 5/s");
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .expect("some refused");
    assert_code(refused, 429, "rate_limited", "over the lowered rate");
    let refused = tcp_burst()
        .await
        .into_iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
        .count();
    assert!(refused > 0, "the TCP connection is limited too");
    // Another role is not affected.
    assert_eq!(s.client.get(&path).await.status, 200);

    // Lifted again: every request passes at once (no wait for a refill).
    let lifted = changed(&s, |c| c.rate_limits.server = 0);
    assert_eq!(
        s.running.reload_report(&lifted).applied,
        ["rate_limits.server"]
    );
    let replies = burst(&http, &path, 40).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "unlimited after the reload"
    );
    assert!(tcp_burst().await.iter().all(Result::is_ok));

    // Raised above the load: passes as well (new buckets start full).
    let raised = changed(&s, |c| c.rate_limits.server = 10_000);
    s.running.reload(&raised);
    let replies = burst(&http, &path, 40).await;
    assert!(replies.iter().all(|r| r.status == 200), "under 10,000/s");
}

async fn a_new_lifetime_applies_to_entries_filled_after_the_reload(backend: Backend) {
    let Some(s) = server(backend).await else {
        return;
    };
    let ttls = |collection| {
        let t = s.running.service.ttls(&s.game, collection).unwrap();
        (t.l1, t.l1_missing, t.l2, t.l2_missing)
    };
    let (min, sec) = (Duration::from_secs(60), Duration::from_secs(1));
    assert_eq!(ttls("players"), (10 * min, min, 10 * min, min));
    let cached_before = s.path("players/before");
    s.client.put(&cached_before, r#"{"value":{}}"#).await;
    assert_eq!(
        s.client.get(&cached_before).await.header("x-cache"),
        Some("L1")
    );

    let shorter = changed(&s, |c| {
        let players = c.games.get_mut(&s.game).unwrap();
        let players = players.collections.get_mut("players").unwrap();
        players.l1_ttl = sec;
        players.negative_ttl = 2 * sec;
        players.l2_ttl = 3 * sec;
        players.l2_negative_ttl = 4 * sec;
    });
    let report = s.running.reload_report(&shorter);
    let keys = ["l1_ttl", "l2_ttl", "negative_ttl", "l2_negative_ttl"];
    assert_eq!(report.applied, keys.map(|k| key(&s, "players", k)));
    assert_eq!(ttls("players"), (sec, 2 * sec, 3 * sec, 4 * sec));
    assert_eq!(
        ttls("items"),
        (10 * min, min, 10 * min, min),
        "other collections keep theirs"
    );

    // A document cached after the reload leaves L1 after the new lifetime (1 s, ±10 %); one
    // cached before keeps the lifetime it was cached with.
    let cached_after = s.path("players/after");
    s.client.put(&cached_after, r#"{"value":{}}"#).await;
    assert_eq!(
        s.client.get(&cached_after).await.header("x-cache"),
        Some("L1")
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        s.client.get(&cached_after).await.header("x-cache"),
        Some("DB"),
        "expired by the new lifetime"
    );
    assert_eq!(
        s.client.get(&cached_before).await.header("x-cache"),
        Some("L1"),
        "cached before the reload, with 10 minutes"
    );
}

async fn lowered_body_and_document_bounds_refuse_larger_requests(backend: Backend) {
    let Some(s) = server(backend).await else {
        return;
    };
    let large = format!(r#"{{"value":{{"text":"{}"}}}}"#, "x".repeat(2000));
    let status = |reply: Reply| reply.status.as_u16();
    assert!(status(s.client.put(&s.path("players/a"), &large).await) < 300);
    assert_eq!(
        s.running.service.max_document_bytes(&s.game, "players"),
        Some(4096)
    );

    // The collection's bound: the service refuses the value.
    let smaller_documents = changed(&s, |c| {
        let game = c.games.get_mut(&s.game).unwrap();
        game.collections
            .get_mut("players")
            .unwrap()
            .max_document_bytes = 1000;
    });
    let report = s.running.reload_report(&smaller_documents);
    assert_eq!(report.applied, [key(&s, "players", "max_document_bytes")]);
    let refused = s.client.put(&s.path("players/b"), &large).await;
    assert_code(
        &refused,
        413,
        "payload_too_large",
        "over max_document_bytes",
    );
    let detail = refused.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("allows 1000"), "{detail}");
    assert!(
        status(s.client.put(&s.path("items/b"), &large).await) < 300,
        "another collection keeps its bound"
    );

    // The request body bound (every document bound must fit under it): refused before the
    // body is read, on the connection the client already had.
    let smaller_bodies = changed(&s, |c| {
        c.http.max_body_bytes = 1024;
        for collection in c.games.get_mut(&s.game).unwrap().collections.values_mut() {
            collection.max_document_bytes = 1000;
        }
    });
    let report = s.running.reload_report(&smaller_bodies);
    assert!(
        report.applied.contains(&"http.max_body_bytes".to_string()),
        "{report:?}"
    );
    let refused = s.client.put(&s.path("items/c"), &large).await;
    assert_code(
        &refused,
        413,
        "payload_too_large",
        "over http.max_body_bytes",
    );
    let detail = refused.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("limited to 1024 bytes"), "{detail}");

    // Raised again: accepted.
    let config = s.running.config();
    let restored = changed(&s, |c| {
        c.http.max_body_bytes = 64 * 1024;
        for collection in c.games.get_mut(&s.game).unwrap().collections.values_mut() {
            collection.max_document_bytes = 4096;
        }
    });
    assert_ne!(config.http.max_body_bytes, restored.http.max_body_bytes);
    s.running.reload(&restored);
    assert!(status(s.client.put(&s.path("players/c"), &large).await) < 300);
}

async fn a_change_that_takes_a_restart_is_kept_and_the_rest_applied(backend: Backend) {
    let Some(s) = server(backend).await else {
        return;
    };
    let before = s.running.config();
    let elsewhere: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let (hello_before, _) = hello(&s).await;
    assert_eq!(
        (hello_before.max_in_flight, hello_before.max_frame),
        (128, 1024 * 1024 + 4096)
    );
    let mut new = changed(&s, |c| {
        c.http.listen = elsewhere;
        c.store.max_connections = 3;
        c.cache.l1_max_bytes *= 2;
        c.rate_limits.player = 7;
        c.tcp.max_in_flight = 16;
        c.tcp.max_frame_bytes = 2 * 1024 * 1024;
        c.responses.max_bytes = 8 * 1024 * 1024;
        let game = c.games.get_mut(&s.game).unwrap();
        game.collections
            .insert("quests".to_string(), support::collection());
        game.collections.remove("orders");
    });
    new.games.insert(
        "another".to_string(),
        datamiddleware::config::GameConfig {
            store: s.store_url.clone(),
            collections: [("players".to_string(), support::collection())].into(),
        },
    );
    new.validate().expect("a valid configuration");
    let report = s.running.reload_report(&new);
    let quests = format!("games.{}.collections.quests", s.game);
    let orders = format!("games.{}.collections.orders", s.game);
    for restart in [
        "http.listen",
        "store.max_connections",
        "cache.l1_max_bytes",
        &orders,
        &quests,
        "games.another",
    ] {
        assert!(
            report.needs_restart.iter().any(|k| k == restart),
            "{restart} takes a restart: {report:?}"
        );
    }
    assert_eq!(report.needs_restart.len(), 6, "{report:?}");
    assert_eq!(
        report.applied,
        [
            "tcp.max_in_flight",
            "tcp.max_frame_bytes",
            "rate_limits.player",
            "responses.max_bytes",
        ]
    );

    // Kept: the listener, the games and collections.
    assert_eq!(s.client.get("/livez").await.status, 200);
    assert!(
        std::net::TcpStream::connect(elsewhere).is_err(),
        "nothing listens on the new address"
    );
    assert_code(
        &s.client.get(&s.path("quests/q1")).await,
        404,
        "unknown_collection",
        "a collection added by the reload",
    );
    let orders_path = s.path("orders/o1");
    assert!(
        s.client
            .put(&orders_path, r#"{"value":{}}"#)
            .await
            .status
            .is_success()
    );
    assert_code(
        &s.client.get("/api/v1/another/players/p1").await,
        404,
        "unknown_game",
        "a game added by the reload",
    );
    let config = s.running.config();
    assert_eq!(config.http.listen, before.http.listen);
    assert_eq!(config.store.max_connections, before.store.max_connections);
    assert!(config.games[&s.game].collections.contains_key("orders"));
    assert!(!config.games.contains_key("another"));
    // Applied: the rest.
    assert_eq!(config.rate_limits.player, 7);
    assert_eq!(s.running.authenticator.limits().rates()[4], 7);
    assert_eq!(
        s.running.service.response_budget().max_bytes(),
        8 * 1024 * 1024
    );
    let (hello_after, _) = hello(&s).await;
    assert_eq!(
        (hello_after.max_in_flight, hello_after.max_frame),
        (16, 2 * 1024 * 1024)
    );

    // The same file again: the restart-only keys are reported again, nothing else changes.
    let again = s.running.reload_report(&new);
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.needs_restart, report.needs_restart);
    // The configuration in force: nothing changed at all.
    let same = s.running.reload_report(&s.running.config());
    assert!(
        same.applied.is_empty() && same.needs_restart.is_empty(),
        "{same:?}"
    );
}

/// A reload whose values cannot hold together with those kept until a restart applies
/// nothing: here auth stays on (a restart-only key) while the file removed every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_not_hold_together_applies_nothing() {
    let s = server(Backend::Sqlite).await.unwrap();
    let path = s.path("players/p1");
    let new = changed(&s, |c| {
        c.auth.enabled = false;
        c.auth.keys.clear();
        c.rate_limits.admin = 1;
    });
    let report = s.running.reload_report(&new);
    assert!(report.refused.is_some(), "{report:?}");
    assert!(report.applied.is_empty() && report.needs_restart.is_empty());
    assert_eq!(
        s.running.authenticator.limits().rates()[1],
        0,
        "admin unlimited still"
    );
    let replies = burst(&s.client, &path, 20).await;
    assert!(
        replies.iter().all(|r| r.status == 404),
        "the keys still work and no limit came in"
    );
}

/// A raw TCP protocol handshake: the server's HELLO_OK.
async fn hello(s: &TestServer) -> (HelloOk, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(s.running.tcp_addr.unwrap())
        .await
        .unwrap();
    let mut frame = BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "reload-test".into(),
        credential: datamiddleware_protocol::Credential::ApiKey(support::TEST_KEY.to_string()),
    })
    .encode(1, &mut frame);
    stream.write_all(&frame).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some((_, message)) = decode(&mut buf, u32::MAX).unwrap() {
            let Message::HelloOk(ok) = message else {
                panic!("{message:?}")
            };
            return (ok, stream);
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf));
        assert!(read.await.unwrap().unwrap() > 0, "HELLO_OK");
    }
}
