//! Routes of the HTTP API v1: path matching, header and body decoding, and response encoding.
//! No business rules here: every route calls the service API.
//!
//! `/api/v1/{game}/…` is the versioned API; `/api/…` (anything not starting with `v1/`) is an
//! alias for the game `default`, so the seed's `GET /api/players/42` works.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, IF_MATCH, IF_NONE_MATCH,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::HttpState;
use super::endpoint::{MAX_SEGMENTS, split_path};
use super::problem::{json, with_etag};
use crate::auth::{Caller, Credential};
use crate::error::{ErrorCode, ServiceError};
use crate::model::{DocKey, Tier};
use crate::service::ops::{Incr, Precondition, WriteOp};
use crate::service::request::{BatchGetBody, PutBody, TxnRequest, parse_json};
use crate::service::{OpOutcome, ResponsePermit, txn_results_json};

type HttpResult = Result<Response<Full<Bytes>>, ServiceError>;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const DEFAULT_GAME: &str = "default";

/// A request whose head is borrowed (so the path can be matched without copying it) and whose
/// body is read at most once.
struct Req<'a> {
    parts: &'a Parts,
    body: Incoming,
}

impl Req<'_> {
    fn method(&self) -> &Method {
        &self.parts.method
    }

    fn headers(&self) -> &http::HeaderMap {
        &self.parts.headers
    }
}

/// Dispatches one request. Only the document GET (the cache-hit path) runs inline; every other
/// route is boxed, so the request future hyper moves around per request stays small
/// (it was 3.5 KB with everything inline; measured in docs/performance.md).
pub(super) async fn route(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let (parts, body) = req.into_parts();
    let req = Req {
        parts: &parts,
        body,
    };
    let mut segments = [""; MAX_SEGMENTS];
    let Some(count) = split_path(parts.uri.path(), &mut segments) else {
        return Err(no_route());
    };
    let segments = &segments[..count];
    match segments {
        [ops @ ("healthz" | "livez" | "readyz" | "metrics" | "admin" | "openapi.json")]
        | ["debug", "pprof", ops @ ("profile" | "heap")] => {
            if !state.routes.serves_ops(ops) {
                return Err(no_route());
            }
            only(&req, &[Method::GET])?;
            Box::pin(super::ops_routes::route(state, &parts, ops)).await
        }
        ["api", ..] if state.routes != super::Routes::Ops => {
            let caller = Caller {
                principal: state.auth.authenticate("", credential(&parts.headers))?,
            };
            state.auth.limits().check_caller(&caller.principal)?;
            match segments {
                ["api", "v1", game, rest @ ..] => {
                    let game = decode(game)?;
                    api(state, req, &caller, &game, rest).await
                }
                ["api", rest @ ..] => api(state, req, &caller, DEFAULT_GAME, rest).await,
                _ => Err(no_route()),
            }
        }
        _ => Err(no_route()),
    }
}

/// The credential a request presents: `X-Api-Key`, else `Authorization: Bearer`. A header
/// that is not valid text, or another scheme, presents none.
pub(super) fn credential(headers: &http::HeaderMap) -> Credential<'_> {
    if let Some(key) = headers.get(X_API_KEY) {
        return key.to_str().map_or(Credential::None, Credential::ApiKey);
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Credential::None;
    };
    let Ok(value) = value.to_str() else {
        return Credential::None;
    };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Credential::Bearer(token.trim())
        }
        _ => Credential::None,
    }
}

async fn api(
    state: &HttpState,
    req: Req<'_>,
    caller: &Caller,
    game: &str,
    rest: &[&str],
) -> HttpResult {
    // Only the list route takes query parameters: elsewhere one is a client's mistake.
    if !matches!(rest, [_collection]) && req.parts.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(ServiceError::bad_request(
            "this route takes no query parameters",
        ));
    }
    match rest {
        ["_txn"] => {
            only(&req, &[Method::POST])?;
            Box::pin(txn(state, req, caller, game)).await
        }
        ["_token"] => {
            only(&req, &[Method::POST])?;
            Box::pin(mint(state, req, caller, game)).await
        }
        ["_revoke"] => {
            only(&req, &[Method::POST])?;
            Box::pin(revoke(state, req, caller, game)).await
        }
        [collection] => {
            only(&req, &[Method::GET])?;
            Box::pin(list(state, &req, caller, game, &decode(collection)?)).await
        }
        [collection, "_batch_get"] => {
            only(&req, &[Method::POST])?;
            Box::pin(batch_get(state, req, caller, game, &decode(collection)?)).await
        }
        [collection, id] => {
            let (collection, id) = (decode(collection)?, decode(id)?);
            document(state, req, caller, game, &collection, &id).await
        }
        [collection, id, "_incr"] => {
            only(&req, &[Method::POST])?;
            Box::pin(incr(
                state,
                req,
                caller,
                game,
                &decode(collection)?,
                &decode(id)?,
            ))
            .await
        }
        _ => Err(no_route()),
    }
}

async fn document(
    state: &HttpState,
    req: Req<'_>,
    caller: &Caller,
    game: &str,
    collection: &str,
    id: &str,
) -> HttpResult {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        let read = state.service.get(caller, game, collection, id).await?;
        let current = match req.headers().get(IF_NONE_MATCH) {
            Some(tags) => none_match_names(tags, read.version)?,
            None => false,
        };
        let bare = if current {
            // The client's copy is current: no body, the same validator and tier.
            let mut empty = Response::new(Full::new(Bytes::new()));
            *empty.status_mut() = StatusCode::NOT_MODIFIED;
            empty
        } else {
            json(StatusCode::OK, read.body)
        };
        let mut response = with_etag(bare, read.version);
        response
            .headers_mut()
            .insert(X_CACHE, tier_header(read.tier));
        return Ok(response);
    }
    Box::pin(write_document(state, req, caller, game, collection, id)).await
}

async fn write_document(
    state: &HttpState,
    req: Req<'_>,
    caller: &Caller,
    game: &str,
    collection: &str,
    id: &str,
) -> HttpResult {
    let service = &state.service;
    match *req.method() {
        Method::PUT => {
            let mut pre = Precondition::version(if_match(&req)?);
            pre.if_exists = if_match_any(&req);
            pre.if_absent = if_none_match_any(&req)?;
            require_json(&req, &["application/json"])?;
            let body: PutBody = parse_json(&read_body(state, req).await?)?;
            let outcome = service
                .write_one(
                    caller,
                    game,
                    DocKey::new(collection, id),
                    body.into_op()?,
                    pre,
                    None,
                )
                .await?;
            Ok(written(outcome))
        }
        Method::PATCH => {
            let mut pre = Precondition::version(if_match(&req)?);
            pre.if_exists = if_match_any(&req);
            require_json(&req, &["application/merge-patch+json"])?;
            if req.headers().get(CONTENT_TYPE).is_none() {
                return Err(unsupported(
                    "PATCH needs Content-Type: application/merge-patch+json",
                ));
            }
            let patch: serde_json::Value = parse_json(&read_body(state, req).await?)?;
            let outcome = service
                .write_one(
                    caller,
                    game,
                    DocKey::new(collection, id),
                    WriteOp::Patch { patch },
                    pre,
                    None,
                )
                .await?;
            Ok(written(outcome))
        }
        Method::DELETE => {
            let mut pre = Precondition::version(if_match(&req)?);
            pre.if_exists = if_match_any(&req);
            let outcome = service
                .write_one(
                    caller,
                    game,
                    DocKey::new(collection, id),
                    WriteOp::Delete,
                    pre,
                    None,
                )
                .await?;
            let mut response = with_etag(Response::new(Full::new(Bytes::new())), outcome.version);
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        _ => Err(method_not_allowed(&[
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])),
    }
}

async fn incr(
    state: &HttpState,
    req: Req<'_>,
    caller: &Caller,
    game: &str,
    collection: &str,
    id: &str,
) -> HttpResult {
    let mut pre = Precondition::version(if_match(&req)?);
    pre.if_exists = if_match_any(&req);
    require_json(&req, &["application/json"])?;
    let incr: Incr = parse_json(&read_body(state, req).await?)?;
    let outcome = state
        .service
        .write_one(
            caller,
            game,
            DocKey::new(collection, id),
            WriteOp::Incr(incr),
            pre,
            None,
        )
        .await?;
    Ok(written(outcome))
}

async fn batch_get(
    state: &HttpState,
    req: Req<'_>,
    caller: &Caller,
    game: &str,
    collection: &str,
) -> HttpResult {
    require_json(&req, &["application/json"])?;
    let body: BatchGetBody = parse_json(&read_body(state, req).await?)?;
    let batch = state
        .service
        .batch_get(caller, game, collection, &body.ids)
        .await?;
    let mut out = BytesMut::with_capacity(
        16 + batch
            .docs
            .iter()
            .map(|d| d.as_ref().map_or(5, |b| b.len() + 1))
            .sum::<usize>(),
    );
    out.extend_from_slice(b"{\"docs\":[");
    push_docs(&mut out, batch.docs.iter().map(Option::as_ref));
    out.extend_from_slice(b"]}");
    drop(batch.docs);
    let mut response = json(StatusCode::OK, metered(out.freeze(), batch.permit));
    response
        .headers_mut()
        .insert(X_CACHE, tier_header(batch.tier));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    owner: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(
    state: &HttpState,
    req: &Req<'_>,
    caller: &Caller,
    game: &str,
    collection: &str,
) -> HttpResult {
    let query: ListQuery = serde_urlencoded::from_str(req.parts.uri.query().unwrap_or(""))
        .map_err(|e| ServiceError::bad_request(format!("query string: {e}")))?;
    let page = state
        .service
        .list(
            caller,
            game,
            collection,
            query.owner.as_deref(),
            query.cursor.as_deref(),
            query.limit,
        )
        .await?;
    let mut out =
        BytesMut::with_capacity(64 + page.docs.iter().map(|d| d.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"docs\":[");
    push_docs(&mut out, page.docs.iter().map(Some));
    out.extend_from_slice(b"],\"next_cursor\":");
    match &page.next_cursor {
        // Cursors are validated ids: no JSON escaping needed.
        Some(cursor) => {
            out.extend_from_slice(b"\"");
            out.extend_from_slice(cursor.as_bytes());
            out.extend_from_slice(b"\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}");
    drop(page.docs);
    let mut response = json(StatusCode::OK, metered(out.freeze(), page.permit));
    response
        .headers_mut()
        .insert(X_CACHE, tier_header(Tier::Db));
    Ok(response)
}

async fn txn(state: &HttpState, req: Req<'_>, caller: &Caller, game: &str) -> HttpResult {
    require_json(&req, &["application/json"])?;
    let request: TxnRequest = parse_json(&read_body(state, req).await?)?;
    let written = state
        .service
        .write(caller, game, request.into_ops()?, None)
        .await?;
    let body = txn_results_json(&written.outcomes);
    drop(written.outcomes);
    Ok(json(
        StatusCode::OK,
        match written.permit {
            Some(permit) => metered(body, permit),
            None => body,
        },
    ))
}

/// `POST /api/v1/{game}/_token`: a `server` (or `admin`) key mints a player token for `game`.
async fn mint(state: &HttpState, req: Req<'_>, caller: &Caller, game: &str) -> HttpResult {
    require_json(&req, &["application/json"])?;
    let body: crate::auth::MintRequest = parse_json(&read_body(state, req).await?)?;
    let minted = crate::auth::mint_for(&state.auth, caller, game, &body.sub, body.ttl)?;
    // After the caller's access was checked, as on every route: only a caller who may use
    // the game learns whether it exists.
    state.service.check_game(game)?;
    Ok(json(StatusCode::OK, Bytes::from(minted.to_json())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// One token, by its `jti`.
    jti: Option<String>,
    /// Every token of this subject issued at or before `before` (default: now).
    sub: Option<String>,
    #[serde(default, deserialize_with = "crate::service::request::whole_or_null")]
    before: Option<u64>,
    /// The configured API key of this name, for good.
    key: Option<String>,
}

/// `POST /api/v1/{game}/_revoke` (admin keys): `{"jti": "…"}`, `{"sub": "…", "before": t}` or
/// `{"key": "<name>"}`.
async fn revoke(state: &HttpState, req: Req<'_>, caller: &Caller, game: &str) -> HttpResult {
    require_json(&req, &["application/json"])?;
    let body: RevokeBody = parse_json(&read_body(state, req).await?)?;
    let now = crate::auth::tokens::unix_now();
    let mut key_name = String::new();
    let (kind, value, cutoff) = match (body.jti, body.sub, body.before, body.key) {
        (Some(jti), None, None, None) if !jti.is_empty() && jti.len() <= 255 => ("jti", jti, 0),
        (None, Some(sub), before, None) => {
            crate::model::check_id(&sub, "sub")?;
            // Stored as a signed 64-bit number of seconds (the SQL stores have no unsigned).
            if before.is_some_and(|b| b > i64::MAX as u64) {
                return Err(ServiceError::bad_request(
                    "before: at most 9223372036854775807 (unix seconds)",
                ));
            }
            ("sub", sub, before.unwrap_or(now))
        }
        (None, None, None, Some(name)) => match state.auth.key_digest(&name) {
            Some(digest) => {
                key_name = name;
                ("key", digest, 0)
            }
            // Only an admin learns which names exist; anyone else is refused by the service.
            None if caller.principal.role == crate::auth::Role::Admin => {
                return Err(ServiceError::bad_request(format!(
                    "no API key is named {name:?} in this server's configuration"
                )));
            }
            None => ("key", String::new(), 0),
        },
        _ => {
            return Err(ServiceError::bad_request(
                "give {\"jti\": \"<1-255 bytes>\"}, {\"sub\": \"<id>\", \"before\": <unix seconds, optional>} or {\"key\": \"<API key name>\"}",
            ));
        }
    };
    state
        .service
        .revoke(caller, game, kind, &value, cutoff)
        .await?;
    state.auth.add_revocation(game, kind, &value, cutoff);
    let answer = match kind {
        "key" => serde_json::json!({ "revoked": { "key": key_name, "sha256": value } }),
        _ => serde_json::json!({ "revoked": { kind: value, "before": cutoff } }),
    };
    Ok(json(StatusCode::OK, Bytes::from(answer.to_string())))
}

fn push_docs<'a>(out: &mut BytesMut, docs: impl Iterator<Item = Option<&'a Bytes>>) {
    for (index, doc) in docs.enumerate() {
        if index > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(doc.map_or(b"null".as_slice(), |b| b.as_ref()));
    }
}

/// A body that holds its share of the response budget until hyper has written and dropped it.
fn metered(body: Bytes, permit: ResponsePermit) -> Bytes {
    struct Metered {
        body: Bytes,
        _permit: ResponsePermit,
    }
    impl AsRef<[u8]> for Metered {
        fn as_ref(&self) -> &[u8] {
            &self.body
        }
    }
    Bytes::from_owner(Metered {
        body,
        _permit: permit,
    })
}

fn written(outcome: OpOutcome) -> Response<Full<Bytes>> {
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    with_etag(
        json(status, outcome.doc.unwrap_or_default()),
        outcome.version,
    )
}

fn tier_header(tier: Tier) -> HeaderValue {
    HeaderValue::from_static(tier.as_str())
}

/// Reads the whole body, refusing more than `http.max_body_bytes` (413) early when declared.
async fn read_body(state: &HttpState, req: Req<'_>) -> Result<Bytes, ServiceError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ServiceError::new(
            ErrorCode::PayloadTooLarge,
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    // A body that stops arriving would hold its in-flight slot (and keep the connection's
    // watchdog away) forever: it gets the same deadline as a request head.
    let deadline = state.config.header_read_timeout;
    let Ok(collected) =
        tokio::time::timeout(deadline, Limited::new(req.body, limit).collect()).await
    else {
        return Err(ServiceError::bad_request(format!(
            "the request body did not arrive within {} (http.header_read_timeout)",
            humantime::format_duration(deadline)
        )));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ServiceError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Accepts a missing Content-Type or one of `allowed` (parameters such as charset ignored).
fn require_json(req: &Req<'_>, allowed: &[&str]) -> Result<(), ServiceError> {
    let Some(value) = req.headers().get(CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if allowed.iter().any(|a| media.eq_ignore_ascii_case(a)) {
        Ok(())
    } else {
        Err(unsupported(&format!(
            "Content-Type must be {}",
            allowed.join(" or ")
        )))
    }
}

fn unsupported(message: &str) -> ServiceError {
    ServiceError::new(ErrorCode::UnsupportedMediaType, message)
}

/// `If-Match: "<version>"` → the version; `*` is handled by [`if_match_any`].
fn if_match(req: &Req<'_>) -> Result<Option<u64>, ServiceError> {
    let Some(value) = req.headers().get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ServiceError::bad_request("If-Match must be a quoted version such as \"3\", or *")
        })
}

fn if_match_any(req: &Req<'_>) -> bool {
    req.headers()
        .get(IF_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*")
}

/// Whether a read's `If-None-Match` names the current version: `*`, or a list of entity tags
/// compared weakly (RFC 9110 §13.1.2, so `W/"3"` matches version 3 as `"3"` does). Tags this
/// server never issued simply do not match; a value that is not a list of tags is a 400.
fn none_match_names(value: &HeaderValue, version: u64) -> Result<bool, ServiceError> {
    let bad = || {
        ServiceError::bad_request(
            "If-None-Match must be * or a list of entity tags such as \"3\", W/\"4\"",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(true);
    }
    let current = version.to_string();
    let mut named = false;
    for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let opaque = tag
            .strip_prefix("W/")
            .unwrap_or(tag)
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .filter(|t| !t.contains('"'))
            .ok_or_else(bad)?;
        named |= opaque == current;
    }
    Ok(named)
}

/// `If-None-Match: *` (create only) is the one form accepted on writes.
fn if_none_match_any(req: &Req<'_>) -> Result<bool, ServiceError> {
    match req.headers().get(IF_NONE_MATCH) {
        None => Ok(false),
        Some(v) if v.as_bytes() == b"*" => Ok(true),
        Some(_) => Err(ServiceError::bad_request(
            "on writes, If-None-Match must be *",
        )),
    }
}

fn only(req: &Req<'_>, allowed: &[Method]) -> Result<(), ServiceError> {
    if allowed.contains(req.method()) {
        Ok(())
    } else {
        Err(method_not_allowed(allowed))
    }
}

fn method_not_allowed(allowed: &[Method]) -> ServiceError {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    ServiceError::new(
        ErrorCode::MethodNotAllowed,
        format!("{}{}", super::problem::ALLOWED_PREFIX, names.join(", ")),
    )
}

fn no_route() -> ServiceError {
    ServiceError::not_found("no such route")
}

/// Percent-decodes a path segment; anything that is not UTF-8 or holds a NUL is refused here
/// (names and ids are validated again by the service).
fn decode<'a>(segment: &'a str) -> Result<Cow<'a, str>, ServiceError> {
    if !segment.bytes().any(|b| b == b'%' || b == 0) {
        // Nothing to decode (the common case): the segment is already UTF-8 without NUL.
        return Ok(Cow::Borrowed(segment));
    }
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ServiceError::new(ErrorCode::InvalidId, "path segments must be UTF-8"))?;
    if decoded.contains('\0') {
        return Err(ServiceError::new(
            ErrorCode::InvalidId,
            "path segments must not contain NUL",
        ));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_matches_str_split() {
        for path in [
            "/",
            "",
            "/api",
            "/api/",
            "//api/v1",
            "/api/players/k0",
            "/a//b",
            "/a/b/c/d/e/f",
            "/api/v1/game/players/p%2F1/_incr",
        ] {
            let mut out = [""; MAX_SEGMENTS];
            let expected: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let count = split_path(path, &mut out).expect(path);
            assert_eq!(&out[..count], expected.as_slice(), "{path}");
        }
        let mut out = [""; MAX_SEGMENTS];
        assert_eq!(split_path("/a/b/c/d/e/f/g", &mut out), None);
        assert_eq!(split_path("/a/b/c/d/e/f/", &mut out), None);
    }

    #[test]
    fn decode_borrows_plain_segments_and_decodes_escapes() {
        assert!(matches!(decode("k0"), Ok(Cow::Borrowed("k0"))));
        assert_eq!(decode("p%2F1").unwrap(), "p/1");
        assert_eq!(decode("%E4%B8%AD").unwrap(), "中");
        assert!(decode("%FF").is_err());
        assert!(decode("a%00b").is_err());
        assert!(decode("a\u{0}b").is_err());
    }
}
