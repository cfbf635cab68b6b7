//! Data integrity on all three stores: a write whose client vanished leaves no stale cache,
//! numbers keep their digits hot and cold, `_incr` is exact or refused, and multi-document
//! answers stay within `responses.max_bytes` (issue 8, items A1, A4, A5, A6).

mod support;

use std::time::Duration;

use datamiddleware::config::Config;
use datamiddleware_client::Client;
use futures::future::join_all;
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Backend, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

macro_rules! server {
    ($backend:expr) => {
        server!($backend, |_| {})
    };
    ($backend:expr, $tweak:expr) => {
        match TestServer::start_with($backend, $tweak).await {
            Some(server) => server,
            None => return,
        }
    };
}

backend_tests!(
    abandoned_writes_leave_no_stale_cache,
    numbers_keep_their_digits_hot_and_cold,
    counters_are_exact_or_refused,
    batch_and_transaction_answers_are_bounded,
    list_pages_end_early_at_the_byte_limit,
);

/// Waits until no write has committed for a while: abandoned writes run on in their tasks.
async fn writes_settled(s: &TestServer) {
    let commits = || s.running.service.metrics().store.commits.get();
    let mut last = commits();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = commits();
        if now == last {
            return;
        }
        last = now;
    }
    panic!("writes kept committing for 20 s");
}

/// Reliability catalogue case 33: clients send a whole `_incr` and reset the connection a few
/// milliseconds later, many at once. Whatever committed, every key this instance serves from
/// L1 must be the store's version (read by a fresh instance with an empty L1).
async fn abandoned_writes_leave_no_stale_cache(backend: Backend) {
    let s = server!(backend);
    const KEYS: usize = 6;
    for key in 0..KEYS {
        let r = s
            .client
            .put(&s.path(&format!("players/a{key}")), r#"{"value":{"n":0}}"#)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let addr = s.running.addr;
    for round in 0..3 {
        let attempts = (0..60).map(|attempt| {
            let path = s.path(&format!("players/a{}/_incr", attempt % KEYS));
            tokio::spawn(async move {
                let body = r#"{"path":"/n","by":1}"#;
                let request = format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                // Vanish while the write is (probably) being committed: a reset, not a close.
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..4000))).await;
                let _ = stream.set_zero_linger();
                drop(stream);
            })
        });
        join_all(attempts).await;
        writes_settled(&s).await;
        let fresh = s.sibling().await;
        for key in 0..KEYS {
            let path = s.path(&format!("players/a{key}"));
            let served = s.client.get(&path).await;
            let stored = fresh.client.get(&path).await;
            assert_eq!(stored.header("x-cache"), Some("DB"));
            assert_eq!(
                (
                    served.json()["version"].clone(),
                    served.json()["value"].clone()
                ),
                (
                    stored.json()["version"].clone(),
                    stored.json()["value"].clone()
                ),
                "round {round}, key a{key}: this instance serves ({}) what the store no longer holds",
                served.header("x-cache").unwrap_or_default()
            );
        }
    }
}

const NUMBERS: &str = r#"{"big":123456789012345678901234567890,"u64":18446744073709551615,"beyond":18446744073709551616,"neg":-9223372036854775809,"dec":1.50,"tiny":0.1,"zero":-0,"exp":1E16,"huge":1e400,"list":[2.0,-1.25e-7]}"#;
/// What comes back: every digit kept, only the exponents written as e+/e-.
const NUMBERS_BACK: &str = r#"{"big":123456789012345678901234567890,"u64":18446744073709551615,"beyond":18446744073709551616,"neg":-9223372036854775809,"dec":1.50,"tiny":0.1,"zero":-0,"exp":1e+16,"huge":1e+400,"list":[2.0,-1.25e-7]}"#;

/// The `value` member of a document body, as text.
fn value_text(body: &[u8]) -> String {
    let text = std::str::from_utf8(body).unwrap();
    let start = text.find(r#""value":"#).expect("a value member") + r#""value":"#.len();
    text[start..text.len() - 1].to_string()
}

/// Reliability catalogue case 35: numbers that do not fit 64 bits keep their digits, from the
/// write's answer, from L1, from the store (a fresh instance) and over TCP, after a patch of
/// another member too.
async fn numbers_keep_their_digits_hot_and_cold(backend: Backend) {
    let s = server!(backend);
    let path = s.path("players/numbers");
    let r = s
        .client
        .put(&path, &format!(r#"{{"value":{NUMBERS}}}"#))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(value_text(&r.body), NUMBERS_BACK, "the write's answer");
    let hot = s.client.get(&path).await;
    assert_eq!(hot.header("x-cache"), Some("L1"));
    assert_eq!(value_text(&hot.body), NUMBERS_BACK, "from L1");
    let fresh = s.sibling().await;
    let cold = fresh.client.get(&path).await;
    assert_eq!(cold.header("x-cache"), Some("DB"));
    assert_eq!(value_text(&cold.body), NUMBERS_BACK, "from the store");
    let tcp = Client::new(
        s.running.tcp_addr.unwrap().to_string(),
        support::client_options(),
    );
    let doc = tcp.get(&s.game, "players", "numbers").await.unwrap();
    assert_eq!(value_text(&doc.json), NUMBERS_BACK, "over TCP");
    let r = s
        .client
        .send(
            hyper::Method::PATCH,
            &path,
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"more":340282366920938463463374607431768211456}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let patched = value_text(&r.body);
    assert!(
        patched.starts_with(&NUMBERS_BACK[..NUMBERS_BACK.len() - 1])
            && patched.ends_with(r#","more":340282366920938463463374607431768211456}"#),
        "{patched}"
    );
    // In a transaction too.
    let r = s
        .client
        .post(
            &s.path("_txn"),
            r#"{"ops":[{"op":"put","collection":"items","id":"n","value":{"id128":170141183460469231731687303715884105727}}]}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let item = fresh.client.get(&s.path("items/n")).await;
    assert_eq!(
        value_text(&item.body),
        r#"{"id128":170141183460469231731687303715884105727}"#
    );
}

fn float_items(config: &mut Config) {
    for game in config.games.values_mut() {
        if let Some(items) = game.collections.get_mut("items") {
            items.float_counters = true;
        }
    }
}

/// Reliability catalogue case 35: `1e16 + 1` was acknowledged with the value unchanged, and
/// `10 + 0.1 + 0.2` silently lost precision. Integer counters are exact or refused; a
/// collection that opts into floating-point counters gets IEEE arithmetic, documented as such.
async fn counters_are_exact_or_refused(backend: Backend) {
    let s = server!(backend, float_items);
    let c = &s.client;
    let players = s.path("players/counter");
    c.put(
        &players,
        r#"{"value":{"e":1e16,"f":10.5,"n":9007199254740993}}"#,
    )
    .await;
    for (body, status, code) in [
        (r#"{"path":"/e","by":1}"#, 409, "not_a_number"),
        (r#"{"path":"/f","by":1}"#, 409, "not_a_number"),
        (r#"{"path":"/n","by":0.5}"#, 400, "bad_request"),
        (r#"{"path":"/n","by":1e2}"#, 400, "bad_request"),
        (r#"{"path":"/n","by":1,"max":1e30}"#, 400, "bad_request"),
        (
            r#"{"path":"/n","by":9223372036854775807}"#,
            409,
            "bound_violation",
        ),
    ] {
        let r = c.post(&format!("{players}/_incr"), body).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code.into()),
            "{body}"
        );
    }
    let r = c
        .post(&format!("{players}/_incr"), r#"{"path":"/n","by":2}"#)
        .await;
    assert_eq!(
        value_text(&r.body),
        r#"{"e":1e+16,"f":10.5,"n":9007199254740995}"#
    );
    assert_eq!(
        r.json()["version"],
        2,
        "only the exact increment was applied"
    );

    let items = s.path("items/counter");
    c.put(&items, r#"{"value":{"f":10}}"#).await;
    for by in ["0.1", "0.2"] {
        let r = c
            .post(
                &format!("{items}/_incr"),
                &format!(r#"{{"path":"/f","by":{by}}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let fresh = s.sibling_with(float_items).await;
    assert_eq!(
        value_text(&fresh.client.get(&items).await.body),
        r#"{"f":10.299999999999999}"#,
        "float_counters adds in IEEE double precision, as documented"
    );
}

/// 30 documents of ~3.5 KB (105 KB) against `responses.max_bytes` = 64 KiB.
fn small_answers(config: &mut Config) {
    config.responses.max_bytes = 64 * 1024;
    config.responses.max_total_bytes = 256 * 1024;
}

async fn fill_items(s: &TestServer, count: usize) -> Vec<String> {
    let pad = "p".repeat(3500);
    let ids: Vec<String> = (0..count).map(|i| format!("i{i:03}")).collect();
    for id in &ids {
        let r = s
            .client
            .put(
                &s.path(&format!("items/{id}")),
                &format!(r#"{{"value":{{"pad":"{pad}"}}}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    ids
}

async fn budget_released(s: &TestServer) {
    for _ in 0..100 {
        if s.running.service.response_budget().reserved_bytes() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} bytes of the response budget are still held",
        s.running.service.response_budget().reserved_bytes()
    );
}

/// Reliability catalogue case 36: a small request that asks for a huge answer is refused
/// before the answer is assembled, from L1 and from the store alike, and nothing of it is
/// cached or written.
async fn batch_and_transaction_answers_are_bounded(backend: Backend) {
    let s = server!(backend, small_answers);
    let ids = fill_items(&s, 30).await;
    let all = json!({ "ids": ids }).to_string();
    // From L1 (every id was just written, so cached).
    let r = s.client.post(&s.path("items/_batch_get"), &all).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "response_too_large".into())
    );
    // From the store: a fresh instance reads the misses with a byte cap.
    let cold = s.sibling_with(small_answers).await;
    let r = cold.client.post(&s.path("items/_batch_get"), &all).await;
    assert_eq!(r.code(), "response_too_large");
    // The ids the capped read left out were not taken for missing.
    for id in &ids {
        let r = cold.client.get(&s.path(&format!("items/{id}"))).await;
        assert_eq!(r.status, StatusCode::OK, "{id}");
    }
    let ten = json!({ "ids": &ids[..10] }).to_string();
    let r = cold.client.post(&s.path("items/_batch_get"), &ten).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["docs"].as_array().map(Vec::len), Some(10));
    // A transaction whose results would be too large is refused before anything is written:
    // twenty small patches of ~3.5 KB documents answer with the twenty whole documents.
    let ops: Vec<Value> = ids[..20]
        .iter()
        .map(|id| json!({"op": "patch", "collection": "items", "id": id, "patch": {"seen": true}}))
        .collect();
    let r = s
        .client
        .post(&s.path("_txn"), &json!({ "ops": ops }).to_string())
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "response_too_large".into())
    );
    let first = cold.client.get(&s.path("items/i000")).await.json();
    assert_eq!(
        (first["version"].clone(), first["value"]["seen"].clone()),
        (json!(1), Value::Null)
    );
    let r = s
        .client
        .post(&s.path("_txn"), &json!({ "ops": &ops[..5] }).to_string())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["results"][4]["doc"]["value"]["seen"], true);
    budget_released(&s).await;
    budget_released(&cold).await;
}

/// A list page ends early at the byte limit with a cursor; following the cursors yields every
/// document once, in order.
async fn list_pages_end_early_at_the_byte_limit(backend: Backend) {
    let s = server!(backend, small_answers);
    let ids = fill_items(&s, 40).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("items?limit=1000&cursor={cursor}"),
            None => "items?limit=1000".to_string(),
        };
        let r = s.client.get(&s.path(&query)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.body.len() <= 64 * 1024 + 100,
            "page of {} bytes",
            r.body.len()
        );
        let page = r.json();
        let docs = page["docs"].as_array().unwrap().clone();
        assert!(!docs.is_empty(), "a page always makes progress");
        seen.extend(docs.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every document once, in id order");
    assert!(
        pages >= 3,
        "105 KB cannot fit pages of 64 KiB in fewer: {pages}"
    );
    // Over TCP the page is cut the same way.
    let tcp = Client::new(
        s.running.tcp_addr.unwrap().to_string(),
        support::client_options(),
    );
    let page = tcp.list(&s.game, "items", None, None, 1000).await.unwrap();
    assert!(page.next_cursor.is_some());
    assert!(page.docs.len() < 40);
    budget_released(&s).await;
}
