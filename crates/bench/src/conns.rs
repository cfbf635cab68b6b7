//! `bench conns`: holds many idle, authenticated, heartbeating TCP protocol connections and
//! reports the server's memory per connection and any connection dropped.
//!
//! One process may hold only as many sockets as its file limit allows (20,000 here), so the
//! parent starts worker processes (this same binary, `bench conns-worker`), each holding its
//! share from its own source addresses (127.0.0.2, .3, …: one loopback address offers ~28k
//! ports). The server side may be several `SO_REUSEPORT` processes: pass all their pids.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{Message, decode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use crate::driver::Target;

/// Parameters of `bench conns`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnsArgs {
    /// The server's TCP protocol address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// Connections to open in total.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Connections per worker process (keep under the file limit, `ulimit -n`).
    #[arg(long, default_value_t = 19_000)]
    pub per_process: usize,
    /// Source addresses to connect from, spread round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9"
    )]
    pub sources: Vec<IpAddr>,
    /// How long to hold the connections once all are open, in seconds.
    #[arg(long, default_value_t = 30)]
    pub hold: u64,
    /// Seconds between a connection's PINGs (the server's default interval is 30).
    #[arg(long, default_value_t = 20)]
    pub ping_every: u64,
    /// Server process ids whose RSS to measure (comma-separated; SO_REUSEPORT processes).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
}

/// Runs the parent: starts workers, measures, prints the result.
pub async fn run(args: ConnsArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let before = rss_kib(&args.server_pid);
    let processes = args.count.div_ceil(args.per_process.max(1));
    let mut workers = Vec::new();
    let per_source = args.sources.len().div_ceil(processes).max(1);
    for p in 0..processes {
        let count = args.per_process.min(args.count - p * args.per_process);
        let sources: Vec<String> = args
            .sources
            .iter()
            .cycle()
            .skip(p * per_source)
            .take(per_source)
            .map(|s| s.to_string())
            .collect();
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "bench",
                "conns-worker",
                "--addr",
                &args.addr.to_string(),
                "--count",
                &count.to_string(),
            ])
            .args([
                "--sources",
                &sources.join(","),
                "--hold",
                &args.hold.to_string(),
                "--ping-every",
                &args.ping_every.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker has no stdout")?;
        workers.push((child, BufReader::new(stdout).lines()));
    }
    eprintln!(
        "{processes} worker process(es) opening {} connections",
        args.count
    );
    let mut ready = 0usize;
    for (_, lines) in &mut workers {
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("a worker ended early")?;
        ready += line
            .strip_prefix("ready ")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or(format!("bad worker line {line:?}"))?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&args.server_pid);
    println!("connections open: {ready} of {}", args.count);
    if let (Some(before), Some(after)) = (before, after) {
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / ready.max(1) as f64;
        println!(
            "server RSS: {before} KiB before, {after} KiB with the connections: {per:.0} bytes per connection (user space)"
        );
    }
    let mut alive = 0usize;
    let mut dropped = 0usize;
    for (mut child, mut lines) in workers {
        if let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            let mut parts = line
                .split_whitespace()
                .skip(1)
                .map(|n| n.parse::<usize>().unwrap_or(0));
            alive += parts.next().unwrap_or(0);
            dropped += parts.next().unwrap_or(0);
        }
        let _ = child.wait().await;
    }
    println!(
        "after holding {} s: {alive} alive, {dropped} dropped",
        args.hold
    );
    if dropped > 0 || ready < args.count {
        return Err(format!(
            "{} connections failed to open, {dropped} dropped",
            args.count - ready
        ));
    }
    Ok(())
}

/// Sum of the resident set sizes of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// Runs one worker: opens `count` connections, prints `ready <n>`, holds them with
/// heartbeats, then prints `done <alive> <dropped>`.
pub async fn worker(args: ConnsArgs) -> Result<(), String> {
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(Semaphore::new(256)); // waves, not a SYN flood
    let ping_every = Duration::from_secs(args.ping_every.max(1));
    for i in 0..args.count {
        let source = args.sources[i % args.sources.len().max(1)];
        let (ready, failed, dropped, connecting) = (
            ready.clone(),
            failed.clone(),
            dropped.clone(),
            connecting.clone(),
        );
        let addr = args.addr;
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let stream = match open_from(addr, source).await {
                Ok(stream) => stream,
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            hold(stream, i as u64, ping_every).await;
            dropped.fetch_add(1, Ordering::Relaxed);
        });
    }
    loop {
        let (r, f) = (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        if r + f >= args.count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready {}", ready.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let dropped = dropped.load(Ordering::Relaxed);
    println!("done {} {dropped}", ready.load(Ordering::Relaxed) - dropped);
    Ok(())
}

async fn open_from(addr: SocketAddr, source: IpAddr) -> Result<tokio::net::TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    // Reuse the handshake of the load driver on the connected stream.
    let target = Target::Tcp {
        addr,
        game: String::new(),
        collection: String::new(),
    };
    crate::driver::handshake(stream, &target).await
}

/// Keeps a connection alive: a PING every `every`, PONGs for the server's PINGs. Returns
/// when the connection ends.
async fn hold(mut stream: tokio::net::TcpStream, n: u64, every: Duration) {
    let mut buf = BytesMut::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                let mut frame = BytesMut::new();
                Message::Ping(n).encode(0, &mut frame);
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
            read = stream.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                while let Ok(Some((header, message))) = decode(&mut buf, u32::MAX) {
                    if let Message::Ping(payload) = message {
                        let mut frame = BytesMut::new();
                        Message::Pong(payload).encode(header.request_id, &mut frame);
                        let _ = stream.write_all(&frame).await;
                    }
                }
                buf = BytesMut::new(); // keep the generator's memory small too
            }
        }
    }
}
