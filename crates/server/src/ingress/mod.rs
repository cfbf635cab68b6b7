//! Front ends: decode requests, call the service API, encode responses. No business rules.
//! The accept loop they share ([`serve_connections`]: the connection limit, a task per
//! connection, the drain at shutdown) is here, so what every listener needs (TLS, limits per
//! address, connection metrics) is written once.

mod drain;
pub mod http;
pub mod tcp;
pub mod tls;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use drain::Drain;

/// How long a connection being closed may take to send its last frames (an error, a
/// GOAWAY) before it is dropped; in both front ends.
pub(crate) const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` completes: at most `limit` connections at once (one over
/// is handed to `refuse` and dropped), each run by `serve` in a task of its own with the
/// listener's [`Drain`]; then the live connections are drained for up to `grace`.
pub(crate) async fn serve_connections<Fut>(
    listener: TcpListener,
    limit: usize,
    grace: Duration,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    refuse: impl Fn(TcpStream),
    serve: impl Fn(TcpStream, Arc<Drain>) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limit));
    let drain = Arc::new(Drain::default());
    tokio::pin!(shutdown);
    loop {
        let Some(stream) = accept(&listener, shutdown.as_mut()).await else {
            break;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: refused at once; connections being served are unaffected.
            refuse(stream);
            continue;
        };
        let connection = serve(stream, drain.clone());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    drain.run(&connections, limit, grace, what).await;
}

/// Accepts the next connection (with `TCP_NODELAY` set), or returns `None` once `shutdown`
/// completes. Accept errors — typically EMFILE under a connection flood — back off briefly
/// instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}
