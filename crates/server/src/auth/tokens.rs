//! JWT bearer tokens: verification with every key pinned to one algorithm, a verification cache,
//! and minting of short-lived player tokens.
//!
//! A token is accepted when a configured key verifies it with that key's own algorithm (the
//! token's `alg` only selects which keys to try: `none`, or HS256 signed with a public key,
//! never matches), `iss` and `aud` are the configured ones, `exp` is present and not past, an
//! `nbf` is not in the future (both within `leeway`), `sub` follows the id rules, and `game`
//! names the game the token is for. Verified tokens are kept in a bounded cache keyed by the
//! token itself, so a request with a known token costs a hash lookup and a clock comparison.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Games, Principal, Role};
use crate::config::{TokenKeyConfig, TokensConfig};
use crate::model::is_valid_id;

/// Longest token looked at; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Verified tokens remembered.
const CACHE_ENTRIES: usize = 65_536;

/// One verification key.
struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens and mints player tokens.
pub struct Tokens {
    keys: Vec<VerifyKey>,
    signer: Option<(Option<String>, Algorithm, EncodingKey)>,
    issuer: String,
    audience: String,
    leeway: u64,
    mint_ttl: Duration,
    verified: quick_cache::sync::Cache<Box<str>, Arc<Principal>>,
}

/// The claims of a token (unknown claims are ignored; `iss` and `aud`, a string or an array,
/// are checked by `jsonwebtoken`'s validation).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// Only written (minting): read through the validation.
    #[serde(default, skip_deserializing, skip_serializing_if = "String::is_empty")]
    iss: String,
    #[serde(default, skip_deserializing, skip_serializing_if = "String::is_empty")]
    aud: String,
    /// The game the token is for.
    game: String,
    /// `player` (default), `readonly` or `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// A minted token and when it expires (seconds since the Unix epoch).
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub expires_at: u64,
}

impl Minted {
    /// The answer both front ends send: `{"token", "token_type", "expires_at"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "token": self.token,
            "token_type": "Bearer",
            "expires_at": self.expires_at,
        })
        .to_string()
    }
}

impl Tokens {
    /// The verifier of `[auth.tokens]`; the error names the entry at fault.
    pub fn from_config(config: &TokensConfig) -> Result<Tokens, (String, String)> {
        let leeway = config.leeway.as_secs();
        let mut keys = Vec::new();
        let mut signer = None;
        for (i, entry) in config.keys.iter().enumerate() {
            let at = format!("auth.tokens.keys[{i}]");
            let (key, signing) = load_key(entry).map_err(|problem| (at.clone(), problem))?;
            let algorithm = key.0;
            if signer.is_none()
                && let Some(signing) = signing
            {
                signer = Some((entry.kid.clone(), algorithm, signing));
            }
            keys.push(verify_key(
                entry.kid.clone(),
                algorithm,
                key.1,
                config,
                leeway,
            ));
        }
        if let Some(path) = &config.jwks_file {
            let at = "auth.tokens.jwks_file".to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| (at.clone(), format!("cannot read {}: {e}", path.display())))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| (at.clone(), format!("not a JWKS document: {e}")))?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone();
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                    .filter(|a| matches!(a, Algorithm::RS256 | Algorithm::EdDSA))
                    .ok_or_else(|| {
                        (
                            at.clone(),
                            format!("key {kid:?} needs \"alg\": RS256 or EdDSA"),
                        )
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| (at.clone(), format!("key {kid:?}: {e}")))?;
                keys.push(verify_key(kid, algorithm, key, config, leeway));
            }
        }
        Ok(Tokens {
            keys,
            signer,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway,
            mint_ttl: config.mint_ttl,
            verified: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        })
    }

    /// True when tokens can be verified at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The principal of a valid token, or `None` (the caller answers `unauthorized`).
    pub fn verify(&self, token: &str) -> Option<Arc<Principal>> {
        if token.len() > MAX_TOKEN_BYTES || self.keys.is_empty() {
            return None;
        }
        if let Some(known) = self.verified.get(token) {
            let (not_before, expires) = known.valid;
            let now = unix_now();
            return (not_before <= now && now <= expires).then_some(known);
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let claims = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg && k.kid == header.kid)
            .find_map(|k| jsonwebtoken::decode::<Claims>(token, &k.key, &k.validation).ok())?
            .claims;
        let principal = Arc::new(principal(claims, self.leeway)?);
        self.verified.insert(token.into(), principal.clone());
        Some(principal)
    }

    /// A player token for `subject` in `game`, valid for `ttl` (at most `mint_ttl`), signed with
    /// the first key that can sign.
    pub fn mint(&self, game: &str, subject: &str, ttl: Option<Duration>) -> Result<Minted, String> {
        let (kid, algorithm, key) = self
            .signer
            .as_ref()
            .ok_or("no token key can sign: configure an HS256 secret or a private_key_file")?;
        let ttl = ttl
            .unwrap_or(self.mint_ttl)
            .min(self.mint_ttl)
            .max(Duration::from_secs(1));
        let expires_at = unix_now() + ttl.as_secs();
        let claims = Claims {
            sub: subject.to_string(),
            exp: expires_at,
            nbf: None,
            iat: Some(unix_now()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            game: game.to_string(),
            role: None,
            jti: Some(new_jti()?),
        };
        let mut header = Header::new(*algorithm);
        header.kid = kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, key).map_err(|e| e.to_string())?;
        Ok(Minted { token, expires_at })
    }
}

fn verify_key(
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    config: &TokensConfig,
    leeway: u64,
) -> VerifyKey {
    // The algorithm is the key's: the token's header cannot choose another.
    let mut validation = Validation::new(algorithm);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    VerifyKey {
        kid,
        algorithm,
        key,
        validation,
    }
}

type LoadedKey = ((Algorithm, DecodingKey), Option<EncodingKey>);

/// The verification key (and signing key, when there is one) of an entry.
fn load_key(entry: &TokenKeyConfig) -> Result<LoadedKey, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    match entry.algorithm.as_str() {
        "HS256" => {
            let secret = match (&entry.secret, &entry.secret_file) {
                (Some(secret), None) => secret.as_bytes().to_vec(),
                (None, Some(path)) => read(path)?,
                _ => return Err("HS256 needs exactly one of secret and secret_file".into()),
            };
            if secret.len() < 32 {
                return Err("an HS256 secret needs at least 32 bytes".into());
            }
            if WELL_KNOWN_SECRETS.iter().any(|s| s.as_bytes() == secret) {
                return Err("the secret is a well-known example: make a random one".into());
            }
            if entry.public_key_file.is_some() || entry.private_key_file.is_some() {
                return Err("HS256 takes a secret, not key files".into());
            }
            let verify = DecodingKey::from_secret(&secret).map_err(|e| e.to_string())?;
            let sign = EncodingKey::from_secret(&secret).map_err(|e| e.to_string())?;
            Ok(((Algorithm::HS256, verify), Some(sign)))
        }
        "RS256" | "EdDSA" => {
            if entry.secret.is_some() || entry.secret_file.is_some() {
                return Err(format!("{} takes key files, not a secret", entry.algorithm));
            }
            let public = read(
                entry
                    .public_key_file
                    .as_deref()
                    .ok_or("public_key_file is required")?,
            )?;
            let rsa = entry.algorithm == "RS256";
            let verify = if rsa {
                DecodingKey::from_rsa_pem(&public)
            } else {
                DecodingKey::from_ed_pem(&public)
            }
            .map_err(|e| format!("public_key_file: {e}"))?;
            let sign = match &entry.private_key_file {
                None => None,
                Some(path) => {
                    let private = read(path)?;
                    Some(
                        if rsa {
                            EncodingKey::from_rsa_pem(&private)
                        } else {
                            EncodingKey::from_ed_pem(&private)
                        }
                        .map_err(|e| format!("private_key_file: {e}"))?,
                    )
                }
            };
            let algorithm = if rsa {
                Algorithm::RS256
            } else {
                Algorithm::EdDSA
            };
            Ok(((algorithm, verify), sign))
        }
        other => Err(format!("algorithm {other:?}: use HS256, RS256 or EdDSA")),
    }
}

/// HS256 secrets from tutorials and examples, refused in the configuration.
const WELL_KNOWN_SECRETS: &[&str] = &[
    "your-256-bit-secret",
    "your-256-bit-secret-your-256-bit-secret",
    "secretsecretsecretsecretsecretsecret",
    "changeme-changeme-changeme-changeme",
    "dmw_example_secret_do_not_use_0123456789",
];

/// The principal of verified `claims`; its validity is widened by `leeway` once, here.
fn principal(claims: Claims, leeway: u64) -> Option<Principal> {
    if !is_valid_id(&claims.sub) {
        return None;
    }
    let role = match claims.role.as_deref() {
        None | Some("player") => Role::Player,
        Some("readonly") => Role::Readonly,
        Some("server") => Role::Server,
        Some(_) => return None,
    };
    let subject = (role == Role::Player).then(|| claims.sub.as_str().into());
    let facts = super::revocations::TokenFacts {
        game: claims.game.as_str().into(),
        sub: claims.sub.as_str().into(),
        jti: claims.jti.as_deref().map(Into::into),
        iat: claims.iat.unwrap_or(0),
    };
    Some(Principal {
        // Per game: the same player id in two games is two callers (logs, rate limits).
        name: format!("token:{}@{}", claims.sub, claims.game).into(),
        role,
        games: Games::Only(Box::new([claims.game.into()])),
        key: None,
        subject,
        valid: (
            claims.nbf.unwrap_or(0).saturating_sub(leeway),
            claims.exp.saturating_add(leeway),
        ),
        token: Some(facts),
    })
}

fn new_jti() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Only an RS256 key, without kid: the classic confusion (HS256 "signed" with the RSA
    /// public key's PEM as the HMAC secret) must meet the RS256 key and fail, not be checked as
    /// HMAC with that PEM.
    #[test]
    fn a_key_verifies_only_with_its_own_algorithm() {
        let config = TokensConfig {
            keys: vec![TokenKeyConfig {
                kid: None,
                algorithm: "RS256".into(),
                secret: None,
                secret_file: None,
                public_key_file: Some(fixture("test_rsa_public.pem")),
                private_key_file: Some(fixture("test_rsa_private.pem")),
            }],
            ..TokensConfig::default()
        };
        let tokens = Tokens::from_config(&config).expect("the key loads");
        let claims = serde_json::json!({
            "sub": "alice", "game": "g", "iss": "datamiddleware",
            "aud": ["other", "datamiddleware"], "exp": unix_now() + 60,
        });
        let public = std::fs::read(fixture("test_rsa_public.pem")).unwrap();
        let hmac = EncodingKey::from_secret(&public).unwrap();
        let confused =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hmac).unwrap();
        assert!(
            tokens.verify(&confused).is_none(),
            "HS256 with the public key passed"
        );
        // The genuine RS256 token (an `aud` array holding ours) passes, so the key is usable.
        let private = std::fs::read(fixture("test_rsa_private.pem")).unwrap();
        let rsa = EncodingKey::from_rsa_pem(&private).unwrap();
        let genuine = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
        let principal = tokens.verify(&genuine).expect("the genuine token");
        assert_eq!(&*principal.name, "token:alice@g");
        // Minting with that key gives tokens it verifies.
        let minted = tokens
            .mint("g", "bob", None)
            .expect("an RS256 key with a private key signs");
        assert_eq!(
            tokens.verify(&minted.token).unwrap().subject.as_deref(),
            Some("bob")
        );
    }
}
