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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::{ErrorCode, ServiceError};
pub use keys::{KeyChanges, KeyTable, digest_hex, new_key};

/// The one message of every refused credential (no hint which part was wrong).
pub const UNAUTHORIZED: &str = "authentication failed: send a valid API key";

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
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Server => "server",
            Role::Readonly => "readonly",
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
    /// Set when a reload replaced the key table this principal came from.
    replaced: AtomicBool,
}

impl Principal {
    /// The caller when auth is off: everything is allowed.
    pub fn anonymous(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: Role::Admin,
            games: Games::All,
            key: None,
            replaced: AtomicBool::new(false),
        }
    }

    /// `Ok` when this principal may `access` game `game`; else `forbidden`, and the refusal
    /// is written to the audit log.
    pub fn authorize(&self, game: &str, access: Access) -> Result<(), ServiceError> {
        let role_allows = match self.role {
            Role::Admin | Role::Server => true,
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
        tracing::warn!(
            target: "audit",
            principal = %self.name,
            role = self.role.as_str(),
            action = access.as_str(),
            game,
            reason,
            "request denied"
        );
        Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!("this caller may not {} in game {game:?}", access.as_str()),
        ))
    }

    /// True when a reload replaced this principal: look it up again with
    /// [`Authenticator::current`].
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
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
                replaced: AtomicBool::new(false),
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
    /// The principal of every HTTP request while auth is off (no allocation per request).
    anonymous: Arc<Principal>,
}

impl Authenticator {
    /// The authenticator of a validated configuration.
    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            enabled: config.enabled,
            keys: ArcSwap::from_pointee(KeyTable::from_config(config)),
            anonymous: Arc::new(Principal::anonymous("anonymous")),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
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
        let presented = match credential {
            Credential::None => None,
            Credential::ApiKey(key) | Credential::Bearer(key) => Some(key),
        };
        let found = presented.and_then(|key| self.keys.load().find(key));
        found.ok_or_else(|| {
            // Never the credential itself, nor a part of it.
            tracing::info!(
                target: "audit",
                presented = if presented.is_some() { "an unknown key" } else { "nothing" },
                "request denied: authentication failed"
            );
            unauthorized()
        })
    }

    /// The up-to-date principal for one that a reload replaced: the same key's new entry, or
    /// `unauthorized` when the key was removed.
    pub fn current(&self, principal: &Principal) -> Result<Arc<Principal>, ServiceError> {
        principal
            .key
            .and_then(|digest| self.keys.load().get(&digest))
            .ok_or_else(unauthorized)
    }

    /// Replaces the keys with those of `config` (already validated); what changed, for the log.
    /// Enabling or disabling auth needs a restart.
    pub fn reload(&self, config: &AuthConfig) -> KeyChanges {
        let new = KeyTable::from_config(config);
        let old = self.keys.swap(Arc::new(new));
        let changes = old.changes_to(&self.keys.load());
        old.mark_replaced();
        changes
    }
}

fn unauthorized() -> ServiceError {
    ServiceError::new(ErrorCode::Unauthorized, UNAUTHORIZED)
}
