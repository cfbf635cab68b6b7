//! The load generator behind `datamiddleware bench`: drives our HTTP API, our TCP protocol,
//! any HTTP URL (nginx, a bare server) and Redis with the *same* engine, so that their numbers
//! compare side by side.
//!
//! # Layout
//! - this file: the command line (`bench run`, `bench conns`) and a run from start to report;
//! - [`codec`]: per-target request encoding and response parsing;
//! - [`driver`]: targets, workloads, pacing models, the load phase and the connection loop;
//! - [`report`]: per-second HDR histograms, progress line, summary, JSON and SVG output;
//! - [`conns`]: many idle heartbeating TCP connections over several processes.

pub mod codec;
pub mod conns;
pub mod driver;
pub mod report;
pub mod staleness;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use driver::{Auth, Keys, Model, Plan, Target, Workload};
use report::Recorder;

/// `datamiddleware bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Send load and report throughput, latency percentiles and errors.
    Run(RunArgs),
    /// Hold many idle, heartbeating TCP connections; report server memory per connection.
    Conns(conns::ConnsArgs),
    /// (internal) one worker process of `bench conns`.
    #[command(hide = true)]
    ConnsWorker(conns::ConnsArgs),
    /// How long after an acknowledged write other instances may serve the older version.
    Staleness(staleness::StalenessArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// datamiddleware's HTTP API
    Http,
    /// datamiddleware's TCP protocol
    Tcp,
    /// a Redis server (RESP)
    Redis,
    /// any HTTP URL (GET only), e.g. nginx serving a file
    Url,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// GET of loaded keys
    Get,
    /// GETs and PUTs (see --write-ratio)
    Mixed,
    /// batch GETs (see --batch-size)
    Batch,
    /// increments of a number in each key (hot counters with few --keys)
    Incr,
}

/// Parameters of `bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "http")]
    pub target: TargetKind,
    /// host:port of the server (for --target url, give --url instead).
    #[arg(long)]
    pub addr: Option<String>,
    /// For --target url: http://host:port/path, or https://… with --tls-ca.
    #[arg(long)]
    pub url: Option<String>,
    /// Connect over TLS, trusting the CA certificates in this PEM file (HTTP targets offer
    /// ALPN http/1.1 only).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry; default: the host of --addr or --url.
    #[arg(long, requires = "tls_ca")]
    pub tls_name: Option<String>,
    #[arg(long, default_value = "default")]
    pub game: String,
    #[arg(long, default_value = "players")]
    pub collection: String,
    #[arg(long, value_enum, default_value = "get")]
    pub workload: WorkloadKind,
    /// Number of distinct keys (loaded before the run unless --no-load).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Zipf exponent for key choice (e.g. 0.99); uniform when absent.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Approximate size of each written value in bytes.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Share of PUTs in the mixed workload.
    #[arg(long, default_value_t = 0.1)]
    pub write_ratio: f64,
    /// Keys per batch GET.
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Requests in flight per connection (pipeline depth; the cap in open loop).
    #[arg(long, short = 'd', default_value_t = 1)]
    pub depth: usize,
    /// Seconds of load (closed loop, or a constant --rate).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Open loop at this many requests per second in total (latency from planned send times).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop in steps of these rates (comma-separated), each --step-seconds long.
    #[arg(long, value_delimiter = ',')]
    pub ramp: Vec<f64>,
    #[arg(long, default_value_t = 10)]
    pub step_seconds: u64,
    /// Open loop: wait for the next planned send by yielding instead of sleeping on tokio's
    /// 1 ms timer, so sends follow the plan to the microsecond instead of leaving in 1 ms
    /// bursts. Keeps the generator's threads busy: pin it to its own cores (taskset).
    #[arg(long)]
    pub spin: bool,
    /// Skip writing the keys before the run.
    #[arg(long)]
    pub no_load: bool,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write throughput and p99 over time as SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// API key for a server with auth on (`X-Api-Key` on HTTP, the HELLO credential on TCP).
    #[arg(long, env = API_KEY_ENV, hide_env_values = true, conflicts_with = "token")]
    pub api_key: Option<String>,
    /// Bearer token (JWT) instead (`Authorization: Bearer` on HTTP, the HELLO token on TCP).
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

/// The environment variable that can give `--token`.
pub const TOKEN_ENV: &str = "DATAMIDDLEWARE_TOKEN";

/// The environment variable that can give `--api-key` (keeps the key out of process lists).
pub const API_KEY_ENV: &str = "DATAMIDDLEWARE_API_KEY";

/// Runs a `bench` command.
pub async fn main(args: BenchArgs) -> Result<(), String> {
    match args.command {
        BenchCommand::Run(run) => self::run(run).await.map(|_| ()),
        BenchCommand::Conns(conns) => conns::run(conns).await,
        BenchCommand::ConnsWorker(conns) => conns::worker(conns).await,
        BenchCommand::Staleness(args) => staleness::run(args).await,
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))
}

impl Auth {
    fn of(args: &RunArgs) -> Option<Auth> {
        match (&args.api_key, &args.token) {
            (Some(key), _) => Some(Auth::ApiKey(key.clone())),
            (None, Some(token)) => Some(Auth::Bearer(token.clone())),
            (None, None) => None,
        }
    }
}

fn target(args: &RunArgs) -> Result<Target, String> {
    let addr = |default: &str| resolve(args.addr.as_deref().unwrap_or(default));
    Ok(match args.target {
        TargetKind::Http => Target::Http {
            addr: addr("127.0.0.1:8080")?,
            game: args.game.clone(),
            collection: args.collection.clone(),
            auth: Auth::of(args),
        },
        TargetKind::Tcp => Target::Tcp {
            addr: addr("127.0.0.1:7070")?,
            game: args.game.clone(),
            collection: args.collection.clone(),
            auth: Auth::of(args),
        },
        TargetKind::Redis => Target::Redis {
            addr: addr("127.0.0.1:6379")?,
        },
        TargetKind::Url => {
            let url = args
                .url
                .as_deref()
                .ok_or("--target url needs --url http://host:port/path")?;
            let rest = match (url.split_once("://"), &args.tls_ca) {
                (Some(("http", rest)), None) => rest,
                (Some(("https", rest)), Some(_)) => rest,
                (Some(("https", _)), None) => return Err("an https:// URL needs --tls-ca".into()),
                (Some(("http", _)), Some(_)) => {
                    return Err("--tls-ca connects over TLS: write the URL as https://".into());
                }
                _ => return Err("only http:// and https:// URLs are supported".into()),
            };
            let (host, path) = rest
                .split_once('/')
                .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
            Target::Url {
                addr: resolve(host)?,
                path,
            }
        }
    })
}

/// The TLS settings of `args`, with the host of --addr or --url as the default name.
fn tls(args: &RunArgs) -> Result<Option<tls::Tls>, String> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let authority = match (&args.url, &args.addr) {
        (Some(url), _) if matches!(args.target, TargetKind::Url) => url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default(),
        (_, Some(addr)) => addr.as_str(),
        _ => "127.0.0.1",
    };
    let name = args
        .tls_name
        .as_deref()
        .unwrap_or_else(|| datamiddleware_client::host_of(authority));
    let alpn: &[&[u8]] = match args.target {
        TargetKind::Http | TargetKind::Url => &[b"http/1.1"],
        TargetKind::Tcp | TargetKind::Redis => &[],
    };
    tls::Tls::new(ca, name, alpn).map(Some)
}

/// Loads the keys, runs the load, prints and writes the report.
pub async fn run(args: RunArgs) -> Result<report::Summary, String> {
    if args.connections == 0 || args.depth == 0 {
        return Err("--connections and --depth must be at least 1".into());
    }
    let target = target(&args)?;
    let model = if !args.ramp.is_empty() {
        Model::Open {
            steps: args
                .ramp
                .iter()
                .map(|r| (*r, Duration::from_secs(args.step_seconds)))
                .collect(),
        }
    } else if let Some(rate) = args.rate {
        Model::Open {
            steps: vec![(rate, Duration::from_secs(args.seconds))],
        }
    } else {
        Model::Closed
    };
    let duration = match &model {
        Model::Open { steps } => steps.iter().map(|(_, d)| *d).sum(),
        Model::Closed => Duration::from_secs(args.seconds),
    };
    let workload = match args.workload {
        WorkloadKind::Get => Workload::Get,
        WorkloadKind::Mixed => Workload::Mixed {
            write_ratio: args.write_ratio.clamp(0.0, 1.0),
        },
        WorkloadKind::Batch => Workload::Batch {
            size: args.batch_size.max(1),
        },
        WorkloadKind::Incr => Workload::Incr,
    };
    let plan = Plan {
        target,
        workload,
        model,
        keys: Keys::new(args.keys, args.zipf),
        value_size: args.value_size,
        connections: args.connections,
        depth: args.depth,
        duration,
        spin: args.spin,
        tls: tls(&args)?,
    };
    let setup = serde_json::json!({
        "target": format!("{:?}", plan.target),
        "workload": format!("{:?}", plan.workload),
        "model": format!("{:?}", plan.model),
        "keys": args.keys,
        "zipf": args.zipf,
        "value_size": args.value_size,
        "connections": args.connections,
        "depth": args.depth,
        "spin": args.spin,
    });
    if !args.no_load && plan.target.needs_load() {
        eprintln!("loading {} keys …", args.keys);
        driver::load(&plan).await?;
    }
    eprintln!("{setup}");
    let recorder = Recorder::default();
    let plan = Arc::new(plan);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let tasks: Vec<_> = (0..plan.connections)
        .map(|i| tokio::spawn(driver::connection(i, plan.clone(), recorder.clone(), start)))
        .collect();
    tokio::time::sleep_until(start).await;
    let progress = tokio::spawn(report::progress(recorder.clone(), plan.duration.as_secs()));
    let mut failures = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    progress.abort();
    if !failures.is_empty() {
        eprintln!(
            "{} connection(s) failed; first: {}",
            failures.len(),
            failures[0]
        );
    }
    let mut summary = recorder.summary(plan.duration, setup);
    if !failures.is_empty() {
        *summary
            .errors
            .entry("connection_failed".into())
            .or_default() += failures.len() as u64;
    }
    summary.print();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        summary.write_svg(path)?;
    }
    Ok(summary)
}
