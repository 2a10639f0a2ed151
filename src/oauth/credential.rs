//! How an app proves who it is at the token endpoint: a client secret read from a file, or a
//! JWT client assertion signed with a certificate's private key (RFC 7523, as Entra wants it).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;

use super::error::TokenError;
use super::secret::Secret;
use crate::config::{AccountConfig, AssertionAlgorithm};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of an assertion; Entra accepts up to 10 minutes of validity.
const ASSERTION_LIFETIME_SECS: u64 = 600;

pub enum ClientCredential {
    /// A public client (device code or authorization code without a secret).
    None,
    Secret(Secret),
    Certificate(Box<CertificateKey>),
}

pub struct CertificateKey {
    key: RsaKeyPair,
    algorithm: AssertionAlgorithm,
    /// base64url SHA-1 of the certificate (`x5t`).
    x5t: String,
    /// base64url SHA-256 of the certificate (`x5t#S256`).
    x5t_s256: String,
}

fn credential_error(path: &Path, what: &str, detail: impl std::fmt::Display) -> TokenError {
    TokenError::Credential(format!("{}: {what}: {detail}", path.display()))
}

impl ClientCredential {
    pub fn load(account: &AccountConfig) -> Result<ClientCredential, TokenError> {
        ClientCredential::from_files(
            account.client_secret_file.as_deref(),
            account
                .client_certificate
                .as_deref()
                .zip(account.client_private_key.as_deref()),
            account.client_assertion_algorithm,
        )
    }

    /// A secret read from `secret_file`, else a certificate and its private key, else none
    /// (a public client).
    pub fn from_files(
        secret_file: Option<&Path>,
        certificate: Option<(&Path, &Path)>,
        algorithm: AssertionAlgorithm,
    ) -> Result<ClientCredential, TokenError> {
        if let Some(path) = secret_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| credential_error(path, "cannot read the client secret", e))?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(credential_error(path, "the client secret file", "is empty"));
            }
            warn_if_world_readable(path);
            return Ok(ClientCredential::Secret(Secret::new(secret)));
        }
        match certificate {
            Some((cert, key)) => Ok(ClientCredential::Certificate(Box::new(
                CertificateKey::load(cert, key, algorithm)?,
            ))),
            None => Ok(ClientCredential::None),
        }
    }

    /// Adds the credential's form fields for a request to `token_endpoint`.
    pub fn add_to(
        &self,
        form: &mut Vec<(&'static str, String)>,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<(), TokenError> {
        match self {
            ClientCredential::None => {}
            ClientCredential::Secret(secret) => {
                form.push(("client_secret", secret.expose().to_owned()))
            }
            ClientCredential::Certificate(key) => {
                form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                form.push((
                    "client_assertion",
                    key.assertion(client_id, token_endpoint)?,
                ));
            }
        }
        Ok(())
    }
}

impl CertificateKey {
    pub fn load(
        certificate: &Path,
        private_key: &Path,
        algorithm: AssertionAlgorithm,
    ) -> Result<CertificateKey, TokenError> {
        // The leaf comes first; the thumbprints are of the certificate uploaded to the app.
        let cert = crate::tls::read_certificates(certificate)
            .map_err(|e| credential_error(certificate, "cannot read the certificate", e))?
            .swap_remove(0);
        let key_der = crate::tls::read_private_key(private_key)
            .map_err(|e| credential_error(private_key, "cannot read the private key", e))?;
        let key = match &key_der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => {
                return Err(credential_error(
                    private_key,
                    "unsupported key",
                    "Entra ID certificate credentials need an RSA key",
                ));
            }
        }
        .map_err(|e| credential_error(private_key, "not a usable RSA key", e))?;
        warn_if_world_readable(private_key);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &cert);
        Ok(CertificateKey {
            key,
            algorithm,
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
        })
    }

    /// A fresh signed assertion: `aud` is the token endpoint, `iss` = `sub` = the client ID.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, TokenError> {
        let now = crate::clock::unix_secs();
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti)
            .map_err(|_| TokenError::Credential("no system randomness".into()))?;
        let header = match self.algorithm {
            AssertionAlgorithm::Ps256 => {
                serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256})
            }
            AssertionAlgorithm::Rs256 => {
                serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t})
            }
        };
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": hex::encode(jti),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let padding: &'static dyn signature::RsaEncoding = match self.algorithm {
            AssertionAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
            AssertionAlgorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
        };
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(padding, &rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| TokenError::Credential("signing the client assertion failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(target: "tokens", file = %path.display(), "credential file is world-readable; chmod 0640 or stricter");
    }
}
