//! Authentication and authorization: who is calling, and what they may touch.
//!
//! Each front end turns its wire form into a [`Credential`] (TCP: the HELLO credential; HTTP:
//! `Authorization: Bearer …` or `X-Api-Key`). The [`Authenticator`] turns that into a
//! [`Principal`], and the service checks every request against it ([`Principal::authorize`])
//! before it looks at a game, so one rule holds for both front ends and for every route,
//! the inline TCP cache-hit path included.
//!
//! API keys are kept only as SHA-256 digests (`keys.rs`): a key is 32 random bytes, so a
//! fast hash is as safe as a password hash would be, and costs well under a microsecond
//! instead of milliseconds and megabytes per check. Keys can be replaced while running
//! ([`Authenticator::reload`]); a TCP connection authenticated with a key that was removed
//! is refused at its next request.
//!
//! Every failure to authenticate answers the same `unauthorized` message, whatever was wrong,
//! and no credential is ever logged.

pub mod keys;
pub mod limits;
pub mod revocations;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, RateLimitsConfig};
use crate::error::{ErrorCode, ServiceError};
pub use keys::{KeyChanges, KeyTable, digest_hex, new_key};
pub use limits::Limits;
pub use tokens::{Minted, Tokens};

/// The one message of every refused credential (no hint which part was wrong).
pub const UNAUTHORIZED: &str = "authentication failed: send a valid API key or token";

/// A credential as presented, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    None,
    /// `X-Api-Key` on HTTP, an API key in the TCP HELLO.
    ApiKey(&'a str),
    /// `Authorization: Bearer` on HTTP, a token in the TCP HELLO.
    Bearer(&'a str),
}

impl<'a> From<&'a datamiddleware_protocol::Credential> for Credential<'a> {
    fn from(wire: &'a datamiddleware_protocol::Credential) -> Self {
        use datamiddleware_protocol::Credential as Wire;
        match wire {
            Wire::None => Credential::None,
            Wire::ApiKey(key) => Credential::ApiKey(key),
            Wire::Token(token) => Credential::Bearer(token),
        }
    }
}

/// What a principal may do in the games it may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every game.
    Admin,
    /// Reads and writes every collection of its games.
    Server,
    /// Reads every collection of its games.
    Readonly,
    /// A player (a token's subject): reads its own documents and those of `public_read`
    /// collections, writes its own documents in `player_write` collections. Tokens only.
    Player,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Server => "server",
            Role::Readonly => "readonly",
            Role::Player => "player",
        }
    }
}

/// The kind of a request, for [`Principal::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// The games a principal may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Games {
    All,
    Only(Box<[Box<str>]>),
}

impl Games {
    fn contains(&self, game: &str) -> bool {
        match self {
            Games::All => true,
            Games::Only(games) => games.iter().any(|g| &**g == game),
        }
    }
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    /// The key's configured name (or, with auth off, the client's self-declared name): for logs.
    pub name: Box<str>,
    pub role: Role,
    pub games: Games,
    /// The digest of the key it was authenticated with, so it can be looked up again after a
    /// reload.
    key: Option<[u8; 32]>,
    /// A player's id (the token's `sub`): the owner of the documents it may touch.
    pub subject: Option<Box<str>>,
    /// Seconds since the Unix epoch: not before, and expiry (a token's `nbf` and `exp`,
    /// widened by the leeway; `(0, u64::MAX)` for keys).
    pub valid: (u64, u64),
    /// For a token, what a revocation can name.
    pub token: Option<revocations::TokenFacts>,
}

impl Principal {
    /// The caller when auth is off: everything is allowed.
    pub fn anonymous(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: Role::Admin,
            games: Games::All,
            key: None,
            subject: None,
            valid: (0, u64::MAX),
            token: None,
        }
    }

    /// `Ok` when this principal may `access` game `game`; else `forbidden`, and the refusal
    /// is written to the audit log.
    pub fn authorize(&self, game: &str, access: Access) -> Result<(), ServiceError> {
        // A player's finer rules (collection, owner) are the service's: see `owner_rule`.
        let role_allows = match self.role {
            Role::Admin | Role::Server | Role::Player => true,
            Role::Readonly => access == Access::Read,
        };
        if role_allows && self.games.contains(game) {
            return Ok(());
        }
        let reason = if role_allows {
            "game not allowed"
        } else {
            "role does not allow it"
        };
        Err(self.deny(access, game, reason))
    }

    /// The `forbidden` answer to `access` in `game` for `reason`, written to the audit log.
    pub fn deny(&self, access: Access, game: &str, reason: &str) -> ServiceError {
        tracing::warn!(
            target: "audit",
            principal = %self.name,
            role = self.role.as_str(),
            action = access.as_str(),
            game,
            reason,
            "request denied"
        );
        ServiceError::new(
            ErrorCode::Forbidden,
            format!(
                "this caller may not {} this in game {game:?}",
                access.as_str()
            ),
        )
    }

    /// For a player, its id: the owner every document it reads or writes in a collection
    /// that is not `public` must have. `None` for every other role (no owner rule).
    pub fn owner_rule(&self, public: bool) -> Option<&str> {
        match (&self.subject, public) {
            (Some(subject), false) => Some(subject),
            _ => None,
        }
    }

    /// True for the principal of a token (not of a key, nor anonymous).
    pub fn from_token(&self) -> bool {
        self.key.is_none() && self.valid.1 != u64::MAX
    }

    /// False once the token this principal came from has expired (keys never do).
    pub fn unexpired(&self) -> bool {
        self.valid.1 == u64::MAX || tokens::unix_now() <= self.valid.1
    }
}

/// Who is calling: what every service call is made on behalf of. (The request's context, such
/// as the client address for per-address limits, joins it with those limits.)
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
}

impl Caller {
    pub fn authorize(&self, game: &str, access: Access) -> Result<(), ServiceError> {
        self.principal.authorize(game, access)
    }

    /// A caller with no rights at all (a TCP connection before its handshake).
    pub fn nobody() -> Caller {
        Caller {
            principal: Arc::new(Principal {
                name: "unauthenticated".into(),
                role: Role::Readonly,
                games: Games::Only(Box::new([])),
                key: None,
                subject: None,
                valid: (0, u64::MAX),
                token: None,
            }),
        }
    }

    /// An anonymous caller with every right (auth off; tests and in-process callers).
    pub fn trusted() -> Caller {
        Caller {
            principal: Arc::new(Principal::anonymous("in-process")),
        }
    }
}

/// Turns credentials into principals, with the key table of the running configuration.
pub struct Authenticator {
    enabled: bool,
    keys: ArcSwap<KeyTable>,
    tokens: ArcSwap<Tokens>,
    /// Bumped by every reload and every change of the revocations: a TCP connection
    /// authenticated under an older one looks its credential up again ([`Authenticator::refresh`]).
    generation: AtomicU64,
    revocations: ArcSwap<revocations::Revocations>,
    /// Revocations taken here lately (a poll that started before their row was committed
    /// must not undo them): (when, game, kind, value, cutoff).
    recent: parking_lot::Mutex<Vec<(std::time::Instant, revocations::Row)>>,
    limits: Limits,
    refusals: Sampler,
    /// The principal of every HTTP request while auth is off (no allocation per request).
    anonymous: Arc<Principal>,
}

impl Authenticator {
    /// The authenticator of a validated configuration; the error names the token key entry
    /// that cannot be loaded.
    pub fn new(
        config: &AuthConfig,
        limits: &RateLimitsConfig,
        rejections: [prometheus_client::metrics::counter::Counter; 5],
    ) -> Result<Authenticator, String> {
        let tokens = Tokens::from_config(&config.tokens).map_err(|(at, e)| format!("{at}: {e}"))?;
        Ok(Authenticator {
            enabled: config.enabled,
            keys: ArcSwap::from_pointee(KeyTable::from_config(config)),
            tokens: ArcSwap::from_pointee(tokens),
            generation: AtomicU64::new(0),
            revocations: ArcSwap::default(),
            recent: parking_lot::Mutex::default(),
            limits: Limits::from_config(limits).counting_rejections(rejections),
            refusals: Sampler::default(),
            anonymous: Arc::new(Principal::anonymous("anonymous")),
        })
    }

    /// Mints a player token (see [`Tokens::mint`]).
    pub fn mint(
        &self,
        game: &str,
        subject: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<Minted, String> {
        self.tokens.load().mint(game, subject, ttl)
    }

    /// Changes with every reload and every change of the revocations.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// What a connection authenticated as `principal` (with `token`, when it presented one)
    /// acts as after the credentials in force changed: its key's new entry, its token verified
    /// again, or `unauthorized` when the key was removed or the token is refused now.
    pub fn refresh(
        &self,
        principal: &Arc<Principal>,
        token: Option<&str>,
    ) -> Result<Arc<Principal>, ServiceError> {
        let refreshed = match (token, principal.key) {
            (Some(token), _) => self.verify_token(token),
            (None, Some(digest)) => self.unrevoked(self.keys.load().get(&digest)),
            (None, None) => Some(principal.clone()),
        };
        refreshed.ok_or_else(unauthorized)
    }

    /// A token's principal unless it is invalid or revoked.
    fn verify_token(&self, token: &str) -> Option<Arc<Principal>> {
        self.unrevoked(self.tokens.load().verify(token))
    }

    fn unrevoked(&self, principal: Option<Arc<Principal>>) -> Option<Arc<Principal>> {
        principal.filter(|p| !self.revocations.load().revokes(p))
    }

    /// The SHA-256 (hex) of the configured API key named `name`.
    pub fn key_digest(&self, name: &str) -> Option<String> {
        self.keys.load().digest_of(name).map(hex::encode)
    }

    /// Replaces the revocations in force with those read from the stores (plus the ones
    /// taken here in the last seconds); when they changed, TCP sessions holding tokens check
    /// theirs again at their next request.
    pub fn set_revocations(&self, mut next: revocations::Revocations) {
        {
            let mut recent = self.recent.lock();
            recent.retain(|(at, ..)| at.elapsed() < 5 * revocations::POLL_EVERY);
            for (_, (game, kind, value, cutoff)) in recent.iter() {
                next.add(game, kind, value, *cutoff);
            }
        }
        self.replace_revocations(next);
    }

    fn replace_revocations(&self, next: revocations::Revocations) {
        if **self.revocations.load() != next {
            self.revocations.store(Arc::new(next));
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies one revocation on this instance at once (its row is in the store for the
    /// others).
    pub fn add_revocation(&self, game: &str, kind: &str, value: &str, cutoff: u64) {
        let row = (game.into(), kind.into(), value.into(), cutoff);
        self.recent.lock().push((std::time::Instant::now(), row));
        let mut next = revocations::Revocations::clone(&self.revocations.load());
        next.add(game, kind, value, cutoff);
        self.replace_revocations(next);
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The rate limits both front ends check.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The principal of `credential`, or `unauthorized` with [`UNAUTHORIZED`]. With auth off
    /// every caller is an anonymous admin named `client_name` (or `anonymous`).
    pub fn authenticate(
        &self,
        client_name: &str,
        credential: Credential<'_>,
    ) -> Result<Arc<Principal>, ServiceError> {
        if !self.enabled {
            if client_name.is_empty() {
                return Ok(self.anonymous.clone());
            }
            return Ok(Arc::new(Principal::anonymous(client_name)));
        }
        let found = match credential {
            Credential::None => None,
            // A JWT has two dots; an API key has none.
            Credential::Bearer(token) if token.contains('.') => self.verify_token(token),
            Credential::ApiKey(key) | Credential::Bearer(key) => {
                self.unrevoked(self.keys.load().find(key))
            }
        };
        let presented = !matches!(credential, Credential::None);
        found.ok_or_else(|| {
            // Never the credential itself, nor a part of it; at most one line a second, with
            // the count since the last one (anyone can send these).
            if let Some(count) = self.refusals.note() {
                tracing::info!(
                    target: "audit",
                    refused = count,
                    last = if presented { "an unknown credential" } else { "none" },
                    "requests denied: authentication failed"
                );
            }
            unauthorized()
        })
    }

    /// Replaces the keys with those of `config` (already validated); what changed, for the log.
    /// Enabling or disabling auth needs a restart.
    pub fn reload(&self, config: &AuthConfig) -> KeyChanges {
        match Tokens::from_config(&config.tokens) {
            Ok(tokens) => self.tokens.store(Arc::new(tokens)),
            Err((at, e)) => {
                tracing::error!("reload: {at}: {e}; the running token keys are kept")
            }
        }
        let new = KeyTable::from_config(config);
        let old = self.keys.swap(Arc::new(new));
        // After the swap: a connection that sees the new generation finds the new keys.
        self.generation.fetch_add(1, Ordering::Relaxed);
        old.changes_to(&self.keys.load())
    }
}

/// The body of a mint request (HTTP `_token`, TCP MINT).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The player's id (the owner of its documents).
    pub sub: String,
    /// Lifetime, e.g. "10m"; at most (and by default) `auth.tokens.mint_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<std::time::Duration>,
}

/// Mints a player token for `subject` in `game` on behalf of `caller`, who must hold a
/// `server` or `admin` right to the game: the one rule of both front ends.
pub fn mint_for(
    auth: &Authenticator,
    caller: &Caller,
    game: &str,
    subject: &str,
    ttl: Option<std::time::Duration>,
) -> Result<Minted, ServiceError> {
    let principal = &caller.principal;
    // A key, not a token: a token minting tokens could outlive itself.
    if !matches!(principal.role, Role::Admin | Role::Server) || principal.key.is_none() {
        return Err(principal.deny(
            Access::Write,
            game,
            "only server and admin keys mint tokens",
        ));
    }
    principal.authorize(game, Access::Write)?;
    crate::model::check_id(subject, "sub")?;
    let minted = auth
        .mint(game, subject, ttl)
        .map_err(|e| ServiceError::bad_request(format!("cannot mint a token: {e}")))?;
    tracing::info!(
        target: "audit",
        principal = %principal.name,
        action = "mint",
        game,
        subject,
        expires_at = minted.expires_at,
        "token minted"
    );
    Ok(minted)
}

/// Lets through at most one event a second, counting the others.
#[derive(Default)]
struct Sampler {
    /// The second (since the Unix epoch) of the last event let through.
    second: AtomicU64,
    /// Events since then.
    count: AtomicU64,
}

impl Sampler {
    /// `Some(events since the last one let through, this one included)` when this event may
    /// be logged.
    fn note(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = tokens::unix_now();
        let last = self.second.load(Ordering::Relaxed);
        let this_one = now != last
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        this_one.then(|| self.count.swap(0, Ordering::Relaxed))
    }
}

fn unauthorized() -> ServiceError {
    ServiceError::new(ErrorCode::Unauthorized, UNAUTHORIZED)
}
