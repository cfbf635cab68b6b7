//! Machine profiles (`profile = "small" | "standard" | "large" | "flagship" | "auto"`): the
//! seed's machine sizes turned into defaults for the settings that scale with a machine —
//! connection limits, requests in flight, store connections, L1 and response memory. They sit
//! between the built-in defaults and the file: any key the file or the environment sets wins.
//!
//! The rules: the seed's 12,500 TCP connections per core (50,000 on 4 cores); a fifth as many
//! HTTP connections, whose clients (web and admin tools) come and go; 1,024 requests in flight
//! and 8 store connections per core (at most 256); an eighth of the memory for L1 and a
//! thirty-second for responses being written.

use serde::{Deserialize, Serialize};

/// A machine size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 4 cores, 16 GiB: the seed's 50,000 connections.
    Small,
    /// 8 cores, 32 GiB: 100,000 connections.
    Standard,
    /// 16 cores, 64 GiB: 200,000 connections.
    Large,
    /// 32 cores, 128 GiB: 400,000 connections.
    Flagship,
    /// This machine's cores and memory, by the same rules.
    Auto,
}

impl Profile {
    /// Cores and memory the profile sizes for (`Auto`: this machine's).
    pub fn machine(self) -> (u64, u64) {
        match self {
            Profile::Small => (4, 16 << 30),
            Profile::Standard => (8, 32 << 30),
            Profile::Large => (16, 64 << 30),
            Profile::Flagship => (32, 128 << 30),
            Profile::Auto => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
                let memory = crate::ops::doctor::Machine::read()
                    .memory_total_bytes
                    .unwrap_or(4 << 30);
                (cores, memory)
            }
        }
    }

    /// The settings this profile gives, as a partial configuration (a TOML table: JSON
    /// numbers here are exact-digit objects that figment would not read as integers).
    pub fn settings(self) -> toml::Table {
        let (cores, memory) = self.machine();
        settings_for(cores.max(1), memory.max(1 << 30))
    }
}

/// The rules of the module header, for `cores` and `memory` bytes.
fn settings_for(cores: u64, memory: u64) -> toml::Table {
    let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let section = |pairs: &[(&str, u64)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), int(*v)))
                .collect(),
        )
    };
    let mut table = toml::Table::new();
    table.insert(
        "tcp".into(),
        section(&[("max_connections", 12_500 * cores)]),
    );
    table.insert(
        "http".into(),
        section(&[
            ("max_connections", 2_500 * cores),
            ("max_in_flight", 1_024 * cores),
        ]),
    );
    table.insert(
        "store".into(),
        section(&[("max_connections", (8 * cores).min(256))]),
    );
    table.insert("cache".into(), section(&[("l1_max_bytes", memory / 8)]));
    table.insert(
        "responses".into(),
        section(&[("max_total_bytes", memory / 32)]),
    );
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_sizes_give_the_seeds_connections() {
        for (profile, connections) in [
            (Profile::Small, 50_000),
            (Profile::Standard, 100_000),
            (Profile::Large, 200_000),
            (Profile::Flagship, 400_000),
        ] {
            let settings = profile.settings();
            assert_eq!(
                settings["tcp"]["max_connections"].as_integer(),
                Some(connections),
                "{profile:?}"
            );
        }
        let small = Profile::Small.settings();
        assert_eq!(small["cache"]["l1_max_bytes"].as_integer(), Some(2 << 30));
        assert_eq!(small["store"]["max_connections"].as_integer(), Some(32));
        let flagship = Profile::Flagship.settings();
        assert_eq!(flagship["store"]["max_connections"].as_integer(), Some(256));
    }

    #[test]
    fn auto_reads_this_machine() {
        let cores = std::thread::available_parallelism().unwrap().get() as i64;
        let settings = Profile::Auto.settings();
        assert_eq!(
            settings["tcp"]["max_connections"].as_integer(),
            Some(12_500 * cores)
        );
        assert!(settings["cache"]["l1_max_bytes"].as_integer().unwrap() >= 128 << 20);
    }
}
