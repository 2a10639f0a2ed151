//! TLS for outbound connections (the token endpoint, the upstream SMTP server): the system's
//! trust roots plus an optional extra CA file, TLS 1.2 and 1.3, certificate verification always.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{path}: cannot read the CA certificates: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "while loading system trust roots");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let error = |reason: String| ClientTlsError::CaFile {
            path: path.to_owned(),
            reason,
        };
        for cert in crate::smtp::tls::read_certificates(path).map_err(error)? {
            roots.add(cert).map_err(|e| error(e.to_string()))?;
        }
    } else if added == 0 {
        // Connections will fail certificate verification with a clear error; say why here.
        tracing::warn!("no system trust roots found: install ca-certificates or set ca_file");
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
