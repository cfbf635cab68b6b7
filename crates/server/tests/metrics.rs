//! `GET /metrics`: admin-only Prometheus text whose numbers follow what the server did —
//! HTTP requests by method, route template and status with their durations, TCP connections
//! by what became of them, store reads and commits, and the process's own resources.

mod support;

use datamiddleware::auth::Role;
use datamiddleware_protocol::{Credential, Hello, Message};
use support::{Backend, Http, TestServer, api_key, assert_code};

const READER: &str = "dmw_5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a8c1e9c1e3b";

async fn start(enabled: bool) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.metrics.enabled = enabled;
        c.auth
            .keys
            .push(api_key("reader", READER, Role::Readonly, &["*"]));
    })
    .await
    .unwrap()
}

/// The scrape, after checking its status and content type.
async fn scrape(s: &TestServer) -> String {
    let r = s.client.get("/metrics").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

const DOCUMENT: &str = "/api/v1/{game}/{collection}/{id}";

fn requests(method: &str, status: u16) -> String {
    format!(
        "http_requests_total{{method=\"{method}\",endpoint=\"{DOCUMENT}\",status=\"{status}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_read_the_metrics() {
    let s = start(true).await;
    assert_code(
        &s.anonymous().get("/metrics").await,
        401,
        "unauthorized",
        "no key",
    );
    let reader = Http::with_key(format!("http://{}", s.running.addr), Some(READER));
    assert_code(
        &reader.get("/metrics").await,
        403,
        "forbidden",
        "a read-only key",
    );
    scrape(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_by_route_template_and_status() {
    let s = start(true).await;
    let path = s.path("players/secret-id-1");
    assert_eq!(
        s.client.put(&path, r#"{"value":{"gold":1}}"#).await.status,
        201
    );
    for _ in 0..3 {
        assert_eq!(s.client.get(&path).await.status, 200);
    }
    assert_eq!(s.client.get(&s.path("players/absent")).await.status, 404);
    s.client.get("/no/such/route").await;
    let text = scrape(&s).await;
    assert_eq!(value(&text, &requests("PUT", 201)), Some(1.0), "{text}");
    assert_eq!(value(&text, &requests("GET", 200)), Some(3.0));
    assert_eq!(value(&text, &requests("GET", 404)), Some(1.0));
    let unmatched = r#"http_requests_total{method="GET",endpoint="unmatched",status="404"}"#;
    assert_eq!(value(&text, unmatched), Some(1.0));
    let count = format!("http_request_duration_seconds_count{{endpoint=\"{DOCUMENT}\"}}");
    assert_eq!(value(&text, &count), Some(5.0));
    let le = format!("http_request_duration_seconds_bucket{{endpoint=\"{DOCUMENT}\",le=\"+Inf\"}}");
    assert_eq!(value(&text, &le), Some(5.0), "{text}");
    assert!(!text.contains("secret-id-1"), "never the raw path");
    // The store: one commit, one read for the first GET's miss and one for the absent id.
    assert_eq!(value(&text, "store_commits_total"), Some(1.0));
    assert!(value(&text, "store_reads_total").unwrap() >= 1.0);
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(value(&text, "process_open_fds").unwrap() > 3.0);
    assert!(value(&text, "process_cpu_seconds_total").unwrap() > 0.0);
    // The scrape itself is counted by the next one.
    let text = scrape(&s).await;
    let scrapes = r#"http_requests_total{method="GET",endpoint="/metrics",status="200"}"#;
    assert_eq!(value(&text, scrapes), Some(1.0));
}

/// Waits until the scrape shows `series` at `expected`; the scrape.
async fn until(s: &TestServer, series: &str, expected: f64) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = scrape(s).await;
        if value(&text, series) == Some(expected) {
            return text;
        }
        assert!(started.elapsed().as_secs() < 5, "{series}: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_counted_by_what_became_of_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(true).await;
    let addr = s.running.tcp_addr.unwrap();
    // One that says HELLO and then ends its side: its requests answered, it is finished.
    let mut greeted = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = bytes::BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "metrics-test".into(),
        credential: Credential::ApiKey(support::TEST_KEY.into()),
    })
    .encode(0, &mut hello);
    greeted.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 256];
    assert!(greeted.read(&mut answer).await.unwrap() > 0, "HELLO_OK");
    // One that leaves before saying anything.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let text = until(&s, "tcp_connections_open", 2.0).await;
    assert_eq!(value(&text, "tcp_connections_accepted_total"), Some(2.0));
    drop(silent);
    until(
        &s,
        r#"tcp_connections_closed_total{reason="peer_closed"}"#,
        1.0,
    )
    .await;
    greeted.shutdown().await.unwrap();
    let text = until(
        &s,
        r#"tcp_connections_closed_total{reason="finished"}"#,
        1.0,
    )
    .await;
    assert_eq!(value(&text, "tcp_connections_open"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_requests_are_not_recorded() {
    let s = start(false).await;
    let path = s.path("players/p1");
    s.client.put(&path, r#"{"value":{}}"#).await;
    s.client.get(&path).await;
    let text = scrape(&s).await;
    assert!(!text.contains("http_requests_total{"), "{text}");
    assert_eq!(
        value(&text, "store_commits_total"),
        Some(1.0),
        "store work still counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requests_pools_runtime_and_rate_limits_are_exposed() {
    const RATE: u32 = 5;
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.rate_limits.per_ip = RATE;
    })
    .await
    .unwrap();
    let client = s.tcp_client(Credential::ApiKey(support::TEST_KEY.into()));
    let gold = serde_json::json!({"gold": 1});
    client
        .put(
            &s.game,
            "players",
            "p1",
            &gold,
            datamiddleware_client::Precondition::None,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        client.get(&s.game, "players", "p1").await.unwrap();
    }
    // Over the per-address rate (a bucket of 2 × RATE): some are refused, each one counted.
    let mut refused = 0;
    for _ in 0..(4 * RATE) {
        if s.client.get(&s.path("players/p1")).await.status == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let text = scrape(&s).await;
    let requests =
        |opcode: &str| value(&text, &format!("tcp_requests_total{{opcode=\"{opcode}\"}}"));
    assert_eq!(requests("put"), Some(1.0), "{text}");
    assert_eq!(requests("get"), Some(2.0));
    assert_eq!(requests("txn"), Some(0.0));
    let put_timed = r#"tcp_request_duration_seconds_count{opcode="put"}"#;
    assert_eq!(
        value(&text, put_timed),
        Some(1.0),
        "a PUT runs in a task and is timed"
    );
    let limited = r#"rate_limited_total{limit="per_ip"}"#;
    // The TCP client's HELLO and requests count against the same address.
    assert!(
        value(&text, limited).unwrap() >= f64::from(refused),
        "{text}"
    );
    let pool = text
        .lines()
        .find(|l| l.starts_with("store_pool_max_connections{pool_name=\"sqlite://"))
        .unwrap_or_else(|| panic!("{text}"));
    let max: f64 = pool.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(max >= 1.0, "{pool}");
    assert!(text.contains("pool_active_workers{pool_name=\"sqlite://"));
    let series = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        series("store_pool_leases_total{pool_name=\"sqlite://") >= 1.0,
        "the requests above took connections"
    );
    // Seconds, not nanoseconds: the waits of a few requests on an idle pool.
    let waited = series("store_pool_wait_seconds_total{pool_name=\"sqlite://");
    assert!((0.0..10.0).contains(&waited), "{waited}");
    assert!(value(&text, "process_threads").unwrap() >= 3.0, "{text}");
    assert_eq!(value(&text, "tokio_workers"), Some(2.0));
    assert!(value(&text, "tokio_alive_tasks").unwrap() >= 1.0);
    assert!(text.contains("tokio_worker_busy_seconds_total{worker=\"1\"}"));
}

/// `/livez` answers while the process runs; `/readyz` and `/healthz` turn 503 `draining` at the
/// start of a shutdown; `/healthz` says the version and uptime. None needs a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_readiness_and_health_detail() {
    let s = start(true).await;
    let anonymous = s.anonymous();
    let live = anonymous.get("/livez").await;
    assert_eq!(
        (live.status.as_u16(), live.json()["status"].clone()),
        (200, "alive".into())
    );
    let ready = anonymous.get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].clone()),
        (200, "ready".into())
    );
    let health = anonymous.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        health.json()["uptime_s"].as_u64().is_some(),
        "{:?}",
        health.body
    );

    s.running.service.begin_drain();
    let ready = anonymous.get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].clone()),
        (503, "draining".into())
    );
    let health = anonymous.get("/healthz").await;
    assert_eq!(
        (health.status.as_u16(), health.json()["status"].clone()),
        (503, "draining".into())
    );
    assert_eq!(
        anonymous.get("/livez").await.status,
        200,
        "alive while draining"
    );
    let text = scrape(&s).await;
    assert!(
        text.contains(r#"endpoint="/readyz",status="503""#),
        "{text}"
    );
}

/// With `http.drain_delay`, a shutdown keeps every listener open for that long while
/// `/readyz` answers 503 `draining` (even on a new connection), then closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_delay_keeps_serving_while_readiness_is_false() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.http.drain_delay = std::time::Duration::from_millis(1500);
    })
    .await
    .unwrap();
    let base = format!("http://{}", s.running.addr);
    let TestServer { running, .. } = s;
    let stopping = tokio::spawn(running.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A client of its own: a new connection, as a balancer's probe would open.
    let probe = Http::with_key(base.clone(), None);
    let ready = probe.get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].clone()),
        (503, "draining".into())
    );
    assert_eq!(probe.get("/livez").await.status, 200, "still serving");
    stopping.await.unwrap().unwrap();
    let after = Http::with_key(base, None);
    assert!(
        after
            .try_send(http::Method::GET, "/livez", &[], None)
            .await
            .is_none(),
        "closed after the delay"
    );
}

/// The cache tiers' own counters reach the scrape: L1 entries and bytes always; with Redis,
/// L2 lookups and fills, its breaker, and the bus's trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_tiers_are_exposed() {
    let redis = support::Redis::Standalone;
    let prefix = support::unique_prefix();
    if redis.urls().is_none() {
        return;
    }
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        redis.configure(c, &prefix);
    })
    .await
    .unwrap();
    let path = s.path("players/p1");
    assert_eq!(
        s.client.put(&path, r#"{"value":{"gold":1}}"#).await.status,
        201
    );
    assert_eq!(s.client.get(&path).await.status, 200);
    // An id no tier has: L1 misses, L2 is asked, the store answers.
    assert_eq!(s.client.get(&s.path("players/absent")).await.status, 404);
    let text = scrape(&s).await;
    assert!(value(&text, "l1_entries").unwrap() >= 1.0, "{text}");
    // Store calls are timed by operation: the PUT's transaction, the absent id's read.
    for op in ["write", "get"] {
        let count = format!("store_query_duration_seconds_count{{operation=\"{op}\"}}");
        assert!(value(&text, &count).unwrap() >= 1.0, "{count}: {text}");
    }
    assert_eq!(
        value(
            &text,
            "store_query_duration_seconds_count{operation=\"list\"}"
        ),
        Some(0.0),
        "no list was asked for"
    );
    assert!(value(&text, "l1_bytes").unwrap() > 0.0);
    assert!(value(&text, "l2_lookups_total").unwrap() >= 1.0, "{text}");
    assert_eq!(value(&text, "l2_breaker_open"), Some(0.0));
    assert_eq!(value(&text, "bus_trusted"), Some(1.0));
    assert!(value(&text, "bus_published_total").unwrap() >= 1.0);
    let lookups = |tier: &str, result: &str| {
        value(
            &text,
            &format!("cache_lookups_total{{tier=\"{tier}\",result=\"{result}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {tier} {result} series: {text}"))
    };
    assert!(lookups("l2", "miss") >= 1.0, "the absent id missed L2");
    let hits_before = lookups("l1", "hit");
    // The id is now remembered as missing; the document is in L1.
    assert_eq!(s.client.get(&s.path("players/absent")).await.status, 404);
    assert_eq!(s.client.get(&path).await.status, 200);
    let text = scrape(&s).await;
    let lookups = |tier: &str, result: &str| {
        value(
            &text,
            &format!("cache_lookups_total{{tier=\"{tier}\",result=\"{result}\"}}"),
        )
        .unwrap()
    };
    assert_eq!(lookups("l1", "hit"), hits_before + 1.0, "{text}");
    assert!(lookups("l1", "negative") >= 1.0, "{text}");
    assert!(lookups("l1", "miss") >= 1.0, "{text}");
    assert!(
        lookups("l1", "coalesced") <= lookups("l1", "miss"),
        "coalesced lookups are some of the misses"
    );
    // Another instance's write reaches this one over the bus: its delay is measured.
    let other = s
        .sibling_with(|c| {
            redis.configure(c, &prefix);
        })
        .await;
    assert_eq!(
        other
            .client
            .put(&path, r#"{"value":{"gold":2}}"#)
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = scrape(&s).await;
        let count = value(&text, "cache_invalidation_delay_seconds_count").unwrap_or(0.0);
        if count >= 1.0 {
            let sum = value(&text, "cache_invalidation_delay_seconds_sum").unwrap();
            assert!(
                sum < count,
                "under a second each on one machine: {sum} for {count}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delay measured: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Without Redis there is no L2 or bus figure at all (rather than zeros that look alive).
    let alone = start(true).await;
    let text = scrape(&alone).await;
    assert!(value(&text, "l1_bytes").is_some());
    assert!(
        !text.contains("l2_lookups") && !text.contains("bus_trusted"),
        "{text}"
    );
}

/// A blocking call inside a task keeps its worker running without a break: the watchdog
/// reports it (a warning and `tokio_worker_stalls_total`) once past `metrics.stall_threshold`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_worker_is_reported() {
    // The warning goes to the log: catch this process's lines (nextest runs each test in a
    // process of its own, so the global subscriber is this test's).
    let lines = Lines::default();
    let sink = lines.clone();
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    );
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.metrics.stall_threshold = std::time::Duration::from_secs(1);
    })
    .await
    .unwrap();
    let stalls = s.running.service.metrics().stalls.worker_stalls.clone();
    assert_eq!(stalls.get(), 0, "nothing blocked yet");
    tokio::spawn(async { std::thread::sleep(std::time::Duration::from_millis(3500)) });
    let started = std::time::Instant::now();
    while stalls.get() == 0 {
        assert!(started.elapsed().as_secs() < 10, "no stall reported");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = scrape(&s).await;
    assert!(
        value(&text, "tokio_worker_stalls_total").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(value(&text, "tokio_task_growth_warnings_total"), Some(0.0));
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("without a break past the threshold"))
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    assert!(
        warning.contains("running_s=") && warning.contains("threshold_s=1"),
        "the warning gives its numbers: {warning}"
    );
}

/// Log lines written during a test.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `http_connections_open` follows connections as they come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_http_connections_are_counted() {
    let s = start(true).await;
    let open =
        || async { value(&scrape(&s).await, "http_connections_open").expect("the gauge is there") };
    let before = open().await;
    let idle: Vec<_> =
        futures::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(s.running.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open().await < before + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "3 more connections not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(idle);
    while open().await > before {
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// With `ops.listen`, the operations endpoints move to a listener of their own: the API's
/// listener keeps the probes and `/openapi.json`, and the ops listener serves no API route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_endpoints_can_have_a_listener_of_their_own() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.ops.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
    .unwrap();
    let ops_addr = s.running.ops_addr.expect("the ops listener is bound");
    let ops = support::Http::new(format!("http://{ops_addr}"));
    let document = s.path("players/p1");
    assert_eq!(s.client.put(&document, r#"{"value":{}}"#).await.status, 201);
    for path in ["/metrics", "/admin", "/debug/pprof/heap"] {
        assert_eq!(
            s.client.get(path).await.status,
            404,
            "{path} on the API's listener"
        );
    }
    for path in ["/livez", "/readyz", "/healthz", "/openapi.json"] {
        assert_eq!(
            s.client.get(path).await.status,
            200,
            "{path} on the API's listener"
        );
        assert_eq!(
            ops.get(path).await.status,
            200,
            "{path} on the ops listener"
        );
    }
    let metrics = ops.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("http_requests_total"));
    assert_eq!(ops.get("/admin").await.status, 200);
    assert_eq!(
        ops.get(&document).await.status,
        404,
        "no API on the ops listener"
    );
    assert_eq!(s.client.get(&document).await.status, 200);
    // Admin-only there as well.
    let anonymous = support::Http::with_key(format!("http://{ops_addr}"), None);
    assert_eq!(anonymous.get("/metrics").await.status, 401);
}
