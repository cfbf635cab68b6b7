//! Revocation: one token by its id (`jti`), every token of one subject issued at or before a
//! cutoff, or one API key (by its digest, so a new key under the same name is not affected;
//! for good: a revoked key is never accepted again). The rows live in the game's store (`dmw_revocations`), so every instance
//! learns them by polling ([`POLL_EVERY`]) and they outlive restarts; the instance that takes
//! a revocation applies it at once. A revoked token is refused on every request, also when it
//! sits in the verified-token cache, and a TCP session holding it is closed at its next
//! request.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::Principal;

/// How often every instance reads the revocations in force.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a revocation is kept: tokens that live longer than this need a key rotation.
pub const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// A revocation as stored: (game, kind "jti", "sub" or "key", value, cutoff seconds).
pub type Row = (String, String, String, u64);

/// What a token says of itself that a revocation can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub game: Box<str>,
    pub sub: Box<str>,
    pub jti: Option<Box<str>>,
    /// `iat`, seconds since the Unix epoch (0 when the token has none: a subject revocation
    /// then covers it).
    pub iat: u64,
}

/// The revocations in force, by game (looked up with borrowed strings: no allocation on the
/// path of every token use).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revocations {
    /// Per game, the revoked token ids.
    jtis: HashMap<Box<str>, HashSet<Box<str>>>,
    /// Per game, subject → cutoff: its tokens issued at or before it are refused.
    subjects: HashMap<Box<str>, HashMap<Box<str>, u64>>,
    /// Digests of revoked API keys, whatever game's store holds the row.
    keys: HashSet<[u8; 32]>,
}

impl Revocations {
    /// From store rows (game, kind, value, cutoff_s); unknown kinds are ignored.
    pub fn from_rows(rows: impl IntoIterator<Item = Row>) -> Self {
        let mut revocations = Revocations::default();
        for (game, kind, value, cutoff) in rows {
            revocations.add(&game, &kind, &value, cutoff);
        }
        revocations
    }

    /// Adds one revocation.
    pub fn add(&mut self, game: &str, kind: &str, value: &str, cutoff: u64) {
        match kind {
            "jti" => {
                self.jtis
                    .entry(game.into())
                    .or_default()
                    .insert(value.into());
            }
            "sub" => {
                let subjects = self.subjects.entry(game.into()).or_default();
                let at = subjects.entry(value.into()).or_default();
                *at = (*at).max(cutoff);
            }
            "key" => {
                if let Some(digest) = super::keys::parse_digest(value) {
                    self.keys.insert(digest);
                }
            }
            _ => {}
        }
    }

    /// True when `principal` came from a token or an API key that is revoked.
    pub fn revokes(&self, principal: &Principal) -> bool {
        let Some(token) = &principal.token else {
            return !self.keys.is_empty() && principal.key.is_some_and(|k| self.keys.contains(&k));
        };
        let by_id = match (&token.jti, self.jtis.get(&*token.game)) {
            (Some(jti), Some(jtis)) => jtis.contains(&**jti),
            _ => false,
        };
        let by_subject = self
            .subjects
            .get(&*token.game)
            .and_then(|subjects| subjects.get(&*token.sub))
            .is_some_and(|cutoff| token.iat <= *cutoff);
        by_id || by_subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(game: &str, sub: &str, jti: &str, iat: u64) -> Principal {
        let mut principal = Principal::anonymous("t");
        principal.token = Some(TokenFacts {
            game: game.into(),
            sub: sub.into(),
            jti: Some(jti.into()),
            iat,
        });
        principal
    }

    #[test]
    fn a_revocation_names_one_game_and_a_cutoff_is_inclusive() {
        let revocations = Revocations::from_rows([
            ("rpg".into(), "jti".into(), "j1".into(), 0),
            ("rpg".into(), "sub".into(), "bob".into(), 100),
            ("rpg".into(), "other".into(), "x".into(), 0),
        ]);
        assert!(revocations.revokes(&token("rpg", "alice", "j1", 500)));
        assert!(
            !revocations.revokes(&token("fps", "alice", "j1", 500)),
            "another game"
        );
        assert!(
            revocations.revokes(&token("rpg", "bob", "j2", 100)),
            "issued at the cutoff"
        );
        assert!(
            !revocations.revokes(&token("rpg", "bob", "j2", 101)),
            "issued after it"
        );
        assert!(!revocations.revokes(&token("fps", "bob", "j2", 0)));
        assert!(
            !revocations.revokes(&Principal::anonymous("key")),
            "not a token"
        );
    }

    #[test]
    fn a_key_is_revoked_by_its_digest_in_every_game() {
        let digest = super::super::keys::digest("dmw_some_key");
        let key = |digest| Principal {
            key: Some(digest),
            ..Principal::anonymous("k")
        };
        let revocations =
            Revocations::from_rows([("rpg".into(), "key".into(), hex::encode(digest), 0)]);
        assert!(revocations.revokes(&key(digest)));
        assert!(!revocations.revokes(&key([7; 32])), "another key");
        assert!(
            !revocations.revokes(&token("rpg", "k", "j", 0)),
            "tokens are not keys"
        );
    }
}
