//! Inbound TLS: the acceptors built from `[tls]`'s certificate chain and key (read by
//! [`crate::tls`]), one per profile a listener can ask for, and what a handshake agreed on.
//!
//! `modern` (the default) is rustls: TLS 1.2 and 1.3 with forward-secret AEAD suites only.
//! `legacy` is OpenSSL (`legacy.rs`), for the old printers and scanners rustls will never
//! speak to: TLS 1.0 and 1.1, RSA key exchange and CBC suites, besides the modern ones. Only
//! a listener with `tls_profile = "legacy"` uses it; nothing outbound ever does.

mod legacy;
mod stream;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

pub use legacy::{LEGACY_WEAKENS, NOT_RSA};
pub use stream::{ServerTls, Stream};

use crate::config::{TlsConfig, TlsProfile};
use crate::tls::{read_certificates, read_private_key};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read the certificate chain: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path}: cannot read the private key: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("the certificate and private key do not fit together: {0}")]
    Mismatch(rustls::Error),
    #[error("the legacy TLS profile (OpenSSL) cannot use the certificate and key: {0}")]
    Legacy(openssl::error::ErrorStack),
}

/// The acceptors for the profiles the listeners ask for, all on `[tls]`'s certificate.
/// Built once per generation, so a reload brings renewed certificates to new sessions.
#[derive(Clone)]
pub struct Acceptors {
    modern: tokio_rustls::TlsAcceptor,
    /// Only when a listener asks for it: OpenSSL is never set up otherwise.
    legacy: Option<legacy::Acceptor>,
}

impl Acceptors {
    pub fn new(config: &TlsConfig, with_legacy: bool) -> Result<Acceptors, TlsSetupError> {
        let legacy = if with_legacy {
            Some(legacy::Acceptor::new(config).map_err(TlsSetupError::Legacy)?)
        } else {
            None
        };
        Ok(Acceptors {
            modern: acceptor(config)?,
            legacy,
        })
    }

    /// The handshake on `io` with the profile's acceptor. Fails at once for a profile this
    /// set was not built with (the configuration check keeps that from happening).
    pub async fn accept<IO>(
        &self,
        profile: TlsProfile,
        io: IO,
    ) -> Result<ServerTls<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match profile {
            TlsProfile::Modern => match self.modern.accept(io).await {
                Ok(tls) => Ok(ServerTls::Modern(tls)),
                Err(e) => Err(HandshakeError::modern(e)),
            },
            TlsProfile::Legacy => match &self.legacy {
                Some(acceptor) => acceptor.accept(io).await.map(ServerTls::Legacy),
                None => Err(HandshakeError::Failed(io::Error::other(
                    "the legacy TLS profile was not set up",
                ))),
            },
        }
    }

    /// Whether the certificate's key can serve the old devices the legacy profile is for:
    /// most speak only RSA key exchange or ECDHE with RSA signatures.
    pub fn legacy_key_is_rsa(&self) -> Option<bool> {
        self.legacy.as_ref().map(legacy::Acceptor::key_is_rsa)
    }
}

/// The modern profile's acceptor (rustls) on `config`'s certificate and key.
pub fn acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
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
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client speaks only what this profile refuses (an old TLS version, or no suite in
    /// common): on a modern listener, the sign of a device that needs the legacy profile.
    #[error("{0}")]
    Incompatible(io::Error),
    #[error("{0}")]
    Failed(io::Error),
}

impl HandshakeError {
    fn modern(error: io::Error) -> HandshakeError {
        let incompatible = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::PeerIncompatible(_)));
        if incompatible {
            HandshakeError::Incompatible(error)
        } else {
            HandshakeError::Failed(error)
        }
    }
}

/// The TLS version a session negotiated.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1.0")]
    Tls10,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl TlsVersion {
    /// As OpenSSL and Postfix's logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls10 => "TLSv1.0",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }

    /// Older than TLS 1.2: what only the legacy profile speaks, and what the admin should
    /// see a list of.
    pub fn is_outdated(self) -> bool {
        self < TlsVersion::Tls12
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handshake agreed on: the version, and the cipher suite by its IANA name
/// (`TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA`), whichever library made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Negotiated {
    pub version: TlsVersion,
    pub cipher: String,
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    read_certificates(path).map_err(|reason| TlsSetupError::Certificate {
        path: path.to_owned(),
        reason,
    })
}
