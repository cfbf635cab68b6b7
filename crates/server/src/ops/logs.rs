//! Logging: the subscriber (human or JSON lines, to standard error or a rotated file, through a
//! non-blocking writer whose dropped lines are counted), the request context that every line
//! written while serving an HTTP request carries (its id, method and endpoint), and the
//! request ids themselves (accepted from `X-Request-Id` or generated).

use std::cell::Cell;
use std::sync::OnceLock;

use http::HeaderValue;
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{self as fmt_layer, FmtContext};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::metrics::HttpMetrics;
use crate::config::{LogConfig, LogFormat, LogRotation};
use crate::ingress::http::endpoint::Endpoint;

/// Replaces the log filter on a reload.
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Keeps the writer thread alive; dropping it flushes the lines still queued.
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// The writer's count of lines it dropped (queue full), once logging is set up.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped so far because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Sets up the global subscriber from `config` (`RUST_LOG`, when set, is the filter instead).
/// Returns the guard to hold until exit and, unless `RUST_LOG` chose the filter, the handle
/// that reloads it.
pub fn init(config: &LogConfig) -> Result<(LogGuard, Option<FilterHandle>), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new(&config.filter), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let builder = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(config.buffered_lines)
        .thread_name("datamiddleware-log");
    let (writer, worker, ansi) = match &config.file {
        Some(path) => {
            let appender = rotating_file(path, config)?;
            let (writer, worker) = builder.finish(appender);
            (writer, worker, false)
        }
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            let (writer, worker) = builder.finish(std::io::stderr());
            (writer, worker, ansi)
        }
    };
    let _ = DROPPED.set(writer.error_counter());
    let output = output_layer(config.format, writer, ansi);
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok((LogGuard { _worker: worker }, (!from_env).then_some(handle)))
}

/// The layer that formats lines (`format`, with the request context) and hands them to
/// `writer`.
fn output_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Human => fmt_layer::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .event_format(WithRequest {
                inner: format::format(),
                json: false,
            })
            .boxed(),
        LogFormat::Json => fmt_layer::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields::new())
            .event_format(WithRequest {
                inner: format::format().json(),
                json: true,
            })
            .boxed(),
    }
}

fn rotating_file(
    path: &std::path::Path,
    config: &LogConfig,
) -> Result<tracing_appender::rolling::RollingFileAppender, String> {
    use tracing_appender::rolling::{Builder, Rotation};
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("log.file {}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let rotation = match config.rotation {
        LogRotation::Hourly => Rotation::HOURLY,
        LogRotation::Daily => Rotation::DAILY,
        LogRotation::Never => Rotation::NEVER,
    };
    Builder::new()
        .rotation(rotation)
        .filename_prefix(name)
        .max_log_files(config.max_files)
        .build(dir)
        .map_err(|e| format!("log.file {}: {e}", path.display()))
}

/// What the lines logged while serving one HTTP request say about it.
#[derive(Clone)]
pub struct RequestContext {
    pub id: HeaderValue,
    /// A method slot of [`HttpMetrics::method_slot`] (a byte: this rides in every request's
    /// future).
    pub method: u8,
    pub endpoint: Endpoint,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `future` (one request's handling) with `context` on every line it logs. Not an
/// `async fn`: that would hold `future` twice (argument and scope) in the request's future.
/// The context comes back from the finished future with `take_value`.
pub fn in_request<F: std::future::Future>(
    context: RequestContext,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<RequestContext, F> {
    REQUEST.scope(context, future)
}

/// Adds the request context, when there is one, to each line of an inner formatter: as
/// `request_id=… method=… endpoint=…` at the end of a human line, as members of a JSON line.
/// A task-local rather than a span: a span per request cost more than the rest of a cache
/// hit's logging-free path, and only the rare line that is written needs the context.
struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Ok(context) = REQUEST.try_with(RequestContext::clone) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // Request ids are checked to be plain visible ASCII (see `request_id`): no escaping.
        let id = context.id.to_str().unwrap_or("-");
        let extra = if self.json {
            format!(
                "\"request_id\":\"{id}\",\"method\":\"{}\",\"endpoint\":\"{}\",",
                HttpMetrics::method_name(context.method),
                context.endpoint.label()
            )
        } else {
            format!(
                " request_id={id} method={} endpoint={}",
                HttpMetrics::method_name(context.method),
                context.endpoint.label()
            )
        };
        if self.json {
            match line.find('{') {
                Some(at) => line.insert_str(at + 1, &extra),
                None => line.push_str(&extra),
            }
        } else {
            let end = line.trim_end_matches('\n').len();
            line.insert_str(end, &extra);
        }
        writer.write_str(&line)
    }
}

/// The longest `X-Request-Id` taken from a client; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The request's id: the client's `X-Request-Id` when it is 1 to 128 characters of letters,
/// digits and `-_.:+/=` (so it can go into a log line as it is), else a new random one.
pub fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = given {
        let bytes = value.as_bytes();
        let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b);
        if !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(plain) {
            return value.clone();
        }
    }
    new_request_id()
}

thread_local! {
    /// Per-thread state of the id generator: no shared counter for the cores to fight over.
    static NEXT_ID: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Without the OS generator ids stay unique within this process, which still serves.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ (std::process::id() as u64) << 32;
    }
    u64::from_le_bytes(bytes)
}

/// 16 hex digits from a splitmix64 sequence (a bijection of the per-thread counter, so ids of
/// one thread never repeat; threads start at random points).
pub fn new_request_id() -> HeaderValue {
    let state = NEXT_ID.with(|next| {
        let state = next.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        next.set(state);
        state
    });
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut text = [0u8; 16];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in text.iter_mut().enumerate() {
        *byte = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

thread_local! {
    static SAMPLER: Cell<u64> = Cell::new(seed() | 1);
}

/// True for about `fraction` of the calls (xorshift per thread: no lock, no syscall).
pub fn sampled(fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    let x = SAMPLER.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    ((x >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_client_id_is_kept_and_anything_else_replaced() {
        let given = HeaderValue::from_static("3f2a-41:b/c=");
        assert_eq!(request_id(Some(&given)), given);
        for bad in ["has space", "quote\"", "", &"x".repeat(MAX_REQUEST_ID + 1)] {
            let value = HeaderValue::from_str(bad).unwrap();
            let id = request_id(Some(&value));
            assert_ne!(id, value, "{bad:?} must be replaced");
            assert_eq!(id.len(), 16);
        }
        let longest = HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID)).unwrap();
        assert_eq!(request_id(Some(&longest)), longest);
    }

    #[test]
    fn generated_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );
    }

    /// Lines written by the layer under test.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line outside any request and one inside, with `format`; both lines.
    fn two_lines(format: LogFormat) -> (String, String) {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber =
            tracing_subscriber::registry().with(output_layer(format, move || sink.clone(), false));
        let context = RequestContext {
            id: HeaderValue::from_static("req-7"),
            method: HttpMetrics::method_slot(&http::Method::PUT),
            endpoint: Endpoint::Document,
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(detail = "x", "outside");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(in_request(context, async {
                tracing::warn!(detail = "y", "inside");
            }));
        });
        let text = String::from_utf8(lines.0.lock().clone()).unwrap();
        let mut it = text.lines().map(str::to_string);
        let outside = it.next().unwrap();
        let inside = it.next().unwrap();
        assert!(it.next().is_none(), "two lines: {text}");
        (outside, inside)
    }

    #[test]
    fn lines_inside_a_request_carry_its_context() {
        let (outside, inside) = two_lines(LogFormat::Json);
        let outside: serde_json::Value = serde_json::from_str(&outside).unwrap();
        let inside: serde_json::Value = serde_json::from_str(&inside).unwrap();
        assert!(outside.get("request_id").is_none(), "{outside}");
        assert_eq!(inside["request_id"], "req-7", "{inside}");
        assert_eq!(inside["method"], "PUT");
        assert_eq!(inside["endpoint"], "/api/v1/{game}/{collection}/{id}");
        assert_eq!(inside["fields"]["message"], "inside");
        assert_eq!(inside["fields"]["detail"], "y");

        let (outside, inside) = two_lines(LogFormat::Human);
        assert!(!outside.contains("request_id"), "{outside}");
        assert!(
            inside.ends_with(
                "inside detail=\"y\" request_id=req-7 method=PUT \
                 endpoint=/api/v1/{game}/{collection}/{id}"
            ),
            "{inside}"
        );
    }

    #[test]
    fn sampling_keeps_about_the_fraction() {
        assert!(!(0..1000).any(|_| sampled(0.0)));
        assert!((0..1000).all(|_| sampled(1.0)));
        let kept = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((8_000..12_000).contains(&kept), "{kept} of 100000 at 0.1");
    }
}
