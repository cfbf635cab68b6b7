//! Acknowledged means committed (operations.md, "Durability": "`kill -9` at any moment loses no
//! acknowledged write"). The real binary runs a mixed write load — HTTP PUT, HTTP `_incr`,
//! HTTP `_txn` of two documents and TCP PUT — and is killed with SIGKILL at random moments,
//! then restarted on the same store; after every restart each acknowledged write must be there.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use datamiddleware_protocol::{
    Credential, DocRef, Hello, Message, OwnerChange, Precondition, decode,
};
use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Backend, Http, unique_game};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

backend_tests!(kill_9_at_random_moments_loses_no_acknowledged_write);

/// Kills per backend; each comes between `KILL_AFTER_MS` into the load.
const KILLS: usize = 3;
const KILL_AFTER_MS: std::ops::Range<u64> = 200..1500;

/// The real binary, killed on drop unless it has exited.
struct Server {
    child: Child,
    http: Http,
    tcp: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    /// SIGKILL (std's `kill()` on Unix), then reap.
    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

async fn spawn_server(config_path: &std::path::Path) -> Server {
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .arg("--config")
        .arg(config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--tcp-listen")
        .arg(format!("127.0.0.1:{tcp_port}"))
        .env("DMW_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let mut server = Server {
        child,
        http: Http::new(format!("http://127.0.0.1:{http_port}")),
        tcp: format!("127.0.0.1:{tcp_port}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("the binary exited during start: {status}");
        }
        if let Some(reply) = server
            .http
            .try_send(Method::GET, "/healthz", &[], None)
            .await
            && reply.status == StatusCode::OK
            && TcpStream::connect(server.tcp).await.is_ok()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not become healthy in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the clients attempted and what the server acknowledged, over all kills.
#[derive(Default)]
struct Ledger {
    /// HTTP PUT `items/{id}`: the highest acknowledged `n` per id.
    http_docs: HashMap<String, u64>,
    /// TCP PUT `orders/{id}`, acknowledged by DOC: the highest acknowledged `n` per id.
    tcp_docs: HashMap<String, u64>,
    /// `_incr` of `players/counter` by 1: sent and acknowledged.
    incr_attempted: u64,
    incr_acked: u64,
    /// `_txn` putting `players/a-…` and `players/b-…`: every attempted pair (its suffix) and
    /// whether it was acknowledged.
    txns: Vec<(String, bool)>,
}

type Shared = Arc<Mutex<Ledger>>;

/// HTTP PUTs of `items/h{writer}-{k}` and `_incr`s, until the server dies.
async fn http_writer(http: Http, base: String, writer: u64, round: u64, ledger: Shared) {
    for i in 0u64.. {
        // `n` grows across rounds, so "stored n ≥ acknowledged n" holds per id.
        let n = round * 1_000_000 + i;
        let id = format!("h{writer}-{}", i % 20);
        let body = format!(r#"{{"value":{{"writer":{writer},"n":{n}}}}}"#);
        let Some(reply) = http.try_put(&format!("{base}/items/{id}"), &body).await else {
            return;
        };
        if reply.status.is_success() {
            let mut ledger = ledger.lock();
            let acked = ledger.http_docs.entry(id).or_default();
            *acked = (*acked).max(n);
        }
        ledger.lock().incr_attempted += 1;
        let Some(reply) = http
            .try_post(
                &format!("{base}/players/counter/_incr"),
                r#"{"path":"/n","by":1}"#,
            )
            .await
        else {
            return;
        };
        if reply.status.is_success() {
            ledger.lock().incr_acked += 1;
        }
    }
}

/// `_txn`s of two new documents each, until the server dies.
async fn txn_writer(http: Http, base: String, round: u64, ledger: Shared) {
    for i in 0u64.. {
        let pair = format!("{round}-{i}");
        ledger.lock().txns.push((pair.clone(), false));
        let body = json!({"ops": [
            {"op": "put", "collection": "players", "id": format!("a-{pair}"), "value": {"pair": pair}},
            {"op": "put", "collection": "players", "id": format!("b-{pair}"), "value": {"pair": pair}},
        ]})
        .to_string();
        let Some(reply) = http.try_post(&format!("{base}/_txn"), &body).await else {
            return;
        };
        if reply.status.is_success() {
            assert_eq!(reply.json()["results"].as_array().map(Vec::len), Some(2));
            let mut ledger = ledger.lock();
            let last = ledger.txns.last_mut().unwrap();
            assert_eq!(last.0, pair);
            last.1 = true;
        }
    }
}

/// TCP PUTs of `orders/t-{k}`, one at a time, until the connection ends.
async fn tcp_writer(addr: SocketAddr, game: String, round: u64, ledger: Shared) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let mut buf = BytesMut::new();
    let mut frame = BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "durability".into(),
        credential: Credential::ApiKey(support::TEST_KEY.to_string()),
    })
    .encode(1, &mut frame);
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    if !matches!(
        read_frame(&mut stream, &mut buf).await,
        Some(Message::HelloOk(_))
    ) {
        return;
    }
    for i in 0u64.. {
        let n = round * 1_000_000 + i;
        let id = format!("t-{}", i % 20);
        let mut frame = BytesMut::new();
        Message::Put {
            doc: DocRef {
                game: game.clone(),
                collection: "orders".into(),
                id: id.clone(),
            },
            pre: Precondition::None,
            owner: OwnerChange::Keep,
            value: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        }
        .encode(i as u32 + 1, &mut frame);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        match read_frame(&mut stream, &mut buf).await {
            Some(Message::Doc { .. }) => {
                let mut ledger = ledger.lock();
                let acked = ledger.tcp_docs.entry(id).or_default();
                *acked = (*acked).max(n);
            }
            Some(Message::Error { .. }) => {}
            Some(other) => panic!("unexpected answer to a PUT: {other:?}"),
            None => return,
        }
    }
}

/// The next frame, or `None` when the connection ends (or nothing comes within 10 s).
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((_, message)) = decode(buf, u32::MAX).expect("valid frames") {
            if matches!(message, Message::Ping(_) | Message::GoAway { .. }) {
                continue;
            }
            return Some(message);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// `_batch_get` of `ids` (any number) in `collection`: id → document, for those present.
async fn batch_get(
    http: &Http,
    base: &str,
    collection: &str,
    ids: &[String],
) -> HashMap<String, Value> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(1000) {
        let reply = http
            .post(
                &format!("{base}/{collection}/_batch_get"),
                &json!({ "ids": chunk }).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let docs = reply.json()["docs"].as_array().unwrap().clone();
        assert_eq!(docs.len(), chunk.len());
        for (id, doc) in chunk.iter().zip(docs) {
            if !doc.is_null() {
                assert_eq!(doc["id"], id.as_str());
                found.insert(id.clone(), doc);
            }
        }
    }
    found
}

/// Every acknowledged write is in the store, and no write shows half.
async fn check_survivors(server: &Server, base: &str, ledger: &Ledger, backend: Backend) {
    let http = &server.http;
    for (collection, acked) in [("items", &ledger.http_docs), ("orders", &ledger.tcp_docs)] {
        let ids: Vec<String> = acked.keys().cloned().collect();
        let found = batch_get(http, base, collection, &ids).await;
        for (id, n) in acked {
            let doc = found.get(id).unwrap_or_else(|| {
                panic!("{backend:?}: acknowledged {collection}/{id} (n={n}) was lost")
            });
            let stored = doc["value"]["n"].as_u64().unwrap();
            // A later write may have committed without its acknowledgement; never an older one.
            assert!(
                stored >= *n,
                "{backend:?}: {collection}/{id}: acknowledged n={n}, found older n={stored}"
            );
        }
    }

    let counter = http.get(&format!("{base}/players/counter")).await;
    assert_eq!(counter.status, StatusCode::OK, "{:?}", counter.body);
    let n = counter.json()["value"]["n"].as_u64().unwrap();
    assert!(
        n >= ledger.incr_acked,
        "{backend:?}: {} increments acknowledged, only {n} survived",
        ledger.incr_acked
    );
    assert!(
        n <= ledger.incr_attempted,
        "{backend:?}: counter {n} but only {} increments were ever sent",
        ledger.incr_attempted
    );

    let a_ids: Vec<String> = ledger.txns.iter().map(|(p, _)| format!("a-{p}")).collect();
    let b_ids: Vec<String> = ledger.txns.iter().map(|(p, _)| format!("b-{p}")).collect();
    let a = batch_get(http, base, "players", &a_ids).await;
    let b = batch_get(http, base, "players", &b_ids).await;
    for (pair, acked) in &ledger.txns {
        let (has_a, has_b) = (
            a.contains_key(&format!("a-{pair}")),
            b.contains_key(&format!("b-{pair}")),
        );
        assert_eq!(
            has_a, has_b,
            "{backend:?}: transaction {pair} is half applied (a: {has_a}, b: {has_b})"
        );
        if *acked {
            assert!(
                has_a,
                "{backend:?}: acknowledged transaction {pair} was lost"
            );
        }
    }
}

async fn kill_9_at_random_moments_loses_no_acknowledged_write(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = backend.url(&dir) else { return };
    let game = unique_game();
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[games.{game}]\nstore = \"{url}\"\n[games.{game}.collections.players]\n\
             [games.{game}.collections.items]\n[games.{game}.collections.orders]\n"
        ),
    )
    .unwrap();
    let base = format!("/api/v1/{game}");
    let ledger: Shared = Default::default();

    let mut server = spawn_server(&config_path).await;
    let created = server
        .http
        .put(&format!("{base}/players/counter"), r#"{"value":{"n":0}}"#)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    for round in 0..KILLS as u64 {
        let mut writers = Vec::new();
        for writer in 0..2 {
            writers.push(tokio::spawn(http_writer(
                server.http.clone(),
                base.clone(),
                writer,
                round,
                ledger.clone(),
            )));
        }
        writers.push(tokio::spawn(txn_writer(
            server.http.clone(),
            base.clone(),
            round,
            ledger.clone(),
        )));
        writers.push(tokio::spawn(tcp_writer(
            server.tcp,
            game.clone(),
            round,
            ledger.clone(),
        )));
        let after = Duration::from_millis(fastrand::u64(KILL_AFTER_MS));
        tokio::time::sleep(after).await;
        server.kill_9();
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(20), writer)
                .await
                .expect("writers stop once the server is gone")
                .unwrap();
        }
        {
            let ledger = ledger.lock();
            eprintln!(
                "{backend:?}: kill {} after {after:?}: so far {} HTTP docs, {} TCP docs, {}/{} increments, {}/{} transactions acknowledged",
                round + 1,
                ledger.http_docs.len(),
                ledger.tcp_docs.len(),
                ledger.incr_acked,
                ledger.incr_attempted,
                ledger.txns.iter().filter(|(_, acked)| *acked).count(),
                ledger.txns.len(),
            );
        }
        server = spawn_server(&config_path).await;
        let snapshot = std::mem::take(&mut *ledger.lock());
        check_survivors(&server, &base, &snapshot, backend).await;
        *ledger.lock() = snapshot;
    }

    let ledger = ledger.lock();
    let txns_acked = ledger.txns.iter().filter(|(_, acked)| *acked).count();
    assert!(
        ledger.http_docs.len() >= 10
            && ledger.tcp_docs.len() >= 5
            && ledger.incr_acked >= 5
            && txns_acked >= 3,
        "too little load to mean anything: {} HTTP docs, {} TCP docs, {} increments, {txns_acked} transactions",
        ledger.http_docs.len(),
        ledger.tcp_docs.len(),
        ledger.incr_acked,
    );
    server.kill_9();
}
