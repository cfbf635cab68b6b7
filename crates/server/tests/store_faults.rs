//! Faults a real database produces: connections it drops. Pooled connections are not pinged
//! before use, so a read that lands on a dropped connection is retried once on another.

mod support;

use hyper::StatusCode;
use sqlx::Connection;
use support::Backend;

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
    let client = support::Http::new(format!("http://{}", running.addr));
    // Concurrent writes, so that the pool holds several connections to be dropped.
    let writes = (0..16).map(|i| {
        let client = client.clone();
        let path = format!("/api/v1/{game}/players/p{i}");
        async move { client.put(&path, r#"{"value":{}}"#).await }
    });
    futures::future::join_all(writes).await;
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
    // Reads that miss L1 go to the store and must not fail because of the dropped connections.
    for i in 0..20 {
        let reply = client
            .get(&format!("/api/v1/{game}/players/missing{i}"))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
    }
    running.stop().await.unwrap();
}
