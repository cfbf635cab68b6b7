//! TCP ingress: the native binary protocol for game servers (`docs/protocol.md`).
//! This module owns binding (with optional `SO_REUSEPORT`) and the refusal of a connection
//! over the limit; the shared accept loop (limit, drain) is `ingress::serve_connections`;
//! [`connection`] owns one connection; [`dispatch`] maps messages onto the service API.

mod connection;
mod dispatch;
mod order;
mod outbox;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{ErrorCode, Message};
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::Authenticator;
use crate::config::TcpConfig;
use crate::service::Service;

/// What every connection shares.
pub(crate) struct TcpContext {
    pub service: Service,
    pub config: TcpConfig,
    pub auth: Arc<Authenticator>,
}

/// Binds `addr` for the TCP protocol; with `reuse_port`, several processes may bind it.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves the TCP protocol on `listener` until `shutdown` completes; then sends GOAWAY on
/// every connection and waits up to `grace` for their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: TcpConfig,
    auth: Arc<Authenticator>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limit = config.max_connections;
    let ctx = Arc::new(TcpContext {
        service,
        config,
        auth,
    });
    let refused = |stream| {
        let stats = ctx.service.stats();
        stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
        refuse(stream);
    };
    super::serve_connections(
        listener,
        limit,
        grace,
        "TCP",
        shutdown,
        refused,
        |stream, drain| {
            let ctx = ctx.clone();
            async move {
                let stats = ctx.service.stats();
                stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
                stats.tcp_accepted.fetch_add(1, Ordering::Relaxed);
                connection::serve(stream, &ctx, &drain).await;
                stats.tcp_connections.fetch_sub(1, Ordering::Relaxed);
            }
        },
    )
    .await;
    Ok(())
}

/// Tells a connection over the limit why it is closed (best effort, never blocks).
fn refuse(stream: tokio::net::TcpStream) {
    let mut frame = BytesMut::new();
    Message::Error {
        code: ErrorCode::Overloaded.as_str().to_string(),
        message: "too many connections; retry later or elsewhere".to_string(),
        op_index: None,
    }
    .encode(0, &mut frame);
    let _ = stream.try_write(&frame);
}
