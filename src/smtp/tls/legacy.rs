//! The legacy TLS profile, on OpenSSL: what printers and scanners of the 2010s speak and
//! rustls never will (TLS 1.0 and 1.1, RSA key exchange, AES-CBC with SHA-1 and SHA-256
//! MACs), beside the modern suites, which come first: the server's preference decides, so a
//! device that can do better does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::pkey::Id;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslOptions, SslRef, SslVersion};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{HandshakeError, Negotiated, TlsVersion};
use crate::config::TlsConfig;

/// What `tls_profile = "legacy"` gives away, in one line for `check-config` and the logs.
pub const LEGACY_WEAKENS: &str = "accepts TLS 1.0 and 1.1 and RSA key exchange with CBC ciphers: \
     a session recorded today can be decrypted later if the key leaks (no forward secrecy), \
     and CBC with SHA-1 is open to padding-oracle attacks; give it only to devices that need it";

/// What a legacy listener on a certificate without an RSA key meets, for the log and
/// `check-config`.
pub const NOT_RSA: &str = "[tls]: the private key is not RSA; the old devices a legacy listener is for mostly speak RSA only and will fail the handshake";

/// TLS 1.2 and older, best first (OpenSSL's names). ECDHE with AEAD, then ECDHE with CBC,
/// then RSA key exchange; no 3DES, RC4 or export suites, which no device of the last
/// fifteen years needs. Security level 0: OpenSSL 3 refuses TLS 1.0/1.1 (MD5-SHA1
/// signatures) and SHA-1 MACs at any higher level.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
    ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
    ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
    ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:\
    ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:\
    ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:\
    AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:\
    @SECLEVEL=0";

#[derive(Clone)]
pub struct Acceptor {
    inner: Arc<SslAcceptor>,
}

impl Acceptor {
    pub fn new(config: &TlsConfig) -> Result<Acceptor, ErrorStack> {
        // The Mozilla "intermediate" base brings the curves and the options against known
        // attacks (no compression, no renegotiation); the versions and suites are widened
        // below.
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        builder.set_security_level(0);
        builder.set_min_proto_version(Some(SslVersion::TLS1))?;
        builder.set_max_proto_version(None)?;
        builder.set_cipher_list(CIPHERS)?;
        builder.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
        // No session tickets, as the modern profile issues none: each costs an encryption and
        // a write per handshake, and devices that send one message a session never resume.
        // (TLS 1.2 resumption by session ID from the server's cache still works.)
        builder.set_options(SslOptions::NO_TICKET);
        builder.set_num_tickets(0)?;
        builder.set_certificate_chain_file(&config.certificate)?;
        builder.set_private_key_file(&config.private_key, SslFiletype::PEM)?;
        builder.check_private_key()?;
        Ok(Acceptor {
            inner: Arc::new(builder.build()),
        })
    }

    pub async fn accept<IO>(&self, io: IO) -> Result<tokio_openssl::SslStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let failed = |e: ErrorStack| HandshakeError::Failed(io::Error::other(e));
        let ssl = Ssl::new(self.inner.context()).map_err(failed)?;
        let mut stream = tokio_openssl::SslStream::new(ssl, io).map_err(failed)?;
        match Pin::new(&mut stream).accept().await {
            Ok(()) => Ok(stream),
            Err(e) => Err(HandshakeError::Failed(io::Error::other(e))),
        }
    }

    pub fn key_is_rsa(&self) -> bool {
        self.inner
            .context()
            .private_key()
            .is_some_and(|key| key.id() == Id::RSA)
    }
}

pub fn negotiated(ssl: &SslRef) -> Negotiated {
    let version = match ssl.version2() {
        Some(SslVersion::TLS1) => TlsVersion::Tls10,
        Some(SslVersion::TLS1_1) => TlsVersion::Tls11,
        Some(SslVersion::TLS1_3) => TlsVersion::Tls13,
        // The acceptor allows nothing older than TLS 1.0 (no SSL 3).
        _ => TlsVersion::Tls12,
    };
    let cipher = ssl
        .current_cipher()
        .map(|cipher| cipher.standard_name().unwrap_or(cipher.name()).to_owned())
        .unwrap_or_default();
    Negotiated { version, cipher }
}
