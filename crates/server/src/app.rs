//! Wiring: build the service from config, bind the listeners and run the HTTP and TCP front
//! ends until told to stop. Shared by the binary and by tests (which bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

mod reload;
use crate::service::Service;
use crate::store::StoreError;
use crate::{auth, ingress};
pub use reload::Reloaded;
use reload::{Change, differences, live_part, quiet, token_secrets_differ};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open a store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot load the token keys: {0}")]
    Auth(String),
    #[error("cannot load the TLS certificate: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
pub struct Running {
    /// The HTTP address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The TCP protocol address actually bound, when the TCP front end is enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// The HTTPS address actually bound, when `http.tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The TCP-over-TLS address actually bound, when `tcp.tls_listen` is set.
    pub tcp_tls_addr: Option<SocketAddr>,
    /// The operations listener's address actually bound, when `ops.listen` is set.
    pub ops_addr: Option<SocketAddr>,
    /// The certificate in force; [`Running::reload`] reads its files again.
    tls: Option<Arc<ingress::tls::Tls>>,
    pub service: Service,
    /// The keys in force; [`Running::reload`] replaces them.
    pub authenticator: Arc<auth::Authenticator>,
    /// The configuration in force: the one started with, plus what reloads applied. Its lock
    /// makes reloads one at a time.
    config: parking_lot::Mutex<Config>,
    /// The HTTP limits in force (every HTTP listener's).
    http: Arc<ingress::http::HttpLive>,
    /// The TCP limits in force for new connections, when the TCP front end is enabled.
    tcp: Option<Arc<ingress::tcp::TcpLive>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    hot_keys_file: Option<std::path::PathBuf>,
    shutdown_grace: std::time::Duration,
    drain_delay: std::time::Duration,
}

/// Connects the stores, binds the listeners and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(crate::ops::metrics::Metrics::new(config.metrics.enabled));
    let service = Service::from_config(&config, metrics.clone()).await?;
    // Ends when the metrics (and so the service) are gone.
    if let Err(e) = crate::ops::stalls::start(
        tokio::runtime::Handle::current(),
        metrics.stalls.clone(),
        config.metrics.stall_threshold,
        Arc::downgrade(&metrics),
    ) {
        tracing::warn!(error = %e, "cannot start the stall watchdog");
    }
    drop(metrics);
    if service.cache().bus().is_some() {
        // Serve from the caches from the first request when the bus comes up quickly; else
        // start anyway, reads going to the store until it is whole.
        let limit = (4 * config.cache.bus_silence).max(std::time::Duration::from_secs(2));
        if !service.cache().wait_trusted(limit).await {
            tracing::warn!(
                "the invalidation bus is not whole yet: reads bypass the caches until it is"
            );
        }
    }
    if config.warmup.accept_while_warming {
        // `/healthz` answers 503 `warming` from the first request until the task is done.
        service
            .warming()
            .active
            .store(true, std::sync::atomic::Ordering::Release);
        let (service, warmup) = (service.clone(), config.warmup.clone());
        tokio::spawn(async move { service.warm_up(&warmup).await });
    } else {
        service.warm_up(&config.warmup).await;
    }
    let bind_error = |addr| move |source| StartError::Bind { addr, source };
    let addr = config.http.listen;
    let listener = TcpListener::bind(addr).await.map_err(bind_error(addr))?;
    let addr = listener.local_addr().map_err(bind_error(addr))?;
    let (shutdown, stop) = watch::channel(false);
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let authenticator = Arc::new(
        auth::Authenticator::new(
            &config.auth,
            &config.rate_limits,
            service.metrics().rate_limited.clone(),
        )
        .map_err(StartError::Auth)?,
    );
    {
        // Also without any limit: a reload may add one. Ends with the last reference to the
        // authenticator (the server stopped).
        let weak = Arc::downgrade(&authenticator);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(auth::limits::CLEAN_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { break };
                auth.limits().clean();
            }
        });
    }
    if config.auth.enabled {
        // The revocations in force before the first request (they outlive restarts).
        match service.revocations().await {
            Ok(rows) => {
                authenticator.set_revocations(auth::revocations::Revocations::from_rows(rows))
            }
            Err(e) => tracing::warn!(error = %e.message, "cannot read the token revocations yet"),
        }
    }
    let routes = match config.ops.listen {
        Some(_) => ingress::http::Routes::Api,
        None => ingress::http::Routes::All,
    };
    let http_state = ingress::http::state(
        service.clone(),
        config.http.clone(),
        authenticator.clone(),
        config.log.access_sample,
        routes,
    );
    let http = ingress::http::serve(listener, None, http_state.clone(), stopped(stop.clone()));
    let mut tasks = vec![tokio::spawn(http)];
    // One certificate for every TLS listener, so that a reload reaches them all.
    let tls = if config.http.tls_listen.is_some() || config.tcp.tls_listen.is_some() {
        Some(Arc::new(
            ingress::tls::Tls::from_config(&config.tls).map_err(StartError::Tls)?,
        ))
    } else {
        None
    };
    let mut tls_addr = None;
    if let (Some(wanted), Some(certificate)) = (config.http.tls_listen, &tls) {
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(bind_error(wanted))?;
        tls_addr = Some(listener.local_addr().map_err(bind_error(wanted))?);
        let https = ingress::http::serve(
            listener,
            Some(certificate.clone()),
            http_state.clone(),
            stopped(stop.clone()),
        );
        tasks.push(tokio::spawn(https));
    }
    let mut ops_addr = None;
    if let Some(wanted) = config.ops.listen {
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(bind_error(wanted))?;
        ops_addr = Some(listener.local_addr().map_err(bind_error(wanted))?);
        // Its own state: the operations endpoints only, with the API's limits (not reloaded).
        let ops_state = ingress::http::state(
            service.clone(),
            config.http.clone(),
            authenticator.clone(),
            config.log.access_sample,
            ingress::http::Routes::Ops,
        );
        let ops = ingress::http::serve(listener, None, ops_state, stopped(stop.clone()));
        tasks.push(tokio::spawn(ops));
    }
    if config.auth.enabled {
        // Revocations taken by other instances (and before a restart) reach this one here.
        // A task of the server's, ended by its stop: it holds the service, whose bus must
        // fall silent right after the goodbye.
        tasks.push(tokio::spawn(poll_revocations(
            service.clone(),
            authenticator.clone(),
            stopped(stop.clone()),
        )));
    }
    let mut tcp_addr = None;
    let mut tcp_tls_addr = None;
    let mut tcp = None;
    if config.tcp.enabled {
        let wanted = config.tcp.listen;
        let listener =
            ingress::tcp::bind(wanted, config.tcp.reuse_port).map_err(bind_error(wanted))?;
        tcp_addr = Some(listener.local_addr().map_err(bind_error(wanted))?);
        let tcp_live =
            ingress::tcp::TcpLive::new(service.clone(), config.tcp.clone(), authenticator.clone());
        tcp = Some(tcp_live.clone());
        tasks.push(tokio::spawn(ingress::tcp::serve(
            listener,
            None,
            tcp_live.clone(),
            config.http.shutdown_grace,
            stopped(stop.clone()),
        )));
        if let (Some(wanted), Some(certificate)) = (config.tcp.tls_listen, &tls) {
            let listener =
                ingress::tcp::bind(wanted, config.tcp.reuse_port).map_err(bind_error(wanted))?;
            tcp_tls_addr = Some(listener.local_addr().map_err(bind_error(wanted))?);
            tasks.push(tokio::spawn(ingress::tcp::serve(
                listener,
                Some(certificate.clone()),
                tcp_live,
                config.http.shutdown_grace,
                stopped(stop),
            )));
        }
    }
    Ok(Running {
        addr,
        tcp_addr,
        tcp_tls_addr,
        tls_addr,
        ops_addr,
        tls,
        service,
        authenticator,
        http: http_state,
        tcp,
        shutdown,
        tasks,
        hot_keys_file: config.warmup.hot_keys_file.clone(),
        shutdown_grace: config.http.shutdown_grace,
        drain_delay: config.http.drain_delay,
        config: parking_lot::Mutex::new(config),
    })
}

/// Reads the revocations in force every [`auth::revocations::POLL_EVERY`], and at once when
/// the invalidation bus says another instance took one, until `stop`.
async fn poll_revocations(
    service: Service,
    authenticator: Arc<auth::Authenticator>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(auth::revocations::POLL_EVERY);
    tick.tick().await;
    let bus = service.cache().bus().cloned();
    loop {
        // A notification between two turns is kept by the `Notify` (one permit), not lost.
        let hint = async {
            match &bus {
                Some(bus) => bus.revocations_changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = tick.tick() => {}
            () = hint => {
                tick.reset();
            }
        }
        match service.revocations().await {
            Ok(rows) => {
                authenticator.set_revocations(auth::revocations::Revocations::from_rows(rows))
            }
            Err(e) => tracing::warn!(error = %e.message, "cannot read the token revocations"),
        }
    }
}

impl Running {
    /// Applies what can change without a restart from a new, valid configuration, logging
    /// what changed and what would need a restart (see [`Running::reload_report`]).
    pub fn reload(&self, new: &Config) {
        self.reload_report(new);
    }

    /// Applies what can change without a restart from `new` (already validated): the TLS
    /// certificate and the API and token keys (read again), the rate limits, the lifetimes
    /// and `max_document_bytes` of the running collections, `[responses]`,
    /// `http.max_in_flight` and `http.max_body_bytes` (from the next request), and
    /// `tcp.max_in_flight` and `tcp.max_frame_bytes` (for new connections). Everything else
    /// that differs — games, collections and stores added, removed or changed included — is
    /// kept as it runs and logged as taking a restart. Logs one line per change; returns
    /// what it did.
    pub fn reload_report(&self, new: &Config) -> Reloaded {
        let mut running = self.config.lock();
        let effective = live_part(&running, new);
        if let Err(e) = effective.validate() {
            tracing::error!(
                error = %e,
                "reload: the new values do not hold together with those kept until a restart; \
                 nothing was applied"
            );
            return Reloaded {
                refused: Some(e.to_string()),
                ..Reloaded::default()
            };
        }
        if let Some(tls) = &self.tls {
            match tls.reload(&effective.tls) {
                Ok(()) => tracing::info!("configuration reloaded: TLS certificate read again"),
                Err(e) => {
                    tracing::error!(error = %e, "reload: the TLS certificate in force is kept")
                }
            }
        }
        let keys = self.authenticator.reload(&effective.auth);
        if !keys.is_empty() {
            tracing::info!(
                added = ?keys.added,
                removed = ?keys.removed,
                changed = ?keys.changed,
                "configuration reloaded: API keys replaced"
            );
        }
        self.authenticator.limits().reload(&effective.rate_limits);
        self.http
            .reload(&effective.http, effective.log.access_sample);
        if let Some(tcp) = &self.tcp {
            tcp.reload(&effective.tcp);
        }
        self.service.reload(&effective);

        let mut report = Reloaded::default();
        for (key, change) in differences(&running, &effective) {
            if key.starts_with("auth.keys") {
                continue; // by name above, never by digest
            }
            match change {
                Change::Changed(old, new) if !quiet(&key) => {
                    tracing::info!("configuration reloaded: {key}: {old} → {new}")
                }
                _ => tracing::info!("configuration reloaded: {key} changed"),
            }
            report.applied.push(key);
        }
        if token_secrets_differ(&running, &effective)
            && !report.applied.iter().any(|k| k == "auth.tokens.keys")
        {
            tracing::info!("configuration reloaded: auth.tokens.keys changed");
            report.applied.push("auth.tokens.keys".to_string());
        }
        for (key, change) in differences(&effective, new) {
            let what = match change {
                Change::Added if key.starts_with("games.") => "added",
                Change::Removed if key.starts_with("games.") => "removed",
                _ => "changed",
            };
            if key.starts_with("games.") {
                tracing::warn!(
                    "{key} {what}: takes a restart (games, collections and stores); the running \
                     set is kept until then"
                );
            } else {
                tracing::warn!("{key} {what}: takes a restart; the running value is kept");
            }
            report.needs_restart.push(key);
        }
        if report.applied.is_empty() && report.needs_restart.is_empty() && keys.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        }
        report.api_keys_changed = !keys.is_empty();
        *running = effective;
        report
    }

    /// The configuration in force: the one the server started with, plus what reloads
    /// applied.
    pub fn config(&self) -> Config {
        self.config.lock().clone()
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and returns.
    pub async fn stop(self) -> std::io::Result<()> {
        // Readiness turns false first; for `http.drain_delay` everything still serves, so a
        // balancer polling /readyz stops sending new connections before the listeners close.
        self.service.begin_drain();
        if !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "draining: /readyz answers 503");
            tokio::time::sleep(self.drain_delay).await;
        }
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        }
        self.service.leave(self.shutdown_grace).await;
        if let Some(path) = &self.hot_keys_file {
            match self.service.save_hot_keys(path) {
                Ok(count) => {
                    tracing::info!(path = %path.display(), count, "hot keys saved for the next start")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save the hot keys")
                }
            }
        }
        Ok(())
    }
}
