//! Front ends: decode requests, call the service API, encode responses. No business rules.

mod drain;
pub mod http;
pub mod tcp;

use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a connection being closed may take to send its last frames (an error, a
/// GOAWAY) before it is dropped; in both front ends.
pub(crate) const CLOSE_FLUSH: Duration = Duration::from_secs(1);

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
