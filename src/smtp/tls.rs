//! The inbound TLS configuration: certificate chain and key from PEM files (read by
//! [`crate::tls`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::tls::{read_certificates, read_private_key};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read the certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: cannot read the private key: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("the certificate and private key do not fit together: {0}")]
    Mismatch(rustls::Error),
}

pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = load_chain(&config.certificate)?;
    let key =
        read_private_key(&config.private_key).map_err(|reason| TlsSetupError::PrivateKey {
            path: config.private_key.clone(),
            reason,
        })?;
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Mismatch)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsSetupError::Mismatch)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    read_certificates(path).map_err(|reason| TlsSetupError::Certificate {
        path: path.to_owned(),
        reason,
    })
}
