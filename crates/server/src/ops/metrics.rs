//! The metrics registry (Prometheus text format, `GET /metrics`) and the handles each component
//! records into. The registry is built once at start and the handles are resolved then (or on
//! their first use, once): recording is an atomic add, never a label lookup, an allocation or
//! label formatting. With `metrics.enabled = false` nothing is recorded (the hit-path cost of
//! metrics is measured against that in `bench/compare.sh`).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::Histogram;
use super::process::Process;
use crate::ingress::http::endpoint::Endpoint;

/// Every metric of one process.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub tcp: TcpMetrics,
    pub store: StoreMetrics,
    /// `rate_limited_total{limit}`: per_ip, admin, server, readonly, player.
    pub rate_limited: [Counter; 5],
    /// The store pools, read at each scrape.
    pub pools: super::pools::Pools,
    /// The cache tiers, read at each scrape.
    pub caches: super::caches::Caches,
    /// What the stall watchdog found.
    pub stalls: super::stalls::StallCounters,
    /// The warm-up's progress.
    pub warmup: WarmupGauges,
}

/// The warm-up's progress, set by the warm-up as it goes.
#[derive(Default)]
pub struct WarmupGauges {
    /// 1 while warming.
    pub active: Gauge,
    /// Documents asked for so far, and in all.
    pub loaded: Gauge,
    pub total: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.http.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry, enabled);
        let tcp = TcpMetrics::register(&mut registry, enabled);
        let store = StoreMetrics::register(&mut registry);
        let limits = Family::<LimitLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests (and TLS handshakes) refused by a rate limit, by limit",
            limits.clone(),
        );
        let rate_limited = ["per_ip", "admin", "server", "readonly", "player"]
            .map(|limit| limits.get_or_create_owned(&LimitLabel { limit }));
        registry.register_collector(Box::new(Process));
        let pools = super::pools::Pools::default();
        registry.register_collector(Box::new(pools.clone()));
        let caches = super::caches::Caches::default();
        registry.register_collector(Box::new(caches.clone()));
        let stalls = super::stalls::StallCounters::default();
        registry.register(
            "tokio_worker_stalls",
            "Times a runtime worker ran past metrics.stall_threshold without a break",
            stalls.worker_stalls.clone(),
        );
        registry.register(
            "tokio_task_growth_warnings",
            "Times the tasks alive grew by half again (and over 1,000) within a minute",
            stalls.task_growth.clone(),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            registry.register_collector(Box::new(super::runtime::Runtime(handle)));
        }
        let warmup = WarmupGauges::default();
        registry.register(
            "warmup_active",
            "1 while the caches are being warmed",
            warmup.active.clone(),
        );
        registry.register(
            "warmup_documents_loaded",
            "Documents the warm-up asked for so far",
            warmup.loaded.clone(),
        );
        registry.register(
            "warmup_documents_total",
            "Documents the warm-up will ask for",
            warmup.total.clone(),
        );
        Metrics {
            registry,
            http,
            tcp,
            store,
            rate_limited,
            pools,
            caches,
            stalls,
            warmup,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// The statuses the API answers with, each with a slot of its own per endpoint and method.
const STATUSES: [u16; 20] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 429, 431, 500, 503,
    504,
];
/// Methods with a slot of their own; anything else counts as `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "POST", "other"];

/// `http_requests_total{method,endpoint,status}` and
/// `http_request_duration_seconds{endpoint}`.
pub struct HttpMetrics {
    enabled: bool,
    requests: Family<RequestLabels, Counter>,
    /// `[endpoint][method][status]`: the family's counter, fetched on first use.
    resolved: Box<[OnceLock<Counter>]>,
    durations: Box<[Histogram]>,
    /// Connections open now, HTTP and HTTPS (counted whether or not `enabled`).
    pub open: Gauge,
}

impl HttpMetrics {
    fn register(registry: &mut Registry, enabled: bool) -> HttpMetrics {
        let open = Gauge::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open now (HTTPS included; TLS handshakes in progress too)",
            open.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, endpoint (the route template) and status",
            requests.clone(),
        );
        let durations_family = Family::<EndpointLabel, Histogram>::default();
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its answer, by endpoint",
            durations_family.clone(),
        );
        let durations = Endpoint::ALL
            .iter()
            .map(|e| {
                durations_family.get_or_create_owned(&EndpointLabel {
                    endpoint: e.label(),
                })
            })
            .collect();
        let slots = Endpoint::ALL.len() * METHODS.len() * (STATUSES.len() + 1);
        HttpMetrics {
            enabled,
            requests,
            resolved: (0..slots).map(|_| OnceLock::new()).collect(),
            durations,
            open,
        }
    }

    /// False when metrics are off: callers skip even reading the clock.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The `method` argument of [`HttpMetrics::record`].
    pub fn method_slot(method: &http::Method) -> u8 {
        match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::PUT => 2,
            http::Method::PATCH => 3,
            http::Method::DELETE => 4,
            http::Method::POST => 5,
            _ => 6,
        }
    }

    /// The label of a method slot.
    pub fn method_name(slot: u8) -> &'static str {
        METHODS[usize::from(slot).min(METHODS.len() - 1)]
    }

    /// One answered request (`method` from [`HttpMetrics::method_slot`]).
    pub fn record(&self, endpoint: Endpoint, method: u8, status: u16, took: Duration) {
        if !self.enabled {
            return;
        }
        let method = usize::from(method).min(METHODS.len() - 1);
        let status_slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let labels = || RequestLabels {
            method: METHODS[method],
            endpoint: endpoint.label(),
            status,
        };
        if status_slot == STATUSES.len() {
            // A status without a slot (none is answered today): the family's lookup.
            self.requests.get_or_create(&labels()).inc();
        } else {
            let slot =
                (endpoint as usize * METHODS.len() + method) * (STATUSES.len() + 1) + status_slot;
            self.resolved[slot]
                .get_or_init(|| self.requests.get_or_create_owned(&labels()))
                .inc();
        }
        self.durations[endpoint as usize].observe(took);
    }
}

/// Why a TCP connection ended.
#[derive(Debug, Clone, Copy)]
pub enum TcpEnd {
    PeerClosed,
    Io,
    Stalled,
    Finished,
    GraceOver,
    /// The TLS handshake failed or timed out (or the address was over its rate).
    Handshake,
}

impl TcpEnd {
    const ALL: [(TcpEnd, &'static str); 6] = [
        (TcpEnd::PeerClosed, "peer_closed"),
        (TcpEnd::Io, "io_error"),
        (TcpEnd::Stalled, "stalled"),
        // Every request read was answered, then closed: after the client's EOF, a GOAWAY or a
        // protocol violation.
        (TcpEnd::Finished, "finished"),
        (TcpEnd::GraceOver, "grace_over"),
        (TcpEnd::Handshake, "tls_handshake_failed"),
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The request opcodes (0x10 + index), as the `opcode` label says them.
pub const TCP_REQUESTS: [&str; 9] = [
    "get",
    "batch_get",
    "put",
    "patch",
    "delete",
    "list",
    "incr",
    "txn",
    "mint",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpcodeLabel {
    opcode: &'static str,
}

/// TCP connections (open now, accepted, refused over the limit, closed by reason) and requests
/// by opcode.
pub struct TcpMetrics {
    enabled: bool,
    pub open: Gauge,
    pub accepted: Counter,
    pub refused: Counter,
    closed: [Counter; 6],
    /// By opcode − 0x10; a connection adds what it read since its last flush (one atomic add
    /// per read from the socket, not per request).
    requests: [Counter; 9],
    /// Requests that ran in a task of their own (not the GETs answered or batched inline).
    durations: [Histogram; 9],
}

impl TcpMetrics {
    fn register(registry: &mut Registry, enabled: bool) -> TcpMetrics {
        let open = Gauge::default();
        registry.register(
            "tcp_connections_open",
            "TCP protocol connections open now (TLS included)",
            open.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "tcp_connections_accepted",
            "TCP protocol connections accepted (refused ones not included)",
            accepted.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "tcp_connections_refused",
            "TCP protocol connections refused because tcp.max_connections was reached",
            refused.clone(),
        );
        let closed_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tcp_connections_closed",
            "TCP protocol connections closed, by reason",
            closed_family.clone(),
        );
        let closed = TcpEnd::ALL
            .map(|(_, reason)| closed_family.get_or_create_owned(&ReasonLabel { reason }));
        let requests_family = Family::<OpcodeLabel, Counter>::default();
        registry.register(
            "tcp_requests",
            "TCP protocol requests read, by opcode",
            requests_family.clone(),
        );
        let durations_family = Family::<OpcodeLabel, Histogram>::default();
        registry.register(
            "tcp_request_duration_seconds",
            "Time from a request's start (after the earlier requests on its documents) to its \
             answer, for requests run in a task (GETs answered from L1 or batched are not timed)",
            durations_family.clone(),
        );
        TcpMetrics {
            enabled,
            open,
            accepted,
            refused,
            closed,
            requests: TCP_REQUESTS
                .map(|opcode| requests_family.get_or_create_owned(&OpcodeLabel { opcode })),
            durations: TCP_REQUESTS
                .map(|opcode| durations_family.get_or_create_owned(&OpcodeLabel { opcode })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Adds a connection's counts of requests read, by opcode − 0x10.
    pub fn add_requests(&self, counts: &[u32; 9]) {
        for (counter, n) in self.requests.iter().zip(counts) {
            if *n > 0 {
                counter.inc_by(u64::from(*n));
            }
        }
    }

    /// One request run in a task, by opcode − 0x10.
    pub fn observe(&self, opcode_index: usize, took: Duration) {
        if let Some(histogram) = self.durations.get(opcode_index) {
            histogram.observe(took);
        }
    }

    /// Counts a connection as open until the guard is dropped, then as closed for the reason
    /// it holds by then (a task that panics counts as `io_error`). Kept with metrics off too:
    /// tests read them.
    pub fn opened(&self) -> OpenConnection<'_> {
        self.open.inc();
        self.accepted.inc();
        OpenConnection {
            metrics: self,
            end: TcpEnd::Io,
        }
    }
}

/// See [`TcpMetrics::opened`].
pub struct OpenConnection<'a> {
    metrics: &'a TcpMetrics,
    pub end: TcpEnd,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.metrics.open.dec();
        self.metrics.closed[self.end as usize].inc();
    }
}

/// What a store call does (the `operation` label of `store_query_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// One document by key.
    Get,
    /// Several documents of one collection (`_batch_get`, batched GETs, warm-up).
    GetMany,
    /// A page of a collection.
    List,
    /// A write transaction, from its start to its commit.
    Write,
    /// Ids of an owner's documents (adaptive warm-up).
    Ids,
    /// Token revocations: taken, or read.
    Revocations,
    /// This instance's presence record.
    Presence,
}

impl StoreOp {
    pub const ALL: [StoreOp; 7] = [
        StoreOp::Get,
        StoreOp::GetMany,
        StoreOp::List,
        StoreOp::Write,
        StoreOp::Ids,
        StoreOp::Revocations,
        StoreOp::Presence,
    ];

    fn label(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::GetMany => "get_many",
            StoreOp::List => "list",
            StoreOp::Write => "write",
            StoreOp::Ids => "ids",
            StoreOp::Revocations => "revocations",
            StoreOp::Presence => "presence",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// Store work: read queries, committed write transactions, and how long each call took.
pub struct StoreMetrics {
    pub reads: Counter<u64, AtomicU64>,
    pub commits: Counter<u64, AtomicU64>,
    /// One histogram per [`StoreOp`], resolved at start.
    durations: Vec<Histogram>,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> StoreMetrics {
        let reads = Counter::default();
        registry.register(
            "store_reads",
            "Read queries sent to the stores (single, batch and list)",
            reads.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "store_commits",
            "Write transactions committed",
            commits.clone(),
        );
        let family = Family::<OperationLabel, Histogram>::default();
        registry.register(
            "store_query_duration_seconds",
            "Time of a store call by operation, from asking the pool for a connection to the \
             answer (a write: to its commit), failures and timeouts included",
            family.clone(),
        );
        let durations = StoreOp::ALL
            .iter()
            .map(|op| {
                family.get_or_create_owned(&OperationLabel {
                    operation: op.label(),
                })
            })
            .collect();
        StoreMetrics {
            reads,
            commits,
            durations,
        }
    }

    /// One store call of `op` that took `took`.
    pub fn observe(&self, op: StoreOp, took: Duration) {
        if let Some(histogram) = self.durations.get(op as usize) {
            histogram.observe(took);
        }
    }
}
