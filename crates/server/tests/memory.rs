//! Memory stays bounded when small requests ask for huge answers (reliability catalogue case
//! 36; issue 8 item A6): eight concurrent `_batch_get` of 200 documents of 250 KB each, read
//! cold from the store, against the real binary. Without the response bounds each request
//! assembled a 50 MB answer (plus its rows and copies): the tester saw RSS grow from 282 MB to
//! 2.2 GB at 1,000 documents. With them, each is refused with `response_too_large` after
//! reading at most `responses.max_bytes` plus one document, and no more than
//! `responses.max_total_bytes` of answers are held at once.

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use hyper::StatusCode;
use serde_json::json;
use support::Http;
use tokio::process::{Child, Command};

const DOCS: usize = 200;
const DOC_BYTES: usize = 250 * 1000;

async fn spawn(config: &std::path::Path, port: u16) -> (Child, Http) {
    let child = Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = Http::new(format!("http://127.0.0.1:{port}"));
    for _ in 0..200 {
        if http
            .try_send(hyper::Method::GET, "/healthz", &[], None)
            .await
            .is_some()
        {
            return (child, http);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start");
}

/// `VmRSS` or `VmHWM` (the peak) of a process, in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_batch_answers_are_refused_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = dir.path().join("dmw.toml");
    std::fs::write(
        &config,
        format!(
            r#"[http]
listen = "127.0.0.1:{port}"
[tcp]
enabled = false
[responses]
max_bytes = 4194304
max_total_bytes = 8388608
[store]
timeout = "20s"
[games.default]
store = "sqlite://{}/store.db"
[games.default.collections.items]
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let (mut server, http) = spawn(&config, port).await;
    let pad = "x".repeat(DOC_BYTES);
    for id in 0..DOCS {
        let r = http
            .put(
                &format!("/api/items/d{id:03}"),
                &format!(r#"{{"value":{{"pad":"{pad}"}}}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    // A fresh process: an empty L1, so every batch below reads its documents from the store.
    server.kill().await.unwrap();
    let (server, http) = spawn(&config, port).await;
    let pid = server.id().unwrap();
    let before = memory(pid, "VmRSS");
    let ids: Vec<String> = (0..DOCS).map(|id| format!("d{id:03}")).collect();
    let all = json!({ "ids": ids }).to_string();
    let batches = (0..8).map(|_| {
        let (http, all) = (http.clone(), all.clone());
        tokio::spawn(async move { http.post("/api/items/_batch_get", &all).await })
    });
    for reply in join_all(batches).await {
        let reply = reply.unwrap();
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::PAYLOAD_TOO_LARGE, "response_too_large".into())
        );
    }
    let grown = memory(pid, "VmHWM").saturating_sub(before);
    println!(
        "peak RSS grew by {} MB for 8 concurrent batches asking for 50 MB each",
        grown / 1_000_000
    );
    assert!(
        grown < 150_000_000,
        "peak RSS grew by {} MB: the answers were not bounded",
        grown / 1_000_000
    );
    // Batches that fit still work, and their documents were not taken for missing.
    let ten = json!({ "ids": &ids[..10] }).to_string();
    let r = http.post("/api/items/_batch_get", &ten).await;
    assert_eq!(r.status, StatusCode::OK);
    let docs = r.json()["docs"].as_array().unwrap().clone();
    assert!(
        docs.iter()
            .all(|d| d["value"]["pad"].as_str().map(str::len) == Some(DOC_BYTES))
    );
    drop(server);
}
