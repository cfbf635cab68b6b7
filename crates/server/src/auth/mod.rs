//! Authentication: who is calling. The TCP handshake (and, later, HTTP requests) hand their
//! credentials to an [`Authenticator`], which returns a [`Principal`] or `unauthorized`.
//!
//! Only the switch exists so far. API keys, JWT verification with a result cache, roles and
//! per-owner rules come with the authentication issue and plug in behind the same trait.

use std::sync::Arc;

use datamiddleware_protocol::Credential;

use crate::config::AuthConfig;
use crate::error::{ErrorCode, ServiceError};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A name for logs: the client's self-declared name when auth is off.
    pub name: String,
}

/// Checks credentials. Implementations must answer every failure the same way (one message,
/// no hint which part was wrong) and never log secrets.
pub trait Authenticator: Send + Sync {
    fn authenticate(
        &self,
        client_name: &str,
        credential: &Credential,
    ) -> Result<Principal, ServiceError>;
}

/// Accepts everyone (`auth.enabled = false`).
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(
        &self,
        client_name: &str,
        _credential: &Credential,
    ) -> Result<Principal, ServiceError> {
        Ok(Principal {
            name: client_name.to_string(),
        })
    }
}

/// Refuses everyone: auth is enabled but no credential store is configured yet.
pub struct DenyAll;

impl Authenticator for DenyAll {
    fn authenticate(
        &self,
        _client_name: &str,
        _credential: &Credential,
    ) -> Result<Principal, ServiceError> {
        Err(ServiceError::new(
            ErrorCode::Unauthorized,
            "authentication failed",
        ))
    }
}

/// The authenticator the configuration asks for.
pub fn from_config(config: &AuthConfig) -> Arc<dyn Authenticator> {
    if config.enabled {
        Arc::new(DenyAll)
    } else {
        Arc::new(AllowAll)
    }
}
