//! The durable spool under `state_dir/spool`:
//!
//! ```text
//! spool/lock      held (flock) by the one daemon that owns the spool
//! spool/tmp/      messages being received; never acknowledged, removed at start-up
//! spool/queue/    one complete, fsync'd file per accepted message (see message_file.rs)
//! spool/corrupt/  files found damaged at start-up, kept for a human to look at
//! spool/failed/   messages that failed with `on_failure = "keep"`
//! ```
//!
//! Beside each `queue/<id>.msg` may stand `queue/<id>.state`: per-recipient delivery progress,
//! replaced atomically (see `state.rs`). The message file itself never changes.
//!
//! A message is acknowledged only after its file has been written, `fdatasync`'d, renamed into
//! `queue/`, and `queue/` itself fsync'd. Directory syncs are group-committed: one fsync covers
//! every rename that happened before it started (see [`DirSync`]).
//!
//! In memory the spool keeps only the queue IDs (16 bytes and a B-tree's share each), so a
//! backlog of any length costs little: an envelope is read from its file when someone needs
//! it (a worker at each attempt, an admin command), and handed to the scheduler with the ID
//! when a message arrives.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::id::QueueId;
use super::message_file::{Envelope, MessageFile, SpoolFileError, encode_header, encode_trailer};
use super::state::DeliveryState;

/// Content is held in memory up to this size, then streamed to the temporary file.
const SPILL_THRESHOLD: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is locked by another smtprelay process")]
    Locked(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What start-up found on disk.
#[derive(Debug, Default)]
pub struct Recovery {
    pub queued: usize,
    pub removed_incomplete: usize,
    pub moved_to_corrupt: usize,
}

/// The paths of a spool, usable without owning it (the CLI reads them while the daemon runs).
#[derive(Debug, Clone)]
pub struct SpoolPaths {
    pub root: PathBuf,
}

impl SpoolPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SpoolPaths { root: root.into() }
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub fn corrupt(&self) -> PathBuf {
        self.root.join("corrupt")
    }
    pub fn failed(&self) -> PathBuf {
        self.root.join("failed")
    }
    pub fn message(&self, id: QueueId) -> PathBuf {
        self.queue().join(format!("{id}.msg"))
    }
    pub fn state(&self, id: QueueId) -> PathBuf {
        self.queue().join(format!("{id}.state"))
    }

    /// The delivery state of a message: its state file, or a fresh one for a new message.
    pub fn read_state(&self, envelope: &Envelope) -> io::Result<DeliveryState> {
        DeliveryState::read(&self.state(envelope.id), envelope)
    }

    /// A queued message's file, checked (`None` once it has left the queue).
    pub fn load(&self, id: QueueId) -> Result<Option<MessageFile>, SpoolFileError> {
        match MessageFile::open(&self.message(id)) {
            Ok(file) if file.envelope.id == id => Ok(Some(file)),
            Ok(_) => Err(SpoolFileError::BadEnvelope(
                "the file name does not match its queue ID".into(),
            )),
            Err(SpoolFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The messages that have a delivery state file (one directory listing: at start-up most
    /// have none, and a million failed opens cost seconds).
    pub fn with_state(&self) -> io::Result<std::collections::HashSet<QueueId>> {
        let mut ids = std::collections::HashSet::new();
        for entry in fs::read_dir(self.queue())? {
            let name = entry?.file_name();
            let name = Path::new(&name);
            if name.extension().is_some_and(|e| e == "state")
                && let Some(id) = name.file_stem().and_then(|s| s.to_str())
                && let Ok(id) = id.parse()
            {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Reads every message file in `queue/`, in ID order, with the problems found.
    pub fn scan(&self) -> io::Result<ScanResult> {
        let mut result = ScanResult::default();
        self.check_each(|path, checked| match checked {
            Ok(file) => result.messages.push((path, file)),
            Err(problem) => result.damaged.push((path, problem)),
        })?;
        Ok(result)
    }

    /// Opens and checks every message file in `queue/`, in ID order, handing each to `each`
    /// as it goes (nothing of the queue is held meanwhile but its file names). A file gone
    /// between listing and opening (delivered or deleted meanwhile) is skipped.
    fn check_each(
        &self,
        mut each: impl FnMut(PathBuf, Result<MessageFile, SpoolFileError>),
    ) -> io::Result<()> {
        let dir = match fs::read_dir(self.queue()) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<std::ffi::OsString> = dir
            .filter_map(|entry| entry.ok().map(|e| e.file_name()))
            .filter(|name| Path::new(name).extension().is_some_and(|e| e == "msg"))
            .collect();
        names.sort_unstable();
        let queue = self.queue();
        for name in names {
            let path = queue.join(&name);
            match MessageFile::open(&path) {
                Ok(file) if name_matches(&name, &file) => each(path, Ok(file)),
                Ok(_) => each(
                    path,
                    Err(SpoolFileError::BadEnvelope(
                        "the file name does not match its queue ID".into(),
                    )),
                ),
                Err(SpoolFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => each(path, Err(e)),
            }
        }
        Ok(())
    }
}

fn name_matches(name: &std::ffi::OsStr, file: &MessageFile) -> bool {
    name.to_str() == Some(&format!("{}.msg", file.envelope.id))
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub messages: Vec<(PathBuf, MessageFile)>,
    pub damaged: Vec<(PathBuf, SpoolFileError)>,
}

pub struct Spool {
    paths: SpoolPaths,
    fsync: bool,
    dir_sync: DirSync,
    /// The queued messages' IDs (their envelopes stay on disk).
    index: Mutex<BTreeSet<QueueId>>,
    /// Where new messages are announced (the delivery scheduler), once someone listens.
    arrivals: Mutex<Option<mpsc::UnboundedSender<MessageFile>>>,
    // Held for the life of the spool: the flock is released when the file closes. Its
    // descriptor also tells the spool's free space.
    lock: File,
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, and rebuilds the queue from disk.
    /// Must be called inside a Tokio runtime.
    pub fn open(root: &Path, fsync: bool) -> Result<(Arc<Spool>, Recovery), SpoolError> {
        let paths = SpoolPaths::new(root);
        for dir in [
            paths.root.clone(),
            paths.tmp(),
            paths.queue(),
            paths.corrupt(),
            paths.failed(),
        ] {
            crate::private_files::private_dir(&dir).map_err(io_error(&dir))?;
        }
        let lock_path = paths.root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(paths.root)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }

        let mut recovery = Recovery::default();
        // Nothing in tmp/ was ever acknowledged: the client got no 250 for it.
        let tmp = paths.tmp();
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let path = entry.map_err(io_error(&tmp))?.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
            recovery.removed_incomplete += 1;
        }
        let queue = paths.queue();
        // The queue is rebuilt from one listing of its file names, opening none of them: a
        // million queued messages take a second, not a minute. Each file is checked by its
        // first reader (the scheduler reads every one as it loads the schedule, at once and
        // in the background), which sets a damaged one aside ([`Spool::set_aside`]).
        let mut index = Vec::new();
        let mut states = Vec::new();
        for entry in fs::read_dir(&queue).map_err(io_error(&queue))? {
            let name = entry.map_err(io_error(&queue))?.file_name();
            let path = Path::new(&name);
            let id = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<QueueId>().ok());
            match (path.extension().and_then(|e| e.to_str()), id) {
                (Some("msg"), Some(id)) => index.push(id),
                (Some("msg"), None) => {
                    let (path, target) = (queue.join(&name), paths.corrupt().join(&name));
                    tracing::error!(file = %path.display(), problem = "the file name is not a queue ID",
                        moved_to = %target.display(), "damaged spool file moved aside");
                    fs::rename(&path, &target).map_err(io_error(&path))?;
                    recovery.moved_to_corrupt += 1;
                }
                (Some("state"), Some(id)) => states.push(id),
                // A state being written when the relay stopped, or a stray state file.
                (Some("state" | "tmp"), _) => {
                    let path = queue.join(&name);
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
                _ => {}
            }
        }
        index.sort_unstable();
        // A state file whose message is gone: the message was finished just before a crash.
        for id in states {
            if index.binary_search(&id).is_err() {
                let path = paths.state(id);
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        if recovery.moved_to_corrupt > 0 {
            sync_dir(&queue).map_err(io_error(&queue))?;
            sync_dir(&paths.corrupt()).map_err(io_error(&queue))?;
        }
        // Built at once from sorted IDs, the tree's nodes are full: half the memory of
        // inserting one by one.
        let index: BTreeSet<QueueId> = index.into_iter().collect();
        recovery.queued = index.len();

        let spool = Arc::new(Spool {
            dir_sync: DirSync::start(queue),
            paths,
            fsync,
            index: Mutex::new(index),
            arrivals: Mutex::new(None),
            lock,
        });
        Ok((spool, recovery))
    }

    pub fn paths(&self) -> &SpoolPaths {
        &self.paths
    }

    /// Starts receiving a message with this envelope.
    pub fn create(self: &Arc<Self>, envelope: Envelope) -> MessageWriter {
        let tmp_path = self.paths.tmp().join(format!("{}.msg", envelope.id));
        MessageWriter {
            spool: Arc::clone(self),
            buffer: encode_header(&envelope),
            envelope,
            file: None,
            content_len: 0,
            crc: crc32fast::Hasher::new(),
            tmp_path,
        }
    }

    /// Can new messages and their delivery states be written? Writes and removes a small
    /// file where each goes (`tmp/`, `queue/`): a full disk, a read-only mount or changed
    /// permissions show here before a client is refused.
    pub async fn probe_writable(&self) -> io::Result<()> {
        let dirs = [self.paths.tmp(), self.paths.queue()];
        blocking(move || {
            for dir in dirs {
                let path = dir.join(format!(".probe-{}", std::process::id()));
                let written = fs::write(&path, [0u8; 4096]);
                let _ = fs::remove_file(&path);
                written.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            }
            Ok(())
        })
        .await
    }

    /// The messages in the queue, oldest first, each read from its file (for tools and tests:
    /// the daemon reads one at a time).
    pub fn messages(&self) -> Vec<MessageFile> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.paths.load(id).ok().flatten())
            .collect()
    }

    /// The IDs of the queued messages, oldest first.
    pub fn ids(&self) -> Vec<QueueId> {
        self.index().iter().copied().collect()
    }

    /// Up to `n` queued IDs after `after` (from the oldest without it), oldest first: a
    /// large queue read a page at a time.
    pub fn ids_after(&self, after: Option<QueueId>, n: usize) -> Vec<QueueId> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, Excluded);
        self.index()
            .range((start, Unbounded))
            .take(n)
            .copied()
            .collect()
    }

    /// The newest queued ID.
    pub fn last_id(&self) -> Option<QueueId> {
        self.index().last().copied()
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.index().contains(&id)
    }

    pub fn len(&self) -> usize {
        self.index().len()
    }

    /// When the longest-waiting message was received (ms since the epoch): the time in the
    /// smallest queue ID, made as its DATA began. /health, /metrics and alerts ask often,
    /// and the queue can be long.
    pub fn oldest_received_at(&self) -> Option<u64> {
        self.index().first().map(QueueId::timestamp_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.index().is_empty()
    }

    /// Bytes free for the relay on the spool's file system (what an unprivileged writer may
    /// still use). One `fstatvfs` on the lock file, which lives there: cheap enough to ask
    /// at every RCPT.
    pub fn free_space(&self) -> io::Result<u64> {
        use std::os::fd::AsRawFd;
        // SAFETY: fstatvfs fills the struct it is given, from a descriptor we keep open.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(self.lock.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // fsblkcnt_t and c_ulong are 32 bits on some targets.
        #[allow(clippy::unnecessary_cast)]
        let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
        Ok(blocks.saturating_mul(block_size))
    }

    /// The messages committed from now on. One listener (the delivery scheduler): a second
    /// call replaces the first.
    pub fn arrivals(&self) -> mpsc::UnboundedReceiver<MessageFile> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.arrivals.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// A queued message, read from its file through the blocking pool; `None` if it is not
    /// (or no longer) queued.
    pub async fn get(&self, id: QueueId) -> Option<MessageFile> {
        if !self.contains(id) {
            return None;
        }
        let paths = self.paths.clone();
        let loaded = tokio::task::spawn_blocking(move || paths.load(id)).await;
        match loaded {
            Ok(Ok(file)) => file,
            Ok(Err(e)) if e.is_damage() => {
                let _ = self.set_aside(id, &e).await;
                None
            }
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read a queued message");
                None
            }
            Err(_) => None,
        }
    }

    /// Moves a damaged message file out of the queue into `corrupt/` (where an admin can look
    /// at it), so nothing tries it again; its delivery state goes at the next start.
    pub async fn set_aside(&self, id: QueueId, problem: &SpoolFileError) -> io::Result<()> {
        let (from, to) = (
            self.paths.message(id),
            self.paths.corrupt().join(format!("{id}.msg")),
        );
        tracing::error!(queue_id = %id, file = %from.display(), %problem,
            moved_to = %to.display(), "damaged spool file moved aside");
        let corrupt = self.paths.corrupt();
        let moved = blocking(move || {
            fs::rename(&from, &to)?;
            sync_dir(&corrupt)
        })
        .await;
        if moved.is_ok() {
            self.index().remove(&id);
            self.dir_sync.sync().await?;
        }
        moved
    }

    /// A message's delivery state (a fresh one before its first attempt), read through the
    /// blocking pool.
    pub async fn load_state(&self, envelope: &Envelope) -> io::Result<DeliveryState> {
        let (paths, envelope) = (self.paths.clone(), envelope.clone());
        blocking(move || paths.read_state(&envelope)).await
    }

    /// Records delivery progress durably: temp file, fsync, rename, directory fsync.
    pub async fn save_state(&self, id: QueueId, state: &DeliveryState) -> io::Result<()> {
        let path = self.paths.state(id);
        let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
        let fsync = self.fsync;
        crate::private_files::atomic_write_off_thread(path, bytes, fsync).await?;
        if self.fsync {
            self.dir_sync.sync().await?;
        }
        Ok(())
    }

    /// Removes a finished message (every recipient delivered or failed).
    pub async fn complete(&self, id: QueueId) -> io::Result<()> {
        let (message, state) = (self.paths.message(id), self.paths.state(id));
        // The message goes first: a state file left alone is cleaned up at start-up, while a
        // message without its state would be sent again to everyone.
        blocking(move || {
            remove_if_present(&message)?;
            remove_if_present(&state)
        })
        .await?;
        if self.fsync {
            self.dir_sync.sync().await?;
        }
        self.index().remove(&id);
        Ok(())
    }

    /// Brings failed messages back into the queue (`queue retry --failed`): their failed
    /// recipients become pending again and the attempt count starts over. Returns their IDs.
    pub async fn restore_failed(&self) -> io::Result<Vec<QueueId>> {
        let paths = self.paths.clone();
        let fsync = self.fsync;
        let restored = blocking(move || {
            let mut restored = Vec::new();
            for entry in fs::read_dir(paths.failed())? {
                let path = entry?.path();
                if path.extension().is_none_or(|e| e != "msg") {
                    continue;
                }
                let Ok(file) = MessageFile::open(&path) else {
                    continue;
                };
                let id = file.envelope.id;
                let state_path = path.with_extension("state");
                let mut state = DeliveryState::read(&state_path, &file.envelope)
                    .unwrap_or_else(|_| DeliveryState::new(&file.envelope));
                for recipient in &mut state.recipients {
                    if recipient.status == super::state::RecipientStatus::Failed {
                        recipient.status = super::state::RecipientStatus::Pending;
                    }
                }
                state.attempts = 0;
                state.next_attempt_ms = 0;
                state.bounced = false;
                let mut file_out = create_or_truncate(&paths.state(id))?;
                file_out.write_all(&serde_json::to_vec(&state).map_err(io::Error::other)?)?;
                if fsync {
                    file_out.sync_data()?;
                }
                let _ = fs::remove_file(&state_path);
                fs::rename(&path, paths.message(id))?;
                restored.push(file);
            }
            if fsync && !restored.is_empty() {
                sync_dir(&paths.queue())?;
                sync_dir(&paths.failed())?;
            }
            Ok(restored)
        })
        .await?;
        let ids: Vec<QueueId> = restored.iter().map(|f| f.envelope.id).collect();
        self.index().extend(ids.iter().copied());
        Ok(ids)
    }

    /// Moves a failed message to `failed/` (`on_failure = "keep"`).
    pub async fn keep_failed(&self, id: QueueId) -> io::Result<()> {
        let paths = self.paths.clone();
        let fsync = self.fsync;
        blocking(move || {
            let failed = paths.failed();
            if paths.state(id).exists() {
                fs::rename(paths.state(id), failed.join(format!("{id}.state")))?;
            }
            fs::rename(paths.message(id), failed.join(format!("{id}.msg")))?;
            if fsync {
                sync_dir(&failed)?;
            }
            Ok(())
        })
        .await?;
        if self.fsync {
            self.dir_sync.sync().await?;
        }
        self.index().remove(&id);
        Ok(())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeSet<QueueId>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message being received. Dropping it without [`MessageWriter::commit`] discards it.
pub struct MessageWriter {
    spool: Arc<Spool>,
    envelope: Envelope,
    /// Bytes not yet in the file (all of them while the message is small).
    buffer: Vec<u8>,
    file: Option<File>,
    content_len: u64,
    crc: crc32fast::Hasher,
    tmp_path: PathBuf,
}

impl MessageWriter {
    pub fn id(&self) -> QueueId {
        self.envelope.id
    }

    pub fn content_len(&self) -> u64 {
        self.content_len
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Appends message content.
    pub async fn write(&mut self, content: &[u8]) -> io::Result<()> {
        self.crc.update(content);
        self.content_len += content.len() as u64;
        self.buffer.extend_from_slice(content);
        if self.buffer.len() >= SPILL_THRESHOLD {
            self.spill().await?;
        }
        Ok(())
    }

    async fn spill(&mut self) -> io::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        let file = self.file.take();
        let path = self.tmp_path.clone();
        let (file, mut buffer) = blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_private(&path)?,
            };
            file.write_all(&buffer)?;
            Ok((file, buffer))
        })
        .await?;
        buffer.clear();
        self.buffer = buffer;
        self.file = Some(file);
        Ok(())
    }

    /// Makes the message durable and queues it. When this returns `Ok`, the message survives
    /// a crash or power loss (with `fsync = true`), and only then may the client get its 250.
    pub async fn commit(mut self) -> io::Result<QueueId> {
        let spool = Arc::clone(&self.spool);
        let trailer = encode_trailer(self.content_len, self.crc.clone().finalize());
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(&trailer);
        let file = self.file.take();
        let tmp_path = self.tmp_path.clone();
        let id = self.envelope.id;
        let final_path = spool.paths.message(id);
        let fsync = spool.fsync;
        blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_private(&tmp_path)?,
            };
            file.write_all(&buffer)?;
            if fsync {
                file.sync_data()?;
            }
            fs::rename(&tmp_path, &final_path)
        })
        // On failure the temporary file is removed by Drop.
        .await?;
        // Renamed: from here the file is the queue's, not ours to remove.
        self.tmp_path = PathBuf::new();
        if fsync {
            spool.dir_sync.sync().await?;
        }
        let file = MessageFile {
            content_offset: encode_header(&self.envelope).len() as u64,
            content_len: self.content_len,
            crc: self.crc.clone().finalize(),
            envelope: self.envelope.clone(),
        };
        spool.index().insert(id);
        if let Some(arrivals) = spool
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = arrivals.send(file);
        }
        Ok(id)
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if self.file.is_some() || !self.tmp_path.as_os_str().is_empty() {
            // Never acknowledged; ignore "not found" (nothing was spilled yet).
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn create_or_truncate(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

type SyncWaiter = oneshot::Sender<Result<(), Arc<io::Error>>>;

/// Group commit for directory fsyncs: callers queue up while one fsync runs, and the next
/// fsync answers all of them. Under load, one fsync covers many messages.
struct DirSync {
    requests: mpsc::UnboundedSender<SyncWaiter>,
}

impl DirSync {
    fn start(dir: PathBuf) -> DirSync {
        let (requests, mut pending) = mpsc::unbounded_channel::<SyncWaiter>();
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut waiters = vec![first];
                while let Ok(more) = pending.try_recv() {
                    waiters.push(more);
                }
                let dir = dir.clone();
                let result = blocking(move || sync_dir(&dir)).await.map_err(Arc::new);
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        DirSync { requests }
    }

    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| io::Error::other("spool directory sync stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
            Err(_) => Err(io::Error::other("spool directory sync stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message_file::ClientInfo;

    fn envelope() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            received_at: 0,
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            smtputf8: false,
            eight_bit: false,
            client: ClientInfo {
                address: "127.0.0.1".parse().unwrap(),
                helo: "test".into(),
                user: None,
                tls: false,
            },
            is_dsn: false,
            account: None,
        }
    }

    #[tokio::test]
    async fn small_and_large_messages_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), true).unwrap();
        let large: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for content in [b"small\r\n".to_vec(), large] {
            let mut writer = spool.create(envelope());
            for chunk in content.chunks(7000) {
                writer.write(chunk).await.unwrap();
            }
            let id = writer.commit().await.unwrap();
            let path = spool.paths().message(id);
            let file = MessageFile::open(&path).unwrap();
            assert_eq!(file.read_content(&path).unwrap(), content);
        }
        assert_eq!(spool.len(), 2);
        assert_eq!(fs::read_dir(spool.paths().tmp()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_oldest_message_is_the_earliest_received() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), false).unwrap();
        assert_eq!(spool.oldest_received_at(), None);
        // Not in commit order: a message can be committed after a later one started.
        let first = spool.create(envelope());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut second = spool.create(envelope());
        second.write(b"x\r\n").await.unwrap();
        second.commit().await.unwrap();
        let started = first.id();
        first.commit().await.unwrap();
        assert_eq!(spool.oldest_received_at(), Some(started.timestamp_ms()));
        // Reopened, the spool knows it from the file names alone.
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), false).unwrap();
        assert_eq!(spool.oldest_received_at(), Some(started.timestamp_ms()));
        assert_eq!(spool.messages()[0].envelope.id, started);
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), true).unwrap();
        let mut writer = spool.create(envelope());
        writer
            .write(&vec![b'x'; SPILL_THRESHOLD * 2])
            .await
            .unwrap();
        assert_eq!(fs::read_dir(spool.paths().tmp()).unwrap().count(), 1);
        drop(writer);
        assert_eq!(fs::read_dir(spool.paths().tmp()).unwrap().count(), 0);
        assert!(spool.is_empty());
    }

    /// Queues one message in a spool at `root`, and closes it.
    async fn queue_one(root: &Path) -> QueueId {
        let (spool, _) = Spool::open(root, true).unwrap();
        let mut writer = spool.create(envelope());
        writer.write(b"hello\r\n").await.unwrap();
        writer.commit().await.unwrap()
    }

    #[tokio::test]
    async fn recovery_removes_partial_and_moves_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let good = queue_one(dir.path()).await;
        let paths = SpoolPaths::new(dir.path());
        fs::write(paths.tmp().join("partial.msg"), b"SMTPRELAY-SPOOL 1\n{").unwrap();
        fs::write(paths.queue().join("junk.msg"), b"garbage").unwrap();
        let (spool, recovery) = Spool::open(dir.path(), true).unwrap();
        assert_eq!(recovery.queued, 1);
        assert_eq!(recovery.removed_incomplete, 1);
        assert_eq!(recovery.moved_to_corrupt, 1);
        assert!(paths.corrupt().join("junk.msg").exists());
        assert_eq!(spool.messages()[0].envelope.id, good);
    }

    /// The spool opens without reading its files (a million queued take a second); a
    /// damaged file under a queue ID's name is set aside by its first reader.
    #[tokio::test]
    async fn a_damaged_file_is_set_aside_when_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = queue_one(dir.path()).await;
        let paths = SpoolPaths::new(dir.path());
        let damaged = QueueId::generate();
        fs::write(paths.message(damaged), b"SMTPRELAY-SPOOL 1\n{\"cut short").unwrap();
        fs::write(paths.state(damaged), b"{}").unwrap();
        let orphan = QueueId::generate();
        fs::write(paths.state(orphan), b"{}").unwrap();
        let (spool, recovery) = Spool::open(dir.path(), true).unwrap();
        assert_eq!(recovery.queued, 2);
        assert_eq!(recovery.moved_to_corrupt, 0);
        assert!(
            !paths.state(orphan).exists(),
            "a state without its message is removed"
        );
        assert!(spool.get(damaged).await.is_none());
        assert!(!spool.contains(damaged));
        assert!(paths.corrupt().join(format!("{damaged}.msg")).exists());
        assert_eq!(spool.ids(), [good]);
        assert!(spool.get(good).await.is_some());
    }

    #[tokio::test]
    async fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), true).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), true),
            Err(SpoolError::Locked(_))
        ));
    }
}
