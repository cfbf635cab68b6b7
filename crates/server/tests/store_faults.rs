//! Faults a real database produces: connections it drops, and locks that hold a write past its
//! time budget. Pooled connections are not pinged, so a read that lands on a dropped connection
//! is retried on another.

mod support;

use hyper::StatusCode;
use sqlx::Connection;
use support::{Backend, Http};

/// Concurrent writes, so that the pool holds several connections to be dropped.
async fn open_several_connections(client: &Http, game: &str) {
    let writes = (0..16).map(|i| {
        let client = client.clone();
        let path = format!("/api/v1/{game}/players/p{i}");
        async move { client.put(&path, r#"{"value":{}}"#).await }
    });
    futures::future::join_all(writes).await;
}

/// Reads that miss L1 go to the store and must not fail because of dropped connections.
async fn reads_still_answer(client: &Http, game: &str) {
    for i in 0..20 {
        let reply = client
            .get(&format!("/api/v1/{game}/players/missing{i}"))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_the_database_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let Some(base) = Backend::Postgres.url(&dir) else {
        return;
    };
    let app = format!("dmw_fault_{:08x}", fastrand::u32(..));
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}application_name={app}");
    let game = support::unique_game();
    let config = support::config(&game, &url);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    open_several_connections(&client, &game).await;
    // Like a database restart: the server side closes every connection of this instance.
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 1, "the instance had open connections");
    reads_still_answer(&client, &game).await;
    running.stop().await.unwrap();
}

/// A write cut off by the time budget while the database blocks it drops its connection
/// mid-transaction. The write must not commit, and the pool (of one connection here, so every
/// later request depends on what happened to it) must go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_mid_transaction_leaves_no_broken_connection() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = Backend::Postgres.url(&dir) else {
        return;
    };
    let game = support::unique_game();
    let mut config = support::config(&game, &url);
    config.store.max_connections = 1;
    // The budget also covers each later write's new connection and its wait for the row lock
    // that the cut-off session holds until PostgreSQL notices it is gone: 500 ms once proved
    // too little on a busy machine.
    config.store.timeout = std::time::Duration::from_secs(1);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    let path = format!("/api/v1/{game}/players/p1");
    let created = client.put(&path, r#"{"value":{"n":1}}"#).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    // Another session blocks every row lock on the table, so the next write hangs inside its
    // transaction until the budget gives up on it.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE dmw_documents IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let reply = client.put(&path, r#"{"value":{"n":2}}"#).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.body
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    // The cut-off write did not commit, and the single pooled connection works.
    for n in 3..8 {
        let reply = client
            .put(&path, &format!(r#"{{"value":{{"n":{n}}}}}"#))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json()["version"], n - 1, "{:?}", reply.body);
        let missing = client.get(&format!("/api/v1/{game}/players/none{n}")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{:?}", missing.body);
    }
    running.stop().await.unwrap();
}

/// The MySQL/MariaDB side of the first test: the server kills every connection of this instance
/// (found by a database of its own, since MySQL connections carry no application name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_reads_survive_the_database_killing_connections() {
    let dir = tempfile::tempdir().unwrap();
    let Some(base) = Backend::MySql.url(&dir) else {
        return;
    };
    let database = format!("dmw_fault_{:08x}", fastrand::u32(..));
    let (server, _) = base.rsplit_once('/').expect("a database in the URL");
    let url = format!("{server}/{database}");
    let mut admin = sqlx::MySqlConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let game = support::unique_game();
    let running = datamiddleware::app::start(support::config(&game, &url))
        .await
        .unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    open_several_connections(&client, &game).await;
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE DB = ?",
    )
    .bind(&database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ids.is_empty(), "the instance had open connections");
    for id in ids {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    reads_still_answer(&client, &game).await;
    running.stop().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// When no connection to the database can be opened, requests get 503 `overloaded` saying the
/// store cannot be reached (operations.md promises it), not a 500. Here the SQLite file's
/// directory disappears and pooled connections age out, so the pool has to open new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let url = format!("sqlite://{}/store.db", store_dir.display());
    let game = support::unique_game();
    let mut config = support::config(&game, &url);
    config.store.max_lifetime = std::time::Duration::from_millis(50);
    let running = datamiddleware::app::start(config).await.unwrap();
    let client = Http::new(format!("http://{}", running.addr));
    let path = format!("/api/v1/{game}/players/before");
    assert_eq!(client.get(&path).await.status, StatusCode::NOT_FOUND);
    std::fs::remove_dir_all(&store_dir).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let reply = client.get(&format!("/api/v1/{game}/players/after")).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        "{:?}",
        reply.body
    );
    assert!(
        reply.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cannot be reached")),
        "{:?}",
        reply.body
    );
    running.stop().await.unwrap();
}
