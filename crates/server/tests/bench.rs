//! The load generator against a real server: every target it can drive here, both pacing
//! models and every workload produce the requests they claim, without errors.

mod support;

use std::time::Duration;

use clap::Parser;
use datamiddleware_bench::RunArgs;
use support::{Backend, TestServer};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// Runs `bench run` with the arguments of one command line (split at whitespace), presenting
/// the test servers' API key.
async fn bench(line: &str) -> datamiddleware_bench::report::Summary {
    let key = ["--api-key", support::TEST_KEY];
    let cli = Cli::parse_from(
        std::iter::once("bench")
            .chain(line.split_whitespace())
            .chain(key),
    );
    datamiddleware_bench::run(cli.run)
        .await
        .expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_over_http_and_tcp() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let http = s.running.addr.to_string();
    let tcp = s.running.tcp_addr.unwrap().to_string();
    for (target, addr) in [("http", &http), ("tcp", &tcp)] {
        // 300 keys: the loader's 16 connections send several batches each, so request ids
        // must keep increasing across batches (the TCP protocol refuses them otherwise).
        let summary = bench(&format!(
            "--target {} --addr {} --game {} --keys 300 --seconds 1 -c 4 -d 4",
            target, addr, s.game
        ))
        .await;
        assert!(summary.ok > 100, "{target}: only {} requests", summary.ok);
        assert!(summary.errors.is_empty(), "{target}: {:?}", summary.errors);
        assert!(
            summary.cache_hit_ratio > 0.9,
            "{target}: loaded keys are cached: {}",
            summary.cache_hit_ratio
        );
        // Plausible, not merely ordered: a loopback hit takes microseconds to milliseconds.
        assert!(
            summary.latency_us.p50 > 0 && summary.latency_us.p99 < 2_000_000,
            "{target}: {:?}",
            summary.latency_us
        );
        assert!(!summary.per_second.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_succeeds() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let tcp = s.running.tcp_addr.unwrap().to_string();
    let http = s.running.addr.to_string();
    for (target, addr) in [("tcp", &tcp), ("http", &http)] {
        for workload in ["mixed", "batch", "incr"] {
            let summary = bench(&format!(
                "--target {target} --addr {addr} --game {} --keys 10 --seconds 1 -c 2 -d 2 --workload {workload}",
                s.game
            ))
            .await;
            assert!(summary.ok > 20, "{target} {workload:?}: {} ok", summary.ok);
            assert!(
                summary.errors.is_empty(),
                "{target} {workload:?}: {:?}",
                summary.errors
            );
            if workload == "incr" {
                // Every run reloads the counters at 0: their sum is this run's increments —
                // every acknowledged one, plus at most the c × d = 4 still unanswered when the
                // run stopped.
                let mut sum = 0;
                for key in 0..10 {
                    let doc = s
                        .client
                        .get(&s.path(&format!("players/k{key}")))
                        .await
                        .json();
                    sum += doc["value"]["n"].as_u64().unwrap();
                }
                assert!(
                    (summary.ok..=summary.ok + 4).contains(&sum),
                    "{target}: {} acknowledged, {sum} applied",
                    summary.ok
                );
            }
        }
    }
}

/// Open-loop latency is measured from each request's planned send time, so a stall shows in
/// full even for the requests that could not be sent during it (no coordinated omission):
/// with the store held for 1 s of a 2 s run at 50 increments/s through a window of 4, about
/// half of the requests were planned during the stall and waited for its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_counts_from_the_planned_send_time() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    for key in 0..10 {
        s.client
            .put(&s.path(&format!("players/k{key}")), r#"{"value":{"n":0}}"#)
            .await;
    }
    let lock = s.hold_sqlite_write_lock().await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        lock.release().await;
    });
    let summary = bench(&format!(
        "--target tcp --addr {} --game {} --keys 10 --no-load --workload incr --rate 50 --seconds 2 -c 1 -d 4",
        s.running.tcp_addr.unwrap(),
        s.game
    ))
    .await;
    release.await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        (80..=110).contains(&summary.ok),
        "{} increments",
        summary.ok
    );
    // Measured from the actual send, only the 4 requests in the window at the stall would be
    // slow (p90 of a few milliseconds); from the plan, ~45 % waited up to a second.
    assert!(
        summary.latency_us.p90 >= 400_000,
        "p90 {} us: the stall was hidden",
        summary.latency_us.p90
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_rate_and_ramps() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let tcp = s.running.tcp_addr.unwrap().to_string();
    let summary = bench(&format!(
        "--target tcp --addr {} --game {} --keys 10 --rate 1000 --seconds 2 -c 4 -d 16",
        tcp, s.game
    ))
    .await;
    assert!(
        (1800..=2200).contains(&summary.requests),
        "{} requests at 1000/s for 2 s",
        summary.requests
    );
    let summary = bench(&format!(
        "--target tcp --addr {} --game {} --keys 10 --no-load --ramp 200,800 --step-seconds 1 -c 2 -d 16",
        tcp, s.game
    ))
    .await;
    assert!(
        (900..=1100).contains(&summary.requests),
        "{} requests over the ramp",
        summary.requests
    );
    let first = summary.per_second[0].rps;
    let second = summary.per_second[1].rps;
    assert!(
        second > first * 3,
        "the second step is faster: {first} then {second}"
    );
    // Spin pacing keeps the same schedule (it only waits differently).
    let args = format!(
        "--target tcp --addr {tcp} --game {} --keys 10 --no-load --rate 1000 --seconds 1 -c 2 -d 16 --spin",
        s.game
    );
    let summary = bench(&args).await;
    assert!(
        (900..=1100).contains(&summary.requests) && summary.errors.is_empty(),
        "{} requests at 1000/s for 1 s with --spin, errors {:?}",
        summary.requests,
        summary.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_url_target_and_error_counting() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let url = format!("http://{}/healthz", s.running.addr);
    let summary = bench(&format!("--target url --url {} --seconds 1 -c 2", url)).await;
    assert!(summary.ok > 50 && summary.errors.is_empty());
    // Reads of keys that were never written are counted by kind, not hidden.
    let http = s.running.addr.to_string();
    let summary = bench(&format!(
        "--target http --addr {} --game {} --keys 5 --no-load --seconds 1 -c 2",
        http, s.game
    ))
    .await;
    assert_eq!(summary.ok, 0);
    assert!(
        summary.errors.get("http_404").copied().unwrap_or(0) > 10,
        "{:?}",
        summary.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_holds_connections_from_several_processes() {
    let s = TestServer::start(Backend::Sqlite).await.unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .args([
            "bench",
            "conns",
            "--addr",
            &s.running.tcp_addr.unwrap().to_string(),
        ])
        .args([
            "--count",
            "300",
            "--per-process",
            "150",
            "--hold",
            "1",
            "--ping-every",
            "1",
        ])
        .args(["--server-pid", &std::process::id().to_string()])
        .env(datamiddleware_bench::API_KEY_ENV, support::TEST_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("connections open: 300 of 300"), "{stdout}");
    let per_connection: f64 = stdout
        .split(" bytes per connection")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no per-connection figure in {stdout}"));
    // The measurement is a real one: an idle connection costs the server about 1.5 KB.
    assert!(
        (100.0..65_536.0).contains(&per_connection),
        "{per_connection} bytes per connection"
    );
    assert!(stdout.contains("300 alive, 0 dropped"), "{stdout}");
    assert_eq!(s.running.service.metrics().tcp.accepted.get(), 300);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// `--tls-ca` drives both TLS listeners (HTTPS, TCP over TLS) and any HTTPS URL, checking
/// the certificate against the given CA and name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_targets() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tcp.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        support::use_test_certificate(c, dir.path());
    })
    .await
    .unwrap();
    let ca = support::fixture("test_tls_ca.pem");
    let ca = ca.display();
    let https = s.running.tls_addr.unwrap();
    let tcps = s.running.tcp_tls_addr.unwrap();
    for (target, addr) in [("http", https), ("tcp", tcps)] {
        let summary = bench(&format!(
            "--target {target} --addr {addr} --tls-ca {ca} --game {} --keys 50 --seconds 1 -c 2 -d 4",
            s.game
        ))
        .await;
        assert!(summary.ok > 50, "{target}: only {} requests", summary.ok);
        assert!(summary.errors.is_empty(), "{target}: {:?}", summary.errors);
    }
    let url = format!(
        "https://localhost:{}/api/v1/{}/players/k1",
        https.port(),
        s.game
    );
    let summary = bench(&format!(
        "--target url --url {url} --tls-ca {ca} --seconds 1 -c 2"
    ))
    .await;
    // Without the key in the URL target's request: the server answers 401, counted as errors,
    // but every answer came back over TLS.
    assert!(
        summary.ok + summary.errors.values().sum::<u64>() > 50,
        "{summary:?}"
    );
    // A name the certificate does not carry fails the handshake.
    let cli = Cli::parse_from(
        format!(
            "bench --target tcp --addr {tcps} --tls-ca {ca} --tls-name elsewhere.example --game {} --keys 5 --seconds 1 -c 1 --api-key {}",
            s.game,
            support::TEST_KEY
        )
        .split_whitespace(),
    );
    let err = datamiddleware_bench::run(cli.run).await.unwrap_err();
    assert!(
        err.contains("elsewhere.example") || err.contains("TLS"),
        "{err}"
    );
}
