//! The relay's own files under `state_dir`, which only the service user may read: directories
//! 0750, files 0600, and small state files replaced atomically (a reader, or a restart after a
//! crash, sees the old contents or the new, never a mix).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `<path>.tmp` (mode 0600) and a rename. With `sync`, the
/// data is on stable storage before the rename; the caller syncs the directory when the
/// rename itself must survive a power failure (the spool group-commits that).
pub fn atomic_write(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let (_, tmp) = write_temp(path, bytes, sync)?;
    fs::rename(&tmp, path)
}

/// [`atomic_write`] on tokio's blocking pool, for async callers.
pub async fn atomic_write_off_thread(path: PathBuf, bytes: Vec<u8>, sync: bool) -> io::Result<()> {
    tokio::task::spawn_blocking(move || atomic_write(&path, &bytes, sync))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The first half of [`atomic_write`], for callers with more to do before the rename: writes
/// `<path>.tmp` and returns it, open, with its path.
pub fn write_temp(path: &Path, bytes: &[u8], sync: bool) -> io::Result<(File, PathBuf)> {
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_data()?;
    }
    Ok((file, tmp))
}

/// Where [`write_temp`] writes for `path`: `<path>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Creates `path` (and its parents) as a private directory, 0750: others may not even list
/// it (queue IDs, account names). An existing one wider than that is narrowed; one narrower
/// (0700) is left as it is.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)?;
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & !0o750 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o750))?;
    }
    Ok(())
}
