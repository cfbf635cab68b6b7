//! Acknowledged means committed: the real binary is killed with SIGKILL under write load, then
//! restarted on the same store; every acknowledged write must be there.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use parking_lot::Mutex;
use support::{Backend, Http, unique_game};

backend_tests!(kill_9_under_write_load_loses_no_acknowledged_write);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    http: Http,
}

async fn spawn_server(config_path: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .arg("--config")
        .arg(config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("DMW_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let http = Http::new(format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && http.get("/healthz").await.status == StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, http }
}

async fn kill_9_under_write_load_loses_no_acknowledged_write(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = backend.url(&dir) else { return };
    let game = unique_game();
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[tcp]\nlisten = \"127.0.0.1:0\"\n[games.{game}]\nstore = \"{url}\"\n[games.{game}.collections.players]\n[games.{game}.collections.items]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = spawn_server(&config_path, port).await;
    let base = format!("/api/v1/{game}");
    assert_eq!(
        server
            .http
            .put(&format!("{base}/players/counter"), r#"{"value":{"n":0}}"#)
            .await
            .status,
        StatusCode::CREATED
    );

    // Writers: new documents (create), replacements (update) and increments, recording each
    // acknowledgement. They run until the server dies.
    let acked_docs: Arc<Mutex<HashMap<String, u64>>> = Default::default();
    let acked_incrs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..6 {
        let http = server.http.clone();
        let base = base.clone();
        let acked_docs = acked_docs.clone();
        let acked_incrs = acked_incrs.clone();
        writers.push(tokio::spawn(async move {
            for n in 0u64.. {
                let id = format!("w{writer}-{}", n % 40);
                let body = format!(r#"{{"value":{{"writer":{writer},"n":{n}}}}}"#);
                let Ok(reply) = tokio::time::timeout(
                    Duration::from_secs(5),
                    http.try_put(&format!("{base}/items/{id}"), &body),
                )
                .await
                else {
                    break;
                };
                let Some(reply) = reply else { break };
                if reply.status.is_success() {
                    acked_docs.lock().insert(id, n);
                }
                let incr = http
                    .try_post(
                        &format!("{base}/players/counter/_incr"),
                        r#"{"path":"/n","by":1}"#,
                    )
                    .await;
                match incr {
                    Some(r) if r.status.is_success() => {
                        acked_incrs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked_docs = acked_docs.lock().clone();
    let acked_incrs = acked_incrs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        acked_docs.len() >= 12 && acked_incrs >= 6,
        "too little load to mean anything: {} docs, {acked_incrs} incrs",
        acked_docs.len()
    );

    eprintln!(
        "{backend:?}: killed with {} documents and {acked_incrs} increments acknowledged",
        acked_docs.len()
    );
    let mut server = spawn_server(&config_path, port).await;
    for (id, n) in &acked_docs {
        let reply = server.http.get(&format!("{base}/items/{id}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "acknowledged document {id} lost"
        );
        let stored = reply.json()["value"]["n"].as_u64().unwrap();
        // A later write may have committed without its acknowledgement arriving; never an older one.
        assert!(
            stored >= *n,
            "{id}: acknowledged n={n}, found older n={stored}"
        );
    }
    let counter = server
        .http
        .get(&format!("{base}/players/counter"))
        .await
        .json();
    let n = counter["value"]["n"].as_u64().unwrap();
    assert!(
        n >= acked_incrs,
        "{acked_incrs} increments acknowledged, only {n} survived"
    );
    assert!(
        n <= acked_incrs + 6,
        "at most one unacknowledged increment per writer may have committed"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
