//! Token revocation on every backend: by token id and by subject, at once on the instance that
//! took it (the verified-token cache and open TCP sessions included), within the poll interval
//! on another instance of the same store, and from the start on an instance started later.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use datamiddleware::auth::Role;
use datamiddleware::config::{Config, TokenKeyConfig};
use datamiddleware_client::{Client, Credential, ErrorCode};
use support::{Backend, Http, TestServer, api_key, assert_code};

const SERVER_KEY: &str = "dmw_e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a8c1e9c1e3b5d7f9a0c2";
const SECRET: &str = "a-revocation-test-hs256-secret-0123456789";

fn tokens_on(config: &mut Config) {
    let game = config.games.keys().next().unwrap().clone();
    config.auth.tokens.keys = vec![TokenKeyConfig {
        kid: None,
        algorithm: "HS256".into(),
        secret: Some(SECRET.into()),
        secret_file: None,
        public_key_file: None,
        private_key_file: None,
    }];
    config
        .auth
        .keys
        .push(api_key("server", SERVER_KEY, Role::Server, &[&game]));
}

async fn mint(s: &TestServer, sub: &str) -> String {
    let server = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    let r = server
        .post(&s.path("_token"), &format!(r#"{{"sub":"{sub}"}}"#))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_string()
}

fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

fn bearer(s: &TestServer, token: &str) -> Http {
    s.anonymous().with_bearer(token)
}

fn tcp(s: &TestServer, token: &str) -> Client {
    s.tcp_client(Credential::Token(token.to_string()))
}

/// A player's GET of its own (absent) document: 404 while the token is good.
async fn status(s: &TestServer, token: &str) -> u16 {
    bearer(s, token)
        .get(&s.path("players/own"))
        .await
        .status
        .as_u16()
}

async fn a_token_is_revoked_by_its_id(backend: Backend) {
    let Some(s) = TestServer::start_with(backend, tokens_on).await else {
        return;
    };
    let other = s.sibling_with(tokens_on).await;
    let (token, kept) = (mint(&s, "alice").await, mint(&s, "alice").await);
    assert_eq!(status(&s, &token).await, 404, "cached as verified now");
    assert_eq!(status(&other, &token).await, 404);
    let session = tcp(&s, &token);
    session
        .get(&s.game, "players", "own")
        .await
        .expect_err("absent");

    // Only an admin key revokes.
    let body = format!(r#"{{"jti":"{}"}}"#, jti_of(&token));
    let server = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    assert_code(
        &server.post(&s.path("_revoke"), &body).await,
        403,
        "forbidden",
        "a server key",
    );
    assert_code(
        &s.client.post(&s.path("_revoke"), r#"{"jti":""}"#).await,
        400,
        "bad_request",
        "an empty jti",
    );
    let r = s.client.post(&s.path("_revoke"), &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    assert_eq!(
        status(&s, &token).await,
        401,
        "at once where it was revoked"
    );
    let err = session
        .get(&s.game, "players", "own")
        .await
        .expect_err("revoked");
    assert_eq!(
        err.code(),
        Some(ErrorCode::Unauthorized),
        "the TCP session: {err}"
    );
    assert_eq!(status(&s, &kept).await, 404, "another token of the subject");
    // The other instance learns it from the store within the poll interval.
    let started = Instant::now();
    while status(&other, &token).await != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not revoked on the other instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "revoked on the other instance after {:?}",
        started.elapsed()
    );
    // An instance started later knows it from its first request.
    let later = s.sibling_with(tokens_on).await;
    assert_eq!(status(&later, &token).await, 401);
    assert_eq!(status(&later, &kept).await, 404);
}

async fn every_token_of_a_subject_is_revoked(backend: Backend) {
    let Some(s) = TestServer::start_with(backend, tokens_on).await else {
        return;
    };
    let (first, second, other) = (
        mint(&s, "bob").await,
        mint(&s, "bob").await,
        mint(&s, "carol").await,
    );
    let r = s.client.post(&s.path("_revoke"), r#"{"sub":"bob"}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(status(&s, &first).await, 401);
    assert_eq!(status(&s, &second).await, 401);
    assert_eq!(status(&s, &other).await, 404, "another subject");
    // Tokens issued after the cutoff second work again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = mint(&s, "bob").await;
    assert_eq!(status(&s, &fresh).await, 404);
    assert_code(
        &s.client.post(&s.path("_revoke"), r#"{"sub":"a/b"}"#).await,
        400,
        "invalid_id",
        "a bad sub",
    );
    // A cutoff the stores cannot hold is refused, not wrapped into the past.
    assert_code(
        &s.client
            .post(
                &s.path("_revoke"),
                r#"{"sub":"bob","before":18446744073709551615}"#,
            )
            .await,
        400,
        "bad_request",
        "a cutoff past i64::MAX",
    );
    // A whole number written with a fraction counts (JSON Schema's `integer`).
    let later = mint(&s, "dave").await;
    let before = unix_now() + 60;
    let body = format!(r#"{{"sub":"dave","before":{before}.0}}"#);
    let r = s.client.post(&s.path("_revoke"), &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(status(&s, &later).await, 401);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An admin revokes an API key by its name: refused at once here (HTTP, and an open TCP
/// session at its next request), on another instance within the poll interval, and on an
/// instance started later; the key's name is checked, and only admins revoke.
async fn an_api_key_is_revoked_by_its_name(backend: Backend) {
    // A key of this run only: the revocation of a key is kept for good, and the test stores
    // are shared by every test and run.
    let doomed = datamiddleware::auth::new_key().unwrap();
    let with_doomed = |c: &mut Config| {
        tokens_on(c);
        let game = c.games.keys().next().unwrap().clone();
        c.auth
            .keys
            .push(api_key("doomed", &doomed, Role::Server, &[&game]));
    };
    let Some(s) = TestServer::start_with(backend, with_doomed).await else {
        return;
    };
    let other = s.sibling_with(with_doomed).await;
    let server =
        |s: &TestServer| Http::with_key(format!("http://{}", s.running.addr), Some(&doomed));
    let path = s.path("players/p1");
    assert_eq!(server(&s).get(&path).await.status, 404, "the key works");
    assert_eq!(server(&other).get(&path).await.status, 404);
    let session = s.tcp_client(Credential::ApiKey(doomed.clone()));
    session.ping().await.unwrap();

    assert_code(
        &server(&s)
            .post(&s.path("_revoke"), r#"{"key":"doomed"}"#)
            .await,
        403,
        "forbidden",
        "a server key revoking itself",
    );
    assert_code(
        &s.client
            .post(&s.path("_revoke"), r#"{"key":"nobody"}"#)
            .await,
        400,
        "bad_request",
        "an unknown key name",
    );
    let r = s
        .client
        .post(&s.path("_revoke"), r#"{"key":"doomed"}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["revoked"]["key"], "doomed");
    assert_eq!(r.json()["revoked"]["sha256"].as_str().unwrap().len(), 64);

    assert_code(
        &server(&s).get(&path).await,
        401,
        "unauthorized",
        "at once here",
    );
    let err = session
        .get(&s.game, "players", "p1")
        .await
        .expect_err("the open session");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    assert_eq!(s.client.get(&path).await.status, 404, "other keys work");
    let started = Instant::now();
    while server(&other).get(&path).await.status != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not revoked on the other instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = s.sibling_with(with_doomed).await;
    assert_eq!(
        server(&later).get(&path).await.status,
        401,
        "after a restart"
    );
}

backend_tests!(
    a_token_is_revoked_by_its_id,
    every_token_of_a_subject_is_revoked,
    an_api_key_is_revoked_by_its_name,
);

/// With Redis configured, the instance that takes a revocation announces it on the
/// invalidation bus and the others read the table at once instead of at their next poll.
async fn the_bus_carries_revocations_to_other_instances(redis: support::Redis) {
    let prefix = support::unique_prefix();
    let with_redis = |c: &mut Config| {
        tokens_on(c);
        redis.configure(c, &prefix);
    };
    if redis.urls().is_none() {
        return;
    }
    let s = TestServer::start_with(Backend::Sqlite, with_redis)
        .await
        .unwrap();
    let other = s.sibling_with(with_redis).await;
    let hints = || {
        let bus = other.running.service.cache().bus().expect("a bus");
        bus.counters()
            .revocation_hints
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut waits = Vec::new();
    for _ in 0..3 {
        let token = mint(&s, "alice").await;
        assert_eq!(status(&other, &token).await, 404, "cached as verified");
        let before = hints();
        let body = format!(r#"{{"jti":"{}"}}"#, jti_of(&token));
        let started = Instant::now();
        assert_eq!(s.client.post(&s.path("_revoke"), &body).await.status, 200);
        while status(&other, &token).await != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "not revoked on the other instance"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        waits.push(started.elapsed());
        assert_eq!(
            hints(),
            before + 1,
            "the announcement reached the other instance"
        );
    }
    eprintln!("revoked on the other instance after {waits:?} (the poll alone: up to 1 s)");
}

redis_tests!(the_bus_carries_revocations_to_other_instances);
