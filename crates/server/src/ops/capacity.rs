//! `datamiddleware capacity`: the seed's capacity model (usable CPU = cores × 70 % target use ×
//! 0.8 safety; usable memory = total − system reserve − cache), fed with what this build
//! measured per connection and per request (docs/performance.md), printing the cores, memory
//! and instances a load needs. A model, not a promise: measure the real mix with
//! `datamiddleware bench` and pass its CPU cost with `--cpu-us`.

/// A machine size: the seed's four, or this machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub name: &'static str,
    pub cores: f64,
    pub memory_bytes: u64,
}

pub const SMALL: Machine = Machine {
    name: "small",
    cores: 4.0,
    memory_bytes: 16 << 30,
};
pub const STANDARD: Machine = Machine {
    name: "standard",
    cores: 8.0,
    memory_bytes: 32 << 30,
};
pub const LARGE: Machine = Machine {
    name: "large",
    cores: 16.0,
    memory_bytes: 64 << 30,
};
pub const FLAGSHIP: Machine = Machine {
    name: "flagship",
    cores: 32.0,
    memory_bytes: 128 << 30,
};

/// Target CPU use and safety factor of the seed's model.
const CPU_TARGET: f64 = 0.7;
const CPU_SAFETY: f64 = 0.8;
/// Memory left to the system: an eighth of the machine, at least 1 GiB.
fn system_reserve(total: u64) -> u64 {
    (total / 8).max(1 << 30)
}
/// Bytes per open connection: 1.7 KB in the process and 4.0 KB in the kernel, measured with
/// 250,000 heartbeating TCP connections (docs/performance.md).
pub const BYTES_PER_CONNECTION: f64 = 5_700.0;

/// CPU microseconds per request by kind, from the side-by-side runs of docs/performance.md on
/// 2 cores shared with the load generator (so they overstate the server's share).
#[derive(Debug, Clone, Copy)]
pub enum Mix {
    /// Cached GETs over HTTP/1.1 keep-alive: ~140,000 req/s on 2 cores.
    HttpHits,
    /// Cached GETs over the TCP protocol, pipelined (depth 16): ~1,600,000 req/s on 2 cores.
    TcpPipelined,
    /// Cached GETs over the TCP protocol, one at a time per connection: ~190,000 req/s.
    TcpOneByOne,
}

impl Mix {
    pub fn parse(text: &str) -> Option<Mix> {
        Some(match text {
            "http" => Mix::HttpHits,
            "tcp" => Mix::TcpPipelined,
            "tcp-depth-1" => Mix::TcpOneByOne,
            _ => return None,
        })
    }

    pub fn cpu_us(self) -> f64 {
        match self {
            Mix::HttpHits => 2.0 * 1e6 / 140_000.0,
            Mix::TcpPipelined => 2.0 * 1e6 / 1_600_000.0,
            Mix::TcpOneByOne => 2.0 * 1e6 / 190_000.0,
        }
    }
}

/// What a load needs on machines of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub usable_cores: f64,
    pub usable_memory_bytes: f64,
    pub cores_needed: f64,
    pub memory_needed_bytes: f64,
    pub by_cpu: u64,
    pub by_memory: u64,
    /// At least two: one instance lost must not stop the service.
    pub instances: u64,
}

/// The plan for `connections` open at once and `rps` requests a second costing `cpu_us`
/// each, with an L1 cache of `l1_bytes` per instance.
pub fn plan(machine: Machine, connections: u64, rps: f64, cpu_us: f64, l1_bytes: u64) -> Plan {
    let usable_cores = machine.cores * CPU_TARGET * CPU_SAFETY;
    let usable_memory_bytes = machine
        .memory_bytes
        .saturating_sub(system_reserve(machine.memory_bytes))
        .saturating_sub(l1_bytes) as f64;
    let cores_needed = rps * cpu_us / 1e6;
    let memory_needed_bytes = connections as f64 * BYTES_PER_CONNECTION;
    let by_cpu = (cores_needed / usable_cores).ceil().max(1.0) as u64;
    let by_memory = if usable_memory_bytes <= 0.0 {
        u64::MAX
    } else {
        (memory_needed_bytes / usable_memory_bytes).ceil().max(1.0) as u64
    };
    Plan {
        usable_cores,
        usable_memory_bytes,
        cores_needed,
        memory_needed_bytes,
        by_cpu,
        by_memory,
        instances: by_cpu.max(by_memory).max(2),
    }
}

/// The printed report.
pub fn report(machine: Machine, connections: u64, rps: f64, cpu_us: f64, l1_bytes: u64) -> String {
    let p = plan(machine, connections, rps, cpu_us, l1_bytes);
    let gib = |b: f64| b / f64::from(1u32 << 30);
    let mut text = String::new();
    text.push_str(&format!(
        "machine {}: {} cores, {:.0} GiB\n",
        machine.name,
        machine.cores,
        gib(machine.memory_bytes as f64)
    ));
    text.push_str(&format!(
        "usable CPU    = {} cores × {CPU_TARGET} target × {CPU_SAFETY} safety = {:.1} cores\n",
        machine.cores, p.usable_cores
    ));
    text.push_str(&format!(
        "usable memory = {:.1} GiB − {:.1} GiB system − {:.1} GiB L1 = {:.1} GiB\n",
        gib(machine.memory_bytes as f64),
        gib(system_reserve(machine.memory_bytes) as f64),
        gib(l1_bytes as f64),
        gib(p.usable_memory_bytes)
    ));
    text.push_str(&format!(
        "CPU needed    = {rps:.0} req/s × {cpu_us:.2} µs = {:.1} cores → {} instance(s)\n",
        p.cores_needed, p.by_cpu
    ));
    text.push_str(&format!(
        "memory needed = {connections} connections × {:.1} KB = {:.1} GiB → {} instance(s)\n",
        BYTES_PER_CONNECTION / 1000.0,
        gib(p.memory_needed_bytes),
        if p.by_memory == u64::MAX {
            "no".to_string()
        } else {
            p.by_memory.to_string()
        }
    ));
    text.push_str(&format!(
        "instances     = {} (the larger, and at least 2 so that losing one is not an outage)\n",
        p.instances
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_standard_machine_and_load() {
        // The seed's "standard" figure: 100,000 connections and 50,000 req/s on 8 cores, 32 GB.
        let p = plan(
            STANDARD,
            100_000,
            50_000.0,
            Mix::HttpHits.cpu_us(),
            256 << 20,
        );
        assert!((p.usable_cores - 4.48).abs() < 1e-9, "{p:?}");
        assert!((p.cores_needed - 50_000.0 * 2.0 / 140_000.0).abs() < 1e-9);
        assert_eq!((p.by_cpu, p.by_memory), (1, 1));
        assert_eq!(p.instances, 2, "never fewer than two");
    }

    #[test]
    fn the_scarcer_resource_decides() {
        // 2 million connections: memory (5.7 KB each = 10.6 GiB) on small machines.
        let p = plan(
            SMALL,
            2_000_000,
            10_000.0,
            Mix::TcpPipelined.cpu_us(),
            1 << 30,
        );
        let usable = (16u64 << 30) - (2u64 << 30) - (1u64 << 30);
        assert_eq!(p.by_memory, (2e6 * 5_700.0 / usable as f64).ceil() as u64);
        assert_eq!(p.by_cpu, 1);
        assert_eq!(p.instances, p.by_memory.max(2));
        // A million requests a second over HTTP: CPU.
        let p = plan(LARGE, 10_000, 1_000_000.0, Mix::HttpHits.cpu_us(), 0);
        assert_eq!(
            p.by_cpu,
            (1e6_f64 * 2.0 / 140_000.0 / (16.0 * 0.56)).ceil() as u64
        );
        assert_eq!(p.instances, p.by_cpu);
        let text = report(LARGE, 10_000, 1_000_000.0, Mix::HttpHits.cpu_us(), 0);
        assert!(
            text.contains("usable CPU    = 16 cores × 0.7 target × 0.8 safety = 9.0 cores"),
            "{text}"
        );
    }

    #[test]
    fn a_cache_larger_than_the_machine_fits_no_connection() {
        let p = plan(SMALL, 1_000, 100.0, 10.0, 64 << 30);
        assert_eq!(p.by_memory, u64::MAX);
        assert!(report(SMALL, 1_000, 100.0, 10.0, 64 << 30).contains("→ no instance(s)"));
    }
}
