//! Logs of the real binary: JSON lines into a rotated file, the sampled access log, and the
//! request id (the client's `X-Request-Id`, or a generated one) echoed on every answer and
//! written on the request's access line.

mod support;

use std::process::Command;
use std::time::Duration;

use hyper::Method;
use support::Http;

fn datamiddleware() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
}

/// Every JSON line of the log files in `dir` whose name starts with `prefix`.
fn json_lines(dir: &std::path::Path, prefix: &str) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for line in text.lines() {
            let value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            lines.push(value);
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_carry_the_request_id_that_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = datamiddleware()
        .current_dir(dir.path())
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--tcp-listen", &format!("127.0.0.1:{tcp_port}")])
        .env_remove("RUST_LOG")
        .env("DMW_LOG__FORMAT", "json")
        .env("DMW_LOG__FILE", dir.path().join("logs/dmw.log"))
        .env("DMW_LOG__ACCESS_SAMPLE", "1")
        .stdout(stderr.try_clone().unwrap())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let http = Http::new(format!("http://127.0.0.1:{http_port}"));
    support::wait_until_serving(&http).await;
    let path = "/api/v1/default/players/log-test-1";
    let given = http
        .send(Method::GET, path, &[("x-request-id", "client-id-42")], None)
        .await;
    assert_eq!(given.status, 404);
    assert_eq!(given.header("x-request-id"), Some("client-id-42"));
    let generated = http.send(Method::GET, path, &[], None).await;
    let generated_id = generated
        .header("x-request-id")
        .expect("a generated id is echoed")
        .to_string();
    assert_eq!(generated_id.len(), 16, "{generated_id}");
    // An id that could forge log fields is replaced, not echoed.
    let forged = http
        .send(Method::GET, path, &[("x-request-id", "a status=200")], None)
        .await;
    let forged_id = forged.header("x-request-id").unwrap().to_string();
    assert_ne!(forged_id, "a status=200");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    while child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rotated daily: the file is named after the day it was opened on.
    let lines = json_lines(&dir.path().join("logs"), "dmw.log.");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "datamiddleware listening"),
        "the start line is in the file: {lines:?}"
    );
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "datamiddleware::access" && l["fields"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {lines:?}"))
    };
    let line = access("client-id-42");
    assert_eq!(line["fields"]["status"], 404);
    assert_eq!(line["fields"]["method"], "GET");
    assert_eq!(line["fields"]["path"], path);
    assert_eq!(
        line["fields"]["endpoint"],
        "/api/v1/{game}/{collection}/{id}"
    );
    assert_eq!(line["fields"]["peer"], "127.0.0.1");
    access(&generated_id);
    access(&forged_id);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(
        !stderr.contains("datamiddleware listening"),
        "with log.file set nothing goes to stderr: {stderr}"
    );
}
