//! Warming the caches: at start (the most recently updated documents, the hot keys saved at
//! the last shutdown, readiness "warming" meanwhile) and adaptively (a hot document brings its
//! owner's documents of the related collections), each switchable.

mod support;

use std::time::Duration;

use datamiddleware::config::Config;
use support::{Backend, TestServer};

fn players(config: &mut Config) -> &mut datamiddleware::config::CollectionConfig {
    let game = config.games.values_mut().next().unwrap();
    game.collections.get_mut("players").unwrap()
}

fn in_l1(server: &TestServer, collection: &str, id: &str) -> bool {
    let key = format!("{}/{collection}/{id}", server.game);
    server.running.service.cache().l1().get(&key).is_some()
}

async fn put(server: &TestServer, path: &str, body: &str) {
    let reply = server.client.put(&server.path(path), body).await;
    assert!(
        reply.status.is_success(),
        "{} {:?}",
        reply.status,
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recently_updated_documents_are_warm_at_start() {
    let a = TestServer::start(Backend::Sqlite).await.unwrap();
    for n in 0..20 {
        put(&a, &format!("players/old{n}"), r#"{"value":{}}"#).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 0..10 {
        put(&a, &format!("players/new{n}"), r#"{"value":{}}"#).await;
    }
    let b = a
        .sibling_with(|config| players(config).warm_recent = 10)
        .await;
    let after_start = b.store_reads();
    for n in 0..10 {
        assert!(
            in_l1(&b, "players", &format!("new{n}")),
            "new{n} was warmed"
        );
        let read = b.client.get(&b.path(&format!("players/new{n}"))).await;
        assert_eq!(read.header("x-cache"), Some("L1"));
    }
    assert_eq!(
        b.store_reads(),
        after_start,
        "warm reads need no store read"
    );
    assert!(
        !in_l1(&b, "players", "old0"),
        "only the 10 most recent were loaded"
    );
    // The progress the metrics show: done, 10 of 10.
    let metrics = b.client.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "warmup_active 0",
        "warmup_documents_loaded 10",
        "warmup_documents_total 10",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_saved_at_shutdown_and_warm_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hot_keys");
    let hot_file = file.clone();
    // Players kept out of L1 miss on every read: three reads make one hot.
    let a = TestServer::start_with(Backend::Sqlite, move |config| {
        players(config).l1_ttl = Duration::ZERO;
        config.warmup.hot_keys_file = Some(hot_file);
    })
    .await
    .unwrap();
    put(&a, "players/star", r#"{"value":{}}"#).await;
    put(&a, "players/extra", r#"{"value":{}}"#).await;
    for _ in 0..3 {
        assert_eq!(a.client.get(&a.path("players/star")).await.status, 200);
    }
    a.client.get(&a.path("players/extra")).await;
    let (game, store) = (a.game.clone(), a.store_url.clone());
    let b_config = {
        let mut config = support::config(&game, &store);
        config.warmup.hot_keys_file = Some(file.clone());
        config
    };
    a.running.stop().await.unwrap();
    let saved = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        saved.trim(),
        format!("{game}/players/star"),
        "the one hot key"
    );
    let b = datamiddleware::app::start(b_config).await.unwrap();
    let cache = b.service.cache();
    assert!(
        cache.l1().get(&format!("{game}/players/star")).is_some(),
        "warm at start"
    );
    assert!(cache.l1().get(&format!("{game}/players/extra")).is_none());
}

async fn related_owner_documents(adaptive: bool) -> (bool, bool, bool) {
    let s = TestServer::start_with(Backend::Sqlite, |config| {
        let players = players(config);
        players.l1_ttl = Duration::ZERO;
        players.related = vec!["items".to_string()];
        config.warmup.hot_after_misses = if adaptive { 3 } else { 0 };
    })
    .await
    .unwrap();
    put(&s, "players/p", r#"{"value":{},"owner":"u1"}"#).await;
    put(&s, "items/i1", r#"{"value":{},"owner":"u1"}"#).await;
    put(&s, "items/i2", r#"{"value":{},"owner":"u1"}"#).await;
    put(&s, "items/i3", r#"{"value":{},"owner":"u2"}"#).await;
    // Writes fill L1 too: start from a cold L1 for items.
    s.running.service.cache().l1().clear();
    for _ in 0..3 {
        assert_eq!(s.client.get(&s.path("players/p")).await.status, 200);
    }
    for _ in 0..100 {
        if in_l1(&s, "items", "i1") && in_l1(&s, "items", "i2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (
        in_l1(&s, "items", "i1"),
        in_l1(&s, "items", "i2"),
        in_l1(&s, "items", "i3"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_document_brings_its_owners_related_documents() {
    assert_eq!(
        related_owner_documents(true).await,
        (true, true, false),
        "u1's items are loaded, u2's is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_preloading_can_be_switched_off() {
    assert_eq!(related_owner_documents(false).await, (false, false, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_warming_until_the_warm_up_is_done() {
    let a = TestServer::start(Backend::Sqlite).await.unwrap();
    for n in 0..60 {
        put(&a, &format!("players/w{n}"), r#"{"value":{}}"#).await;
    }
    let b = a
        .sibling_with(|config| {
            players(config).warm_recent = 60;
            config.warmup.accept_while_warming = true;
            config.warmup.rate = 60; // one second of warm-up
            config.warmup.batch = 5;
        })
        .await;
    let early = b.client.get("/healthz").await;
    assert_eq!(early.status, 503);
    let status = early.json();
    assert_eq!(status["status"], "warming");
    // The total is known once the recent ids were listed.
    assert!(status["total"] == 0 || status["total"] == 60, "{status}");
    assert!(status["loaded"].as_u64().unwrap() < 60);
    // Requests are served meanwhile.
    assert_eq!(b.client.get(&b.path("players/w1")).await.status, 200);
    let mut ready = false;
    for _ in 0..300 {
        if b.client.get("/healthz").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "ready once warm");
    assert!(in_l1(&b, "players", "w59"));
}
