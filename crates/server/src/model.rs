//! The data model: validated names (games, collections, document ids), document addresses,
//! stored rows, the tier a read was answered from, and the encoded document body that every
//! read path returns as-is. Both front ends, the service, the cache and the store share these.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::error::{ErrorCode, ServiceError};

/// Maximum length of a document id (and of an owner id).
pub const MAX_ID_LEN: usize = 128;
/// Maximum length of a game or collection name.
pub const MAX_NAME_LEN: usize = 64;
/// Room for a document's envelope (`id`, `owner`, `version`, `updated_at` and the JSON around
/// them) beyond its value, in [`encode_document`]'s form: the bound on large answers counts
/// with it.
pub const DOCUMENT_ENVELOPE_BYTES: usize = 512;

/// Checks a game or collection name: `[a-z][a-z0-9_]{0,63}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Checks a document id: 1–128 chars of `[A-Za-z0-9_.:@-]`, not starting with `_` (names
/// starting with `_` are reserved for operations such as `_incr` and `_batch_get`).
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && bytes[0] != b'_'
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// Returns `Ok(())` for a valid document id, else an `invalid_id` error naming what it is.
pub fn check_id(id: &str, what: &str) -> Result<(), ServiceError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ServiceError::new(
            ErrorCode::InvalidId,
            format!(
                "{what} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.:@-] not starting with '_'"
            ),
        ))
    }
}

/// A document key inside one game (the game is known from context).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey {
    pub collection: String,
    pub id: String,
}

impl DocKey {
    pub fn new(collection: &str, id: &str) -> DocKey {
        DocKey {
            collection: collection.to_string(),
            id: id.to_string(),
        }
    }
}

/// Where a read was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The in-process cache.
    L1,
    /// The shared Redis tier.
    L2,
    /// The store (the database).
    Db,
}

impl Tier {
    /// The `X-Cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "L1",
            Tier::L2 => "L2",
            Tier::Db => "DB",
        }
    }
}

/// One row as the store holds it. `value == None` is a tombstone (deleted, or a lock
/// placeholder with `version == 0`): the version survives deletion so it is never reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    pub version: u64,
    pub owner: Option<String>,
    pub updated_at: String,
    /// Compact JSON text of the value (an object), exactly as it is sent to clients.
    pub value: Option<String>,
}

impl StoredDoc {
    /// The state of a key that has never been written.
    pub fn absent() -> Self {
        StoredDoc {
            version: 0,
            owner: None,
            updated_at: String::new(),
            value: None,
        }
    }

    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }
}

/// Encodes the public document form `{"id","owner","version","updated_at","value"}` once, so
/// that reads can send cached bytes without parsing or re-serialising anything.
///
/// `id` and `owner` are validated ids (no characters that need JSON escaping); `updated_at` is
/// an RFC 3339 timestamp we produced; `value` is compact JSON we produced.
pub fn encode_document(
    id: &str,
    owner: Option<&str>,
    version: u64,
    updated_at: &str,
    value: &str,
) -> Bytes {
    let owner_len = owner.map_or(4, |o| o.len() + 2);
    let mut out = String::with_capacity(64 + id.len() + owner_len + updated_at.len() + value.len());
    out.push_str("{\"id\":\"");
    out.push_str(id);
    out.push_str("\",\"owner\":");
    match owner {
        Some(owner) => {
            out.push('"');
            out.push_str(owner);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"version\":");
    // Writing into a String cannot fail.
    let _ = write!(out, "{version}");
    out.push_str(",\"updated_at\":\"");
    out.push_str(updated_at);
    out.push_str("\",\"value\":");
    out.push_str(value);
    out.push('}');
    Bytes::from(out)
}

/// The owner written in a body made by [`encode_document`] (which puts it right after the id),
/// without parsing the JSON.
pub fn owner_of(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body.get(..body.len().min(2 * MAX_ID_LEN + 32))?).ok()?;
    let rest = text.strip_prefix("{\"id\":\"")?;
    let rest = &rest[rest.find('"')?..];
    let owner = rest.strip_prefix("\",\"owner\":\"")?;
    Some(&owner[..owner.find('"')?])
}

/// True when a body made by [`encode_document`] for `id` names `owner` as its owner: a bounded
/// comparison of the bytes right after the id (ids and owners need no JSON escaping), which is
/// what makes a per-owner rule on a cache hit cost no parse.
pub fn is_owned_by(body: &[u8], id: &str, owner: &str) -> bool {
    let rest = body.strip_prefix(b"{\"id\":\"".as_slice());
    let rest = rest.and_then(|r| r.strip_prefix(id.as_bytes()));
    let rest = rest.and_then(|r| r.strip_prefix(b"\",\"owner\":\"".as_slice()));
    let rest = rest.and_then(|r| r.strip_prefix(owner.as_bytes()));
    rest.is_some_and(|r| r.first() == Some(&b'"'))
}

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_read_from_the_encoded_form() {
        let doc = encode_document("p1", Some("alice"), 3, "t", "{}");
        assert!(is_owned_by(&doc, "p1", "alice"));
        assert!(
            !is_owned_by(&doc, "p1", "alic"),
            "a prefix of the owner is not the owner"
        );
        assert!(!is_owned_by(&doc, "p1", "alice2"));
        assert!(!is_owned_by(&doc, "p", "alice"), "the id must match too");
        let unowned = encode_document("p1", None, 3, "t", "{}");
        assert!(!is_owned_by(&unowned, "p1", "null"));
        assert!(!is_owned_by(&unowned, "p1", ""));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("players"));
        assert!(is_valid_name("a"));
        assert!(is_valid_name("game_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("2game"));
        assert!(!is_valid_name("Players"));
        assert!(!is_valid_name("pl-ayers"));
        assert!(is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("42"));
        assert!(is_valid_id("user@zone:1.a-b_c"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("_incr"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a\0b"));
        assert!(!is_valid_id("é"));
        assert!(is_valid_id(&"x".repeat(128)));
        assert!(!is_valid_id(&"x".repeat(129)));
    }

    #[test]
    fn the_largest_envelope_fits_its_allowance() {
        let id = "i".repeat(MAX_ID_LEN);
        let owner = "o".repeat(MAX_ID_LEN);
        let body = encode_document(&id, Some(&owner), u64::MAX, &now_rfc3339(), "{}");
        assert!(
            body.len() - 2 <= DOCUMENT_ENVELOPE_BYTES,
            "{} bytes",
            body.len() - 2
        );
    }

    #[test]
    fn the_owner_is_read_from_an_encoded_body() {
        let body = encode_document("p1", Some("u7"), 3, "2026-01-01T00:00:00.000Z", "{}");
        assert_eq!(owner_of(&body), Some("u7"));
        let none = encode_document("p1", None, 3, "t", r#"{"owner":"x"}"#);
        assert_eq!(owner_of(&none), None);
        let long = "o".repeat(MAX_ID_LEN);
        let body = encode_document(&"i".repeat(MAX_ID_LEN), Some(&long), 1, "t", "{}");
        assert_eq!(owner_of(&body), Some(long.as_str()));
        assert_eq!(owner_of(b"{\"id\":\"x"), None);
    }

    #[test]
    fn encoded_document_is_valid_json() {
        let body = encode_document(
            "7",
            Some("p1"),
            3,
            "2026-01-01T00:00:00.000Z",
            r#"{"a":[1,"x"]}"#,
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["id"], "7");
        assert_eq!(parsed["owner"], "p1");
        assert_eq!(parsed["version"], 3);
        assert_eq!(parsed["value"]["a"][1], "x");
        let no_owner = encode_document("7", None, 1, "t", "{}");
        let parsed: serde_json::Value = serde_json::from_slice(&no_owner).unwrap();
        assert!(parsed["owner"].is_null());
    }
}
