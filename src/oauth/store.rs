//! Where tokens live between runs. [`TokenStore`] is the small interface the token manager
//! needs; [`FileStore`] keeps every account in one AES-256-GCM encrypted file:
//!
//! ```text
//! {"format":"smtprelay-tokens","version":1,"accounts":{"contoso":"<base64 nonce‖ciphertext‖tag>"}}
//! ```
//!
//! Each account is sealed on its own, with a fresh 96-bit nonce per write and the account name
//! as associated data, so an entry cannot be moved to another account unnoticed. The file is
//! mode 0600, replaced atomically (temp, fsync, rename, fsync the directory) under an exclusive
//! lock shared with the CLI, and the previous `backups` versions are kept as `FILE.1` … `FILE.n`.
//! A file that does not decrypt (wrong key, tampering) is an error and is never overwritten.
//!
//! Files made in the store's directory by root (an admin's `sudo smtprelay token login`) are
//! given to the directory's owner, so the service user can still read and replace them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::key::TokenKey;
use super::secret::Secret;

const FORMAT: &str = "smtprelay-tokens";
const VERSION: u32 = 1;
const NONCE_LEN: usize = 12;

/// What is kept for one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    pub access_token: Option<Secret>,
    /// Unix seconds at which the access token expires.
    #[serde(default)]
    pub expires_at: u64,
    pub refresh_token: Option<Secret>,
    /// Unix seconds at which the current refresh token was issued (Entra's refresh tokens
    /// live 90 days from their last use).
    #[serde(default)]
    pub refresh_token_issued_at: Option<u64>,
    /// Unix seconds of the interactive login that started this chain of tokens.
    #[serde(default)]
    pub login_at: Option<u64>,
    /// Unix seconds of the last successful token request for this account.
    #[serde(default)]
    pub refreshed_at: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: not a token store file ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path}: account {account:?} cannot be decrypted: wrong token key, or the file was tampered with; the file is left untouched"
    )]
    Decrypt { path: PathBuf, account: String },
}

/// Identifies one version of the store, to notice writes by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreVersion {
    inode: u64,
    len: u64,
    modified_ns: i128,
}

pub trait TokenStore: Send + Sync {
    /// Every account's tokens.
    fn load_all(&self) -> Result<BTreeMap<String, StoredTokens>, StoreError>;
    /// Replaces one account's tokens.
    fn save(&self, account: &str, tokens: &StoredTokens) -> Result<(), StoreError>;
    /// Forgets one account; returns whether it was there.
    fn remove(&self, account: &str) -> Result<bool, StoreError>;
    /// The current version, or `None` when nothing is stored yet.
    fn version(&self) -> Option<StoreVersion>;

    fn load(&self, account: &str) -> Result<Option<StoredTokens>, StoreError> {
        Ok(self.load_all()?.remove(account))
    }
}

#[derive(Serialize, Deserialize)]
struct FileContents {
    format: String,
    version: u32,
    accounts: BTreeMap<String, String>,
}

pub struct FileStore {
    path: PathBuf,
    key: TokenKey,
    backups: u32,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>, key: TokenKey, backups: u32) -> Self {
        FileStore {
            path: path.into(),
            key,
            backups,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |error| StoreError::Io { path, error }
    }

    /// Holds the store's lock file for as long as the returned file is open. The CLI and the
    /// daemon take it for every read-modify-write, so neither loses the other's update.
    fn lock(&self) -> Result<File, StoreError> {
        let lock_path = sibling(&self.path, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(self.io_error(&lock_path))?;
        owned_like_directory(&file, &lock_path).map_err(self.io_error(&lock_path))?;
        file.lock().map_err(self.io_error(&lock_path))?;
        Ok(file)
    }

    fn read(&self, path: &Path) -> Result<Option<FileContents>, StoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(path)(e)),
        };
        let format_error = |reason: String| StoreError::Format {
            path: path.to_owned(),
            reason,
        };
        let contents: FileContents =
            serde_json::from_slice(&bytes).map_err(|e| format_error(e.to_string()))?;
        if contents.format != FORMAT {
            return Err(format_error(format!("format {:?}", contents.format)));
        }
        if contents.version != VERSION {
            return Err(format_error(format!(
                "version {} is not supported by this smtprelay",
                contents.version
            )));
        }
        Ok(Some(contents))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.key.bytes()).expect("32-byte key")
    }

    fn seal(&self, account: &str, tokens: &StoredTokens) -> String {
        let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(tokens).expect("serialises"));
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(account);
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for small inputs");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        STANDARD.encode(blob)
    }

    fn open(&self, path: &Path, account: &str, blob: &str) -> Result<StoredTokens, StoreError> {
        let decrypt_error = || StoreError::Decrypt {
            path: path.to_owned(),
            account: account.to_owned(),
        };
        let blob = STANDARD.decode(blob).map_err(|_| decrypt_error())?;
        if blob.len() < NONCE_LEN {
            return Err(decrypt_error());
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let aad = associated_data(account);
        let plaintext = zeroize::Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| decrypt_error())?,
        );
        serde_json::from_slice(&plaintext).map_err(|_| decrypt_error())
    }

    fn decrypt_all(
        &self,
        path: &Path,
        contents: &FileContents,
    ) -> Result<BTreeMap<String, StoredTokens>, StoreError> {
        contents
            .accounts
            .iter()
            .map(|(account, blob)| Ok((account.clone(), self.open(path, account, blob)?)))
            .collect()
    }

    /// Reads, checks every entry, applies `change`, and writes the result back.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredTokens>) -> bool,
    ) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut accounts = match self.read(&self.path)? {
            Some(contents) => self.decrypt_all(&self.path, &contents)?,
            None => BTreeMap::new(),
        };
        if !change(&mut accounts) {
            return Ok(false);
        }
        self.write(&accounts)?;
        Ok(true)
    }

    fn write(&self, accounts: &BTreeMap<String, StoredTokens>) -> Result<(), StoreError> {
        let contents = FileContents {
            format: FORMAT.into(),
            version: VERSION,
            accounts: accounts
                .iter()
                .map(|(account, tokens)| (account.clone(), self.seal(account, tokens)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&contents).expect("serialises");
        self.replace_file(&bytes)
    }

    /// temp + fsync + (rotate backups) + rename + fsync(dir).
    fn replace_file(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = crate::private_files::temp_path(&self.path);
        let result = (|| {
            let (file, _) = crate::private_files::write_temp(&self.path, bytes, true)?;
            owned_like_directory(&file, &tmp)?;
            self.rotate_backups()?;
            fs::rename(&tmp, &self.path)?;
            let dir = self.path.parent().unwrap_or(Path::new("."));
            File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error(&self.path)(e)
        })
    }

    /// `FILE.1` is the version before the current one, `FILE.n` the oldest kept.
    fn rotate_backups(&self) -> io::Result<()> {
        if self.backups == 0 || !self.path.exists() {
            return Ok(());
        }
        for n in (1..self.backups).rev() {
            let from = self.backup_path(n);
            if from.exists() {
                fs::rename(&from, self.backup_path(n + 1))?;
            }
        }
        let backup = self.backup_path(1);
        fs::copy(&self.path, &backup)?;
        owned_like_directory(&File::open(&backup)?, &backup)
    }

    pub fn backup_path(&self, n: u32) -> PathBuf {
        sibling(&self.path, &format!(".{n}"))
    }

    /// Copies the current store to `to` (mode 0600) after checking that it decrypts.
    pub fn backup_to(&self, to: &Path) -> Result<usize, StoreError> {
        let _lock = self.lock()?;
        let contents = self.read(&self.path)?.ok_or_else(|| StoreError::Io {
            path: self.path.clone(),
            error: io::Error::new(io::ErrorKind::NotFound, "no token store to back up"),
        })?;
        let count = self.decrypt_all(&self.path, &contents)?.len();
        let bytes = serde_json::to_vec(&contents).expect("serialises");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(to)
            .map_err(self.io_error(to))?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_all())
            .map_err(self.io_error(to))?;
        Ok(count)
    }

    /// Replaces the store with `from` (a backup), after checking that it decrypts with this
    /// store's key. The replaced version becomes `FILE.1`.
    pub fn restore_from(&self, from: &Path) -> Result<usize, StoreError> {
        let _lock = self.lock()?;
        let contents = self.read(from)?.ok_or_else(|| StoreError::Io {
            path: from.to_owned(),
            error: io::Error::new(io::ErrorKind::NotFound, "no such backup"),
        })?;
        let count = self.decrypt_all(from, &contents)?.len();
        let bytes = serde_json::to_vec(&contents).expect("serialises");
        self.replace_file(&bytes)?;
        Ok(count)
    }
}

/// When root makes `file` (at `path`), hands it to the owner of the directory it is in.
fn owned_like_directory(file: &File, path: &Path) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let owner = fs::metadata(dir)?;
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
}

impl TokenStore for FileStore {
    fn load_all(&self) -> Result<BTreeMap<String, StoredTokens>, StoreError> {
        let _lock = self.lock()?;
        match self.read(&self.path)? {
            Some(contents) => self.decrypt_all(&self.path, &contents),
            None => Ok(BTreeMap::new()),
        }
    }

    fn save(&self, account: &str, tokens: &StoredTokens) -> Result<(), StoreError> {
        self.update(|accounts| {
            accounts.insert(account.to_owned(), tokens.clone());
            true
        })
        .map(|_| ())
    }

    fn remove(&self, account: &str) -> Result<bool, StoreError> {
        self.update(|accounts| accounts.remove(account).is_some())
    }

    fn version(&self) -> Option<StoreVersion> {
        let meta = fs::metadata(&self.path).ok()?;
        Some(StoreVersion {
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        })
    }
}

fn associated_data(account: &str) -> Vec<u8> {
    let mut aad = format!("{FORMAT}/{VERSION}\0").into_bytes();
    aad.extend_from_slice(account.as_bytes());
    aad
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tokens(access: &str) -> StoredTokens {
        StoredTokens {
            access_token: Some(Secret::new(access)),
            expires_at: 1_900_000_000,
            refresh_token: Some(Secret::new(format!("refresh-{access}"))),
            refresh_token_issued_at: Some(1_800_000_000),
            login_at: Some(1_700_000_000),
            refreshed_at: Some(1_800_000_000),
            scope: Some("https://outlook.office.com/SMTP.Send offline_access".into()),
        }
    }

    fn store(dir: &Path, key: &TokenKey) -> FileStore {
        FileStore::new(dir.join("tokens.json.enc"), key.clone(), 3)
    }

    #[test]
    fn round_trip_encrypted_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        assert!(store.load_all().unwrap().is_empty());
        store.save("contoso", &tokens("AT-secret-1")).unwrap();
        store.save("fabrikam", &tokens("AT-secret-2")).unwrap();
        assert_eq!(store.load("contoso").unwrap(), Some(tokens("AT-secret-1")));
        let raw = fs::read_to_string(store.path()).unwrap();
        assert!(!raw.contains("AT-secret") && !raw.contains("refresh-"));
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.remove("contoso").unwrap());
        assert!(!store.remove("contoso").unwrap());
        assert_eq!(store.load_all().unwrap().len(), 1);
    }

    #[test]
    fn nonces_are_fresh_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        store.save("contoso", &tokens("same")).unwrap();
        let first = fs::read(store.path()).unwrap();
        store.save("contoso", &tokens("same")).unwrap();
        assert_ne!(first, fs::read(store.path()).unwrap());
    }

    #[test]
    fn a_wrong_key_is_an_error_and_the_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &TokenKey::generate())
            .save("contoso", &tokens("a"))
            .unwrap();
        let before = fs::read(dir.path().join("tokens.json.enc")).unwrap();
        let wrong = store(dir.path(), &TokenKey::generate());
        assert!(matches!(wrong.load_all(), Err(StoreError::Decrypt { .. })));
        assert!(matches!(
            wrong.save("contoso", &tokens("b")),
            Err(StoreError::Decrypt { .. })
        ));
        assert_eq!(
            fs::read(dir.path().join("tokens.json.enc")).unwrap(),
            before
        );
    }

    #[test]
    fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        store.save("contoso", &tokens("a")).unwrap();
        store.save("fabrikam", &tokens("b")).unwrap();
        // Moving one account's sealed entry to another account is caught by the AAD.
        let mut contents: FileContents =
            serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        let contoso = contents.accounts["contoso"].clone();
        contents.accounts.insert("fabrikam".into(), contoso);
        fs::write(store.path(), serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(
            matches!(store.load_all(), Err(StoreError::Decrypt { account, .. }) if account == "fabrikam")
        );
        // A flipped bit is caught by the tag.
        store.restore_from(&store.backup_path(1)).unwrap();
        let mut contents: FileContents =
            serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        let mut blob = STANDARD.decode(&contents.accounts["contoso"]).unwrap();
        blob[20] ^= 1;
        contents
            .accounts
            .insert("contoso".into(), STANDARD.encode(blob));
        fs::write(store.path(), serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(matches!(store.load_all(), Err(StoreError::Decrypt { .. })));
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load_all(), Err(StoreError::Format { .. })));
    }

    #[test]
    fn backups_rotate_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        for i in 0..6 {
            store.save("contoso", &tokens(&format!("v{i}"))).unwrap();
        }
        // Three kept: .1 is the version before the current one.
        assert!(store.backup_path(3).exists() && !store.backup_path(4).exists());
        let previous = FileStore::new(store.backup_path(1), store.key.clone(), 0);
        assert_eq!(previous.load("contoso").unwrap(), Some(tokens("v4")));
        assert_eq!(store.restore_from(&store.backup_path(3)).unwrap(), 1);
        assert_eq!(store.load("contoso").unwrap(), Some(tokens("v2")));
        let exported = dir.path().join("export.enc");
        assert_eq!(store.backup_to(&exported).unwrap(), 1);
        let mode = fs::metadata(&exported).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A backup under another key is refused and changes nothing.
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        let foreign = FileStore::new(other.join("t"), TokenKey::generate(), 0);
        foreign.save("contoso", &tokens("x")).unwrap();
        assert!(matches!(
            store.restore_from(foreign.path()),
            Err(StoreError::Decrypt { .. })
        ));
        assert_eq!(store.load("contoso").unwrap(), Some(tokens("v2")));
    }

    #[test]
    fn the_version_changes_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        assert_eq!(store.version(), None);
        store.save("contoso", &tokens("a")).unwrap();
        let first = store.version().unwrap();
        store.save("contoso", &tokens("b")).unwrap();
        assert_ne!(store.version().unwrap(), first);
    }
}
