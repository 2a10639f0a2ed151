//! TLS material and outbound TLS. Every PEM file the relay reads (the listeners' chain and
//! key, extra trust roots, the client-assertion certificate and key) goes through
//! [`read_certificates`] and [`read_private_key`]. Outbound connections (the token endpoint,
//! the upstream SMTP server, webhooks) use the system's trust roots plus an optional extra CA
//! file, TLS 1.2 and 1.3, certificate verification always. The inbound acceptor is
//! `smtp::tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every CERTIFICATE block of a PEM file (at least one, leaf first), or why there is none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file, or why there is none.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| e.to_string())
}

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
        for cert in read_certificates(path).map_err(error)? {
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
