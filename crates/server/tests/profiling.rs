//! On-demand profiles: `GET /debug/pprof/profile` (CPU, pprof protobuf or an SVG flame graph;
//! one at a time; admin keys only) in process, and `GET /debug/pprof/heap` (jemalloc's sampled
//! heap) from the real binary, which runs on jemalloc.

mod support;

use std::process::Command;
use std::time::Duration;

use hyper::Method;
use support::{Backend, Http, TestServer};

/// Keeps the server busy with GETs until the returned flag is set.
fn load(client: Http, path: String) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = stop.clone();
    tokio::spawn(async move {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            client.send(Method::GET, &path, &[], None).await;
        }
    });
    stop
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_is_pprof_or_svg_one_at_a_time_for_admins_only() {
    use pprof::protos::Message;
    let Some(s) = TestServer::start(Backend::Sqlite).await else {
        return;
    };
    let busy = load(s.client.clone(), s.path("players/busy"));
    let (first, second) = tokio::join!(
        s.client
            .send(Method::GET, "/debug/pprof/profile?seconds=2", &[], None),
        async {
            // Asked while the first one runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.client
                .send(Method::GET, "/debug/pprof/profile?seconds=1", &[], None)
                .await
        }
    );
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(
        first.header("content-type"),
        Some("application/octet-stream")
    );
    let profile = pprof::protos::Profile::decode(first.body.as_ref()).expect("pprof protobuf");
    assert!(!profile.sample.is_empty(), "a busy server gives samples");
    let names: Vec<&str> = profile.string_table.iter().map(String::as_str).collect();
    assert!(
        names.iter().any(|n| n.contains("datamiddleware")),
        "the server's own functions are named"
    );
    assert_eq!(second.status, 503, "a second profile at once is refused");
    assert_eq!(second.code(), "overloaded");

    let svg = s
        .client
        .send(
            Method::GET,
            "/debug/pprof/profile?seconds=1&format=svg",
            &[],
            None,
        )
        .await;
    busy.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(
        String::from_utf8_lossy(&svg.body).contains("<svg"),
        "an SVG image"
    );

    for bad in [
        "seconds=0",
        "seconds=301",
        "seconds=x",
        "format=png",
        "second=2",
    ] {
        let r = s
            .client
            .send(
                Method::GET,
                &format!("/debug/pprof/profile?{bad}"),
                &[],
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let anonymous = s
        .anonymous()
        .send(Method::GET, "/debug/pprof/profile?seconds=1", &[], None)
        .await;
    assert_eq!(anonymous.status, 401);
    let heap = s
        .anonymous()
        .send(Method::GET, "/debug/pprof/heap", &[], None)
        .await;
    assert_eq!(heap.status, 401);
}

/// Starts the binary with `env`; its HTTP client once it answers.
async fn binary(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, Http) {
    let (http_port, tcp_port) = (support::free_port(), support::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
        .current_dir(dir)
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--tcp-listen", &format!("127.0.0.1:{tcp_port}")])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = Http::new(format!("http://127.0.0.1:{http_port}"));
    support::wait_until_serving(&http).await;
    (child, http)
}

#[cfg(not(target_env = "msvc"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_heap_profile_unless_sampling_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = binary(dir.path(), &[("DMW_METRICS__HEAP_SAMPLING", "true")]).await;
    let heap = http.send(Method::GET, "/debug/pprof/heap", &[], None).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(heap.status, 200, "{:?}", heap.body);
    assert_eq!(
        &heap.body[..2],
        &[0x1f, 0x8b],
        "gzipped pprof protobuf, as Go's pprof writes it"
    );

    let (mut child, http) = binary(dir.path(), &[]).await;
    let heap = http.send(Method::GET, "/debug/pprof/heap", &[], None).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        heap.status, 404,
        "sampling off (the default): no heap profile"
    );
    assert_eq!(heap.code(), "not_found");
}
