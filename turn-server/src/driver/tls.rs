//! TURN over TLS: a rustls acceptor (ring provider) built from PEM files.

use std::io;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::{TurnConfig, TurnError};

/// Accepts TLS connections.
#[derive(Clone)]
pub(crate) struct Acceptor(TlsAcceptor);

impl Acceptor {
    /// `None` when no certificate is configured.
    pub(crate) fn from_config(config: &TurnConfig) -> Result<Option<Self>, TurnError> {
        let (Some(cert_path), Some(key_path)) = (&config.tls_cert_pem, &config.tls_key_pem) else {
            return Ok(None);
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .and_then(|it| it.collect())
            .map_err(|e| TurnError::Tls(format!("{}: {e}", cert_path.display())))?;
        if certs.is_empty() {
            return Err(TurnError::Tls(format!(
                "{}: no certificate found",
                cert_path.display()
            )));
        }
        // The key's error text never includes the key itself.
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| TurnError::Tls(format!("{}: {e}", key_path.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TurnError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TurnError::Tls(e.to_string()))?;
        Ok(Some(Acceptor(TlsAcceptor::from(Arc::new(server)))))
    }

    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.0.accept(stream).await
    }
}
