//! `bench staleness`: how long after an acknowledged write the *other* instances of a
//! deployment may still serve the version before it.
//!
//! One instance writes (TCP PUTs, one at a time, keys in turn); every reader instance holds the
//! key in its L1 beforehand (it read the previous version). After each acknowledgement, one
//! task per reader reads the key back to back until it serves the new version. The stale
//! window of that reader for that write is the time from the acknowledgement to the end of the
//! last read that still returned an older version (0 when the first read after the
//! acknowledgement was already current). The resolution is one read round trip, printed too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use datamiddleware_client::{Client, ClientOptions, Credential, Precondition};
use hdrhistogram::Histogram;
use serde_json::json;

/// Parameters of `bench staleness`.
#[derive(Debug, Clone, clap::Args)]
pub struct StalenessArgs {
    /// host:port (TCP) of the instance that writes.
    #[arg(long)]
    pub writer: String,
    /// host:port (TCP) of each instance that reads, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub readers: Vec<String>,
    #[arg(long, default_value = "default")]
    pub game: String,
    #[arg(long, default_value = "players")]
    pub collection: String,
    /// Keys written in turn.
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// Writes measured.
    #[arg(long, default_value_t = 2000)]
    pub writes: u64,
    /// Pause between one write's convergence and the next write.
    #[arg(long, default_value_t = 2)]
    pub pause_ms: u64,
    /// Give up on a write when a reader still serves an older version after this long.
    #[arg(long, default_value_t = 5000)]
    pub give_up_ms: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label printed with the result (for example "at rest").
    #[arg(long, default_value = "")]
    pub label: String,
    /// API key presented by every connection, for servers with auth on.
    #[arg(long, env = crate::API_KEY_ENV, hide_env_values = true)]
    pub api_key: Option<String>,
}

pub async fn run(args: StalenessArgs) -> Result<(), String> {
    if args.keys == 0 || args.writes == 0 {
        return Err("--keys and --writes must be at least 1".into());
    }
    let options = ClientOptions {
        credential: args
            .api_key
            .clone()
            .map_or(Credential::None, Credential::ApiKey),
        ..ClientOptions::default()
    };
    let connect = |addr: &str| {
        let addr = addr.to_string();
        let options = options.clone();
        async move {
            let client = Client::new(addr.clone(), options);
            client
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            Ok::<_, String>(client)
        }
    };
    let writer = connect(&args.writer).await?;
    let mut readers = Vec::new();
    for addr in &args.readers {
        readers.push(connect(addr).await?);
    }
    let ids: Vec<String> = (0..args.keys).map(|k| format!("stale{k}")).collect();
    // Every key written once and held by every reader.
    for id in &ids {
        let version = put(&writer, &args, id, 0).await?;
        for reader in &readers {
            converge(reader, &args, id, version, Duration::from_secs(10)).await?;
        }
    }
    let mut windows =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut round_trips =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut gave_up = 0u64;
    let mut stale_reads = 0u64;
    let give_up = Duration::from_millis(args.give_up_ms);
    let started = Instant::now();
    for n in 0..args.writes {
        let id = &ids[(n % args.keys) as usize];
        let version = put(&writer, &args, id, n + 1).await?;
        let acknowledged = Instant::now();
        let polls = readers.iter().map(|reader| async {
            let mut last_stale_end = None;
            let mut stale = 0u64;
            let mut reads = Vec::new();
            loop {
                let began = Instant::now();
                let doc = reader
                    .get(&args.game, &args.collection, id)
                    .await
                    .map_err(|e| format!("read failed: {e}"))?;
                let ended = Instant::now();
                reads.push(ended - began);
                if doc.version >= version {
                    let window = last_stale_end.map_or(Duration::ZERO, |end: Instant| {
                        end.saturating_duration_since(acknowledged)
                    });
                    return Ok::<_, String>((Some(window), stale, reads));
                }
                stale += 1;
                last_stale_end = Some(ended);
                if acknowledged.elapsed() > give_up {
                    return Ok((None, stale, reads));
                }
            }
        });
        for result in futures_util::future::join_all(polls).await {
            let (window, stale, reads) = result?;
            stale_reads += stale;
            for read in reads {
                let _ = round_trips.record(read.as_micros().max(1) as u64);
            }
            match window {
                Some(window) => {
                    let _ = windows.record(window.as_micros().max(1) as u64);
                }
                None => gave_up += 1,
            }
        }
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
    }
    let elapsed = started.elapsed();
    let zero = windows.count_between(0, 1);
    let label = if args.label.is_empty() {
        String::new()
    } else {
        format!(" ({})", args.label)
    };
    println!(
        "staleness{label}: {} writes x {} readers in {:.1} s; stale window after the ack: \
         p50 {} us, p99 {} us, max {} us; {} of {} windows were 0; {} stale reads; {} gave up \
         after {} ms; read round trip p50 {} us",
        args.writes,
        readers.len(),
        elapsed.as_secs_f64(),
        windows.value_at_quantile(0.5),
        windows.value_at_quantile(0.99),
        windows.max(),
        zero,
        windows.len(),
        stale_reads,
        gave_up,
        args.give_up_ms,
        round_trips.value_at_quantile(0.5),
    );
    if let Some(path) = &args.json {
        let report = json!({
            "label": args.label,
            "writes": args.writes,
            "readers": readers.len(),
            "window_us": {
                "p50": windows.value_at_quantile(0.5),
                "p99": windows.value_at_quantile(0.99),
                "max": windows.max(),
                "zero": zero,
                "count": windows.len(),
            },
            "stale_reads": stale_reads,
            "gave_up": gave_up,
            "read_round_trip_us_p50": round_trips.value_at_quantile(0.5),
        });
        std::fs::write(path, report.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if gave_up > 0 {
        return Err(format!(
            "{gave_up} reader(s) still served an older version {} ms after a write",
            args.give_up_ms
        ));
    }
    Ok(())
}

async fn put(client: &Client, args: &StalenessArgs, id: &str, n: u64) -> Result<u64, String> {
    let doc = client
        .put(
            &args.game,
            &args.collection,
            id,
            &json!({ "n": n }),
            Precondition::None,
        )
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    Ok(doc.version)
}

async fn converge(
    client: &Client,
    args: &StalenessArgs,
    id: &str,
    version: u64,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let doc = client
            .get(&args.game, &args.collection, id)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if doc.version >= version {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!("{id} did not reach version {version} in {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
