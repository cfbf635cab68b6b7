//! API keys in the real binary: `key new` makes a key and its configuration entry, SIGHUP
//! replaces the keys of a running server (and keeps them when the new file is invalid), and no
//! key or token presented to it, valid or not, nor the token secret, appears in its log.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use datamiddleware_client::{Client, ClientOptions, Credential, ErrorCode};
use hyper::Method;
use support::Http;

fn datamiddleware() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
}

/// Runs `key new`: the key and the `[[auth.keys]]` entry it printed.
fn new_key(name: &str) -> (String, String) {
    let out = datamiddleware()
        .args([
            "key", "new", "--name", name, "--role", "server", "--games", "default",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("# dmw_"))
        .map(|k| format!("dmw_{k}"))
        .expect("the key is printed");
    let entry = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !entry.contains(&key),
        "the entry holds the digest, not the key"
    );
    (key, entry)
}

/// The HS256 secret of the token key (it must not reach the log either).
const SECRET: &str = "auth-process-test-secret-0123456789abcdef";

fn config(dir: &std::path::Path, entries: &[&str]) -> String {
    format!(
        "[auth]\nenabled = true\n{}\n[[auth.tokens.keys]]\nalgorithm = \"HS256\"\n\
         secret = \"{SECRET}\"\n[games.default]\nstore = \"sqlite://{}/k.db\"\n",
        entries.join("\n"),
        dir.display()
    )
}

fn tcp(addr: &str, key: &str) -> Client {
    let options = ClientOptions {
        credential: Credential::ApiKey(key.to_string()),
        max_connect_attempts: 1,
        ..ClientOptions::default()
    };
    Client::new(addr.to_string(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reload_on_sighup_and_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_entry) = new_key("first");
    let (second, second_entry) = new_key("second");
    let (stranger, _) = new_key("stranger");
    let file = dir.path().join("dmw.toml");
    std::fs::write(&file, config(dir.path(), &[&first_entry, &second_entry])).unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let mut child = datamiddleware()
        .arg("--config")
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--tcp-listen", &format!("127.0.0.1:{tcp_port}")])
        .env("DMW_LOG__FILTER", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let tcp_addr = format!("127.0.0.1:{tcp_port}");
    let with = |key: &str| Http::with_key(base.clone(), Some(key));
    support::wait_until_serving(&with(&first)).await;

    let path = "/api/v1/default/players/p1";
    assert_eq!(
        with(&first).put(path, r#"{"value":{"n":1}}"#).await.status,
        201
    );
    let bearer = format!("Bearer {second}");
    let r = with(&stranger)
        .send(Method::GET, path, &[("authorization", &bearer)], None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(with(&stranger).get(path).await.status, 401);
    tcp(&tcp_addr, &first)
        .get("default", "players", "p1")
        .await
        .unwrap();
    // A player token, minted by the first key and used on both front ends.
    let minted = with(&first)
        .post("/api/v1/default/_token", r#"{"sub":"p9"}"#)
        .await;
    assert_eq!(minted.status, 200, "{:?}", minted.body);
    let token = minted.json()["token"].as_str().unwrap().to_string();
    let player = Http::with_key(base.clone(), None).with_bearer(&token);
    assert_eq!(player.get("/api/v1/default/players/p9").await.status, 404);
    let options = ClientOptions {
        credential: Credential::Token(token.clone()),
        ..ClientOptions::default()
    };
    let err = Client::new(tcp_addr.clone(), options)
        .get("default", "players", "p1")
        .await
        .expect_err("p1 has no owner");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = tcp(&tcp_addr, &stranger)
        .connect()
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));

    // The first key goes: after SIGHUP it is refused, the second still works.
    std::fs::write(&file, config(dir.path(), &[&second_entry])).unwrap();
    let hangup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hangup(child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while with(&first).get(path).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the removed key still works after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(with(&second).get(path).await.status, 200);

    // An invalid file is refused and the running keys stay.
    std::fs::write(&file, "[auth]\nenabled = true\n").unwrap();
    hangup(child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(with(&second).get(path).await.status, 200);
    assert_eq!(with(&first).get(path).await.status, 401);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    for expected in [
        "API keys replaced",
        "the running one is kept",
        "requests denied: authentication failed",
        "TCP handshake complete",
        "token minted",
        "request denied",
    ] {
        assert!(log.contains(expected), "the log lacks {expected:?}:\n{log}");
    }
    for (name, key) in [
        ("first", &first),
        ("second", &second),
        ("stranger", &stranger),
    ] {
        // The random part alone: a log line must not hold the key in any form.
        let secret = &key["dmw_".len()..];
        assert!(!log.contains(secret), "the {name} key appears in the log");
        assert!(
            !log.contains(&secret[..16]),
            "part of the {name} key appears in the log"
        );
    }
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "the token's signature appears in the log"
    );
    assert!(
        !log.contains(&token[..30]),
        "the token's header appears in the log"
    );
    assert!(!log.contains(SECRET), "the token secret appears in the log");
}

/// `[log] filter` is applied again on SIGHUP (when `RUST_LOG` did not set it): a process
/// started at `warn` logs at `info` after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_is_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dmw.toml");
    let with_filter = |filter: &str| {
        format!(
            "[log]\nfilter = \"{filter}\"\n[games.default]\nstore = \"sqlite://{}/l.db\"\n",
            dir.path().display()
        )
    };
    std::fs::write(&file, with_filter("warn")).unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let mut child = datamiddleware()
        .arg("--config")
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--tcp-listen", &format!("127.0.0.1:{tcp_port}")])
        .env_remove("RUST_LOG")
        .env_remove("DMW_LOG__FILTER")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = Http::new(format!("http://127.0.0.1:{http_port}"));
    support::wait_until_serving(&http).await;
    std::fs::write(&file, with_filter("info")).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("configuration reloaded: log filter")
    {
        assert!(Instant::now() < deadline, "no info line after the reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    while child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("datamiddleware listening"),
        "an info line before the reload:\n{log}"
    );
}
