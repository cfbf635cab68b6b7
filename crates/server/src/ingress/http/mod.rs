//! HTTP ingress: each connection (HTTP/1.1 + h2c through the shared accept loop, the stalled-
//! connection watchdog, graceful shutdown) and the per-request entry point (in-flight limit).
//!
//! Routing is hand-written over hyper rather than axum: the cache-hit path is the product, and
//! an axum route measured 20–25 % below bare hyper on this machine (see docs/performance.md).

pub mod endpoint;
mod ops_routes;
mod problem;
mod routes;
mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue, TRANSFER_ENCODING};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::drain::{self, Drain, Wakes};

use super::tls::{Tls, handshake};
use crate::auth::Authenticator;
use crate::config::HttpConfig;
use crate::error::{ErrorCode, ServiceError};
use crate::ops::logs;
use crate::ops::metrics::HttpMetrics;
use crate::service::Service;

/// Most header lines accepted in one request (beyond: 431). This is hyper's built-in default:
/// setting any other value makes hyper allocate the header array per request (measured).
pub const MAX_HEADERS: usize = 100;
/// Largest request head (request line + headers) accepted (beyond: 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Echoed on every answer: the client's own id, or the one its request was logged under.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The API and every operations endpoint (no `ops.listen`).
    All,
    /// The API, the probes and `/openapi.json` (the rest is on the `ops.listen` listener).
    Api,
    /// Only the operations endpoints (the `ops.listen` listener).
    Ops,
}

impl Routes {
    /// Whether the operations endpoint named `name` (its last path segment) is served here.
    pub fn serves_ops(self, name: &str) -> bool {
        match self {
            Routes::All | Routes::Ops => true,
            Routes::Api => matches!(name, "healthz" | "livez" | "readyz" | "openapi.json"),
        }
    }
}

/// What every request handler shares. A configuration reload replaces it (see [`HttpLive`]):
/// a request sees the limits in force when it arrived.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub service: Service,
    pub config: HttpConfig,
    /// Who may call the API (every `/api/` request is authenticated before it is routed).
    pub auth: Arc<Authenticator>,
    /// The fraction of requests written to the access log (`log.access_sample`).
    access_sample: f64,
    /// Which routes this listener serves.
    pub routes: Routes,
    /// Shared by every version of the state: a reload does not forget the requests running.
    in_flight: Arc<InFlight>,
}

/// Counts requests being processed; admission never waits, so an atomic counter is enough
/// (a semaphore took a lock on every release: measured on the hit path).
#[derive(Default)]
struct InFlight {
    current: AtomicUsize,
}

/// Releases an in-flight slot when the request is done.
struct InFlightGuard<'a>(&'a AtomicUsize);

impl InFlight {
    fn try_enter(&self, limit: usize) -> Option<InFlightGuard<'_>> {
        if self.current.fetch_add(1, Ordering::AcqRel) >= limit {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightGuard(&self.current))
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The state in force for every listener of the HTTP API (the in-flight limit is over all of
/// them). [`HttpLive::reload`] swaps in a new one; each connection notices with one relaxed
/// atomic load per request (an `arc_swap` cache) and then holds it like before.
pub(crate) struct HttpLive(ArcSwap<HttpState>);

impl HttpLive {
    /// Takes `http.max_in_flight` and `http.max_body_bytes` of `config` and `access_sample`
    /// (`log.access_sample`) for the requests that arrive from now on; the rest of `config`
    /// is bound to listeners and connections and is not looked at.
    pub fn reload(&self, config: &HttpConfig, access_sample: f64) {
        let mut state = HttpState::clone(&self.0.load());
        state.config.max_in_flight = config.max_in_flight;
        state.config.max_body_bytes = config.max_body_bytes;
        state.access_sample = access_sample;
        self.0.store(Arc::new(state));
    }
}

/// A connection's view of [`HttpLive`]: `arc_swap`'s cache, which compares one pointer per
/// request and loads again only after a reload.
struct Current(Arc<HttpLive>);

impl std::ops::Deref for Current {
    type Target = ArcSwap<HttpState>;

    fn deref(&self) -> &ArcSwap<HttpState> {
        &self.0.0
    }
}

/// What every listener of the HTTP API shares (the in-flight limit is over all of them).
pub(crate) fn state(
    service: Service,
    config: HttpConfig,
    auth: Arc<Authenticator>,
    access_sample: f64,
    routes: Routes,
) -> Arc<HttpLive> {
    Arc::new(HttpLive(ArcSwap::from_pointee(HttpState {
        access_sample,
        routes,
        in_flight: Arc::default(),
        service,
        config,
        auth,
    })))
}

/// Serves HTTP on `listener` (over TLS with `tls`) until `shutdown` completes, then lets
/// in-flight requests finish for up to `config.shutdown_grace` before closing the remaining
/// connections.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    live: Arc<HttpLive>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // What is bound to the listener and its connections is read once: a reload changes only
    // what each request reads.
    let state = live.0.load_full();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watchdog below bounds slow heads and idle connections instead of a timer per request.
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(state.config.http2_max_streams)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let (limit, grace) = (state.config.max_connections, state.config.shutdown_grace);
    let what = if tls.is_some() { "HTTPS" } else { "HTTP" };
    super::serve_connections(
        listener,
        limit,
        grace,
        what,
        shutdown,
        drop,
        |stream, drain| {
            let (state, live) = (state.clone(), live.clone());
            let (builder, tls) = (builder.clone(), tls.clone());
            async move {
                let _open = OpenConnection::count(&state.service.metrics().http.open);
                let peer = stream.peer_addr().ok().map(|a| a.ip());
                let Some(tls) = tls else {
                    return serve_connection(stream, peer, live, &builder, &drain).await;
                };
                // Within the head timeout, in the connection's own task.
                let (limits, within) = (state.auth.limits(), state.config.header_read_timeout);
                let acceptor = tls.http_acceptor();
                if let Some(stream) = handshake(acceptor, stream, peer, limits, within).await {
                    serve_connection(stream, peer, live, &builder, &drain).await;
                }
            }
        },
    )
    .await;
    Ok(())
}

/// Serves one connection until it ends, the watchdog finds it stalled, or the drain says so.
/// Both close through hyper's graceful shutdown, so an HTTP/2 client gets a GOAWAY (and
/// knows which requests were not processed) instead of a bare close.
async fn serve_connection<S>(
    stream: S,
    peer: Option<std::net::IpAddr>,
    live: Arc<HttpLive>,
    builder: &auto::Builder<TokioExecutor>,
    drain: &Drain,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(watchdog::Activity::of(peer));
    let _registration = drain.register(activity.clone());
    let mut current = arc_swap::Cache::new(Current(live));
    let timeout = current.load().config.header_read_timeout;
    let mut dog = watchdog::Watchdog::new(activity.clone(), timeout);
    let socket = watchdog::Socket::new(stream, activity.clone());
    let requests = activity.clone();
    // The state in force for each request: the cache compares one pointer, and loads again
    // only after a reload (a `RefCell`: the connection's task calls it, one request at a time).
    let current = std::cell::RefCell::new(current);
    let svc = service_fn(move |req| {
        let state = current.borrow_mut().load().clone();
        handle(state, requests.enter(), req)
    });
    let conn = builder.serve_connection(TokioIo::new(socket), svc);
    tokio::pin!(conn);
    let tick = tokio::time::sleep(dog.tick);
    tokio::pin!(tick);
    let mut drain_seen = drain::Phase::Serving;
    // Set once the connection was asked to close gracefully because it stalled: it then has
    // one short tick (at most CLOSE_FLUSH) to send its GOAWAY and end.
    let mut closing_since_stall = false;
    loop {
        tokio::select! {
            biased;
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            phase = std::future::poll_fn(|cx| {
                drain.poll_past(activity.waker(), cx, drain_seen).map_or(Poll::Pending, Poll::Ready)
            }) => {
                drain_seen = phase;
                if phase == drain::Phase::Closing {
                    break;
                }
                conn.as_mut().graceful_shutdown();
            }
            () = &mut tick => {
                if closing_since_stall {
                    break;
                }
                if dog.expired() {
                    tracing::debug!("closing a connection that made no progress in time");
                    conn.as_mut().graceful_shutdown();
                    closing_since_stall = true;
                    tick.as_mut().reset(tokio::time::Instant::now() + dog.tick.min(super::CLOSE_FLUSH));
                    continue;
                }
                tick.as_mut().reset(tokio::time::Instant::now() + dog.tick);
            }
        }
    }
}

async fn handle(
    state: Arc<HttpState>,
    request: watchdog::RequestGuard,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // What the metrics and logs need of the request, taken before it is consumed. One future
    // with a block rather than an inner `async fn`: its arguments would be laid out twice.
    let started = std::time::Instant::now();
    let endpoint = endpoint::Endpoint::of_path(req.uri().path());
    let method = HttpMetrics::method_slot(req.method());
    let context = logs::RequestContext {
        id: logs::request_id(req.headers().get(X_REQUEST_ID)),
        method,
        endpoint,
    };
    // Boxed: rarely taken, and the request future should not carry a whole `Uri`.
    let access = logs::sampled(state.access_sample).then(|| Box::new(req.uri().clone()));
    let (mut response, id) = 'answer: {
        // Only a body of unknown length can be chunked: the header lookup (~200 instructions
        // of a cache hit's ~11,500 in callgrind) is skipped for every request without one.
        if hyper::body::Body::size_hint(req.body()).exact().is_none()
            && req.headers().contains_key(TRANSFER_ENCODING)
        {
            break 'answer (
                Box::pin(refuse_transfer_encoding(&state, req)).await,
                context.id,
            );
        }
        if let Some(peer) = request.peer()
            && let Err(limited) = state.auth.limits().check_ip(peer)
        {
            break 'answer (problem::response(&limited), context.id);
        }
        let Some(_slot) = state.in_flight.try_enter(state.config.max_in_flight) else {
            let overloaded = ServiceError::new(
                ErrorCode::Overloaded,
                "too many requests in flight; retry later",
            );
            break 'answer (problem::response(&overloaded), context.id);
        };
        // Only the routing carries the log context: every line a request can cause is there.
        // The id comes back out of the scope rather than being cloned before: a second copy
        // would ride in every request's future.
        let mut routed = std::pin::pin!(logs::in_request(context, routes::route(&state, req)));
        let response = routed
            .as_mut()
            .await
            .unwrap_or_else(|e| problem::response(&e));
        let id = routed
            .as_mut()
            .take_value()
            .map_or_else(logs::new_request_id, |context| context.id);
        (response, id)
    };
    let took = started.elapsed();
    let status = response.status().as_u16();
    state
        .service
        .metrics()
        .http
        .record(endpoint, method, status, took);
    if let Some(uri) = access {
        tracing::info!(
            target: "datamiddleware::access",
            request_id = id.to_str().unwrap_or("-"),
            method = HttpMetrics::method_name(method),
            path = %uri,
            endpoint = endpoint.label(),
            status,
            micros = took.as_micros() as u64,
            peer = %Peer(request.peer()),
        );
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    Ok(response)
}

/// Counts one open connection in `http_connections_open` while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn count(gauge: &prometheus_client::metrics::gauge::Gauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A peer address in the access log, `-` when unknown.
struct Peer(Option<std::net::IpAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Framing by Transfer-Encoding — or by it and Content-Length at once, which hyper resolves
/// silently in favour of the former — is how requests get smuggled past proxies that read the
/// other one: refused, and the connection with it. The body is read and dropped first (within
/// the usual limits), so the close is not a reset that could destroy the answer.
async fn refuse_transfer_encoding(
    state: &HttpState,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = http_body_util::Limited::new(req.into_body(), state.config.max_body_bytes);
    let _ = tokio::time::timeout(
        state.config.header_read_timeout,
        http_body_util::BodyExt::collect(body),
    )
    .await;
    let mut response = problem::response(&ServiceError::bad_request(
        "Transfer-Encoding is not accepted on requests: send the body with Content-Length",
    ));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// hyper moves each request's future into place: keep the one for the hit path small by
/// boxing every other route (it was 3.5 KB with them inline).
#[cfg(test)]
#[test]
fn the_request_future_stays_small() {
    fn size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<HttpState>, watchdog::RequestGuard, Request<Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }
    let bytes = size(handle);
    // 2,048 before the log context (request id, method, endpoint) took its 80 bytes.
    assert!(bytes <= 2176, "the request future grew to {bytes} bytes");
}
