//! The same behaviour script through HTTP and through the TCP protocol (with our client) gives
//! the same results and the same error codes, on every backend.

mod support;

use datamiddleware_client::{Client, Error, OwnerChange, Precondition};
use hyper::Method;
use serde_json::{Value, json};
use support::{Backend, TestServer};

/// One step's outcome, comparable across protocols: the document (without its timestamp) or
/// the error code.
type Outcome = Result<Value, String>;

fn normalize(mut doc: Value) -> Value {
    if let Some(object) = doc.as_object_mut() {
        object.remove("updated_at");
    }
    doc
}

/// The operations of the script, implemented once per protocol.
trait Api {
    async fn get(&self, id: &str) -> Outcome;
    async fn put(
        &self,
        id: &str,
        body: Value,
        if_version: Option<u64>,
        create_only: bool,
    ) -> Outcome;
    async fn patch(&self, id: &str, patch: Value) -> Outcome;
    async fn incr(&self, id: &str, by: i64, min: Option<i64>) -> Outcome;
    async fn delete(&self, id: &str, if_version: Option<u64>) -> Outcome;
    async fn txn(&self, ops: Value) -> Outcome;
    async fn batch(&self, ids: &[&str]) -> Outcome;
    async fn list(&self, owner: &str) -> Outcome;
    /// A GET in another game or collection (`None`: this test's game).
    async fn get_in(&self, game: Option<&str>, collection: &str, id: &str) -> Outcome;
    /// A PUT whose `value` is the given JSON text, valid or not.
    async fn put_text(&self, id: &str, value: &str) -> Outcome;
    /// An increment of `path` by one.
    async fn incr_path(&self, id: &str, path: &str) -> Outcome;
}

/// Where a read came from, as both protocols name it.
fn tier_name(tier: datamiddleware_client::Tier) -> &'static str {
    match tier {
        datamiddleware_client::Tier::L1 => "L1",
        datamiddleware_client::Tier::Db => "DB",
        other => panic!("a read from {other:?}"),
    }
}

struct OverHttp<'a>(&'a TestServer);

impl OverHttp<'_> {
    fn outcome(reply: support::Reply) -> Outcome {
        if reply.status.is_success() {
            Ok(if reply.body.is_empty() {
                Value::Null
            } else {
                normalize(reply.json())
            })
        } else {
            Err(reply.code())
        }
    }
}

impl OverHttp<'_> {
    /// A read's outcome with the tier its `X-Cache` header names.
    fn read(reply: support::Reply) -> Outcome {
        let tier = reply.header("x-cache").map(str::to_string);
        Self::outcome(reply).map(|body| json!({"body": body, "tier": tier}))
    }
}

impl Api for OverHttp<'_> {
    async fn get(&self, id: &str) -> Outcome {
        Self::read(
            self.0
                .client
                .get(&self.0.path(&format!("players/{id}")))
                .await,
        )
    }

    async fn get_in(&self, game: Option<&str>, collection: &str, id: &str) -> Outcome {
        let game = game.unwrap_or(&self.0.game);
        Self::read(
            self.0
                .client
                .get(&format!("/api/v1/{game}/{collection}/{id}"))
                .await,
        )
    }

    async fn put_text(&self, id: &str, value: &str) -> Outcome {
        let path = self.0.path(&format!("players/{id}"));
        Self::outcome(
            self.0
                .client
                .put(&path, &format!(r#"{{"value":{value}}}"#))
                .await,
        )
    }

    async fn incr_path(&self, id: &str, path: &str) -> Outcome {
        let body = json!({"path": path, "by": 1});
        Self::outcome(
            self.0
                .client
                .post(
                    &self.0.path(&format!("players/{id}/_incr")),
                    &body.to_string(),
                )
                .await,
        )
    }

    async fn put(
        &self,
        id: &str,
        body: Value,
        if_version: Option<u64>,
        create_only: bool,
    ) -> Outcome {
        let etag = if_version.map(|v| format!("\"{v}\""));
        let mut headers = Vec::new();
        if let Some(etag) = &etag {
            headers.push(("if-match", etag.as_str()));
        }
        if create_only {
            headers.push(("if-none-match", "*"));
        }
        let path = self.0.path(&format!("players/{id}"));
        Self::outcome(
            self.0
                .client
                .send(Method::PUT, &path, &headers, Some(&body.to_string()))
                .await,
        )
    }

    async fn patch(&self, id: &str, patch: Value) -> Outcome {
        let path = self.0.path(&format!("players/{id}"));
        let headers = [("content-type", "application/merge-patch+json")];
        Self::outcome(
            self.0
                .client
                .send(Method::PATCH, &path, &headers, Some(&patch.to_string()))
                .await,
        )
    }

    async fn incr(&self, id: &str, by: i64, min: Option<i64>) -> Outcome {
        let body = json!({"path": "/gold", "by": by, "min": min});
        Self::outcome(
            self.0
                .client
                .post(
                    &self.0.path(&format!("players/{id}/_incr")),
                    &body.to_string(),
                )
                .await,
        )
    }

    async fn delete(&self, id: &str, if_version: Option<u64>) -> Outcome {
        let etag = if_version.map(|v| format!("\"{v}\""));
        let headers: Vec<_> = etag.iter().map(|e| ("if-match", e.as_str())).collect();
        let path = self.0.path(&format!("players/{id}"));
        let reply = self
            .0
            .client
            .send(Method::DELETE, &path, &headers, None)
            .await;
        // The tombstone's version is the ETag.
        let version = reply
            .header("etag")
            .map(|etag| etag.trim_matches('"').parse::<u64>().unwrap());
        Self::outcome(reply).map(|_| json!({ "version": version }))
    }

    async fn txn(&self, ops: Value) -> Outcome {
        Self::outcome(
            self.0
                .client
                .post(&self.0.path("_txn"), &ops.to_string())
                .await,
        )
        .map(strip_results)
    }

    async fn batch(&self, ids: &[&str]) -> Outcome {
        let body = json!({ "ids": ids });
        Self::read(
            self.0
                .client
                .post(&self.0.path("players/_batch_get"), &body.to_string())
                .await,
        )
        .map(strip_docs)
    }

    async fn list(&self, owner: &str) -> Outcome {
        Self::read(
            self.0
                .client
                .get(&self.0.path(&format!("players?owner={owner}")))
                .await,
        )
        .map(strip_docs)
    }
}

struct OverTcp<'a> {
    server: &'a TestServer,
    client: Client,
}

fn tcp_outcome(result: Result<datamiddleware_client::Doc, Error>) -> Outcome {
    match result {
        Ok(doc) => Ok(normalize(doc.parse().unwrap())),
        Err(Error::Server { code, .. }) => Err(code),
        Err(other) => panic!("transport failure: {other}"),
    }
}

fn tcp_err<T>(result: Result<T, Error>) -> Result<T, String> {
    result.map_err(|e| match e {
        Error::Server { code, .. } => code,
        other => panic!("transport failure: {other}"),
    })
}

fn docs_value(page: datamiddleware_client::Docs) -> Value {
    let docs: Vec<Value> = page
        .docs
        .iter()
        .map(|d| {
            d.as_ref().map_or(Value::Null, |b| {
                normalize(serde_json::from_slice(b).unwrap())
            })
        })
        .collect();
    json!({ "body": { "docs": docs, "next_cursor": page.next_cursor }, "tier": tier_name(page.tier) })
}

/// A batch or list read over HTTP, in the shape of [`docs_value`].
fn strip_docs(read: Value) -> Value {
    let docs: Vec<Value> = read["body"]["docs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(normalize)
        .collect();
    let next_cursor = read["body"]
        .get("next_cursor")
        .cloned()
        .unwrap_or(Value::Null);
    json!({ "body": { "docs": docs, "next_cursor": next_cursor }, "tier": read["tier"] })
}

/// A single-document read over TCP, in the shape of `OverHttp::read`.
fn tcp_read(result: Result<datamiddleware_client::Doc, Error>) -> Outcome {
    let tier = result.as_ref().ok().map(|doc| tier_name(doc.tier));
    tcp_outcome(result).map(|body| json!({ "body": body, "tier": tier }))
}

fn strip_results(mut results: Value) -> Value {
    if let Some(list) = results["results"].as_array_mut() {
        for result in list {
            let doc = result["doc"].take();
            result["doc"] = normalize(doc);
        }
    }
    results
}

impl Api for OverTcp<'_> {
    async fn get(&self, id: &str) -> Outcome {
        tcp_read(self.client.get(&self.server.game, "players", id).await)
    }

    async fn get_in(&self, game: Option<&str>, collection: &str, id: &str) -> Outcome {
        let game = game.unwrap_or(&self.server.game);
        tcp_read(self.client.get(game, collection, id).await)
    }

    async fn put_text(&self, id: &str, value: &str) -> Outcome {
        let request = datamiddleware_protocol::Message::Put {
            doc: datamiddleware_protocol::DocRef {
                game: self.server.game.clone(),
                collection: "players".into(),
                id: id.into(),
            },
            pre: Precondition::None,
            owner: OwnerChange::Keep,
            value: bytes::Bytes::from(value.to_string()),
        };
        match self.client.request(request).await {
            Ok(datamiddleware_protocol::Message::Doc { doc, .. }) => {
                Ok(normalize(serde_json::from_slice(&doc).unwrap()))
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => tcp_err::<()>(Err(e)).map(|()| Value::Null),
        }
    }

    async fn incr_path(&self, id: &str, path: &str) -> Outcome {
        tcp_outcome(
            self.client
                .incr(
                    &self.server.game,
                    "players",
                    id,
                    path,
                    1,
                    None,
                    None,
                    Precondition::None,
                )
                .await,
        )
    }

    async fn put(
        &self,
        id: &str,
        body: Value,
        if_version: Option<u64>,
        create_only: bool,
    ) -> Outcome {
        let pre = match (if_version, create_only) {
            (Some(v), _) => Precondition::Version(v),
            (None, true) => Precondition::Absent,
            (None, false) => Precondition::None,
        };
        let owner = match body.get("owner") {
            None => OwnerChange::Keep,
            Some(Value::Null) => OwnerChange::Clear,
            Some(owner) => OwnerChange::Set(owner.as_str().unwrap().to_string()),
        };
        tcp_outcome(
            self.client
                .put_owned(&self.server.game, "players", id, &body["value"], owner, pre)
                .await,
        )
    }

    async fn patch(&self, id: &str, patch: Value) -> Outcome {
        tcp_outcome(
            self.client
                .patch(&self.server.game, "players", id, &patch, Precondition::None)
                .await,
        )
    }

    async fn incr(&self, id: &str, by: i64, min: Option<i64>) -> Outcome {
        let min = min.map(serde_json::Number::from);
        tcp_outcome(
            self.client
                .incr(
                    &self.server.game,
                    "players",
                    id,
                    "/gold",
                    by,
                    min,
                    None,
                    Precondition::None,
                )
                .await,
        )
    }

    async fn delete(&self, id: &str, if_version: Option<u64>) -> Outcome {
        let pre = if_version.map_or(Precondition::None, Precondition::Version);
        tcp_err(
            self.client
                .delete(&self.server.game, "players", id, pre)
                .await,
        )
        .map(|version| json!({ "version": version }))
    }

    async fn txn(&self, ops: Value) -> Outcome {
        tcp_err(self.client.txn(&self.server.game, &ops).await).map(strip_results)
    }

    async fn batch(&self, ids: &[&str]) -> Outcome {
        tcp_err(
            self.client
                .batch_get(&self.server.game, "players", ids)
                .await,
        )
        .map(docs_value)
    }

    async fn list(&self, owner: &str) -> Outcome {
        tcp_err(
            self.client
                .list(&self.server.game, "players", Some(owner), None, 0)
                .await,
        )
        .map(docs_value)
    }
}

/// The behaviour script: every operation, successes and failures.
async fn script(api: &impl Api) -> Vec<(String, Outcome)> {
    let mut log = Vec::new();
    let mut record = |step: &str, outcome: Outcome| log.push((step.to_string(), outcome));
    record("get missing", api.get("a").await);
    record(
        "create",
        api.put(
            "a",
            json!({"value": {"gold": 10}, "owner": "acc"}),
            None,
            true,
        )
        .await,
    );
    record(
        "create again",
        api.put("a", json!({"value": {"gold": 1}}), None, true)
            .await,
    );
    record(
        "replace stale",
        api.put("a", json!({"value": {"gold": 2}}), Some(9), false)
            .await,
    );
    record(
        "replace",
        api.put("a", json!({"value": {"gold": 20}}), Some(1), false)
            .await,
    );
    record("get", api.get("a").await);
    record(
        "patch",
        api.patch("a", json!({"name": "x", "gone": null})).await,
    );
    record("incr", api.incr("a", -5, Some(0)).await);
    record("incr past min", api.incr("a", -100, Some(0)).await);
    record("bad id", api.get("_x").await);
    record(
        "non-object value",
        api.put("b", json!({"value": [1]}), None, false).await,
    );
    record("batch", api.batch(&["a", "zz"]).await);
    record("list", api.list("acc").await);
    record(
        "txn fails",
        api.txn(
            json!({"ops": [{"op": "put", "collection": "players", "id": "t", "value": {}},
                              {"op": "check", "collection": "players", "id": "a", "version": 1}]}),
        )
        .await,
    );
    record("txn rolled back", api.get("t").await);
    record(
        "txn",
        api.txn(json!({"ops": [{"op": "put", "collection": "players", "id": "t", "value": {"k": 1}},
                              {"op": "incr", "collection": "players", "id": "a", "path": "/gold", "by": 1}]}))
            .await,
    );
    record("delete stale", api.delete("a", Some(1)).await);
    record("delete", api.delete("a", None).await);
    record("get deleted", api.get("a").await);
    record(
        "recreate",
        api.put("a", json!({"value": {}}), None, false).await,
    );
    // Reads from L1 name the same tier over both protocols: a cached document, a batch of it
    // and of an id L1 remembers as missing, and a list (always the store).
    record("get cached", api.get("a").await);
    record("batch cached", api.batch(&["a", "zz"]).await);
    record("list again", api.list("acc").await);
    // More of the shared error table.
    record(
        "unknown game",
        api.get_in(Some("nosuchgame"), "players", "a").await,
    );
    record(
        "unknown collection",
        api.get_in(None, "monsters", "a").await,
    );
    record("invalid json", api.put_text("j", "{bad").await);
    record(
        "too large",
        api.put_text("big", &json!({"s": "x".repeat(5000)}).to_string())
            .await,
    );
    record(
        "exact numbers",
        api.put_text("n", r#"{"big":123456789012345678901234567890,"gold":"x"}"#)
            .await,
    );
    record("not a number", api.incr_path("n", "/gold").await);
    record("not an integer", api.incr_path("n", "/big").await);
    log
}

async fn same_results_over_http_and_tcp(backend: Backend) {
    let Some(http_server) = TestServer::start(backend).await else {
        return;
    };
    let tcp_server = TestServer::start(backend).await.unwrap();
    let client = Client::new(
        tcp_server.running.tcp_addr.unwrap().to_string(),
        support::client_options(),
    );
    let over_http = script(&OverHttp(&http_server)).await;
    let over_tcp = script(&OverTcp {
        server: &tcp_server,
        client,
    })
    .await;
    // Both servers use fresh games, so even the versions must agree.
    for ((step, http), (_, tcp)) in over_http.iter().zip(&over_tcp) {
        let http = http.clone().map(|v| rename_game(v, &http_server.game));
        let tcp = tcp.clone().map(|v| rename_game(v, &tcp_server.game));
        assert_eq!(http, tcp, "step {step:?} differs between HTTP and TCP");
    }
    let codes: Vec<_> = over_tcp
        .iter()
        .filter_map(|(_, o)| o.as_ref().err().cloned())
        .collect();
    assert_eq!(
        codes,
        [
            "not_found",
            "already_exists",
            "version_conflict",
            "bound_violation",
            "invalid_id",
            "bad_request",
            "version_conflict",
            "not_found",
            "version_conflict",
            "not_found",
            "unknown_game",
            "unknown_collection",
            "invalid_json",
            "payload_too_large",
            "not_a_number",
            "not_a_number"
        ]
    );
}

fn rename_game(value: Value, game: &str) -> Value {
    serde_json::from_str(&value.to_string().replace(game, "GAME")).unwrap()
}

backend_tests!(same_results_over_http_and_tcp);
