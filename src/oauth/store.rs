//! Where tokens live between runs. [`TokenStore`] is the interface the token manager needs;
//! [`FileStore`] keeps every account in one AES-256-GCM encrypted file, and with `[cluster]`
//! `crate::cluster::tokens::RedisStore` keeps them in Redis for every node, sealed alike.
//!
//! ```text
//! {"format":"smtprelay-tokens","version":1,"accounts":{"contoso":"<base64 nonce‖ciphertext‖tag>"},"revisions":{"contoso":7}}
//! ```
//!
//! Each account is sealed on its own ([`Sealer`]), with a fresh 96-bit nonce per write and the
//! account name as associated data, so an entry cannot be moved to another account unnoticed.
//!
//! Every write of an account, its removal included, gives it a new *revision*. Writers say
//! which revision they read ([`Write::Over`]), so a token refreshed from an old refresh token
//! never replaces one a newer writer stored (another node, or an admin's login); only an
//! admin's login or restore replaces whatever is there ([`Write::Replace`]). A removed account
//! keeps its revision (a tombstone): an account that is simply *absent* is one the store lost
//! (Redis restarted empty), and the manager puts back what it holds in memory.
//!
//! The file is mode 0600, replaced atomically (temp, fsync, rename, fsync the directory)
//! under an exclusive lock shared with the CLI, and the previous `backups` versions are kept
//! as `FILE.1` … `FILE.n`. A file that does not decrypt (wrong key, tampering) is an error and
//! is never overwritten. Files made in the store's directory by root (an admin's
//! `sudo smtprelay token login`) are given to the directory's owner, so the service user can
//! still read and replace them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

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

/// One account's entry in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Counts the account's writes; never goes back while the store keeps its data.
    pub revision: u64,
    /// `None` once the account's tokens were removed.
    pub tokens: Option<StoredTokens>,
}

/// What a write may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Only the entry at `revision` (0: no entry at all). The new revision is above `after`
    /// as well, so one put back into a store that lost it does not reuse an old number.
    Over { revision: u64, after: u64 },
    /// Puts back what a store lost (Redis restarted empty), at the revision the writer held:
    /// written unless the store holds that revision or a newer one. Several nodes put back
    /// at once, and the newest must win whoever comes first: a node holding an older
    /// revision holds a refresh token Entra may have taken already.
    Restore { revision: u64 },
    /// Whatever is there: an admin's login or restore.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Written {
        revision: u64,
    },
    /// Another writer got there first: read the store again.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: not a token store file ({reason})")]
    Format { path: PathBuf, reason: String },
    /// What the store holds is not ours to read (another key, tampering); `store` is the
    /// file's path or Redis's address.
    #[error(
        "{store}: account {account:?} cannot be decrypted: wrong token key, or it was tampered with; it is left untouched"
    )]
    Decrypt { store: String, account: String },
    /// A store that lives elsewhere does not answer now (Redis down): worth trying again.
    #[error("{store} unreachable: {error}")]
    Unreachable { store: String, error: String },
    /// Other writers stored the account each time this process tried: worth trying again.
    #[error("{store}: other writers kept storing account {account:?} first")]
    Contended { store: String, account: String },
}

impl StoreError {
    /// Whether trying again later may work without anyone's help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Contended { .. }
        )
    }
}

/// Identifies one state of the store, to notice writes by another process cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreVersion([u64; 3]);

impl StoreVersion {
    pub fn new(parts: [u64; 3]) -> StoreVersion {
        StoreVersion(parts)
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Who may ask for an account's token now.
pub enum Flight {
    /// This process: the guard keeps the others waiting until it is released.
    Mine(FlightGuard),
    /// Another node is asking: wait for the revision it will write.
    Elsewhere { holder: String },
}

/// The right to ask for one account's token, across every process that shares the store.
/// Released when the request is over; dropped without `release`, it is released in the
/// background (and a lock elsewhere runs out by itself if even that fails).
pub struct FlightGuard {
    /// The node that holds it, when that matters to anyone (a shared store).
    pub holder: Option<String>,
    renewing: Option<tokio::task::AbortHandle>,
    release: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl FlightGuard {
    /// For a store only this host writes: the manager's own single flight is the lock.
    pub fn local() -> FlightGuard {
        FlightGuard {
            holder: None,
            renewing: None,
            release: None,
        }
    }

    /// A lock held elsewhere, kept alive by `renewing` until `release` runs.
    pub fn shared(
        holder: String,
        renewing: tokio::task::AbortHandle,
        release: impl Future<Output = ()> + Send + 'static,
    ) -> FlightGuard {
        FlightGuard {
            holder: Some(holder),
            renewing: Some(renewing),
            release: Some(Box::pin(release)),
        }
    }

    pub async fn release(mut self) {
        if let Some(renewing) = self.renewing.take() {
            renewing.abort();
        }
        if let Some(release) = self.release.take() {
            release.await;
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(renewing) = self.renewing.take() {
            renewing.abort();
        }
        if let Some(release) = self.release.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release);
        }
    }
}

pub trait TokenStore: Send + Sync {
    /// Every account's entry, removed ones included.
    fn load_all(&self) -> StoreFuture<'_, BTreeMap<String, Stored>>;
    /// One account's entry.
    fn load<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Option<Stored>>;
    /// Writes one account's tokens (`None`: removes them), as `write` allows.
    fn save<'a>(
        &'a self,
        account: &'a str,
        tokens: Option<&'a StoredTokens>,
        write: Write,
    ) -> StoreFuture<'a, Saved>;
    /// Makes the store hold exactly `accounts` (a restore): every other account is removed.
    fn replace_all(&self, accounts: BTreeMap<String, StoredTokens>) -> StoreFuture<'_, ()>;
    /// The current version, or `None` when nothing is stored yet.
    fn version(&self) -> StoreFuture<'_, Option<StoreVersion>>;
    /// Asks for the right to request `account`'s token.
    fn flight<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Flight>;
    /// Where the tokens are, for messages: a path, or Redis's address.
    fn describe(&self) -> String;
}

/// Applies one write to a store's entries, as every store does it.
pub fn apply(
    entries: &mut BTreeMap<String, Stored>,
    account: &str,
    tokens: Option<&StoredTokens>,
    write: Write,
) -> Saved {
    let current = entries.get(account).map_or(0, |e| e.revision);
    let revision = match write {
        Write::Over { revision, .. } if revision != current => return Saved::Conflict,
        Write::Over { after, .. } => current.max(after) + 1,
        Write::Restore { revision } if current >= revision => return Saved::Conflict,
        Write::Restore { revision } => revision,
        Write::Replace => current + 1,
    };
    entries.insert(
        account.to_owned(),
        Stored {
            revision,
            tokens: tokens.cloned(),
        },
    );
    Saved::Written { revision }
}

/// Makes `entries` hold exactly `accounts`, each with a new revision.
pub fn apply_all(entries: &mut BTreeMap<String, Stored>, accounts: BTreeMap<String, StoredTokens>) {
    let gone: Vec<String> = entries
        .iter()
        .filter(|(name, entry)| entry.tokens.is_some() && !accounts.contains_key(*name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        apply(entries, &name, None, Write::Replace);
    }
    for (name, tokens) in accounts {
        apply(entries, &name, Some(&tokens), Write::Replace);
    }
}

/// Seals and opens one account's tokens with the token key: AES-256-GCM, a fresh nonce per
/// seal, the account's name as associated data.
#[derive(Clone)]
pub struct Sealer {
    key: TokenKey,
}

impl Sealer {
    pub fn new(key: TokenKey) -> Sealer {
        Sealer { key }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.key.bytes()).expect("32-byte key")
    }

    pub fn seal(&self, account: &str, tokens: &StoredTokens) -> String {
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

    /// `None` when the blob was not sealed for `account` with this key.
    pub fn open(&self, account: &str, blob: &str) -> Option<StoredTokens> {
        let blob = STANDARD.decode(blob).ok()?;
        if blob.len() < NONCE_LEN {
            return None;
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
                .ok()?,
        );
        serde_json::from_slice(&plaintext).ok()
    }
}

#[derive(Serialize, Deserialize)]
struct FileContents {
    format: String,
    version: u32,
    accounts: BTreeMap<String, String>,
    /// Every account's revision, removed ones included. Files written before revisions
    /// existed have none: their accounts are at revision 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    revisions: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    sealer: Sealer,
    backups: u32,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>, key: TokenKey, backups: u32) -> Self {
        FileStore {
            path: path.into(),
            sealer: Sealer::new(key),
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

    /// The entries of the file at `path`, each checked to decrypt; `None` if there is none.
    fn read(&self, path: &Path) -> Result<Option<BTreeMap<String, Stored>>, StoreError> {
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
        let mut entries: BTreeMap<String, Stored> = contents
            .revisions
            .iter()
            .map(|(account, revision)| {
                let entry = Stored {
                    revision: *revision,
                    tokens: None,
                };
                (account.clone(), entry)
            })
            .collect();
        for (account, blob) in &contents.accounts {
            let tokens = self
                .sealer
                .open(account, blob)
                .ok_or_else(|| StoreError::Decrypt {
                    store: path.display().to_string(),
                    account: account.clone(),
                })?;
            let entry = entries.entry(account.clone()).or_insert(Stored {
                revision: 1,
                tokens: None,
            });
            entry.tokens = Some(tokens);
        }
        Ok(Some(entries))
    }

    fn contents(&self, entries: &BTreeMap<String, Stored>) -> Vec<u8> {
        let contents = FileContents {
            format: FORMAT.into(),
            version: VERSION,
            accounts: entries
                .iter()
                .filter_map(|(account, entry)| {
                    let tokens = entry.tokens.as_ref()?;
                    Some((account.clone(), self.sealer.seal(account, tokens)))
                })
                .collect(),
            revisions: entries
                .iter()
                .map(|(account, entry)| (account.clone(), entry.revision))
                .collect(),
        };
        serde_json::to_vec(&contents).expect("serialises")
    }

    /// Reads, checks every entry, applies `change`, and writes the result back if it says so.
    fn update<R>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Stored>) -> (R, bool),
    ) -> Result<R, StoreError> {
        let _lock = self.lock()?;
        let mut entries = self.read(&self.path)?.unwrap_or_default();
        let (result, changed) = change(&mut entries);
        if changed {
            self.replace_file(&self.contents(&entries))?;
        }
        Ok(result)
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

    /// The tokens in a backup (or another store's file), checked to decrypt with this key.
    pub fn read_backup(
        key: TokenKey,
        from: &Path,
    ) -> Result<BTreeMap<String, StoredTokens>, StoreError> {
        let reader = FileStore::new(from, key, 0);
        let entries = reader.read(from)?.ok_or_else(|| StoreError::Io {
            path: from.to_owned(),
            error: io::Error::new(io::ErrorKind::NotFound, "no such backup"),
        })?;
        Ok(present(entries))
    }

    /// Writes `entries` to `to` (mode 0600) in the store's format: a backup, which is also a
    /// store file of its own.
    pub fn write_backup(
        key: TokenKey,
        to: &Path,
        entries: &BTreeMap<String, Stored>,
    ) -> Result<(), StoreError> {
        let writer = FileStore::new(to, key, 0);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(to)
            .map_err(writer.io_error(to))?;
        file.write_all(&writer.contents(entries))
            .and_then(|_| file.sync_all())
            .map_err(writer.io_error(to))
    }

    fn version_now(&self) -> Option<StoreVersion> {
        let meta = fs::metadata(&self.path).ok()?;
        let modified_ns = meta.mtime() as u64 * 1_000_000_000 + meta.mtime_nsec() as u64;
        Some(StoreVersion([meta.ino(), meta.len(), modified_ns]))
    }

    /// Runs `job` on a copy of this store where blocking is allowed.
    fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let store = self.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || job(store))
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Io {
                        path,
                        error: io::Error::other(e),
                    })
                })
        })
    }
}

/// The accounts that have tokens, without the removed ones.
pub fn present(entries: BTreeMap<String, Stored>) -> BTreeMap<String, StoredTokens> {
    entries
        .into_iter()
        .filter_map(|(account, entry)| Some((account, entry.tokens?)))
        .collect()
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
    fn load_all(&self) -> StoreFuture<'_, BTreeMap<String, Stored>> {
        self.blocking(|store| {
            let _lock = store.lock()?;
            Ok(store.read(&store.path)?.unwrap_or_default())
        })
    }

    fn load<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Option<Stored>> {
        let account = account.to_owned();
        let all = self.load_all();
        Box::pin(async move { Ok(all.await?.remove(&account)) })
    }

    fn save<'a>(
        &'a self,
        account: &'a str,
        tokens: Option<&'a StoredTokens>,
        write: Write,
    ) -> StoreFuture<'a, Saved> {
        let (account, tokens) = (account.to_owned(), tokens.cloned());
        self.blocking(move |store| {
            store.update(|entries| {
                let saved = apply(entries, &account, tokens.as_ref(), write);
                (saved, saved != Saved::Conflict)
            })
        })
    }

    fn replace_all(&self, accounts: BTreeMap<String, StoredTokens>) -> StoreFuture<'_, ()> {
        self.blocking(move |store| store.update(|entries| (apply_all(entries, accounts), true)))
    }

    fn version(&self) -> StoreFuture<'_, Option<StoreVersion>> {
        let version = self.version_now();
        Box::pin(async move { Ok(version) })
    }

    fn flight<'a>(&'a self, _account: &'a str) -> StoreFuture<'a, Flight> {
        Box::pin(async { Ok(Flight::Mine(FlightGuard::local())) })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
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

    async fn put(store: &FileStore, account: &str, t: StoredTokens) -> u64 {
        match store.save(account, Some(&t), Write::Replace).await.unwrap() {
            Saved::Written { revision } => revision,
            Saved::Conflict => panic!("a replace cannot conflict"),
        }
    }

    async fn tokens_of(store: &FileStore, account: &str) -> Option<StoredTokens> {
        store.load(account).await.unwrap().and_then(|e| e.tokens)
    }

    #[tokio::test]
    async fn round_trip_encrypted_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        assert!(store.load_all().await.unwrap().is_empty());
        put(&store, "contoso", tokens("AT-secret-1")).await;
        put(&store, "fabrikam", tokens("AT-secret-2")).await;
        assert_eq!(
            tokens_of(&store, "contoso").await,
            Some(tokens("AT-secret-1"))
        );
        let raw = fs::read_to_string(store.path()).unwrap();
        assert!(!raw.contains("AT-secret") && !raw.contains("refresh-"));
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        store.save("contoso", None, Write::Replace).await.unwrap();
        // Removed, but its revision stays: a tombstone, not an account the store lost.
        let removed = store.load("contoso").await.unwrap().unwrap();
        assert_eq!((removed.revision, removed.tokens), (2, None));
        assert_eq!(present(store.load_all().await.unwrap()).len(), 1);
    }

    #[tokio::test]
    async fn a_write_over_an_old_revision_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        let first = put(&store, "contoso", tokens("a")).await;
        let over = |revision| Write::Over {
            revision,
            after: revision,
        };
        let second = store
            .save("contoso", Some(&tokens("b")), over(first))
            .await
            .unwrap();
        assert_eq!(second, Saved::Written { revision: 2 });
        // A writer that read revision 1 refreshed from an older refresh token: refused.
        assert_eq!(
            store
                .save("contoso", Some(&tokens("stale")), over(first))
                .await
                .unwrap(),
            Saved::Conflict
        );
        assert_eq!(tokens_of(&store, "contoso").await, Some(tokens("b")));
        // Putting back into a store that lost the account: only over nothing, above `after`.
        let back = Write::Over {
            revision: 0,
            after: 9,
        };
        assert_eq!(
            store
                .save("fabrikam", Some(&tokens("c")), back)
                .await
                .unwrap(),
            Saved::Written { revision: 10 }
        );
        assert_eq!(
            store
                .save("fabrikam", Some(&tokens("d")), back)
                .await
                .unwrap(),
            Saved::Conflict
        );
    }

    #[tokio::test]
    async fn a_file_without_revisions_reads_as_revision_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        let sealed = store.sealer.seal("contoso", &tokens("a"));
        let old =
            serde_json::json!({"format": FORMAT, "version": 1, "accounts": {"contoso": sealed}});
        fs::write(store.path(), old.to_string()).unwrap();
        let entry = store.load("contoso").await.unwrap().unwrap();
        assert_eq!(entry.revision, 1);
        assert_eq!(entry.tokens, Some(tokens("a")));
    }

    #[tokio::test]
    async fn nonces_are_fresh_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        put(&store, "contoso", tokens("same")).await;
        let first: FileContents = serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        put(&store, "contoso", tokens("same")).await;
        let second: FileContents =
            serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert_ne!(first.accounts["contoso"], second.accounts["contoso"]);
    }

    #[tokio::test]
    async fn a_wrong_key_is_an_error_and_the_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        put(
            &store(dir.path(), &TokenKey::generate()),
            "contoso",
            tokens("a"),
        )
        .await;
        let before = fs::read(dir.path().join("tokens.json.enc")).unwrap();
        let wrong = store(dir.path(), &TokenKey::generate());
        assert!(matches!(
            wrong.load_all().await,
            Err(StoreError::Decrypt { .. })
        ));
        assert!(matches!(
            wrong
                .save("contoso", Some(&tokens("b")), Write::Replace)
                .await,
            Err(StoreError::Decrypt { .. })
        ));
        assert_eq!(
            fs::read(dir.path().join("tokens.json.enc")).unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        put(&store, "contoso", tokens("a")).await;
        put(&store, "fabrikam", tokens("b")).await;
        let good = fs::read(store.path()).unwrap();
        // Moving one account's sealed entry to another account is caught by the AAD.
        let mut contents: FileContents = serde_json::from_slice(&good).unwrap();
        let contoso = contents.accounts["contoso"].clone();
        contents.accounts.insert("fabrikam".into(), contoso);
        fs::write(store.path(), serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(
            matches!(store.load_all().await, Err(StoreError::Decrypt { account, .. }) if account == "fabrikam")
        );
        // A flipped bit is caught by the tag.
        let mut contents: FileContents = serde_json::from_slice(&good).unwrap();
        let mut blob = STANDARD.decode(&contents.accounts["contoso"]).unwrap();
        blob[20] ^= 1;
        contents
            .accounts
            .insert("contoso".into(), STANDARD.encode(blob));
        fs::write(store.path(), serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(matches!(
            store.load_all().await,
            Err(StoreError::Decrypt { .. })
        ));
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(
            store.load_all().await,
            Err(StoreError::Format { .. })
        ));
    }

    #[tokio::test]
    async fn backups_rotate_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::generate();
        let store = store(dir.path(), &key);
        for i in 0..6 {
            put(&store, "contoso", tokens(&format!("v{i}"))).await;
        }
        // Three kept: .1 is the version before the current one.
        assert!(store.backup_path(3).exists() && !store.backup_path(4).exists());
        let previous = FileStore::read_backup(key.clone(), &store.backup_path(1)).unwrap();
        assert_eq!(previous["contoso"], tokens("v4"));
        let restored = FileStore::read_backup(key.clone(), &store.backup_path(3)).unwrap();
        put(&store, "fabrikam", tokens("x")).await;
        store.replace_all(restored).await.unwrap();
        let entries = store.load_all().await.unwrap();
        assert_eq!(entries["contoso"].tokens, Some(tokens("v2")));
        // Restoring is a write like any other: newer revisions, and what the backup lacks
        // is removed.
        assert_eq!(entries["contoso"].revision, 7);
        assert_eq!(entries["fabrikam"].tokens, None);
        let exported = dir.path().join("export.enc");
        FileStore::write_backup(key.clone(), &exported, &entries).unwrap();
        let mode = fs::metadata(&exported).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(FileStore::read_backup(key, &exported).unwrap().len(), 1);
        // A backup under another key is refused.
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        let foreign = FileStore::new(other.join("t"), TokenKey::generate(), 0);
        put(&foreign, "contoso", tokens("x")).await;
        assert!(matches!(
            FileStore::read_backup(store.sealer.key.clone(), foreign.path()),
            Err(StoreError::Decrypt { .. })
        ));
    }

    #[tokio::test]
    async fn the_version_changes_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), &TokenKey::generate());
        assert_eq!(store.version().await.unwrap(), None);
        put(&store, "contoso", tokens("a")).await;
        let first = store.version().await.unwrap().unwrap();
        put(&store, "contoso", tokens("b")).await;
        assert_ne!(store.version().await.unwrap().unwrap(), first);
    }
}
