//! TLS for the connection (the server's `tcp.tls_listen`): whom to trust and which name the
//! server's certificate must carry. rustls with the `ring` provider; TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// How to connect over TLS: set [`crate::ClientOptions::tls`].
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Trusts the certificate authorities in a PEM file (a private CA, or the server's own
    /// self-signed certificate) and nothing else.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<TlsOptions, Error> {
        let config = config_with_ca_file(path.as_ref(), &[])?;
        Ok(TlsOptions::with_config(Arc::new(config)))
    }

    /// Any rustls client configuration (the system's roots, a client certificate, …).
    pub fn with_config(config: Arc<rustls::ClientConfig>) -> TlsOptions {
        TlsOptions {
            config,
            server_name: None,
        }
    }

    /// The name (DNS name or IP address) the server's certificate must carry. By default,
    /// the host part of the address the client connects to.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// The handshake over a connected socket to `addr` (`host:port`).
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_string(),
        };
        let name = ServerName::try_from(name)
            .map_err(|e| Error::Tls(format!("server name of {addr}: {e}")))?;
        TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| match e.kind() {
                // rustls' verdicts (an untrusted certificate, a wrong name, …): retrying won't help.
                std::io::ErrorKind::InvalidData => Error::Tls(e.to_string()),
                _ => Error::Connect(e),
            })
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting only the CA
/// certificates of a PEM file and offering `alpn`.
pub fn config_with_ca_file(path: &Path, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots
            .add(certificate.map_err(|e| bad(&e))?)
            .map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `host` of `host:port` or `[v6]:port`: the name a certificate must carry by default.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_is_the_address_without_its_port() {
        assert_eq!(host_of("localhost:7443"), "localhost");
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("db.example.com"), "db.example.com");
    }
}
