//! `datamiddleware doctor`: checks this machine against the configuration — file descriptors
//! for the connection limits, the kernel's listen and SYN backlogs, the local port range, and
//! memory for the cache and the connections — and prints the exact command that fixes each
//! finding. The seed's tuning chapter, as a check instead of a script to paste; apply its
//! settings with `scripts/tune-linux.sh`.

use crate::config::Config;

/// What the checks read from the machine (from `/proc` on Linux; tests make their own).
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Soft and hard limits of open files for this process (`ulimit -n`, `ulimit -Hn`).
    pub open_files: Option<(u64, u64)>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub local_ports: Option<(u64, u64)>,
    pub memory_total_bytes: Option<u64>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    /// True when the machine is fine for this configuration.
    pub ok: bool,
    pub detail: String,
    /// The command that fixes it (empty when fine).
    pub fix: String,
}

/// The backlog `listen()` asks for (see `ingress::tcp::bind`); the kernel caps it at
/// `somaxconn`.
const LISTEN_BACKLOG: u64 = 4096;
/// Bytes per open connection, user space and kernel (measured: docs/performance.md).
const BYTES_PER_CONNECTION: u64 = 6 * 1024;

impl Machine {
    /// This machine, as far as `/proc` tells.
    pub fn read() -> Machine {
        let number =
            |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
        Machine {
            open_files: open_files_limit(),
            somaxconn: number("/proc/sys/net/core/somaxconn"),
            tcp_max_syn_backlog: number("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            local_ports: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .and_then(|text| {
                    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
                    Some((parts.next()?.ok()?, parts.next()?.ok()?))
                }),
            memory_total_bytes: std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            }),
        }
    }
}

/// "Max open files  <soft>  <hard>  files" of `/proc/self/limits`.
fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..]
        .split_whitespace()
        .map(|n| match n {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        });
    Some((numbers.next()??, numbers.next()??))
}

/// Every check of `config` on `machine`; a value the machine did not tell is reported, not
/// guessed.
pub fn check(config: &Config, machine: &Machine) -> Vec<Finding> {
    // Each listener has its own limit: a TLS listener beside a plain one doubles it.
    let listeners = |tls: bool| if tls { 2 } else { 1 };
    let connections = (config.http.max_connections * listeners(config.http.tls_listen.is_some())
        + config.tcp.max_connections * listeners(config.tcp.tls_listen.is_some()))
        as u64;
    // One pool per distinct store URL (the default game's when none is configured).
    let urls: std::collections::HashSet<&str> =
        config.games.values().map(|g| g.store.as_str()).collect();
    let stores = urls.len().max(1) as u64 * u64::from(config.store.max_connections);
    // The listeners, the stores, Redis, log files and some slack.
    let files_needed = connections + stores + 64;
    let mut findings = Vec::new();
    let unknown = |check, what: &str| Finding {
        check,
        ok: false,
        detail: format!("cannot read {what} on this system"),
        fix: String::new(),
    };
    findings.push(match machine.open_files {
        None => unknown("open files", "/proc/self/limits"),
        Some((soft, _)) if soft >= files_needed => Finding {
            check: "open files",
            ok: true,
            detail: format!("limit {soft} ≥ {files_needed} needed"),
            fix: String::new(),
        },
        Some((soft, hard)) => Finding {
            check: "open files",
            ok: false,
            detail: format!(
                "limit {soft} (hard {hard}) < {files_needed} needed for http.max_connections + \
                 tcp.max_connections + store connections"
            ),
            fix: if files_needed <= hard {
                format!(
                    "ulimit -n {files_needed}   # before starting; under systemd: LimitNOFILE={files_needed}"
                )
            } else {
                format!(
                    "under systemd: LimitNOFILE={files_needed}; else raise the hard limit in \
                     /etc/security/limits.conf (nofile {files_needed}) — or lower the \
                     connection limits, or run several processes with tcp.reuse_port"
                )
            },
        },
    });
    findings.push(match machine.somaxconn {
        None => unknown("listen backlog", "net.core.somaxconn"),
        Some(n) if n >= LISTEN_BACKLOG => Finding {
            check: "listen backlog",
            ok: true,
            detail: format!("net.core.somaxconn {n} ≥ {LISTEN_BACKLOG}"),
            fix: String::new(),
        },
        Some(n) => Finding {
            check: "listen backlog",
            ok: false,
            detail: format!(
                "net.core.somaxconn {n} caps the listen backlog below {LISTEN_BACKLOG}: bursts of \
                 new connections are dropped"
            ),
            fix: format!("sysctl -w net.core.somaxconn={LISTEN_BACKLOG}"),
        },
    });
    findings.push(match machine.tcp_max_syn_backlog {
        None => unknown("SYN backlog", "net.ipv4.tcp_max_syn_backlog"),
        Some(n) if n >= LISTEN_BACKLOG => Finding {
            check: "SYN backlog",
            ok: true,
            detail: format!("net.ipv4.tcp_max_syn_backlog {n} ≥ {LISTEN_BACKLOG}"),
            fix: String::new(),
        },
        Some(n) => Finding {
            check: "SYN backlog",
            ok: false,
            detail: format!("net.ipv4.tcp_max_syn_backlog {n} < {LISTEN_BACKLOG}"),
            fix: format!("sysctl -w net.ipv4.tcp_max_syn_backlog={LISTEN_BACKLOG}"),
        },
    });
    findings.push(match machine.local_ports {
        None => unknown("local ports", "net.ipv4.ip_local_port_range"),
        Some((low, high)) if high.saturating_sub(low) >= 60_000 => Finding {
            check: "local ports",
            ok: true,
            detail: format!("{} ports ({low}-{high})", high - low + 1),
            fix: String::new(),
        },
        Some((low, high)) => Finding {
            check: "local ports",
            ok: false,
            detail: format!(
                "only {} local ports ({low}-{high}): a proxy or load generator on this machine \
                 runs out of them",
                high.saturating_sub(low) + 1
            ),
            fix: "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".to_string(),
        },
    });
    let memory_needed = config.cache.l1_max_bytes + connections * BYTES_PER_CONNECTION;
    findings.push(match machine.memory_total_bytes {
        None => unknown("memory", "/proc/meminfo"),
        Some(total) if memory_needed <= total / 2 => Finding {
            check: "memory",
            ok: true,
            detail: format!(
                "{} MiB for the L1 cache and full connection limits, ≤ half of {} MiB",
                memory_needed >> 20,
                total >> 20
            ),
            fix: String::new(),
        },
        Some(total) => Finding {
            check: "memory",
            ok: false,
            detail: format!(
                "the L1 cache ({} MiB) and full connection limits (~{} MiB) need {} MiB, more \
                 than half of {} MiB",
                config.cache.l1_max_bytes >> 20,
                (connections * BYTES_PER_CONNECTION) >> 20,
                memory_needed >> 20,
                total >> 20
            ),
            fix: format!(
                "lower cache.l1_max_bytes (DMW_CACHE__L1_MAX_BYTES={})",
                (total / 4) & !((1 << 20) - 1)
            ),
        },
    });
    findings
}

/// The report `doctor` prints, and whether every check passed.
pub fn report(findings: &[Finding]) -> (String, bool) {
    let mut text = String::new();
    for f in findings {
        let mark = if f.ok { "ok  " } else { "FIX " };
        text.push_str(&format!("{mark} {:<15} {}\n", f.check, f.detail));
        if !f.fix.is_empty() {
            text.push_str(&format!("     {:<15} {}\n", "", f.fix));
        }
    }
    (text, findings.iter().all(|f| f.ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            open_files: Some((1_048_576, 1_048_576)),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(262_144),
            local_ports: Some((1024, 65_535)),
            memory_total_bytes: Some(24 << 30),
        }
    }

    #[test]
    fn a_tuned_machine_passes_the_defaults() {
        let findings = check(&Config::default(), &machine());
        assert!(findings.iter().all(|f| f.ok), "{findings:#?}");
        assert!(report(&findings).1);
    }

    #[test]
    fn each_shortfall_comes_with_its_fix() {
        let small = Machine {
            open_files: Some((1024, 20_000)),
            somaxconn: Some(128),
            tcp_max_syn_backlog: Some(512),
            local_ports: Some((32_768, 60_999)),
            memory_total_bytes: Some(512 << 20),
        };
        let findings = check(&Config::default(), &small);
        let fix = |check: &str| {
            let f = findings.iter().find(|f| f.check == check).unwrap();
            assert!(!f.ok, "{f:?}");
            f.fix.clone()
        };
        // Defaults: 10,000 HTTP + 10,000 TCP connections + 16 store connections + 64.
        assert_eq!(
            fix("open files"),
            "under systemd: LimitNOFILE=20080; else raise the hard limit in /etc/security/limits.conf \
             (nofile 20080) — or lower the connection limits, or run several processes with tcp.reuse_port"
        );
        assert_eq!(fix("listen backlog"), "sysctl -w net.core.somaxconn=4096");
        assert_eq!(
            fix("SYN backlog"),
            "sysctl -w net.ipv4.tcp_max_syn_backlog=4096"
        );
        assert!(fix("local ports").contains("1024 65535"));
        assert!(fix("memory").contains("DMW_CACHE__L1_MAX_BYTES="));
        let (text, all_ok) = report(&findings);
        assert!(!all_ok);
        assert!(text.contains("FIX  open files"), "{text}");
    }

    #[test]
    fn within_the_hard_limit_ulimit_is_enough() {
        let m = Machine {
            open_files: Some((1024, 1_048_576)),
            ..machine()
        };
        let f = &check(&Config::default(), &m)[0];
        assert!(f.fix.starts_with("ulimit -n 20080"), "{f:?}");
    }

    #[test]
    fn a_tls_listener_doubles_its_connection_limit() {
        let mut config = Config::default();
        config.tcp.tls_listen = Some("127.0.0.1:7443".parse().unwrap());
        let m = Machine {
            open_files: Some((1024, 1_048_576)),
            ..machine()
        };
        // 10,000 HTTP + 2 × 10,000 TCP + 16 store connections + 64.
        assert!(check(&config, &m)[0].fix.starts_with("ulimit -n 30080"));
    }

    #[test]
    fn this_machine_can_be_read() {
        let m = Machine::read();
        if cfg!(target_os = "linux") {
            let (soft, hard) = m.open_files.expect("/proc/self/limits");
            assert!(soft > 0 && hard >= soft);
            assert!(m.somaxconn.is_some() && m.memory_total_bytes.is_some());
        }
    }
}
