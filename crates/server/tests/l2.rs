//! The Redis tier (L2) against a real Redis, standalone and Cluster: what reads and writes put
//! there, single flight over it, the multi-key batch read, the version compare on the server,
//! and the write marker that keeps a writer dying after its commit from leaving an older version
//! parked in L2. Every instance here shares one PostgreSQL store, as a deployment does.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use datamiddleware::auth::Caller;
use datamiddleware::config::Config;
use support::{Backend, Redis, TestServer, unique_prefix};

/// Two instances on one store and one Redis (`a` and `b`), or `None` to skip.
async fn pair(redis: Redis) -> Option<(TestServer, TestServer, String)> {
    let prefix = unique_prefix();
    redis.urls()?;
    let l2 = |config: &mut Config| {
        redis.configure(config, &prefix);
    };
    let a = TestServer::start_with(Backend::Postgres, l2).await?;
    let b = a.sibling_with(l2).await;
    Some((a, b, prefix))
}

async fn another(redis: Redis, of: &TestServer, prefix: &str) -> TestServer {
    of.sibling_with(|config| {
        redis.configure(config, prefix);
    })
    .await
}

/// Waits until `check` holds (background fills land a little after the answer).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 2 s");
}

async fn a_write_reaches_l2_and_another_instance_reads_it_there(redis: Redis) {
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    let put = a
        .client
        .put(&a.path("players/p1"), r#"{"value":{"gold":1}}"#)
        .await;
    assert_eq!(put.status, 201);
    let read = b.client.get(&b.path("players/p1")).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("x-cache"),
        Some("L2"),
        "the write put the document in L2"
    );
    assert_eq!(read.json()["value"]["gold"], 1);
    assert_eq!(b.store_reads(), 0, "an L2 hit does not read the store");
    let again = b.client.get(&b.path("players/p1")).await;
    assert_eq!(again.header("x-cache"), Some("L1"), "an L2 hit fills L1");
}

async fn a_store_read_fills_l2_for_the_other_instances(redis: Redis) {
    let Some((a, b, prefix)) = pair(redis).await else {
        return;
    };
    // A document written by an instance without L2 is in the store only.
    let plain = a.sibling().await;
    assert_eq!(
        plain
            .client
            .put(&plain.path("players/p2"), r#"{"value":{"gold":2}}"#)
            .await
            .status,
        201
    );
    let cold = b.client.get(&b.path("players/p2")).await;
    assert_eq!(cold.header("x-cache"), Some("DB"));
    eventually("the fill of L2", async || {
        b.l2_counter(|c| c.fills.load(Ordering::SeqCst)) == 1
    })
    .await;
    let c = another(redis, &a, &prefix).await;
    let client = datamiddleware_client::Client::new(
        c.running.tcp_addr.unwrap().to_string(),
        support::client_options(),
    );
    let doc = client.get(&c.game, "players", "p2").await.unwrap();
    assert_eq!(
        doc.tier,
        datamiddleware_client::Tier::L2,
        "TCP reports tier 2"
    );
    assert_eq!(doc.version, 1);
    assert_eq!(c.store_reads(), 0);
    // A missing id is remembered in L2 too.
    assert_eq!(b.client.get(&b.path("players/none")).await.status, 404);
    eventually("the fill of the missing id", async || {
        b.l2_counter(|c| c.fills.load(Ordering::SeqCst)) == 2
    })
    .await;
    let missing = a.client.get(&a.path("players/none")).await;
    assert_eq!(
        (missing.status.as_u16(), missing.header("x-cache")),
        (404, None)
    );
    assert_eq!(a.store_reads(), 0, "the missing id came from L2");
}

async fn concurrent_cold_reads_share_one_l2_lookup_and_one_store_read(redis: Redis) {
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    let plain = a.sibling().await;
    plain
        .client
        .put(&plain.path("players/hot"), r#"{"value":{"n":1}}"#)
        .await;
    let service = b.running.service.clone();
    let game = b.game.clone();
    let reads = (0..1000).map(|_| {
        let (service, game) = (service.clone(), game.clone());
        tokio::spawn(async move {
            service
                .get(&Caller::trusted(), &game, "players", "hot")
                .await
        })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().unwrap().version, 1);
    }
    let cache = b.running.service.cache();
    let bus = cache.bus().unwrap().counters();
    assert_eq!(
        b.l2_lookups(),
        1,
        "one Redis read for 1,000 concurrent misses (L2 failures {}, bus: distrusted {}, gaps {})",
        b.l2_counter(|c| c.failures.load(Ordering::SeqCst)),
        bus.distrusted.load(Ordering::SeqCst),
        bus.gaps.load(Ordering::SeqCst),
    );
    assert_eq!(b.store_reads(), 1, "and one store read");
}

async fn a_batch_reads_l2_in_one_call(redis: Redis) {
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    let ids: Vec<String> = (0..50).map(|i| format!("i{i}")).collect();
    for id in &ids {
        let put = a
            .client
            .put(&a.path(&format!("items/{id}")), r#"{"value":{"k":1}}"#)
            .await;
        assert_eq!(put.status, 201);
    }
    let body = serde_json::json!({ "ids": ids }).to_string();
    let batch = b.client.post(&b.path("items/_batch_get"), &body).await;
    assert_eq!(batch.status, 200);
    assert_eq!(batch.header("x-cache"), Some("L2"));
    assert_eq!(batch.json()["docs"].as_array().unwrap().len(), 50);
    assert_eq!(b.l2_lookups(), 1, "one multi-key call for 50 ids");
    assert_eq!(b.store_reads(), 0);
    // One id L2 does not know goes to the store; the others still come from L2.
    let c_ids = [ids[0].clone(), "unknown".to_string(), ids[1].clone()];
    let body = serde_json::json!({ "ids": c_ids }).to_string();
    let mixed = b.client.post(&b.path("items/_batch_get"), &body).await;
    assert_eq!(mixed.header("x-cache"), Some("DB"));
    assert_eq!(b.store_reads(), 1);
    let docs = mixed.json()["docs"].clone();
    assert!(docs[1].is_null() && docs[0]["id"] == "i0" && docs[2]["id"] == "i1");
}

/// The explicit race: a store read of version 1 is slow to fill L2 and lands after the write
/// of version 2 reached L2. Redis compares versions and keeps 2.
async fn a_slow_fill_of_an_older_version_loses_to_the_newer_write(redis: Redis) {
    let Some((a, b, prefix)) = pair(redis).await else {
        return;
    };
    let plain = a.sibling().await;
    plain
        .client
        .put(&plain.path("players/race"), r#"{"value":{"v":1}}"#)
        .await;
    b.running
        .service
        .cache()
        .faults()
        .fill_delay_ms
        .store(300, Ordering::SeqCst);
    let old = b.client.get(&b.path("players/race")).await;
    assert_eq!(
        (old.header("x-cache"), old.json()["version"].as_u64()),
        (Some("DB"), Some(1))
    );
    let newer = a
        .client
        .put(&a.path("players/race"), r#"{"value":{"v":2}}"#)
        .await;
    assert_eq!(newer.json()["version"], 2);
    eventually("the slow fill to be refused", async || {
        b.l2_counter(|c| c.fills_refused.load(Ordering::SeqCst)) == 1
    })
    .await;
    let c = another(redis, &a, &prefix).await;
    let read = c.client.get(&c.path("players/race")).await;
    assert_eq!(read.header("x-cache"), Some("L2"));
    assert_eq!(
        read.json()["version"],
        2,
        "the older fill did not replace version 2"
    );
}

/// The hard case: the writer dies after its COMMIT and before L2 hears of it, while a reader
/// that fetched the old row from the store is about to fill L2. The writer's marker, taken
/// before the commit, makes that fill fail, so no instance is served the old version.
async fn a_writer_dying_after_its_commit_leaves_no_older_version_in_l2(redis: Redis) {
    let Some((a, b, prefix)) = pair(redis).await else {
        return;
    };
    let plain = a.sibling().await;
    plain
        .client
        .put(&plain.path("players/crash"), r#"{"value":{"v":1}}"#)
        .await;
    b.running
        .service
        .cache()
        .faults()
        .fill_delay_ms
        .store(300, Ordering::SeqCst);
    let old = b.client.get(&b.path("players/crash")).await;
    assert_eq!(old.json()["version"], 1);
    a.running
        .service
        .cache()
        .faults()
        .abort_after_commit
        .store(true, Ordering::SeqCst);
    let dying = a
        .client
        .put(&a.path("players/crash"), r#"{"value":{"v":2}}"#)
        .await;
    assert_eq!(dying.status, 500, "the writer 'died' after its commit");
    eventually("the reader's fill to be refused", async || {
        b.l2_counter(|c| c.fills_refused.load(Ordering::SeqCst)) == 1
    })
    .await;
    let c = another(redis, &a, &prefix).await;
    let read = c.client.get(&c.path("players/crash")).await;
    assert_eq!(
        read.json()["version"],
        2,
        "the committed version, not the parked old one"
    );
    assert_eq!(
        read.header("x-cache"),
        Some("DB"),
        "L2 holds nothing for the key"
    );
}

/// Redis down from the start: every request is answered from the store, none fails.
async fn without_redis_requests_still_succeed(_redis: Redis) {
    let port = support::free_port();
    let Some(s) = TestServer::start_with(Backend::Postgres, |config| {
        config.cache.l2_url = Some(format!("redis://127.0.0.1:{port}/0"));
        config.cache.l2_prefix = unique_prefix();
    })
    .await
    else {
        return;
    };
    for round in 0..20 {
        let put = s
            .client
            .put(
                &s.path(&format!("players/d{round}")),
                r#"{"value":{"x":1}}"#,
            )
            .await;
        assert!(put.status.is_success(), "{}", put.status);
        let get = s.client.get(&s.path(&format!("players/d{round}"))).await;
        assert_eq!(get.status, 200);
    }
    let cache = s.running.service.cache();
    assert!(
        cache.l2().unwrap().breaker().is_open(),
        "the breaker stopped calling Redis"
    );
}

/// An instance on `redis` whose collections are not kept in L1 (`l1_ttl = 0`).
async fn without_l1(redis: Redis) -> Option<TestServer> {
    let prefix = unique_prefix();
    TestServer::start_with(Backend::Postgres, |config| {
        redis.configure(config, &prefix);
        support::without_l1(config);
    })
    .await
}

/// `l1_ttl = 0`: the collection is not kept in L1, so every read is answered by L2.
async fn without_l1_every_read_is_answered_by_l2(redis: Redis) {
    let Some(s) = without_l1(redis).await else {
        return;
    };
    s.client
        .put(&s.path("players/n"), r#"{"value":{"a":1}}"#)
        .await;
    for _ in 0..3 {
        let read = s.client.get(&s.path("players/n")).await;
        assert_eq!(read.header("x-cache"), Some("L2"));
    }
    assert!(s.running.service.cache().l1().is_empty());
    assert_eq!(s.l2_lookups(), 3);
}

redis_tests!(
    tcp_reads_of_l2_hits_store_reads_and_errors_at_once,
    tcp_gets_sent_at_once_make_one_l2_lookup,
    reads_alone_close_an_open_breaker,
    overlapping_writes_leave_no_value_until_the_last_ends,
    without_l1_every_read_is_answered_by_l2,
    a_write_reaches_l2_and_another_instance_reads_it_there,
    a_store_read_fills_l2_for_the_other_instances,
    concurrent_cold_reads_share_one_l2_lookup_and_one_store_read,
    tcp_cold_reads_of_one_document_share_one_store_read,
    a_repair_set_that_overflowed_is_never_caught_up,
    a_batch_reads_l2_in_one_call,
    a_slow_fill_of_an_older_version_loses_to_the_newer_write,
    a_writer_dying_after_its_commit_leaves_no_older_version_in_l2,
    without_redis_requests_still_succeed,
);

/// TCP GETs that L1 cannot answer are handed to L2 together (one lookup for what one read from
/// the socket held): every one still gets its own answer, with its own tier or error, whether
/// L2 had the document, the store had to be read, or the request was bad.
async fn tcp_reads_of_l2_hits_store_reads_and_errors_at_once(redis: Redis) {
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    for i in 0..20 {
        let body = format!(r#"{{"value":{{"i":{i}}}}}"#);
        assert_eq!(
            a.client
                .put(&a.path(&format!("players/l2-{i}")), &body)
                .await
                .status,
            201
        );
    }
    // Written without L2: in the store only.
    let plain = a.sibling().await;
    for i in 0..5 {
        let body = format!(r#"{{"value":{{"s":{i}}}}}"#);
        let path = plain.path(&format!("players/db-{i}"));
        assert_eq!(plain.client.put(&path, &body).await.status, 201);
    }
    let client = datamiddleware_client::Client::new(
        b.running.tcp_addr.unwrap().to_string(),
        support::client_options(),
    );
    let game = b.game.clone();
    let ids: Vec<String> = (0..20)
        .map(|i| format!("l2-{i}"))
        .chain((0..5).map(|i| format!("db-{i}")))
        .chain((0..5).map(|i| format!("none-{i}")))
        .collect();
    let reads = ids.iter().map(|id| client.get(&game, "players", id));
    let bad_collection = client.get(&game, "no_such_collection", "x");
    let bad_id = client.get(&game, "players", "");
    let (reads, bad_collection, bad_id) =
        tokio::join!(futures::future::join_all(reads), bad_collection, bad_id);
    for (id, read) in ids.iter().zip(reads) {
        match id.split('-').next() {
            Some("l2") => {
                let doc = read.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(
                    (doc.tier, doc.version),
                    (datamiddleware_client::Tier::L2, 1),
                    "{id}"
                );
                let i: u32 = id[3..].parse().unwrap();
                assert_eq!(doc.parse().unwrap()["value"]["i"], i, "{id}");
            }
            Some("db") => {
                let doc = read.unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(doc.tier, datamiddleware_client::Tier::Db, "{id}");
                let i: u32 = id[3..].parse().unwrap();
                assert_eq!(doc.parse().unwrap()["value"]["s"], i, "{id}");
            }
            _ => assert_eq!(
                read.unwrap_err().code(),
                Some(datamiddleware_client::ErrorCode::NotFound),
                "{id}"
            ),
        }
    }
    assert_eq!(
        bad_collection.unwrap_err().code(),
        Some(datamiddleware_client::ErrorCode::UnknownCollection)
    );
    assert_eq!(
        bad_id.unwrap_err().code(),
        Some(datamiddleware_client::ErrorCode::InvalidId)
    );
    assert_eq!(
        b.store_reads(),
        10,
        "the store was read for db-* and none-* only"
    );
    // What L2 answered is now in L1 (under the ticket taken before the lookup).
    let again = client.get(&game, "players", "l2-3").await.unwrap();
    assert_eq!(again.tier, datamiddleware_client::Tier::L1);
}

/// README: "over TCP, the L1 misses of what one connection sent at once go to Redis together in
/// one `MGET`". Twenty GETs in one write (raw frames, so nothing splits them) make one lookup.
async fn tcp_gets_sent_at_once_make_one_l2_lookup(redis: Redis) {
    use bytes::BytesMut;
    use datamiddleware_protocol::{DocRef, Message, Tier};
    use tokio::io::AsyncWriteExt;
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    for i in 0..20 {
        let path = a.path(&format!("players/once-{i}"));
        assert_eq!(a.client.put(&path, r#"{"value":{}}"#).await.status, 201);
    }
    let (mut stream, mut input) = tcp_ready(&b).await;
    let before = b.l2_lookups();
    let mut frames = BytesMut::new();
    for i in 0..20u32 {
        let doc = DocRef {
            game: b.game.clone(),
            collection: "players".into(),
            id: format!("once-{i}"),
        };
        Message::Get(doc).encode(i + 2, &mut frames);
    }
    stream.write_all(&frames).await.unwrap();
    let mut answered = Vec::new();
    for _ in 0..20 {
        let (header, message) = next_frame(&mut stream, &mut input).await;
        match message {
            Message::Doc { tier, version, .. } => {
                assert_eq!(
                    (tier, version),
                    (Tier::L2, 1),
                    "request {}",
                    header.request_id
                )
            }
            other => panic!("request {}: {other:?}", header.request_id),
        }
        answered.push(header.request_id);
    }
    answered.sort();
    assert_eq!(answered, (2..22).collect::<Vec<u32>>());
    assert_eq!(b.l2_lookups() - before, 1, "one lookup for the twenty GETs");
}

/// A TCP connection to `s` past its handshake, and the buffer of what was read past HELLO_OK.
async fn tcp_ready(s: &TestServer) -> (tokio::net::TcpStream, bytes::BytesMut) {
    use datamiddleware_protocol::{Credential, Hello, Message};
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(s.running.tcp_addr.unwrap())
        .await
        .unwrap();
    let (mut frames, mut input) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    let hello = Hello {
        version: 1,
        client_name: "l2-test".into(),
        credential: Credential::ApiKey(support::TEST_KEY.to_string()),
    };
    Message::Hello(hello).encode(1, &mut frames);
    stream.write_all(&frames).await.unwrap();
    let (_, ok) = next_frame(&mut stream, &mut input).await;
    assert!(matches!(ok, Message::HelloOk(_)), "{ok:?}");
    (stream, input)
}

/// README: over TCP, "what Redis does not have is read from the store, sharing a store read of
/// that key already in progress". 20 connections send 25 GETs each of one document that is
/// neither in L1 nor in L2, all at once: every GET answers version 1, and the store is read
/// once.
async fn tcp_cold_reads_of_one_document_share_one_store_read(redis: Redis) {
    use datamiddleware_protocol::{DocRef, Message};
    use tokio::io::AsyncWriteExt;
    let Some((a, b, _)) = pair(redis).await else {
        return;
    };
    // Written by an instance without L2, so Redis does not have it.
    let plain = a.sibling().await;
    let path = plain.path("players/shared-cold");
    assert_eq!(plain.client.put(&path, r#"{"value":{}}"#).await.status, 201);
    let mut connections = Vec::new();
    for _ in 0..20 {
        connections.push(tcp_ready(&b).await);
    }
    let mut frames = bytes::BytesMut::new();
    for id in 2..27u32 {
        let doc = DocRef {
            game: b.game.clone(),
            collection: "players".into(),
            id: "shared-cold".into(),
        };
        Message::Get(doc).encode(id, &mut frames);
    }
    let before = b.store_reads();
    let sent = connections
        .iter_mut()
        .map(|(stream, _)| stream.write_all(&frames));
    for sent in futures::future::join_all(sent).await {
        sent.unwrap();
    }
    for (stream, input) in &mut connections {
        for _ in 2..27 {
            let (header, message) = next_frame(stream, input).await;
            match message {
                Message::Doc { version, .. } => assert_eq!(version, 1),
                other => panic!("request {}: {other:?}", header.request_id),
            }
        }
    }
    assert_eq!(b.store_reads() - before, 1, "500 GETs, one store read");
}

/// The next frame from `stream` (`input` keeps what was read past it).
async fn next_frame(
    stream: &mut tokio::net::TcpStream,
    input: &mut bytes::BytesMut,
) -> (
    datamiddleware_protocol::Header,
    datamiddleware_protocol::Message,
) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(frame) = datamiddleware_protocol::decode(input, u32::MAX).unwrap() {
            return frame;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(input)).await;
        assert!(
            matches!(read, Ok(Ok(n)) if n > 0),
            "no frame from the server"
        );
    }
}

/// While the breaker is open, reads are misses without calling Redis, but one batch per probe
/// interval goes through as the probe: reads alone (no write, no health check) find out that
/// Redis answers again and use L2 from then on.
async fn reads_alone_close_an_open_breaker(redis: Redis) {
    let Some(s) = without_l1(redis).await else {
        return;
    };
    let put = s
        .client
        .put(&s.path("players/b"), r#"{"value":{"a":1}}"#)
        .await;
    assert_eq!(put.status, 201);
    let cache = s.running.service.cache();
    // The store reads below fill L2 in the background, and a fill that succeeds closes the
    // breaker too: held back past the deadline, they leave the lookups alone to do it.
    cache.faults().fill_delay_ms.store(10_000, Ordering::SeqCst);
    let breaker = cache.l2().unwrap().breaker();
    for _ in 0..3 {
        breaker.failure("test", &"a failure injected by the test");
    }
    assert!(breaker.is_open());
    let read = s.client.get(&s.path("players/b")).await;
    assert_eq!(read.header("x-cache"), Some("DB"), "an open breaker: no L2");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let read = s.client.get(&s.path("players/b")).await;
        if read.header("x-cache") == Some("L2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads never probed Redis: the breaker stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!breaker.is_open());
}

/// The L2 tier alone (no instance) on `redis`, under a prefix of its own; `None` (skip) when
/// that Redis is not configured.
fn l2_alone(redis: Redis) -> Option<std::sync::Arc<datamiddleware::cache::L2>> {
    let mut config = datamiddleware::config::CacheConfig::default();
    let urls = redis.urls()?;
    match redis {
        Redis::Standalone => config.l2_url = urls.into_iter().next(),
        Redis::Cluster => config.l2_cluster_nodes = urls,
    }
    config.l2_prefix = unique_prefix();
    Some(datamiddleware::cache::L2::connect(&config, Duration::from_secs(5)).unwrap())
}

/// Two overlapping writes of one key (W1 ends while W2 is still in progress): L2 keeps no value
/// until the last one ends, so an instance told of W1's version cannot read it back after W2
/// committed; an *end* of a write that never began takes nothing from the others.
async fn overlapping_writes_leave_no_value_until_the_last_ends(redis: Redis) {
    use datamiddleware::cache::Cached;
    let Some(l2) = l2_alone(redis) else { return };
    let key = "g/players/overlap".to_string();
    let doc = |version| Cached::Doc {
        version,
        body: bytes::Bytes::from(format!("{{\"v\":{version}}}")),
    };
    let ttl = Duration::from_secs(60);
    assert!(l2.begin_write(std::slice::from_ref(&key), 1).await);
    assert!(l2.begin_write(std::slice::from_ref(&key), 2).await);
    assert!(l2.end_write(&key, 1, Some((&doc(6), ttl))).await);
    assert_eq!(
        l2.get(&key).await,
        None,
        "W2 is still in progress: no value"
    );
    // An end of a write that never began (its begin was skipped) changes nothing for W2.
    assert!(l2.end_write(&key, 3, Some((&doc(6), ttl))).await);
    l2.fill(&key, &doc(6), ttl, std::time::Instant::now()).await;
    assert_eq!(l2.get(&key).await, None, "fills stay blocked while W2 runs");
    assert!(l2.end_write(&key, 2, Some((&doc(7), ttl))).await);
    assert_eq!(l2.get(&key).await, Some(doc(7)));
    // And a late end of an older version never replaces it.
    assert!(l2.end_write(&key, 1, Some((&doc(6), ttl))).await);
    assert_eq!(l2.get(&key).await, Some(doc(7)));
}

/// README limits: "an instance that loses Redis while writing keeps up to 100,000 written keys
/// to repair in L2 — beyond that it keeps the other instances bypassing their caches until it
/// restarts". Below the bound a repair with Redis up empties the set; past it the keys are
/// dropped and the instance never says it is caught up again, Redis up or not.
async fn a_repair_set_that_overflowed_is_never_caught_up(redis: Redis) {
    let Some(l2) = l2_alone(redis) else { return };
    l2.needs_repair((0..10).map(|i| format!("g/players/r{i}")));
    assert!(l2.has_pending_repair());
    assert!(l2.repair().await, "Redis answers: ten keys repaired");
    assert!(!l2.has_pending_repair(), "caught up again");
    l2.needs_repair((0..100_000).map(|i| format!("g/players/r{i}")));
    assert!(l2.has_pending_repair(), "keys wait for repair");
    l2.needs_repair(std::iter::once("g/players/one-more".to_string()));
    assert!(l2.repair().await, "nothing is left in the set to repair");
    assert!(
        l2.has_pending_repair(),
        "past the bound the instance is never caught up again"
    );
}
