//! TCP ingress: the native binary protocol for game servers (`docs/protocol.md`).
//! This module owns binding (with optional `SO_REUSEPORT`), the TLS handshake of a TLS
//! listener, and the refusal of a connection over the limit; the shared accept loop (limit,
//! drain) is `ingress::serve_connections`; [`connection`] owns one connection over a
//! [`transport`]; [`dispatch`] maps messages onto the service API.

mod connection;
mod dispatch;
mod order;
mod outbox;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use datamiddleware_protocol::{ErrorCode, Message};
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::Authenticator;
use crate::config::TcpConfig;
use crate::ingress::tls::Tls;
use crate::ops::metrics::TcpEnd;
use crate::service::Service;

/// What every connection shares. A connection keeps the one in force when it was accepted
/// (its window and frame size were announced in HELLO_OK); see [`TcpLive`].
#[derive(Clone)]
pub(crate) struct TcpContext {
    pub service: Service,
    pub config: TcpConfig,
    pub auth: Arc<Authenticator>,
}

/// The context in force for new connections of every TCP listener; [`TcpLive::reload`]
/// replaces it. Read once per connection.
pub struct TcpLive(ArcSwap<TcpContext>);

impl TcpLive {
    pub fn new(service: Service, config: TcpConfig, auth: Arc<Authenticator>) -> Arc<TcpLive> {
        Arc::new(TcpLive(ArcSwap::from_pointee(TcpContext {
            service,
            config,
            auth,
        })))
    }

    /// Takes `tcp.max_in_flight` and `tcp.max_frame_bytes` of `config` for the connections
    /// accepted from now on (open ones keep what their HELLO_OK announced); the rest of
    /// `config` is bound to the listeners and is not looked at.
    pub fn reload(&self, config: &TcpConfig) {
        let mut context = TcpContext::clone(&self.0.load());
        context.config.max_in_flight = config.max_in_flight;
        context.config.max_frame_bytes = config.max_frame_bytes;
        self.0.store(Arc::new(context));
    }
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

/// Serves the TCP protocol on `listener` (over TLS with `tls`) until `shutdown` completes;
/// then sends GOAWAY on every connection and waits up to `grace` for their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    live: Arc<TcpLive>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // What is bound to the listener is read once; each connection takes the context in force
    // when it is accepted.
    let ctx = live.0.load_full();
    let limit = ctx.config.max_connections;
    let over_tls = tls.is_some();
    let refused = |stream| {
        ctx.service.metrics().tcp.refused.inc();
        // A TLS client would read the error frame as a broken handshake: it gets a bare close.
        if !over_tls {
            refuse(stream);
        }
    };
    let what = if tls.is_some() { "TCP over TLS" } else { "TCP" };
    super::serve_connections(
        listener,
        limit,
        grace,
        what,
        shutdown,
        refused,
        |stream, drain| {
            let (ctx, tls) = (live.0.load_full(), tls.clone());
            async move {
                let metrics = ctx.service.metrics().clone();
                let mut open = metrics.tcp.opened();
                let peer = stream.peer_addr().ok().map(|a| a.ip());
                open.end = match tls {
                    None => connection::serve(stream, peer, &ctx, &drain).await,
                    Some(tls) => match handshake(&tls, stream, peer, &ctx).await {
                        Some(session) => connection::serve(session, peer, &ctx, &drain).await,
                        None => TcpEnd::Handshake,
                    },
                };
            }
        },
    )
    .await;
    Ok(())
}

/// The TLS handshake of a new connection, within the handshake timeout (HELLO then has the
/// same time again); see [`crate::ingress::tls::handshake`].
async fn handshake(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    peer: Option<std::net::IpAddr>,
    ctx: &TcpContext,
) -> Option<transport::Tls> {
    let (limits, within) = (ctx.auth.limits(), ctx.config.handshake_timeout);
    let session =
        crate::ingress::tls::handshake(tls.tcp_acceptor(), stream, peer, limits, within).await?;
    let (tcp, session) = session.into_inner();
    Some(transport::Tls::new(tcp, session))
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
