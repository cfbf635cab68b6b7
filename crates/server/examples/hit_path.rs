//! Micro-benchmark of the cache-hit path below HTTP: `Service::get` of a cached document.
//! Prints nanoseconds per call. Usage: `hit_path [iterations]`

use std::time::Instant;

use datamiddleware::config::Config;
use datamiddleware::service::Service;
use datamiddleware::service::ops::{Precondition, WriteOp};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let dir = std::env::temp_dir().join(format!("dmw-hit-path-{}", std::process::id()));
    let mut config = Config::default();
    config.games.insert(
        "default".into(),
        datamiddleware::config::GameConfig::default_game(format!(
            "sqlite://{}/hit.db",
            dir.display()
        )),
    );
    let metrics = std::sync::Arc::new(datamiddleware::ops::metrics::Metrics::new(true));
    let service = Service::from_config(&config, metrics).await?;
    let value = serde_json::json!({"name": "Aria", "level": 42});
    let serde_json::Value::Object(value) = value else {
        unreachable!()
    };
    let caller = datamiddleware::auth::Caller::trusted();
    service
        .write_one(
            &caller,
            "default",
            datamiddleware::model::DocKey::new("players", "42"),
            WriteOp::Put { value, owner: None },
            Precondition::default(),
            None,
        )
        .await?;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..iterations {
        bytes += service
            .get(&caller, "default", "players", "42")
            .await?
            .body
            .len();
    }
    let elapsed = started.elapsed();
    println!(
        "Service::get hit: {:.0} ns/call ({} calls, {} bytes)",
        elapsed.as_nanos() as f64 / iterations as f64,
        iterations,
        bytes
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
