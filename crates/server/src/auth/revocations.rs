//! Token revocation: one token by its id (`jti`), or every token of one subject issued at or
//! before a cutoff. The rows live in the game's store (`dmw_revocations`), so every instance
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

/// A revocation as stored: (game, kind "jti" or "sub", value, cutoff seconds).
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

/// The revocations in force.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// (game, jti)
    jtis: HashSet<(Box<str>, Box<str>)>,
    /// (game, subject) → cutoff: tokens issued at or before it are refused.
    subjects: HashMap<(Box<str>, Box<str>), u64>,
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
                self.jtis.insert((game.into(), value.into()));
            }
            "sub" => {
                let at = self
                    .subjects
                    .entry((game.into(), value.into()))
                    .or_default();
                *at = (*at).max(cutoff);
            }
            _ => {}
        }
    }

    /// True when `principal` came from a token that is revoked.
    pub fn revokes(&self, principal: &Principal) -> bool {
        let Some(token) = &principal.token else {
            return false;
        };
        if self.jtis.is_empty() && self.subjects.is_empty() {
            return false;
        }
        let by_id = token
            .jti
            .as_ref()
            .is_some_and(|jti| self.jtis.contains(&(token.game.clone(), jti.clone())));
        let by_subject = self
            .subjects
            .get(&(token.game.clone(), token.sub.clone()))
            .is_some_and(|cutoff| token.iat <= *cutoff);
        by_id || by_subject
    }

    pub fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A copy of `revocations` with one more.
pub fn with_one(
    revocations: &Revocations,
    game: &str,
    kind: &str,
    value: &str,
    cutoff: u64,
) -> Revocations {
    let mut next = Revocations {
        jtis: revocations.jtis.clone(),
        subjects: revocations.subjects.clone(),
    };
    next.add(game, kind, value, cutoff);
    next
}
