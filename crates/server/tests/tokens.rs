//! JWT tokens through both front ends: every malformed, forged or expired token gets the one
//! `unauthorized` answer (reliability.md cases 19-21), tokens are minted by server keys only,
//! and a player touches only its own documents — through every route and opcode, a cache hit
//! included.

#[macro_use]
mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use datamiddleware::auth::Role;
use datamiddleware::auth::tokens::unix_now;
use datamiddleware::config::{Config, TokenKeyConfig};
use datamiddleware_client::{Client, ClientOptions, Credential, ErrorCode, Precondition};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Backend, Http, TestServer, api_key, assert_code, fixture};

const SECRET: &str = "a-test-only-hs256-secret-of-forty-bytes!!";
const SERVER_KEY: &str = "dmw_9c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a8c1e";
const READONLY_KEY: &str = "dmw_3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a8c1e9c1e";
const LEEWAY: u64 = 5;

/// Token keys (HS256 without kid, RS256 `rsa`, EdDSA `ed`), a server and a read-only key of the
/// test game; `players` is `player_write`, `items` is `public_read`.
fn tokens_on(config: &mut Config) {
    let game = config.games.keys().next().unwrap().clone();
    let key = |kid: Option<&str>, algorithm: &str| TokenKeyConfig {
        kid: kid.map(str::to_string),
        algorithm: algorithm.to_string(),
        secret: None,
        secret_file: None,
        public_key_file: None,
        private_key_file: None,
    };
    let tokens = &mut config.auth.tokens;
    tokens.issuer = "https://issuer.test".into();
    tokens.audience = "dmw-test".into();
    tokens.leeway = Duration::from_secs(LEEWAY);
    tokens.keys = vec![
        TokenKeyConfig {
            secret: Some(SECRET.into()),
            ..key(None, "HS256")
        },
        TokenKeyConfig {
            public_key_file: Some(fixture("test_rsa_public.pem")),
            ..key(Some("rsa"), "RS256")
        },
        TokenKeyConfig {
            public_key_file: Some(fixture("test_ed25519_public.pem")),
            ..key(Some("ed"), "EdDSA")
        },
    ];
    config.auth.keys.extend([
        api_key("server", SERVER_KEY, Role::Server, &[&game]),
        api_key("reader", READONLY_KEY, Role::Readonly, &[&game]),
    ]);
    let collections = &mut config.games.get_mut(&game).unwrap().collections;
    collections.get_mut("players").unwrap().player_write = true;
    collections.get_mut("items").unwrap().public_read = true;
}

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start_with(backend, tokens_on).await
}

fn claims(game: &str, sub: &str) -> Value {
    json!({
        "sub": sub, "game": game, "iss": "https://issuer.test", "aud": "dmw-test",
        "exp": unix_now() + 600,
    })
}

fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn signed(claims: &Value, kid: &str, alg: Algorithm, private: &str) -> String {
    let pem = std::fs::read(fixture(private)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ed_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with a hand-made header and signature.
fn raw(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

fn bearer(s: &TestServer, token: &str) -> Http {
    s.anonymous().with_bearer(token)
}

fn tcp(s: &TestServer, token: &str) -> Client {
    s.tcp_client(Credential::Token(token.to_string()))
}

async fn every_bad_token_gets_the_same_401(backend: Backend) {
    let Some(s) = start(backend).await else {
        return;
    };
    let game = s.game.clone();
    let good = claims(&game, "alice");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        c
    };
    let now = unix_now();
    let hs_header = json!({"alg": "HS256", "typ": "JWT"});
    let genuine = hs256(&good);
    let mut tampered = genuine.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    // HS256 "signed" with the RS256 key's public PEM as the secret: the classic confusion.
    let rsa_public = std::fs::read(fixture("test_rsa_public.pem")).unwrap();
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        let key = EncodingKey::from_secret(&rsa_public).unwrap();
        jsonwebtoken::encode(&header, &good, &key).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
        ),
        (
            "alg none with kid",
            raw(&json!({"alg": "none", "kid": "rsa"}), &good, b""),
        ),
        ("HS256 signed with the RSA public key", confused),
        ("a tampered signature", tampered),
        ("two parts", genuine.rsplit_once('.').unwrap().0.to_string()),
        ("10 KB", format!("{genuine}{}", "A".repeat(10 * 1024))),
        ("bad base64", "@@@.@@@.@@@".to_string()),
        ("exp past", hs256(&with(&|c| c["exp"] = json!(now - 3600)))),
        (
            "exp just outside the leeway",
            hs256(&with(&|c| c["exp"] = json!(now - LEEWAY - 3))),
        ),
        (
            "exp as a string",
            hs256(&with(&|c| c["exp"] = json!((now + 600).to_string()))),
        ),
        (
            "nbf as a string",
            hs256(&with(&|c| c["nbf"] = json!(now.to_string()))),
        ),
        (
            "nbf in the future",
            hs256(&with(&|c| c["nbf"] = json!(now + LEEWAY + 60))),
        ),
        (
            "no exp",
            hs256(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        (
            "wrong aud",
            hs256(&with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "wrong iss",
            hs256(&with(&|c| c["iss"] = json!("https://evil.test"))),
        ),
        (
            "no sub",
            hs256(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
        ),
        (
            "a sub that is no id",
            hs256(&with(&|c| c["sub"] = json!("a/b"))),
        ),
        ("role admin", hs256(&with(&|c| c["role"] = json!("admin")))),
        (
            "an unknown kid",
            raw(&json!({"alg": "HS256", "kid": "nope"}), &good, b"x"),
        ),
        (
            "the right header, no signature",
            raw(&hs_header, &good, b""),
        ),
    ];
    let path = format!("/api/v1/{game}/items/i1");
    let mut messages = Vec::new();
    for (what, token) in &cases {
        let r = bearer(&s, token).get(&path).await;
        assert_code(&r, 401, "unauthorized", what);
        messages.push(r.json()["detail"].clone());
        let err = tcp(&s, token).connect().await.expect_err(what);
        if token.len() > 4096 {
            // docs/protocol.md: a frame over 4096 bytes before HELLO_OK is refused as such.
            assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "TCP: {what}");
            continue;
        }
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "TCP: {what}");
        assert!(
            err.to_string().contains(messages[0].as_str().unwrap()),
            "TCP: {what}: {err}"
        );
    }
    assert!(messages.windows(2).all(|m| m[0] == m[1]), "{messages:?}");

    // The genuine ones pass, through every key, and one just inside the leeway too.
    let inside = hs256(&with(&|c| c["exp"] = json!(now - LEEWAY + 3)));
    let rsa = signed(&good, "rsa", Algorithm::RS256, "test_rsa_private.pem");
    let ed = signed(&good, "ed", Algorithm::EdDSA, "test_ed25519_private.pem");
    for (what, token) in [
        ("HS256", &genuine),
        ("RS256", &rsa),
        ("EdDSA", &ed),
        ("inside the leeway", &inside),
    ] {
        let r = bearer(&s, token).get(&path).await;
        assert_code(&r, 404, "not_found", what);
        tcp(&s, token).connect().await.expect(what);
    }
}

async fn a_player_touches_only_its_own_documents(backend: Backend) {
    let Some(s) = start(backend).await else {
        return;
    };
    let admin = &s.client;
    let p = |rest: &str| s.path(rest);
    // Bob's documents, read once by the admin so that they sit in L1 (a refusal is then a hit).
    admin
        .put(&p("players/bob1"), r#"{"value":{"gold":1},"owner":"bob"}"#)
        .await;
    admin
        .put(&p("items/bobsword"), r#"{"value":{"dmg":1},"owner":"bob"}"#)
        .await;
    assert_eq!(
        admin.get(&p("players/bob1")).await.header("x-cache"),
        Some("L1")
    );

    // A server key mints alice's token.
    let server = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    let r = server
        .post(&p("_token"), r#"{"sub":"alice","ttl":"10m"}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let expires = r.json()["expires_at"].as_u64().unwrap();
    assert!(
        expires > unix_now() + 500 && expires <= unix_now() + 601,
        "{expires}"
    );
    let alice = bearer(&s, &token);

    // Her own: created (owned by her without saying so), read, changed, listed.
    assert_eq!(
        alice
            .put(&p("players/a1"), r#"{"value":{"gold":5}}"#)
            .await
            .status,
        201
    );
    let r = alice.get(&p("players/a1")).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["owner"].clone()),
        (200, json!("alice"))
    );
    let r = alice
        .post(&p("players/a1/_incr"), r#"{"path":"/gold","by":1}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(alice.get(&p("players?owner=alice")).await.status, 200);
    // A public collection: anyone's document is readable, not writable.
    assert_eq!(alice.get(&p("items/bobsword")).await.status, 200);
    assert_eq!(alice.get(&p("items")).await.status, 200);

    let txn = json!({"ops": [
        {"op": "incr", "collection": "players", "id": "a1", "path": "/gold", "by": 100},
        {"op": "incr", "collection": "players", "id": "bob1", "path": "/gold", "by": 100},
    ]});
    let refused = [
        (
            "GET a cached foreign document",
            alice.get(&p("players/bob1")).await,
        ),
        (
            "a batch mixing own and foreign",
            alice
                .post(&p("players/_batch_get"), r#"{"ids":["a1","bob1"]}"#)
                .await,
        ),
        ("a list of everyone's", alice.get(&p("players")).await),
        ("a list of bob's", alice.get(&p("players?owner=bob")).await),
        (
            "PUT on bob's",
            alice
                .put(&p("players/bob1"), r#"{"value":{"gold":0}}"#)
                .await,
        ),
        (
            "_incr on bob's",
            alice
                .post(&p("players/bob1/_incr"), r#"{"path":"/gold","by":1}"#)
                .await,
        ),
        ("DELETE bob's", alice.delete(&p("players/bob1")).await),
        (
            "a txn whose last op is foreign",
            alice.post(&p("_txn"), &txn.to_string()).await,
        ),
        (
            "a create given to bob",
            alice
                .put(&p("players/a2"), r#"{"value":{},"owner":"bob"}"#)
                .await,
        ),
        (
            "her own, given away",
            alice
                .put(&p("players/a1"), r#"{"value":{},"owner":null}"#)
                .await,
        ),
        (
            "a write in a collection not player_write",
            alice.put(&p("items/a3"), r#"{"value":{}}"#).await,
        ),
        (
            "minting",
            alice.post(&p("_token"), r#"{"sub":"alice"}"#).await,
        ),
    ];
    for (what, r) in &refused {
        assert_code(r, 403, "forbidden", what);
    }
    let r = admin.get(&p("players/bob1")).await;
    assert_eq!(
        (
            r.json()["version"].clone(),
            r.json()["value"]["gold"].clone()
        ),
        (json!(1), json!(1))
    );
    let r = admin.get(&p("players/a1")).await;
    assert_eq!(r.json()["value"]["gold"], 6, "the txn applied nothing");
    assert_eq!(admin.get(&p("players/a2")).await.status, 404);

    // The same over TCP, the inline hit path first.
    let t = tcp(&s, &token);
    let game = s.game.as_str();
    assert_eq!(t.get(game, "players", "a1").await.unwrap().version, 2);
    for (what, code) in
        support::tcp_every_request_on(&t, game, "players", ("a1", "bob1"), &txn).await
    {
        assert_eq!(code, Some(ErrorCode::Forbidden), "TCP {what}");
    }
    let put = t
        .put(game, "items", "a4", &json!({}), Precondition::None)
        .await;
    assert_eq!(
        put.err().and_then(|e| e.code()),
        Some(ErrorCode::Forbidden),
        "TCP PUT items"
    );
    assert_eq!(
        t.list(game, "players", Some("alice"), None, 10)
            .await
            .unwrap()
            .docs
            .len(),
        1
    );

    // A token is for one game; a read-only key cannot mint.
    let other = hs256(&claims("othergame", "alice"));
    assert_code(
        &bearer(&s, &other).get(&p("players/a1")).await,
        403,
        "forbidden",
        "another game's token",
    );
    let reader = Http::with_key(format!("http://{}", s.running.addr), Some(READONLY_KEY));
    assert_code(
        &reader.post(&p("_token"), r#"{"sub":"alice"}"#).await,
        403,
        "forbidden",
        "a read-only key minting",
    );
    assert_code(
        &server.post(&p("_token"), r#"{"sub":"a/b"}"#).await,
        400,
        "invalid_id",
        "a bad sub",
    );
    // An admin key of every game mints only for a game that exists.
    let admin = Http::new(format!("http://{}", s.running.addr));
    assert_code(
        &admin
            .post("/api/v1/no_such_game/_token", r#"{"sub":"alice"}"#)
            .await,
        404,
        "unknown_game",
        "a token for a game that is not configured",
    );
    assert_eq!(
        admin.post(&p("_token"), r#"{"sub":"alice"}"#).await.status,
        200
    );
}

async fn an_expired_token_ends_its_tcp_connection(backend: Backend) {
    let Some(s) = TestServer::start_with(backend, |c| {
        tokens_on(c);
        c.auth.tokens.leeway = Duration::ZERO;
    })
    .await
    else {
        return;
    };
    let server = Http::with_key(format!("http://{}", s.running.addr), Some(SERVER_KEY));
    let r = server
        .post(&s.path("_token"), r#"{"sub":"alice","ttl":"1s"}"#)
        .await;
    let token = r.json()["token"].as_str().unwrap().to_string();
    let t = tcp(&s, &token);
    t.put(&s.game, "players", "a1", &json!({}), Precondition::None)
        .await
        .expect("a fresh token");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = t.get(&s.game, "players", "a1").await.expect_err("expired");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    assert_code(
        &bearer(&s, &token).get(&s.path("players/a1")).await,
        401,
        "unauthorized",
        "HTTP, cached token",
    );
}

/// A reload that removes the key a token was signed with ends the TCP sessions opened with
/// it (at their next request), not only HTTP; a token cannot mint tokens.
async fn a_removed_token_key_ends_its_sessions(backend: Backend) {
    let Some(s) = start(backend).await else {
        return;
    };
    let server_token = hs256(&json!({
        "sub": "srv", "game": s.game, "role": "server", "iss": "https://issuer.test",
        "aud": "dmw-test", "exp": unix_now() + 600,
    }));
    let r = bearer(&s, &server_token)
        .post(&s.path("_token"), r#"{"sub":"alice"}"#)
        .await;
    assert_code(&r, 403, "forbidden", "a token minting");
    let ed_token = signed(
        &claims(&s.game, "alice"),
        "ed",
        Algorithm::EdDSA,
        "test_ed25519_private.pem",
    );
    let (hs, ed) = (tcp(&s, &server_token), tcp(&s, &ed_token));
    hs.put(&s.game, "players", "x1", &json!({}), Precondition::None)
        .await
        .unwrap();
    ed.put(&s.game, "players", "a1", &json!({}), Precondition::None)
        .await
        .unwrap();

    let mut config = support::config(&s.game, &s.store_url);
    tokens_on(&mut config);
    config.auth.tokens.keys.retain(|k| k.algorithm != "HS256");
    config.validate().expect("a valid configuration");
    s.running.reload(&config);
    let err = hs
        .get(&s.game, "players", "x1")
        .await
        .expect_err("its key is gone");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    assert_code(
        &bearer(&s, &server_token).get(&s.path("players/x1")).await,
        401,
        "unauthorized",
        "HTTP",
    );
    // A token whose key stays keeps working on its connection.
    ed.get(&s.game, "players", "a1")
        .await
        .expect("the EdDSA key is still configured");
}

/// The owner rule where a read is answered by the store (an instance whose L1 is cold), not L1.
async fn the_owner_rule_holds_on_reads_from_the_store(backend: Backend) {
    let Some(s) = start(backend).await else {
        return;
    };
    s.client
        .put(&s.path("players/bob1"), r#"{"value":{},"owner":"bob"}"#)
        .await;
    s.client
        .put(&s.path("players/a1"), r#"{"value":{},"owner":"alice"}"#)
        .await;
    let cold = s.sibling_with(tokens_on).await;
    let alice = hs256(&claims(&s.game, "alice"));
    let t = tcp(&cold, &alice);
    let game = s.game.as_str();
    let err = t
        .get(game, "players", "bob1")
        .await
        .expect_err("a foreign document");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert_eq!(t.get(game, "players", "a1").await.unwrap().version, 1);
    // Now bob1 sits in the cold instance's L1 (filled by that refused read): still refused.
    let err = t
        .get(game, "players", "bob1")
        .await
        .expect_err("cached now");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    let r = bearer(&cold, &alice).get(&s.path("players/bob1")).await;
    assert_code(&r, 403, "forbidden", "HTTP, cached");
}

/// MINT over TCP: the same rule and answer as HTTP `_token`.
async fn tokens_are_minted_over_tcp_too(backend: Backend) {
    let Some(s) = start(backend).await else {
        return;
    };
    let with_key = |key: &str| {
        let options = ClientOptions {
            credential: Credential::ApiKey(key.to_string()),
            max_connect_attempts: 1,
            ..ClientOptions::default()
        };
        Client::new(s.running.tcp_addr.unwrap().to_string(), options)
    };
    let game = s.game.as_str();
    let minted = with_key(SERVER_KEY)
        .mint(game, "alice", Some("10m"))
        .await
        .expect("a server key mints");
    assert_eq!(minted["token_type"], "Bearer");
    let expires = minted["expires_at"].as_u64().unwrap();
    assert!(
        expires > unix_now() + 500 && expires <= unix_now() + 601,
        "{expires}"
    );
    let token = minted["token"].as_str().unwrap();
    let alice = tcp(&s, token);
    let doc = alice
        .put(
            game,
            "players",
            "a1",
            &json!({"gold": 1}),
            Precondition::None,
        )
        .await
        .expect("alice writes her own document");
    assert_eq!(doc.parse().unwrap()["owner"], "alice");
    let refusals = [
        (
            "a read-only key",
            with_key(READONLY_KEY).mint(game, "alice", None).await.err(),
        ),
        (
            "a player token",
            alice.mint(game, "alice", None).await.err(),
        ),
        (
            "another game",
            with_key(SERVER_KEY)
                .mint("othergame", "alice", None)
                .await
                .err(),
        ),
    ];
    for (what, err) in refusals {
        assert_eq!(
            err.and_then(|e| e.code()),
            Some(ErrorCode::Forbidden),
            "{what}"
        );
    }
    let err = with_key(SERVER_KEY).mint(game, "a/b", None).await.err();
    assert_eq!(err.and_then(|e| e.code()), Some(ErrorCode::InvalidId));
}

backend_tests!(
    tokens_are_minted_over_tcp_too,
    every_bad_token_gets_the_same_401,
    a_player_touches_only_its_own_documents,
    an_expired_token_ends_its_tcp_connection,
    a_removed_token_key_ends_its_sessions,
    the_owner_rule_holds_on_reads_from_the_store,
);

/// `auth.tokens.jwks_file`: its RS256 and EdDSA keys verify tokens naming their `kid` on both
/// front ends, each pinned to the `alg` of its entry; a file that is not a usable JWKS
/// document is refused at start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_file_verify_tokens() {
    let s = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        tokens_on(c);
        c.auth.tokens.jwks_file = Some(fixture("test_jwks.json"));
    })
    .await
    .unwrap();
    let path = s.path("items/i1");
    s.client.put(&path, r#"{"value":{"x":1}}"#).await;
    let alice = claims(&s.game, "alice");
    for (kid, alg, private) in [
        ("jwks-rsa", Algorithm::RS256, "test_rsa_private.pem"),
        ("jwks-ed", Algorithm::EdDSA, "test_ed25519_private.pem"),
    ] {
        let token = signed(&alice, kid, alg, private);
        assert_eq!(bearer(&s, &token).get(&path).await.status, 200, "{kid}");
        let doc = tcp(&s, &token).get(&s.game, "items", "i1").await;
        assert!(doc.is_ok(), "{kid} over TCP: {doc:?}");
    }
    // The Ed25519 key signing under the RSA entry's kid, and a kid the file does not have.
    let wrong_alg = signed(
        &alice,
        "jwks-rsa",
        Algorithm::EdDSA,
        "test_ed25519_private.pem",
    );
    let unknown = signed(
        &alice,
        "jwks-other",
        Algorithm::RS256,
        "test_rsa_private.pem",
    );
    for token in [wrong_alg, unknown] {
        assert_code(
            &bearer(&s, &token).get(&path).await,
            401,
            "unauthorized",
            "jwks",
        );
        let err = tcp(&s, &token)
            .get(&s.game, "items", "i1")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let without_alg = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    for (content, problem) in [
        ("{\"keys\": [", "not a JWKS document"),
        (without_alg, "needs \"alg\""),
    ] {
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, content).unwrap();
        let mut config = support::config(&s.game, &s.store_url);
        tokens_on(&mut config);
        config.auth.tokens.jwks_file = Some(file);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("auth.tokens.jwks_file") && err.contains(problem),
            "{err}"
        );
    }
}
