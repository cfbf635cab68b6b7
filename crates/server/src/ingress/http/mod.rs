//! HTTP ingress: the accept loop (connection limit, HTTP/1.1 + h2c, header timeout, graceful
//! shutdown) and the per-request entry point (global in-flight limit).
//!
//! Routing is hand-written over hyper rather than axum: the cache-hit path is the product, and
//! an axum route measured 20–25 % below bare hyper on this machine (see docs/performance.md).

mod problem;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::HttpConfig;
use crate::error::{ErrorCode, ServiceError};
use crate::service::Service;

/// Most header lines accepted in one request (beyond: 431).
pub const MAX_HEADERS: usize = 64;
/// Largest request head (request line + headers) accepted (beyond: 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What every request handler shares.
pub(crate) struct HttpState {
    pub service: Service,
    pub config: HttpConfig,
    in_flight: Semaphore,
}

/// Serves HTTP on `listener` until `shutdown` completes, then lets in-flight requests finish
/// for up to `config.shutdown_grace` before closing the remaining connections.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let state = Arc::new(HttpState {
        in_flight: Semaphore::new(config.max_in_flight),
        service,
        config,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(state.config.http2_max_streams)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE under a connection flood: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: refuse fast by closing; in-flight work elsewhere is unaffected.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper-util's protocol detection waits for the first bytes with no deadline, and
            // hyper's header timeout starts only after them: bound the silent start here.
            let header_timeout = state.config.header_read_timeout;
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return, // silent past the deadline, closed, or failed
            }
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = state.config.shutdown_grace;
    tracing::info!(?grace, "shutting down: draining HTTP connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

async fn handle(
    state: Arc<HttpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Ok(problem::response(&ServiceError::new(
            ErrorCode::Overloaded,
            "too many requests in flight; retry later",
        )));
    };
    Ok(routes::route(&state, req)
        .await
        .unwrap_or_else(|e| problem::response(&e)))
}
