//! TURN over TLS (placeholder until tokio-rustls is wired in).

use std::io;

use tokio::net::TcpStream;

use crate::{TurnConfig, TurnError};

/// Accepts TLS connections.
#[derive(Clone)]
pub(crate) struct Acceptor {
    never: std::convert::Infallible,
}

impl Acceptor {
    pub(crate) fn from_config(config: &TurnConfig) -> Result<Option<Self>, TurnError> {
        if config.tls_cert_pem.is_some() {
            return Err(TurnError::Tls("TLS is not supported yet".into()));
        }
        Ok(None)
    }

    pub(crate) async fn accept(&self, _stream: TcpStream) -> io::Result<TcpStream> {
        match self.never {}
    }
}
