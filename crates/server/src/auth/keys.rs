//! API keys: the table of configured keys by SHA-256 digest, new keys, and what a reload
//! changed.
//!
//! A key is never stored: the configuration holds its digest, and a presented key is hashed
//! and looked up. Keys made by [`new_key`] are 32 bytes from the operating system's random
//! source, so the digest cannot be reversed by guessing, and a hash-map lookup by digest
//! leaks nothing useful through its timing (an attacker controls the key, not its digest).

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Games, Principal};
use crate::config::{ApiKeyConfig, AuthConfig};

/// Prefix of keys made by [`new_key`], so a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "dmw_";

/// The configured keys, by digest.
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<Principal>, foldhash::fast::RandomState>,
}

/// What a reload changed, by key name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same key, new name, role or games.
    pub changed: Vec<String>,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl KeyTable {
    /// The keys of a validated configuration.
    pub fn from_config(config: &AuthConfig) -> KeyTable {
        let by_digest = config
            .keys
            .iter()
            .filter_map(|key| Some((parse_digest(&key.sha256)?, key)))
            .map(|(digest, key)| (digest, Arc::new(principal(key, digest))))
            .collect();
        KeyTable { by_digest }
    }

    /// The principal of a presented key.
    pub fn find(&self, key: &str) -> Option<Arc<Principal>> {
        self.get(&digest(key))
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        self.by_digest.get(digest).cloned()
    }

    /// The digest of the key named `name`.
    pub fn digest_of(&self, name: &str) -> Option<[u8; 32]> {
        self.by_digest
            .iter()
            .find(|(_, principal)| &*principal.name == name)
            .map(|(digest, _)| *digest)
    }

    /// What changes from this table to `new`.
    pub fn changes_to(&self, new: &KeyTable) -> KeyChanges {
        let mut changes = KeyChanges::default();
        for (digest, old) in &self.by_digest {
            match new.by_digest.get(digest) {
                None => changes.removed.push(old.name.to_string()),
                Some(new)
                    if new.name != old.name || new.role != old.role || new.games != old.games =>
                {
                    changes.changed.push(new.name.to_string())
                }
                Some(_) => {}
            }
        }
        for (digest, new) in &new.by_digest {
            if !self.by_digest.contains_key(digest) {
                changes.added.push(new.name.to_string());
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes
    }
}

fn principal(key: &ApiKeyConfig, digest: [u8; 32]) -> Principal {
    let games = if key.games.iter().any(|g| g == "*") {
        Games::All
    } else {
        Games::Only(key.games.iter().map(|g| g.as_str().into()).collect())
    };
    Principal {
        name: key.name.as_str().into(),
        role: key.role,
        games,
        key: Some(digest),
        subject: None,
        valid: (0, u64::MAX),
        token: None,
    }
}

/// SHA-256 of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of a key, in the lowercase hex the configuration holds.
pub fn digest_hex(key: &str) -> String {
    hex::encode(digest(key))
}

/// A configured digest (64 hex digits), or `None`.
pub fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

/// A new key: [`KEY_PREFIX`] and 32 random bytes from the operating system, in hex.
pub fn new_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// Keys that appear in documentation and examples, or that anyone would guess: a digest of
/// one of them in the configuration is refused.
pub const WELL_KNOWN_KEYS: &[&str] = &[
    "",
    "dmw_example_key_do_not_use",
    "changeme",
    "secret",
    "password",
    "admin",
    "test",
    "example",
    "apikey",
    "api_key",
];

/// True when `digest` is the digest of a well-known key.
pub fn is_well_known(digest: &[u8; 32]) -> bool {
    WELL_KNOWN_KEYS
        .iter()
        .any(|key| &self::digest(key) == digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn config(keys: &[(&str, &str, Role, &[&str])]) -> AuthConfig {
        AuthConfig {
            enabled: true,
            keys: keys
                .iter()
                .map(|(name, key, role, games)| ApiKeyConfig {
                    name: name.to_string(),
                    sha256: digest_hex(key),
                    role: *role,
                    games: games.iter().map(|g| g.to_string()).collect(),
                })
                .collect(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn a_key_is_found_by_its_digest_only() {
        let table = KeyTable::from_config(&config(&[("eu1", "k1", Role::Server, &["rpg"])]));
        let found = table.find("k1").expect("the configured key");
        assert_eq!(&*found.name, "eu1");
        assert_eq!(found.games, Games::Only(vec!["rpg".into()].into()));
        assert!(table.find("k2").is_none());
        assert!(
            table.find(&digest_hex("k1")).is_none(),
            "the digest is not a key"
        );
    }

    #[test]
    fn a_reload_reports_each_change_by_name() {
        let old = KeyTable::from_config(&config(&[
            ("gone", "k1", Role::Server, &["*"]),
            ("kept", "k2", Role::Server, &["*"]),
            ("narrowed", "k3", Role::Server, &["*"]),
        ]));
        let new = KeyTable::from_config(&config(&[
            ("kept", "k2", Role::Server, &["*"]),
            ("narrowed", "k3", Role::Server, &["rpg"]),
            ("new", "k4", Role::Readonly, &["*"]),
        ]));
        let changes = old.changes_to(&new);
        assert_eq!(changes.added, ["new"]);
        assert_eq!(changes.removed, ["gone"]);
        assert_eq!(changes.changed, ["narrowed"]);
    }

    #[test]
    fn new_keys_are_distinct_and_hex() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert!(parse_digest(&a[KEY_PREFIX.len()..]).is_some());
    }

    #[test]
    fn the_documented_example_key_is_well_known() {
        assert!(is_well_known(&digest("dmw_example_key_do_not_use")));
        assert!(!is_well_known(&digest(&new_key().unwrap())));
    }
}
