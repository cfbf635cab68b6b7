//! The process's own resources, read from `/proc` at each scrape (Linux; elsewhere nothing is
//! reported): resident memory, CPU time and open file descriptors — what the seed's
//! troubleshooting starts from ("high CPU", "memory growth", "too many open files"), and the
//! log lines the non-blocking writer had to drop.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            let gauge = ConstGauge::new(rss as i64);
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(seconds) = cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time used by the process (user and system)",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(threads) = threads() {
            let gauge = ConstGauge::new(threads as i64);
            let metric = encoder.encode_descriptor(
                "process_threads",
                "Threads of the process: runtime workers, the blocking pool (SQLite, files), \
                 the log writer and the watchdog",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(fds) = open_fds() {
            let gauge = ConstGauge::new(fds as i64);
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors (sockets included)",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        let dropped = ConstCounter::new(super::logs::dropped_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer could not keep up (log.buffered_lines)",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)?;
        Ok(())
    }
}

/// `VmRSS` of `/proc/self/status` (in kB there: no page size to know).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `Threads` of `/proc/self/status`: tokio reports its blocking threads only in builds with
/// `tokio_unstable`, so the process's count stands in for them.
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `/proc/self/stat`, in clock ticks of 1/100 s (Linux's USER_HZ).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn open_fds() -> Option<usize> {
    // Listing the directory opens one more descriptor, which the listing shows too.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_reads_itself() {
        let rss = super::resident_bytes().unwrap();
        let threads = super::threads().unwrap();
        let extra =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        assert_eq!(
            super::threads().unwrap(),
            threads + 1,
            "a new thread is counted"
        );
        extra.join().unwrap();
        assert!(rss > 1 << 20, "at least a MiB resident: {rss}");
        let before = super::cpu_seconds().unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(super::cpu_seconds().unwrap() > before, "CPU time grows");
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let with = super::open_fds().unwrap();
        drop(file);
        assert_eq!(super::open_fds().unwrap(), with - 1);
    }
}
