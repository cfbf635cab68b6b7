//! The checks of the `[auth]` section: keys well formed and unique, games that exist, no
//! well-known key, and no open listener without authentication unless asked for.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Config, ConfigError};
use crate::auth::keys::{is_well_known, parse_digest};

impl Config {
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| Err(ConfigError::Invalid { key, problem });
        let auth = &self.auth;
        if auth.enabled && auth.keys.is_empty() {
            return invalid(
                "auth.keys".into(),
                "auth.enabled = true needs at least one key (datamiddleware key new makes one)"
                    .into(),
            );
        }
        if !auth.enabled && !auth.allow_insecure {
            let mut listening = vec![("http.listen", self.http.listen)];
            if self.tcp.enabled {
                listening.push(("tcp.listen", self.tcp.listen));
            }
            if let Some((key, addr)) = listening.into_iter().find(|(_, a)| !is_loopback(a)) {
                return invalid(
                    key.into(),
                    format!(
                        "{addr} is reachable from other machines while auth.enabled = false: \
                         enable auth with API keys, or set auth.allow_insecure = true"
                    ),
                );
            }
        }
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (i, key) in auth.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            if key.name.is_empty() || key.name.len() > 64 || key.name.chars().any(char::is_control)
            {
                return invalid(
                    format!("{at}.name"),
                    "must be 1-64 printable characters".into(),
                );
            }
            if !names.insert(key.name.as_str()) {
                return invalid(
                    format!("{at}.name"),
                    format!("{:?} is used twice", key.name),
                );
            }
            let Some(digest) = parse_digest(&key.sha256) else {
                return invalid(
                    format!("{at}.sha256"),
                    "must be the SHA-256 of the key in 64 hex digits, never the key itself".into(),
                );
            };
            if !digests.insert(digest) {
                return invalid(
                    format!("{at}.sha256"),
                    "the same key is configured twice".into(),
                );
            }
            if is_well_known(&digest) {
                return invalid(
                    format!("{at}.sha256"),
                    "is the digest of a well-known example key: make a key with \
                     datamiddleware key new"
                        .into(),
                );
            }
            if key.games.is_empty() {
                return invalid(
                    format!("{at}.games"),
                    "list its games, or [\"*\"] for all".into(),
                );
            }
            if let Some(unknown) = key
                .games
                .iter()
                .find(|g| *g != "*" && !self.games.contains_key(*g))
            {
                return invalid(
                    format!("{at}.games"),
                    format!("{unknown:?} is not a configured game"),
                );
            }
        }
        Ok(())
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
