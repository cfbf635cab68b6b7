//! Authentication and authorization through both front ends: API keys by role and game, the one
//! `unauthorized` answer, `forbidden` on every route and opcode (a cache hit included), and keys
//! replaced while running.

#[macro_use]
mod support;

use datamiddleware::auth::Role;
use datamiddleware::config::Config;
use datamiddleware_client::{Client, ClientOptions, Credential, ErrorCode, Precondition};
use serde_json::{Value, json};
use support::{Backend, Http, TestServer, api_key, assert_code, unique_game};

const SERVER_KEY: &str = "dmw_5a1e0c2b4d6f8a9c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c";
const SERVER_KEY_NEXT: &str =
    "dmw_77e0c2b4d6f8a9c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9";
const READONLY_KEY: &str = "dmw_0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d";

/// A server with the test game `A` and a second game `B` on the same store; keys: a server key
/// of A (two, for rotation), a read-only key of A, and the admin test key.
struct Setup {
    s: TestServer,
    other: String,
}

impl Setup {
    async fn start(backend: Backend) -> Option<Setup> {
        let other = unique_game();
        let b = other.clone();
        let s = TestServer::start_with(backend, |c| add_game_and_keys(c, &b)).await?;
        Some(Setup { s, other })
    }

    fn http(&self, key: Option<&str>) -> Http {
        Http::with_key(format!("http://{}", self.s.running.addr), key)
    }

    fn tcp(&self, key: Option<&str>) -> Client {
        let options = ClientOptions {
            credential: key.map_or(Credential::None, |k| Credential::ApiKey(k.to_string())),
            max_connect_attempts: 1,
            ..ClientOptions::default()
        };
        Client::new(self.s.running.tcp_addr.unwrap().to_string(), options)
    }

    fn a(&self, rest: &str) -> String {
        format!("/api/v1/{}/{rest}", self.s.game)
    }

    fn b(&self, rest: &str) -> String {
        format!("/api/v1/{}/{rest}", self.other)
    }
}

fn add_game_and_keys(config: &mut Config, other: &str) {
    let game = config.games.keys().next().unwrap().clone();
    config
        .games
        .insert(other.to_string(), config.games[&game].clone());
    config.auth.keys.extend([
        api_key("server-a", SERVER_KEY, Role::Server, &[&game]),
        api_key("server-a-next", SERVER_KEY_NEXT, Role::Server, &[&game]),
        api_key("reader-a", READONLY_KEY, Role::Readonly, &[&game]),
    ]);
}

async fn every_refused_credential_gets_the_same_401(backend: Backend) {
    let Some(t) = Setup::start(backend).await else {
        return;
    };
    let path = t.a("players/p1");
    let digest = datamiddleware::auth::digest_hex(SERVER_KEY);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no credential", vec![]),
        ("an unknown key", vec![("x-api-key", "dmw_not_a_key")]),
        ("the key's digest", vec![("x-api-key", digest.as_str())]),
        ("an empty key", vec![("x-api-key", "")]),
        ("an unknown bearer", vec![("authorization", "Bearer nope")]),
        ("another scheme", vec![("authorization", "Basic c2VjcmV0")]),
        (
            "a bearer without a token",
            vec![("authorization", "Bearer")],
        ),
    ];
    let anonymous = t.http(None);
    let mut messages = Vec::new();
    for (what, headers) in &cases {
        let r = anonymous
            .send(hyper::Method::GET, &path, headers, None)
            .await;
        assert_code(&r, 401, "unauthorized", what);
        assert!(r.header("www-authenticate").is_some(), "{what}");
        messages.push(r.json()["detail"].clone());
    }
    assert!(
        messages.windows(2).all(|m| m[0] == m[1]),
        "one message for every refusal: {messages:?}"
    );
    // Writes are refused before their body is looked at.
    let r = anonymous.put(&path, r#"{"value":{"gold":1}}"#).await;
    assert_code(&r, 401, "unauthorized", "an anonymous PUT");
    // The same key works through either header, and health stays open.
    let bearer = format!("Bearer {SERVER_KEY}");
    let r = anonymous
        .send(
            hyper::Method::PUT,
            &path,
            &[("authorization", &bearer)],
            Some(r#"{"value":{"gold":1}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = t.http(Some(SERVER_KEY)).get(&path).await;
    assert_eq!(r.status, 200);
    assert_eq!(anonymous.get("/healthz").await.status, 200);

    // TCP: the handshake is refused with the same code and message.
    for key in [None, Some("dmw_not_a_key"), Some(digest.as_str())] {
        let err = t.tcp(key).connect().await.expect_err("refused");
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{key:?}");
        assert!(
            err.to_string().contains(messages[0].as_str().unwrap()),
            "{err}"
        );
    }
    t.tcp(Some(SERVER_KEY))
        .connect()
        .await
        .expect("a valid key");
}

async fn a_key_of_one_game_cannot_touch_another(backend: Backend) {
    let Some(t) = Setup::start(backend).await else {
        return;
    };
    let admin = &t.s.client;
    // B's document, cached in L1 by the admin's reads, so a refused GET would be a cache hit.
    admin
        .put(&t.b("players/p1"), r#"{"value":{"gold":1}}"#)
        .await;
    assert_eq!(
        admin.get(&t.b("players/p1")).await.header("x-cache"),
        Some("L1")
    );
    let http = t.http(Some(SERVER_KEY));
    let txn =
        json!({"ops": [{"op": "put", "collection": "players", "id": "p1", "value": {"gold": 9}}]});
    let refused = [
        http.get(&t.b("players/p1")).await,
        http.get(&t.b("players")).await,
        http.post(&t.b("players/_batch_get"), r#"{"ids":["p1","p2"]}"#)
            .await,
        http.put(&t.b("players/p1"), r#"{"value":{"gold":9}}"#)
            .await,
        http.send(
            hyper::Method::PATCH,
            &t.b("players/p1"),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"gold":9}"#),
        )
        .await,
        http.post(&t.b("players/p1/_incr"), r#"{"path":"/gold","by":1}"#)
            .await,
        http.delete(&t.b("players/p1")).await,
        http.post(&t.b("_txn"), &txn.to_string()).await,
        // A game that does not exist is not revealed either.
        http.get("/api/v1/nosuchgame/players/p1").await,
    ];
    for (i, r) in refused.iter().enumerate() {
        assert_code(r, 403, "forbidden", &format!("HTTP case {i}"));
    }
    let tcp = t.tcp(Some(SERVER_KEY));
    let game_b = t.other.as_str();
    let value = json!({"gold": 9});
    let txn_b = txn.clone();
    for (what, code) in
        support::tcp_every_request_on(&tcp, game_b, "players", ("p2", "p1"), &txn_b).await
    {
        assert_eq!(code, Some(ErrorCode::Forbidden), "TCP {what}");
    }
    // Nothing was applied, and the key works in its own game on the same connection.
    let r = admin.get(&t.b("players/p1")).await;
    assert_eq!(r.json()["value"]["gold"], 1);
    tcp.put(&t.s.game, "players", "p1", &value, Precondition::None)
        .await
        .expect("its own game");
    assert_eq!(
        tcp.get(&t.s.game, "players", "p1").await.unwrap().version,
        1
    );
}

async fn a_readonly_key_reads_and_never_writes(backend: Backend) {
    let Some(t) = Setup::start(backend).await else {
        return;
    };
    t.s.client
        .put(&t.a("players/p1"), r#"{"value":{"gold":1}}"#)
        .await;
    let http = t.http(Some(READONLY_KEY));
    assert_eq!(http.get(&t.a("players/p1")).await.status, 200);
    assert_eq!(http.get(&t.a("players")).await.status, 200);
    let r = http
        .post(&t.a("players/_batch_get"), r#"{"ids":["p1"]}"#)
        .await;
    assert_eq!(r.status, 200);
    let txn = json!({"ops": [{"op": "incr", "collection": "players", "id": "p1", "path": "/gold", "by": 1}]});
    let refused = [
        http.put(&t.a("players/p1"), r#"{"value":{"gold":9}}"#)
            .await,
        http.put(&t.a("players/new"), r#"{"value":{"gold":9}}"#)
            .await,
        http.post(&t.a("players/p1/_incr"), r#"{"path":"/gold","by":1}"#)
            .await,
        http.delete(&t.a("players/p1")).await,
        http.post(&t.a("_txn"), &txn.to_string()).await,
    ];
    for (i, r) in refused.iter().enumerate() {
        assert_code(r, 403, "forbidden", &format!("HTTP case {i}"));
    }
    let tcp = t.tcp(Some(READONLY_KEY));
    assert_eq!(
        tcp.get(&t.s.game, "players", "p1").await.unwrap().version,
        1
    );
    let err = tcp
        .put(&t.s.game, "players", "p1", &json!({}), Precondition::None)
        .await
        .expect_err("a write");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = tcp.txn(&t.s.game, &txn).await.expect_err("a transaction");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let r = t.s.client.get(&t.a("players/p1")).await;
    assert_eq!(
        (
            r.json()["version"].clone(),
            r.json()["value"]["gold"].clone()
        ),
        (json!(1), json!(1))
    );
}

async fn keys_are_replaced_without_a_restart(backend: Backend) {
    let Some(t) = Setup::start(backend).await else {
        return;
    };
    let path = t.a("players/p1");
    let old = t.http(Some(SERVER_KEY));
    let next = t.http(Some(SERVER_KEY_NEXT));
    // Rotation: both keys work at once.
    assert_eq!(old.put(&path, r#"{"value":{"n":1}}"#).await.status, 201);
    assert_eq!(next.get(&path).await.status, 200);
    let old_tcp = t.tcp(Some(SERVER_KEY));
    let reader_tcp = t.tcp(Some(READONLY_KEY));
    old_tcp.get(&t.s.game, "players", "p1").await.unwrap();
    let value: Value = json!({"n": 2});
    let err = reader_tcp
        .put(&t.s.game, "players", "p1", &value, Precondition::None)
        .await
        .expect_err("read-only");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));

    // The old key goes; the read-only key becomes a server key.
    let mut config = support::config(&t.s.game, &t.s.store_url);
    add_game_and_keys(&mut config, &t.other);
    config.auth.keys.retain(|k| k.name != "server-a");
    for key in &mut config.auth.keys {
        if key.name == "reader-a" {
            key.role = Role::Server;
        }
    }
    config.validate().expect("a valid configuration");
    t.s.running.reload(&config);

    assert_code(
        &old.get(&path).await,
        401,
        "unauthorized",
        "the removed key",
    );
    assert_eq!(next.get(&path).await.status, 200);
    // An open connection with the removed key is refused at its next request and closed.
    let err = old_tcp
        .get(&t.s.game, "players", "p1")
        .await
        .expect_err("the removed key");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    // An open connection with a changed key gets its new rights.
    reader_tcp
        .put(&t.s.game, "players", "p1", &value, Precondition::None)
        .await
        .expect("the key is a server key now");
}

backend_tests!(
    every_refused_credential_gets_the_same_401,
    a_key_of_one_game_cannot_touch_another,
    a_readonly_key_reads_and_never_writes,
    keys_are_replaced_without_a_restart,
);
