//! Replacing a small state file atomically: a reader (or a restart after a crash) sees the old
//! contents or the new, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `<path>.tmp` (mode 0600) and a rename. With `sync`, the
/// data is on stable storage before the rename; the caller syncs the directory when the
/// rename itself must survive a power failure (the spool group-commits that).
pub fn atomic_write(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let (_, tmp) = write_temp(path, bytes, sync)?;
    fs::rename(&tmp, path)
}

/// The first half of [`atomic_write`], for callers with more to do before the rename: writes
/// `<path>.tmp` and returns it, open, with its path.
pub fn write_temp(path: &Path, bytes: &[u8], sync: bool) -> io::Result<(File, PathBuf)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
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
