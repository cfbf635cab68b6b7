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
        let token_keys = !auth.tokens.keys.is_empty() || auth.tokens.jwks_file.is_some();
        if auth.enabled && auth.keys.is_empty() && !token_keys {
            return invalid(
                "auth.keys".into(),
                "auth.enabled = true needs at least one key (datamiddleware key new makes one) \
                 or token key"
                    .into(),
            );
        }
        if token_keys {
            if auth.tokens.issuer.is_empty() || auth.tokens.audience.is_empty() {
                return invalid(
                    "auth.tokens.issuer".into(),
                    "issuer and audience must not be empty".into(),
                );
            }
            if auth.tokens.leeway > std::time::Duration::from_secs(300) {
                return invalid("auth.tokens.leeway".into(), "at most 5m".into());
            }
            if auth.tokens.mint_ttl < std::time::Duration::from_secs(1)
                || auth.tokens.mint_ttl > std::time::Duration::from_secs(24 * 3600)
            {
                return invalid("auth.tokens.mint_ttl".into(), "between 1s and 24h".into());
            }
            if let Err((key, problem)) = crate::auth::Tokens::from_config(&auth.tokens) {
                return invalid(key, problem);
            }
        }
        if !auth.enabled && !auth.allow_insecure {
            let mut listening = vec![("http.listen", self.http.listen)];
            if let Some(addr) = self.ops.listen {
                listening.push(("ops.listen", addr));
            }
            if let Some(addr) = self.http.tls_listen {
                listening.push(("http.tls_listen", addr));
            }
            if self.tcp.enabled {
                listening.push(("tcp.listen", self.tcp.listen));
                if let Some(addr) = self.tcp.tls_listen {
                    listening.push(("tcp.tls_listen", addr));
                }
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
        if self.tcp.tls_listen.is_some() && !self.tcp.enabled {
            return invalid(
                "tcp.tls_listen".into(),
                "needs tcp.enabled = true (it serves the TCP protocol over TLS)".into(),
            );
        }
        if (self.http.tls_listen.is_some() || self.tcp.tls_listen.is_some())
            && let Err(problem) = crate::ingress::tls::Tls::from_config(&self.tls)
        {
            return invalid("tls".into(), problem);
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
            if key.role == crate::auth::Role::Player {
                return invalid(
                    format!("{at}.role"),
                    "player is the role of tokens: give a key admin, server or readonly".into(),
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
