//! Closed-loop throughput of GET through the client crate: `connections` clients (one TCP
//! connection each) with `depth` requests outstanding per connection, for `seconds`.
//! Prints requests per second and errors.
//!
//! Usage: `get_bench <addr> <game> <collection> <id> <connections> <depth> <seconds>`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datamiddleware_client::{Client, ClientOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 7 {
        return Err(
            "usage: get_bench <addr> <game> <collection> <id> <connections> <depth> <seconds>"
                .into(),
        );
    }
    let (addr, game, collection, id) = (&args[0], &args[1], &args[2], &args[3]);
    let connections: usize = args[4].parse()?;
    let depth: usize = args[5].parse()?;
    let seconds: u64 = args[6].parse()?;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let client = Client::new(addr.clone(), ClientOptions::default());
        client.connect().await?;
        client.get(game, collection, id).await?; // warm: the document is cached
        for _ in 0..depth {
            let (client, ok, errors, stop) =
                (client.clone(), ok.clone(), errors.clone(), stop.clone());
            let (game, collection, id) = (game.clone(), collection.clone(), id.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&game, &collection, &id).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let done = ok.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    println!(
        "{:.0} requests/s ({} ok, {} errors, {} connections x depth {})",
        done as f64 / elapsed.as_secs_f64(),
        done,
        errors.load(Ordering::Relaxed),
        connections,
        depth
    );
    Ok(())
}
