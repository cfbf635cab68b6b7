//! What `bench conns` measures around the connections it holds: the servers' and workers'
//! RSS (user space), the kernel's slab caches (`/proc/slabinfo`, one socket priced from
//! `/sys/kernel/slab`), its TCP buffer memory (`/proc/net/sockstat`) and what `ss -tm` says the
//! server ends hold.

use std::collections::BTreeMap;

/// Page size of `/proc/slabinfo` and `/proc/net/sockstat` counts (x86-64; 4 KiB on the
/// machines this bench runs on).
const PAGE: u64 = 4096;

/// The slab caches of one idle socket: the TCP socket, its inode, the pseudo-file's dentry
/// and `struct file`, its epoll registration (item, wait-queue entry, the file's list head)
/// and the security blobs of inode and file. Merged caches (SLUB) appear in `/proc/slabinfo`
/// under another name, so these are priced from `/sys/kernel/slab/<name>`, which knows every
/// alias. Not counted: a `/proc/<pid>/fd` inode and dentry per descriptor, which exist only
/// while something lists that directory (a monitor on this machine does) and are reclaimable.
const SOCKET_CACHES: [&str; 9] = [
    "TCP",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "eventpoll_pwq",
    "ep_head",
    "lsm_inode_cache",
    "lsm_file_cache",
];

/// What the parent measures before and after opening: the servers' RSS, the kernel's slab
/// caches and its TCP buffer memory.
pub(super) struct Snapshot {
    rss_kib: Option<u64>,
    slabs: Option<BTreeMap<String, Slab>>,
    tcp_mem_pages: Option<u64>,
}

/// One cache of `/proc/slabinfo`.
#[derive(Clone, Copy)]
struct Slab {
    active_objects: u64,
    object_size: u64,
    pages: u64,
}

impl Snapshot {
    pub(super) fn take(server_pids: &[u32]) -> Snapshot {
        Snapshot {
            rss_kib: rss_kib(server_pids),
            slabs: slabinfo(),
            tcp_mem_pages: sockstat_tcp("mem"),
        }
    }
}

/// Prints user-space and kernel memory per connection. Both ends of every connection are on
/// this machine, so the kernel figures cover two sockets per connection.
pub(super) fn report_memory(
    before: &Snapshot,
    after: &Snapshot,
    ready: usize,
    worker_pids: &[u32],
) {
    let conns = ready.max(1) as f64;
    if let (Some(b), Some(a)) = (before.rss_kib, after.rss_kib) {
        let per = a.saturating_sub(b) as f64 * 1024.0 / conns;
        println!(
            "server RSS: {b} KiB before, {a} KiB with the connections: {per:.0} bytes per connection (user space)"
        );
    }
    if let Some(workers) = rss_kib(worker_pids) {
        println!(
            "bench workers' RSS (client side, for scale): {workers} KiB, {:.0} bytes per connection",
            workers as f64 * 1024.0 / conns
        );
    }
    let (Some(b), Some(a)) = (&before.slabs, &after.slabs) else {
        println!("kernel slabs: not measured (/proc/slabinfo unreadable; it needs root)");
        return;
    };
    // Both ends of every connection are on this machine: two sockets per connection. Every
    // cache that grew is shown (the dentry cache also grows with other processes' file
    // activity; 128-byte caches hold the client's bind buckets too), and one socket is then
    // priced as one object of each of its caches, which no other process disturbs.
    println!(
        "kernel slab caches grown by ≥ 0.5 objects per connection (client and server socket, \
         both on this machine):"
    );
    let grown = grown_caches(b, a, conns);
    for (name, objects, size) in &grown {
        println!(
            "  {name:<18} {objects:+6.2} x {size:>5} B = {:>6.0} B",
            objects * *size as f64
        );
    }
    let sum: f64 = grown.iter().map(|(_, o, s)| o * *s as f64).sum();
    let pages = |m: &BTreeMap<String, Slab>| m.values().map(|s| s.pages).sum::<u64>();
    let all = (pages(a) as f64 - pages(b) as f64) * PAGE as f64 / conns;
    println!(
        "  these caches: {sum:.0} B per connection; all slab pages (any cause, other processes \
         included): {all:.0} B per connection"
    );
    match socket_price() {
        Some((bytes, in_pages, parts)) => println!(
            "  one socket = one object each of {parts}: {bytes} B ({in_pages:.0} B of slab \
             pages); a server holds one socket per connection"
        ),
        None => println!("  one socket: not priced (/sys/kernel/slab unreadable)"),
    }
    if let (Some(b), Some(a)) = (before.tcp_mem_pages, after.tcp_mem_pages) {
        println!(
            "  TCP buffer memory (/proc/net/sockstat mem): {b} pages before, {a} after: {:.0} B per connection",
            (a as f64 - b as f64) * PAGE as f64 / conns
        );
    }
}

/// Prints the servers' RSS and the slab growth once more, after the hold.
pub(super) fn report_held(before: &Snapshot, held: &Snapshot, ready: usize) {
    let conns = ready.max(1) as f64;
    if let (Some(b), Some(a)) = (before.rss_kib, held.rss_kib) {
        println!(
            "server RSS at the end of the hold: {a} KiB: {:.0} bytes per connection (user space)",
            a.saturating_sub(b) as f64 * 1024.0 / conns
        );
    }
    if let (Some(b), Some(a)) = (&before.slabs, &held.slabs) {
        let grown = grown_caches(b, a, conns);
        let sum: f64 = grown.iter().map(|(_, o, s)| o * *s as f64).sum();
        let names: Vec<&str> = grown.iter().map(|(n, _, _)| n.as_str()).collect();
        println!(
            "slab caches grown by ≥ 0.5 objects per connection at the end of the hold: {sum:.0} B \
             per connection ({})",
            names.join(", ")
        );
    }
}

/// The caches that grew by at least half an object per connection: name, objects per
/// connection, object size; largest first.
fn grown_caches(
    before: &BTreeMap<String, Slab>,
    after: &BTreeMap<String, Slab>,
    conns: f64,
) -> Vec<(String, f64, u64)> {
    let mut grown: Vec<(String, f64, u64)> = after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).map_or(0, |s| s.active_objects);
            let objects = (a.active_objects as f64 - b as f64) / conns;
            (name.clone(), objects, a.object_size)
        })
        .filter(|(_, objects, _)| *objects >= 0.5)
        .collect();
    grown.sort_by(|x, y| (y.1 * y.2 as f64).total_cmp(&(x.1 * x.2 as f64)));
    grown
}

/// One object of each of [`SOCKET_CACHES`], from `/sys/kernel/slab/<cache>` (`slab_size` is
/// the object with its metadata; a slab of `2^order` pages holds `objs_per_slab`): bytes,
/// bytes of slab pages, and the caches found.
fn socket_price() -> Option<(u64, f64, String)> {
    let read = |cache: &str, file: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/kernel/slab/{cache}/{file}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut bytes = 0;
    let mut in_pages = 0.0;
    let mut found = Vec::new();
    for cache in SOCKET_CACHES {
        let (Some(size), Some(order), Some(per_slab)) = (
            read(cache, "slab_size"),
            read(cache, "order"),
            read(cache, "objs_per_slab"),
        ) else {
            continue;
        };
        bytes += size;
        in_pages += (PAGE << order) as f64 / per_slab.max(1) as f64;
        found.push(format!("{cache} {size}"));
    }
    (!found.is_empty()).then(|| (bytes, in_pages, found.join(", ")))
}

/// Sum of the resident set sizes of `pids`, in KiB.
pub(super) fn rss_kib(pids: &[u32]) -> Option<u64> {
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

/// `/proc/slabinfo` by cache name (version 2.1: name, active objects, objects, object size,
/// objects per slab, pages per slab, `: tunables` …, `: slabdata` active slabs, slabs, …).
fn slabinfo() -> Option<BTreeMap<String, Slab>> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(name), Some(active), Some(size), Some(per_slab), Some(slabs)) =
            (f.first(), number(1), number(3), number(5), number(14))
        else {
            continue;
        };
        out.insert(
            (*name).to_string(),
            Slab {
                active_objects: active,
                object_size: size,
                pages: per_slab * slabs,
            },
        );
    }
    Some(out)
}

/// One field of the `TCP:` line of `/proc/net/sockstat`: `inuse` sockets (listeners
/// included), `mem` pages of socket buffers.
pub(super) fn sockstat_tcp(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == field)?;
    words.next()?.parse().ok()
}

/// Sums `ss -tm`'s `skmem` of the server ends (local port `port`): what their buffers hold.
pub(super) async fn ss_buffers(port: u16) -> Result<String, String> {
    let filter = format!("( sport = :{port} )");
    let out = tokio::process::Command::new("ss")
        .args(["-tmnH", "state", "established", &filter])
        .output()
        .await
        .map_err(|e| format!("cannot run ss: {e}"))?;
    if !out.status.success() {
        return Err(format!("ss exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // skmem:(r<rmem_alloc>,rb<rcvbuf>,t<wmem_alloc>,tb<sndbuf>,f<fwd_alloc>,w<wmem_queued>,
    // o<opt_mem>,bl<backlog>,d<drops>): rb and tb are limits, the rest is memory held.
    let mut sockets = 0u64;
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for skmem in text.split("skmem:(").skip(1) {
        sockets += 1;
        let fields = skmem.split(')').next().unwrap_or("");
        for field in fields.split(',') {
            let name_len = field.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
            let (name, value) = field.split_at(name_len);
            if matches!(name, "r" | "t" | "f" | "w" | "o" | "bl")
                && let Ok(v) = value.parse::<u64>()
            {
                *held.entry(name).or_default() += v;
            }
        }
    }
    let total: u64 = held.values().sum();
    let per = total as f64 / sockets.max(1) as f64;
    let fields: Vec<String> = held.iter().map(|(k, v)| format!("{k} {v}")).collect();
    Ok(format!(
        "ss -tm, server ends: {sockets} sockets; buffer bytes held in all ({}): {total}, {per:.0} B per socket",
        fields.join(", ")
    ))
}
