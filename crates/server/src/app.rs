//! Wiring: build the service from config, bind the listener and run the HTTP front end until
//! told to stop. Shared by the binary and by tests (which bind port 0).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ingress;
use crate::service::Service;
use crate::store::StoreError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open a store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub service: Service,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Connects the stores, binds `config.http.listen` and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let service = Service::from_config(&config).await?;
    let addr = config.http.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(ingress::http::serve(
        listener,
        service.clone(),
        config.http.clone(),
        shutdown,
    ));
    Ok(Running {
        addr,
        service,
        shutdown: Some(tx),
        task,
    })
}

impl Running {
    /// Stops accepting, drains in-flight requests (up to the grace period) and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}
