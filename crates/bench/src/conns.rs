//! `bench conns`: holds many idle, authenticated, heartbeating TCP protocol connections and
//! reports what they cost and what went wrong: the servers' user-space memory (RSS growth),
//! the kernel's memory (socket slabs from `/proc/slabinfo`, buffer memory from
//! `/proc/net/sockstat` and `ss -tm`), the time to open them, every connection that failed to
//! open counted by kind (refused, timed out, address not available, the server's error code…)
//! and every connection dropped while held, by kind.
//!
//! One process may hold only as many sockets as its file limit allows (20,000 here), so the
//! parent starts worker processes (this same binary, `bench conns-worker`), each holding its
//! share. Every connection binds a source address first (`bind(addr, port 0)`), and the
//! kernel hands out ports per address from the ephemeral range (~28k) — odd ports first, even
//! ones only once *every* odd port is taken, and from then on each bind scans all ~14k odd
//! ports before it finds one: ~4 ms instead of ~10 µs, blocking the worker's runtime thread.
//! That stall once kept connected sockets from sending HELLO within the server's 5 s
//! handshake timeout. So no address may carry more than half the range: connection `i`,
//! counted across all workers, uses source `i mod n` of a list long enough for the count (the
//! default grows from 127.0.0.2 through 127.0.0.0/8, all of which is loopback), and a given
//! list too short is refused. The server side may be several `SO_REUSEPORT` processes: pass
//! all their pids.
//!
//! All connections are held together: the parent waits `--hold` seconds once the last worker
//! is ready, measures again, then closes the workers' stdin, which ends their hold. Workers
//! answer on stdout, one line each: `failed <kind> <n>`… then `ready <opened> <milliseconds>`;
//! after the hold `dropped <kind> <n>`… then `done <alive> <dropped>`. A kind is one word
//! (`connect:refused`, `handshake:error:timeout`).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{Credential, Hello, Message, decode};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::ChildStdout;
use tokio::sync::Semaphore;
use tokio::time::Instant;

mod memory;
use memory::{Snapshot, report_held, report_memory, sockstat_tcp, ss_buffers};

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
    /// Source addresses to connect from, spread round-robin over all connections: IP
    /// addresses and IPv4 ranges, comma-separated (`127.0.0.2-127.0.0.40,127.0.1.1`); none may
    /// carry more than half the ephemeral port range. Default: enough loopback addresses from
    /// 127.0.0.2 on that none carries more than 40 % of it (at least 8).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<String>,
    /// How long to hold all connections together once the last is open, in seconds.
    #[arg(long, default_value_t = 30)]
    pub hold: u64,
    /// Seconds between a connection's PINGs (the server's default interval is 30).
    #[arg(long, default_value_t = 20)]
    pub ping_every: u64,
    /// Seconds one connection may take to connect and complete HELLO; then it counts as
    /// failed (`timed-out`) instead of waiting for the kernel's retries.
    #[arg(long, default_value_t = 60)]
    pub open_timeout: u64,
    /// Connections a worker opens at the same time (waves, not a SYN flood).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Server process ids whose RSS to measure (comma-separated; SO_REUSEPORT processes).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// (internal) index of a worker's first connection among all: it picks the sources.
    #[arg(long, default_value_t = 0, hide = true)]
    pub first: usize,
    /// API key presented in every HELLO, for a server with auth on.
    #[arg(long, env = crate::API_KEY_ENV, hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Runs the parent: starts workers, measures, prints the result.
pub async fn run(args: ConnsArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ports = ephemeral_ports();
    let sources = source_list(&args.sources, args.count, ports)?;
    let per_source = args.count.div_ceil(sources.len());
    if let Some(ports) = ports
        && per_source > ports / 2
    {
        // Past half the range every bind scans all odd ports first (see the module header):
        // milliseconds per connection, a stalled worker, handshakes timed out by the server.
        return Err(format!(
            "{} connections over {} source addresses is {per_source} per address, more than \
             half the {ports} ephemeral ports (net.ipv4.ip_local_port_range); give more --sources",
            args.count,
            sources.len()
        ));
    }
    let sources_arg = sources
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let before = Snapshot::take(&args.server_pid);
    let processes = args.count.div_ceil(args.per_process.max(1));
    let started = Instant::now();
    let mut workers = Vec::new();
    for p in 0..processes {
        let first = p * args.per_process;
        let count = args.per_process.min(args.count - first);
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench", "conns-worker", "--addr", &args.addr.to_string()])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--sources", &sources_arg])
            .args(["--ping-every", &args.ping_every.to_string()])
            .args(["--open-timeout", &args.open_timeout.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            // The key through the environment, out of the process list.
            .envs(args.api_key.iter().map(|key| (crate::API_KEY_ENV, key)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker has no stdout")?;
        // Kept open for the hold: closing it is the worker's signal to report.
        let stdin = child.stdin.take().ok_or("worker has no stdin")?;
        workers.push((child, stdin, BufReader::new(stdout).lines()));
    }
    eprintln!(
        "{processes} worker process(es) opening {} connections from {} source addresses \
         ({}…{}, ≤ {per_source} each; ephemeral ports per address: {})",
        args.count,
        sources.len(),
        sources[0],
        sources[sources.len() - 1],
        ports.map_or("unknown".into(), |p| p.to_string()),
    );
    let mut ready = 0usize;
    let mut failed = BTreeMap::new();
    let mut slowest_worker_ms = 0u64;
    for (_, _, lines) in &mut workers {
        let (opened, ms) = read_until(lines, "ready", &mut failed).await?;
        ready += opened;
        slowest_worker_ms = slowest_worker_ms.max(ms);
    }
    let open_time = started.elapsed();
    // Let the last handshakes' allocations settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let worker_pids: Vec<u32> = workers.iter().filter_map(|(c, _, _)| c.id()).collect();
    let after = Snapshot::take(&args.server_pid);
    let buffers = ss_buffers(args.addr.port()).await;
    let failed_total: usize = failed.values().sum();
    println!(
        "connections open: {ready} of {} in {:.1} s (slowest worker {:.1} s); failed to open: {failed_total}",
        args.count,
        open_time.as_secs_f64(),
        slowest_worker_ms as f64 / 1000.0
    );
    for (kind, n) in &failed {
        println!("  failed {kind}: {n}");
    }
    report_memory(&before, &after, ready, &worker_pids);
    match buffers {
        Ok(line) => println!("{line}"),
        Err(e) => println!("ss -tm: not measured ({e})"),
    }
    hold_all(args.hold).await;
    // The same measurement after the hold's heartbeats: the steady state, not the first
    // seconds after the handshakes.
    let held = Snapshot::take(&args.server_pid);
    let mut stopped = Vec::new();
    for (child, stdin, lines) in workers {
        drop(stdin); // ends this worker's hold; it reports
        stopped.push((child, lines));
    }
    let mut alive = 0usize;
    let mut dropped = 0usize;
    let mut dropped_by = BTreeMap::new();
    for (mut child, mut lines) in stopped {
        let (a, d) = read_until(&mut lines, "done", &mut dropped_by).await?;
        alive += a;
        dropped += d as usize;
        let _ = child.wait().await;
    }
    println!(
        "after holding all of them {} s: {alive} alive, {dropped} dropped",
        args.hold
    );
    for (kind, n) in &dropped_by {
        println!("  dropped {kind}: {n}");
    }
    report_held(&before, &held, ready);
    if dropped > 0 || ready < args.count {
        return Err(format!(
            "{} connections failed to open, {dropped} dropped",
            args.count - ready
        ));
    }
    Ok(())
}

/// Waits `seconds`, telling stderr every minute how many TCP sockets the kernel holds (two
/// per connection here), so that a long hold shows a loss while it happens.
async fn hold_all(seconds: u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut next = Instant::now() + Duration::from_secs(60);
    while next < end {
        tokio::time::sleep_until(next).await;
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        match sockstat_tcp("inuse") {
            Some(n) => eprintln!("holding: {left} s left; TCP sockets in use: {n}"),
            None => eprintln!("holding: {left} s left"),
        }
        next += Duration::from_secs(60);
    }
    tokio::time::sleep_until(end).await;
}

/// Reads a worker's `<kind-word> <kind> <n>` lines into `by_kind` until the line starting
/// with `last`, whose two numbers it returns.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    last: &str,
    by_kind: &mut BTreeMap<String, usize>,
) -> Result<(usize, u64), String> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("a worker ended early")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [first, a, b] if *first == last => {
                return a
                    .parse()
                    .ok()
                    .zip(b.parse().ok())
                    .ok_or(format!("bad worker line {line:?}"));
            }
            [_, kind, n] => {
                let n: usize = n.parse().map_err(|_| format!("bad worker line {line:?}"))?;
                *by_kind.entry((*kind).to_string()).or_default() += n;
            }
            _ => return Err(format!("bad worker line {line:?}")),
        }
    }
}

/// The size of the ephemeral port range, `net.ipv4.ip_local_port_range`.
fn ephemeral_ports() -> Option<usize> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ends = range.split_whitespace().map(|p| p.parse::<usize>().ok());
    let (low, high) = (ends.next()??, ends.next()??);
    Some(high.checked_sub(low)? + 1)
}

/// The source addresses: `given` expanded (addresses and IPv4 ranges), or by default enough
/// loopback addresses from 127.0.0.2 that none carries more than 40 % of the ephemeral range:
/// under the half where binds turn slow, with room for other sockets on the same addresses.
fn source_list(
    given: &[String],
    count: usize,
    ports: Option<usize>,
) -> Result<Vec<IpAddr>, String> {
    if given.is_empty() {
        let per_address = ports.unwrap_or(28_232) * 2 / 5;
        let n = count.div_ceil(per_address.max(1)).max(8);
        let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
        // 127.0.0.0/8 holds 16 M addresses; `n` stays far below that for any count here.
        return Ok((0..n as u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
            .collect());
    }
    let mut out = Vec::new();
    for item in given {
        let item = item.trim();
        match item.split_once('-') {
            Some((from, to)) => {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|e| format!("bad source range {item:?}: {e}"))
                };
                let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
                if to < from || to - from >= 65_536 {
                    return Err(format!(
                        "bad source range {item:?}: empty or over 65,536 addresses"
                    ));
                }
                out.extend((from..=to).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
            }
            None => out.push(
                item.parse()
                    .map_err(|e| format!("bad source address {item:?}: {e}"))?,
            ),
        }
    }
    if out.is_empty() {
        return Err("no source addresses".into());
    }
    Ok(out)
}

/// Failures and drops by kind, shared by a worker's connection tasks.
#[derive(Default)]
struct Kinds(Mutex<BTreeMap<String, usize>>);

impl Kinds {
    /// Counts one `kind`; the first of each kind is told on stderr with its detail, which is
    /// what finds a cause (when, from where, the OS's words).
    fn add(&self, kind: String, detail: impl FnOnce() -> String) {
        let mut map = self.0.lock();
        let n = map.entry(kind.clone()).or_default();
        *n += 1;
        if *n == 1 {
            eprintln!(
                "conns worker {}: first {kind}: {}",
                std::process::id(),
                detail()
            );
        }
    }

    /// Prints one `<word> <kind> <n>` line per kind; returns the total, so that it and the
    /// lines agree even while connections still end.
    fn print(&self, word: &str) -> usize {
        let map = self.0.lock();
        for (kind, n) in map.iter() {
            println!("{word} {kind} {n}");
        }
        map.values().sum()
    }
}

/// Runs one worker: opens `count` connections, prints failures by kind and `ready <n> <ms>`,
/// holds them with heartbeats until its stdin ends (the parent closes it, or dies), then
/// prints drops by kind and `done <alive> <dropped>`.
pub async fn worker(args: ConnsArgs) -> Result<(), String> {
    let sources = source_list(&args.sources, args.count, None)?;
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Kinds::default());
    let drops = Arc::new(Kinds::default());
    let connecting = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let ping_every = Duration::from_secs(args.ping_every.max(1));
    let open_timeout = Duration::from_secs(args.open_timeout.max(1));
    let started = Instant::now();
    let credential = args
        .api_key
        .clone()
        .map_or(Credential::None, Credential::ApiKey);
    for i in 0..args.count {
        let source = sources[(args.first + i) % sources.len()];
        let (ready, failed) = (ready.clone(), failed.clone());
        let (failures, drops, connecting) = (failures.clone(), drops.clone(), connecting.clone());
        let addr = args.addr;
        let credential = credential.clone();
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let stream = match open_from(addr, source, open_timeout, credential).await {
                Ok(stream) => stream,
                Err(failure) => {
                    failures.add(failure.kind, || {
                        format!(
                            "after {:.1} s, from {source}: {}",
                            started.elapsed().as_secs_f64(),
                            failure.detail
                        )
                    });
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            let (kind, detail) = hold(stream, (args.first + i) as u64, ping_every).await;
            drops.add(kind, || {
                format!(
                    "after {:.1} s, from {source}: {detail}",
                    started.elapsed().as_secs_f64()
                )
            });
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
    failures.print("failed");
    println!(
        "ready {} {}",
        ready.load(Ordering::Relaxed),
        started.elapsed().as_millis()
    );
    // A blocking read on the blocking pool: this runtime has no async stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    let dropped = drops.print("dropped");
    let alive = ready.load(Ordering::Relaxed).saturating_sub(dropped);
    println!("done {alive} {dropped}");
    Ok(())
}

/// Why a connection did not open: `kind` is one word, `stage:what` (counted), `detail` the
/// full text (told once per kind).
struct Failure {
    kind: String,
    detail: String,
}

impl Failure {
    fn io(stage: &str, e: &std::io::Error) -> Failure {
        Failure {
            kind: format!("{stage}:{}", io_kind(e)),
            detail: format!("{e} ({:?}, os error {:?})", e.kind(), e.raw_os_error()),
        }
    }

    fn new(kind: String, detail: String) -> Failure {
        Failure { kind, detail }
    }
}

/// One word for an I/O error: the kinds a connection flood produces by name, anything else
/// by its errno so that it stays countable.
fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::TimedOut => "timed-out".into(),
        ErrorKind::AddrNotAvailable => "address-not-available".into(),
        ErrorKind::AddrInUse => "address-in-use".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::ConnectionAborted => "aborted".into(),
        ErrorKind::BrokenPipe => "broken-pipe".into(),
        ErrorKind::UnexpectedEof => "closed".into(),
        kind => match e.raw_os_error() {
            Some(errno) => format!("os-error-{errno}"),
            None => format!("{kind:?}").to_lowercase(),
        },
    }
}

/// Binds `source`, connects to `addr` and completes the handshake, all within `timeout`.
async fn open_from(
    addr: SocketAddr,
    source: IpAddr,
    timeout: Duration,
    credential: Credential,
) -> Result<TcpStream, Failure> {
    let deadline = Instant::now() + timeout;
    let timed_out = |stage: &str| {
        Failure::new(
            format!("{stage}:timed-out"),
            format!("no answer within --open-timeout ({} s)", timeout.as_secs()),
        )
    };
    let socket = TcpSocket::new_v4().map_err(|e| Failure::io("socket", &e))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| Failure::io("bind", &e))?;
    let mut stream = tokio::time::timeout_at(deadline, socket.connect(addr))
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(|e| Failure::io("connect", &e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::io("connect", &e))?;
    tokio::time::timeout_at(deadline, handshake(&mut stream, credential))
        .await
        .map_err(|_| timed_out("handshake"))??;
    Ok(stream)
}

/// Sends HELLO and waits for HELLO_OK. Its own (not the load driver's) because a failure
/// must keep its kind: the server's error code, a reset, a close.
async fn handshake(stream: &mut TcpStream, credential: Credential) -> Result<(), Failure> {
    let mut hello = BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "datamiddleware-bench-conns".into(),
        credential,
    })
    .encode(0, &mut hello);
    stream
        .write_all(&hello)
        .await
        .map_err(|e| Failure::io("handshake", &e))?;
    let mut buf = BytesMut::new();
    loop {
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| Failure::io("handshake", &e))?;
        if n == 0 {
            return Err(Failure::new(
                "handshake:closed".into(),
                "the server closed before HELLO_OK".into(),
            ));
        }
        match decode(&mut buf, u32::MAX) {
            Ok(Some((_, Message::HelloOk(_)))) => return Ok(()),
            Ok(Some((_, Message::Error { code, message, .. }))) => {
                return Err(Failure::new(
                    format!("handshake:error:{}", one_word(&code)),
                    message,
                ));
            }
            Ok(Some((_, other))) => {
                return Err(Failure::new(
                    format!("handshake:unexpected:{:?}", other.opcode()),
                    format!("{other:?}"),
                ));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure::new("handshake:bad-frame".into(), e.to_string()));
            }
        }
    }
}

/// A server-sent code as one word of the worker's line protocol.
fn one_word(code: &str) -> String {
    let word: String = code
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if word.is_empty() { "-".into() } else { word }
}

/// Keeps a connection alive: a PING every `every`, PONGs for the server's PINGs. Returns
/// why the connection ended: a kind (one word) and its detail.
async fn hold(mut stream: TcpStream, n: u64, every: Duration) -> (String, String) {
    let mut buf = BytesMut::new();
    // A random first tick spreads the PINGs of connections opened in the same second over
    // the whole interval, as real clients' would be.
    let first = Duration::from_millis(fastrand::u64(0..=every.as_millis() as u64));
    let mut ping = tokio::time::interval_at(Instant::now() + first, every);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                let mut frame = BytesMut::new();
                Message::Ping(n).encode(0, &mut frame);
                if let Err(e) = stream.write_all(&frame).await {
                    return (format!("write:{}", io_kind(&e)), e.to_string());
                }
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return ("closed".into(), "the server closed".into()),
                    Ok(_) => {}
                    Err(e) => return (format!("read:{}", io_kind(&e)), e.to_string()),
                }
                loop {
                    match decode(&mut buf, u32::MAX) {
                        Ok(Some((header, Message::Ping(payload)))) => {
                            let mut frame = BytesMut::new();
                            Message::Pong(payload).encode(header.request_id, &mut frame);
                            if let Err(e) = stream.write_all(&frame).await {
                                return (format!("write:{}", io_kind(&e)), e.to_string());
                            }
                        }
                        Ok(Some((_, Message::Error { code, message, .. }))) => {
                            return (format!("error:{}", one_word(&code)), message);
                        }
                        Ok(Some((_, Message::GoAway { message, .. }))) => {
                            return ("goaway".into(), message);
                        }
                        Ok(Some(_)) => {} // PONGs of our PINGs
                        Ok(None) => break,
                        Err(e) => return ("bad-frame".into(), e.to_string()),
                    }
                }
                // Keep the generator's memory small too, but never drop a partial frame.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sources_grow_with_the_count() {
        let eight = source_list(&[], 10_000, Some(28_232)).unwrap();
        assert_eq!(eight.len(), 8);
        assert_eq!(eight[0].to_string(), "127.0.0.2");
        let many = source_list(&[], 250_000, Some(28_232)).unwrap();
        assert_eq!(many.len(), 23); // ≤ 11,292 each, 40 % of the range
        assert_eq!(many[22].to_string(), "127.0.0.24");
    }

    #[test]
    fn source_ranges_expand_and_cross_octets() {
        let given = vec!["127.0.0.254-127.0.1.1".to_string(), "127.0.5.5".to_string()];
        let list: Vec<String> = source_list(&given, 1, None)
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            list,
            [
                "127.0.0.254",
                "127.0.0.255",
                "127.0.1.0",
                "127.0.1.1",
                "127.0.5.5"
            ]
        );
        assert!(source_list(&["127.0.0.9-127.0.0.2".into()], 1, None).is_err());
        assert!(source_list(&["nonsense".into()], 1, None).is_err());
    }

    #[test]
    fn io_errors_have_one_word_kinds() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(Failure::io("connect", &refused).kind, "connect:refused");
        let other = std::io::Error::from_raw_os_error(105); // ENOBUFS
        assert!(!io_kind(&other).contains(char::is_whitespace));
        assert_eq!(one_word("too many"), "too_many");
    }
}
