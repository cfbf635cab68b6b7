//! TLS for the listeners (rustls with the `ring` provider): the certificate chain and key come
//! from PEM files (`[tls]`), one certificate for HTTPS (ALPN offers HTTP/2 and HTTP/1.1) and
//! the TCP protocol (no ALPN), and [`Tls::reload`] swaps it without a restart (SIGHUP): new
//! handshakes get the new one, open connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The certificate in force and the acceptors that serve it.
pub struct Tls {
    certificate: Arc<ArcSwap<CertifiedKey>>,
    http: TlsAcceptor,
    tcp: TlsAcceptor,
}

/// Hands every handshake the certificate in force.
#[derive(Debug)]
struct Current(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl Tls {
    /// TLS with the files of `config`; the error says which file is at fault and why.
    pub fn from_config(config: &TlsConfig) -> Result<Tls, String> {
        let certificate = Arc::new(ArcSwap::from_pointee(load(config)?));
        let server = |alpn: &[&[u8]]| -> Result<TlsAcceptor, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut server = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Current(certificate.clone())));
            server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(server)))
        };
        Ok(Tls {
            http: server(&[b"h2", b"http/1.1"])?,
            tcp: server(&[])?,
            certificate,
        })
    }

    /// For HTTPS: ALPN chooses HTTP/2 or HTTP/1.1.
    pub fn http_acceptor(&self) -> &TlsAcceptor {
        &self.http
    }

    /// For the TCP protocol.
    pub fn tcp_acceptor(&self) -> &TlsAcceptor {
        &self.tcp
    }

    /// Reads the files again; on an error the certificate in force stays.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        self.certificate.store(Arc::new(load(config)?));
        Ok(())
    }
}

/// The TLS handshake of a connection from `peer` by `acceptor`, within `within`, for both front
/// ends. The handshake costs a signature, so it first counts against the address's rate;
/// `None` (logged at debug) when over it, failed, or too slow.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: Option<std::net::IpAddr>,
    limits: &crate::auth::Limits,
    within: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    if let Some(peer) = peer
        && limits.check_ip(peer).is_err()
    {
        return None;
    }
    match tokio::time::timeout(within, acceptor.accept(stream)).await {
        Ok(Ok(session)) => Some(session),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// The chain and key of `config` as rustls uses them.
fn load(config: &TlsConfig) -> Result<CertifiedKey, String> {
    let (cert_file, key_file) = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err("tls.cert_file and tls.key_file are both required".into()),
    };
    let chain = read_chain(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key_file does not match tls.cert_file: {e}"))?;
    Ok(certified)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("tls.cert_file {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert_file {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in it",
            path.display()
        ));
    }
    Ok(chain)
}
