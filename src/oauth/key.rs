//! The token store key: 32 random bytes, written as 64 hex digits or base64.
//!
//! Looked up in this order: `$SMTPRELAY_TOKEN_KEY`, the systemd credential
//! `$CREDENTIALS_DIRECTORY/token-key`, then `[tokens] key_file`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

pub const KEY_ENV: &str = "SMTPRELAY_TOKEN_KEY";
pub const CREDENTIAL_NAME: &str = "token-key";

#[derive(Clone)]
pub struct TokenKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no token key: set [tokens] key_file, ${KEY_ENV}, or the systemd credential {CREDENTIAL_NAME} (create one with `smtprelay token keygen`)"
    )]
    Missing,
    #[error(
        "{0}: the token key file does not exist; create it with `smtprelay token keygen --to {0}`"
    )]
    NotFound(PathBuf),
    #[error("{source_name}: cannot read the token key: {error}")]
    Unreadable {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: not a token key (expected 32 bytes as 64 hex digits or base64)")]
    Malformed { source_name: String },
    #[error(
        "{0}: a key file already exists; remove it first (tokens encrypted with it become unreadable)"
    )]
    Exists(PathBuf),
    #[error("{path}: cannot write the key: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl TokenKey {
    pub fn generate() -> TokenKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        TokenKey(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn parse(text: &str, source_name: &str) -> Result<TokenKey, KeyError> {
        let text = text.trim();
        let malformed = || KeyError::Malformed {
            source_name: source_name.to_owned(),
        };
        let bytes = Zeroizing::new(if text.len() == 64 {
            hex::decode(text).map_err(|_| malformed())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| malformed())?
        });
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed())?;
        Ok(TokenKey(Zeroizing::new(array)))
    }

    /// Finds the key as described in the module documentation.
    /// Where the key comes from when it is not read from `key_file`: the environment or
    /// the systemd credential (which take precedence, as [`TokenKey::load`] reads them).
    pub fn supplied_elsewhere() -> Option<String> {
        if std::env::var_os(KEY_ENV).is_some() {
            return Some(format!("${KEY_ENV}"));
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        Path::new(&dir)
            .join(CREDENTIAL_NAME)
            .exists()
            .then(|| format!("the systemd credential {CREDENTIAL_NAME}"))
    }

    pub fn load(key_file: Option<&Path>) -> Result<TokenKey, KeyError> {
        TokenKey::load_with(key_file, |name| std::env::var(name).ok())
    }

    fn load_with(
        key_file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<TokenKey, KeyError> {
        if let Some(text) = env(KEY_ENV) {
            return TokenKey::parse(&text, &format!("${KEY_ENV}"));
        }
        if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                return TokenKey::from_file(&path);
            }
        }
        match key_file {
            Some(path) => TokenKey::from_file(path),
            None => Err(KeyError::Missing),
        }
    }

    fn from_file(path: &Path) -> Result<TokenKey, KeyError> {
        let name = path.display().to_string();
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                KeyError::NotFound(path.to_owned())
            } else {
                KeyError::Unreadable {
                    source_name: name.clone(),
                    error,
                }
            }
        })?);
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o004 != 0
        {
            tracing::warn!(target: "tokens", file = %name, "the token key is world-readable; chmod 0640 or stricter");
        }
        TokenKey::parse(&text, &name)
    }

    /// Writes a new key as hex, mode 0600, refusing to replace an existing one.
    pub fn write_new(path: &Path) -> Result<TokenKey, KeyError> {
        let key = TokenKey::generate();
        let write_error = |error| KeyError::Write {
            path: path.to_owned(),
            error,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_owned())
                } else {
                    write_error(e)
                }
            })?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(key.bytes())));
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64() {
        let key = TokenKey::generate();
        let hex_text = hex::encode(key.bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.bytes());
        assert_eq!(
            TokenKey::parse(&hex_text, "t").unwrap().bytes(),
            key.bytes()
        );
        assert_eq!(
            TokenKey::parse(&format!(" {b64}\n"), "t").unwrap().bytes(),
            key.bytes()
        );
        assert!(matches!(
            TokenKey::parse("abcd", "t"),
            Err(KeyError::Malformed { .. })
        ));
        assert!(!format!("{key:?}").contains(&hex_text[..8]));
    }

    #[test]
    fn lookup_order_env_then_credential_then_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let file_key = TokenKey::write_new(&dir.path().join("token.key")).unwrap();
        let credentials = dir.path().join("creds");
        fs::create_dir(&credentials).unwrap();
        let credential_key = TokenKey::write_new(&credentials.join(CREDENTIAL_NAME)).unwrap();
        let env_key = TokenKey::generate();
        let env_hex = hex::encode(env_key.bytes());
        let key_file = dir.path().join("token.key");
        let creds = credentials.to_str().unwrap().to_owned();
        let lookup = |with_env: bool, with_creds: bool| {
            TokenKey::load_with(Some(&key_file), |name| match name {
                KEY_ENV if with_env => Some(env_hex.clone()),
                "CREDENTIALS_DIRECTORY" if with_creds => Some(creds.clone()),
                _ => None,
            })
            .unwrap()
        };
        assert_eq!(lookup(true, true).bytes(), env_key.bytes());
        assert_eq!(lookup(false, true).bytes(), credential_key.bytes());
        assert_eq!(lookup(false, false).bytes(), file_key.bytes());
        assert!(matches!(
            TokenKey::load_with(None, |_| None),
            Err(KeyError::Missing)
        ));
    }

    #[test]
    fn write_new_is_private_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let key = TokenKey::write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(TokenKey::from_file(&path).unwrap().bytes(), key.bytes());
        assert!(matches!(
            TokenKey::write_new(&path),
            Err(KeyError::Exists(_))
        ));
    }
}
