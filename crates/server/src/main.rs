//! The `datamiddleware` binary: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datamiddleware::config::{CliOverrides, Config};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: glibc malloc trimmed and re-grew its heap under
/// request load (thousands of page faults per second, ~0 with jemalloc; see
/// docs/performance.md), and jemalloc is what heap profiling will build on.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's own options (heap profiling compiled in but inactive; one sample per 512 KiB)
// are built into it by .cargo/config.toml: declaring `malloc_conf` here would take unsafe code.

#[derive(Parser)]
#[command(
    name = "datamiddleware",
    version,
    about = "Data middleware for game and web back ends"
)]
struct Cli {
    /// TOML configuration file. Without it, built-in defaults (one game `default` on
    /// ./data/default.db) apply; `DMW_…` environment variables override either.
    #[arg(long, global = true, env = "DMW_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for HTTP (overrides http.listen).
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Address to listen on for the TCP protocol (overrides tcp.listen).
    #[arg(long, global = true)]
    tcp_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Load generator: drive this server (HTTP or TCP), any HTTP URL or Redis and report.
    Bench(Box<datamiddleware_bench::BenchArgs>),
    /// Check this machine against the configuration (open files, kernel backlogs, local
    /// ports, memory) and print the command that fixes each finding; exit status 1 when
    /// something needs fixing.
    Doctor,
    /// The seed's capacity model with this build's measured costs: cores, memory and
    /// instances for a number of connections and requests a second.
    Capacity {
        /// Connections open at once (HTTP and TCP).
        #[arg(long)]
        connections: u64,
        /// Requests a second.
        #[arg(long)]
        rps: f64,
        /// small (4 cores, 16 GiB), standard (8, 32), large (16, 64), flagship (32, 128), or
        /// auto (this machine).
        #[arg(long, default_value = "standard")]
        machine: String,
        /// What the requests are: http (cached GETs), tcp (pipelined cached GETs) or
        /// tcp-depth-1.
        #[arg(long, default_value = "http")]
        mix: String,
        /// CPU microseconds per request, measured for your own mix (overrides --mix).
        #[arg(long)]
        cpu_us: Option<f64>,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Make a new random API key: prints the key (give it to the client; it is shown only
    /// here) and the `[[auth.keys]]` entry holding its SHA-256 (put it in the configuration).
    New {
        /// A name for logs and the audit trail.
        #[arg(long)]
        name: String,
        /// admin, server or readonly.
        #[arg(long, default_value = "server")]
        role: String,
        /// Games it may touch, comma-separated; `*` for all.
        #[arg(long, default_value = "*")]
        games: String,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (defaults + file + environment + flags) as TOML.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => return bench(*args),
        Some(Command::Key {
            action: KeyAction::New { name, role, games },
        }) => return new_key(&name, &role, &games),
        _ => {}
    }
    let overrides = CliOverrides {
        listen: cli.listen,
        tcp_listen: cli.tcp_listen,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("datamiddleware: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config {
            action: ConfigAction::Print,
        } => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config, cli.config, overrides),
        Command::Capacity {
            connections,
            rps,
            machine,
            mix,
            cpu_us,
        } => capacity(&config, connections, rps, &machine, &mix, cpu_us),
        Command::Doctor => {
            let machine = datamiddleware::ops::doctor::Machine::read();
            let findings = datamiddleware::ops::doctor::check(&config, &machine);
            let (text, all_ok) = datamiddleware::ops::doctor::report(&findings);
            print!("{text}");
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Bench(_) | Command::Key { .. } => {
            unreachable!("handled before loading the configuration")
        }
    }
}

fn capacity(
    config: &Config,
    connections: u64,
    rps: f64,
    machine: &str,
    mix: &str,
    cpu_us: Option<f64>,
) -> ExitCode {
    use datamiddleware::ops::capacity::{self, FLAGSHIP, LARGE, Machine, Mix, SMALL, STANDARD};
    let machine = match machine {
        "small" => SMALL,
        "standard" => STANDARD,
        "large" => LARGE,
        "flagship" => FLAGSHIP,
        "auto" => {
            let found = datamiddleware::ops::doctor::Machine::read();
            Machine {
                name: "auto (this machine)",
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
                memory_bytes: found.memory_total_bytes.unwrap_or(0),
            }
        }
        other => {
            eprintln!(
                "datamiddleware: --machine {other:?}: small, standard, large, flagship or auto"
            );
            return ExitCode::from(2);
        }
    };
    let cpu_us = match (cpu_us, Mix::parse(mix)) {
        (Some(us), _) if us > 0.0 => us,
        (None, Some(mix)) => mix.cpu_us(),
        _ => {
            eprintln!("datamiddleware: --mix is http, tcp or tcp-depth-1; --cpu-us must be > 0");
            return ExitCode::from(2);
        }
    };
    if !(rps.is_finite() && rps >= 0.0) {
        eprintln!("datamiddleware: --rps must be a number ≥ 0");
        return ExitCode::from(2);
    }
    print!(
        "{}",
        capacity::report(machine, connections, rps, cpu_us, config.cache.l1_max_bytes)
    );
    ExitCode::SUCCESS
}

/// The multi-threaded tokio runtime (one worker per core), or `None` after saying why not.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("datamiddleware: cannot start the runtime: {e}"))
        .ok()
}

/// Runs the load generator (it needs no server configuration).
fn bench(args: datamiddleware_bench::BenchArgs) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(datamiddleware_bench::main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datamiddleware bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a new key and its configuration entry.
fn new_key(name: &str, role: &str, games: &str) -> ExitCode {
    if !matches!(role, "admin" | "server" | "readonly") {
        eprintln!("datamiddleware key new: --role must be admin, server or readonly");
        return ExitCode::from(2);
    }
    let key = match datamiddleware::auth::new_key() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("datamiddleware key new: {e}");
            return ExitCode::FAILURE;
        }
    };
    let games: Vec<String> = games
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| format!("{g:?}"))
        .collect();
    println!("# The key (give it to the client; it is not stored anywhere):");
    println!("# {key}");
    println!("[[auth.keys]]");
    println!("name = {name:?}");
    println!("role = {role:?}");
    println!("games = [{}]", games.join(", "));
    println!("sha256 = {:?}", datamiddleware::auth::digest_hex(&key));
    ExitCode::SUCCESS
}

/// Replaces the log filter on a reload (`None` when `RUST_LOG` set it: that one stays).
type LogFilter = Option<datamiddleware::ops::logs::FilterHandle>;

fn serve(config: Config, file: Option<PathBuf>, overrides: CliOverrides) -> ExitCode {
    // Held until the end of `serve`: dropping it flushes the lines still queued.
    let (_log_guard, log_filter) = match datamiddleware::ops::logs::init(&config.log) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("datamiddleware: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        if config.metrics.heap_sampling
            && !datamiddleware::ops::profiling::start_heap_sampling().await
        {
            tracing::warn!("heap sampling is not available in this build");
        }
        let running = match datamiddleware::app::start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            http = %running.addr,
            https = ?running.tls_addr,
            tcp = ?running.tcp_addr,
            tcp_tls = ?running.tcp_tls_addr,
            ops = ?running.ops_addr,
            "datamiddleware listening"
        );
        tokio::select! {
            () = shutdown_signal() => {}
            () = reload_on_hangup(&running, &log_filter, file.as_deref(), &overrides) => {}
        }
        match running.stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// On every SIGHUP, loads the configuration again and applies what can change while running;
/// an invalid file is reported and the running configuration kept. Never completes (unless
/// the signal cannot be watched).
async fn reload_on_hangup(
    running: &datamiddleware::app::Running,
    log_filter: &LogFilter,
    file: Option<&std::path::Path>,
    overrides: &CliOverrides,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP: the configuration cannot be reloaded");
            return std::future::pending().await;
        };
        while hangup.recv().await.is_some() {
            match Config::load(file, overrides) {
                Ok(config) => {
                    if let Some(handle) = log_filter {
                        match handle.reload(EnvFilter::new(&config.log.filter)) {
                            Ok(()) => tracing::info!(
                                filter = %config.log.filter,
                                "configuration reloaded: log filter"
                            ),
                            Err(e) => tracing::error!(error = %e, "reload: log filter kept"),
                        }
                    }
                    running.reload(&config)
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the configuration is invalid; the running one is kept"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (running, log_filter, file, overrides);
    std::future::pending().await
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
