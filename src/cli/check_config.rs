//! `smtprelay check-config`: every problem in the file, then the files it points to: each
//! must exist and be readable by the service user the unit runs as.

use super::output::{errln, outln};
use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, InputFile, InputKind, Problem};

/// The account the packaged unit runs the relay as (`User=` in smtprelay.service).
pub const SERVICE_USER: &str = "smtprelay";

pub fn run(
    path: &Path,
    service_user: &str,
    token_key_from_credential: bool,
) -> Result<ExitCode, ExitCode> {
    let reader = Reader::service_user(service_user);
    // Under systemd the service gets the key as a credential (or from the environment):
    // then the file itself is root's, and rightly unreadable to the service user.
    let key_elsewhere =
        token_key_from_credential || crate::oauth::TokenKey::supplied_elsewhere().is_some();
    let file_problems = |inputs: &[InputFile]| file_problems(path, &reader, inputs, key_elsewhere);
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(mut error) => {
            // One pass: the files named so far are checked with the rest.
            error.problems.extend(file_problems(&error.input_files));
            error.problems.sort_by_key(|p| (p.line, p.column));
            return Err(super::report_config_error(&error));
        }
    };
    let found = file_problems(&config.input_files);
    let mut problems = found.len();
    for problem in &found {
        errln!("error: {problem}");
    }
    // The certificate and key must also belong together (only worth trying once readable),
    // for each TLS library a listener uses.
    let mut acceptors = None;
    if problems == 0
        && let Some(tls) = &config.tls
    {
        match crate::smtp::tls::Acceptors::new(tls, config.wants_legacy_tls()) {
            Ok(built) => acceptors = Some(built),
            Err(e) => {
                errln!("error: {}: [tls]: {e}", path.display());
                problems += 1;
            }
        }
    }
    if problems > 0 {
        return Err(ExitCode::from(super::EXIT_CONFIG));
    }
    legacy_tls_warnings(path, &config, acceptors.as_ref());
    world_readable_warnings(&config.input_files, key_elsewhere);
    // What the relay warns about at every start, said before it starts.
    if !config.queue.fsync {
        errln!("warning: {}", crate::config::WARN_FSYNC_OFF);
    }
    if config.accounts.is_empty() {
        errln!("warning: {}", crate::config::WARN_NO_ACCOUNT);
    }
    if reader.user.is_none() && is_root() {
        errln!(
            "warning: there is no user {service_user} on this machine, so whether it can read the files above was not checked (--service-user names another)"
        );
    }
    outln!(
        "{}: ok ({} listener(s), {} user(s), {} account(s), state in {}{})",
        path.display(),
        config.listen.len(),
        config.users.len(),
        config.accounts.len(),
        lexically_clean(&config.server.state_dir).display(),
        match &reader.user {
            Some(user) => format!("; files readable by {}", user.name),
            None => String::new(),
        }
    );
    if let Some(cluster) = &config.cluster {
        // Not something the file can show: the other nodes' names are only known at start.
        outln!(
            "cluster: this node is {:?} ([cluster] node_name, default the host name): each node \
             needs its own, and one whose name another live node uses is refused at start",
            cluster.node_name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Secrets others can read: the relay warns about them at every start, so say it here.
fn world_readable_warnings(inputs: &[InputFile], key_elsewhere: bool) {
    use std::os::unix::fs::PermissionsExt;
    for input in inputs {
        let secret = match input.kind {
            InputKind::Secret => true,
            InputKind::TokenKey => !key_elsewhere,
            InputKind::File => false,
        };
        let Ok(metadata) = std::fs::metadata(&input.path) else {
            continue;
        };
        if secret && metadata.permissions().mode() & 0o004 != 0 {
            errln!(
                "warning: {}: {} is readable by every user (mode {:04o}); chmod 0640 or stricter",
                input.key,
                input.path.display(),
                metadata.permissions().mode() & 0o7777
            );
        }
    }
}

/// `config/../var` as `var`, `./x` as `x`: for people to read (symbolic links aside, the
/// same place).
fn lexically_clean(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut clean = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(clean.components().next_back(), Some(Component::Normal(_))) =>
            {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    if clean.as_os_str().is_empty() {
        clean.push(".");
    }
    clean
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a legacy TLS listener gives away, said where the admin checks the file, and a
/// certificate the old devices it is for cannot use.
fn legacy_tls_warnings(
    path: &Path,
    config: &Config,
    acceptors: Option<&crate::smtp::tls::Acceptors>,
) {
    for (i, listen) in config.listen.iter().enumerate() {
        if listen.speaks_legacy_tls() {
            errln!(
                "warning: {}: listen[{}] ({}): tls_profile = \"legacy\" {}",
                path.display(),
                i + 1,
                listen.address,
                crate::smtp::tls::LEGACY_WEAKENS
            );
        }
    }
    if acceptors.and_then(|a| a.legacy_key_is_rsa()) == Some(false) {
        errln!("warning: {}: {}", path.display(), crate::smtp::tls::NOT_RSA);
    }
}

fn file_problems(
    path: &Path,
    reader: &Reader,
    inputs: &[InputFile],
    key_elsewhere: bool,
) -> Vec<Problem> {
    inputs
        .iter()
        .filter(|input| !(input.kind == InputKind::TokenKey && key_elsewhere))
        .filter_map(|input| {
            let why = reader.can_read(&input.path).err()?;
            let missing = !input.path.exists();
            let hint = match input.kind {
                InputKind::TokenKey if missing => format!(
                    "; create it with `smtprelay token keygen --to {}`",
                    input.path.display()
                ),
                _ => String::new(),
            };
            Some(Problem {
                file: path.to_owned(),
                line: input.line,
                column: input.column,
                key: input.key.clone(),
                message: format!("{}: {why}{hint}", input.path.display()),
            })
        })
        .collect()
}

/// Who will read the files: this process, and when it runs as root (as an admin does) and
/// the service user exists, that user too, judged by the files' owners and modes.
struct Reader {
    user: Option<ServiceUser>,
}

struct ServiceUser {
    name: String,
    uid: u32,
    groups: Vec<u32>,
}

impl Reader {
    fn service_user(name: &str) -> Reader {
        Reader {
            user: is_root().then(|| ServiceUser::lookup(name)).flatten(),
        }
    }

    fn can_read(&self, path: &Path) -> Result<(), String> {
        // Opening it proves it exists and is a readable file for this process.
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let metadata = file.metadata().map_err(|e| e.to_string())?;
        if metadata.is_dir() {
            return Err("is a directory, not a file".into());
        }
        let Some(user) = &self.user else {
            return Ok(());
        };
        use std::os::unix::fs::MetadataExt;
        if !user.may(&metadata, 0o4) {
            return Err(format!(
                "the service user {} cannot read it (owner uid {}, gid {}, mode {:04o})",
                user.name,
                metadata.uid(),
                metadata.gid(),
                metadata.mode() & 0o7777
            ));
        }
        // Each directory on the way must let the user through.
        for dir in path.ancestors().skip(1) {
            let Ok(metadata) = std::fs::metadata(dir) else {
                continue;
            };
            if !user.may(&metadata, 0o1) {
                return Err(format!(
                    "the service user {} cannot reach it: {} has mode {:04o} (owner uid {}, gid {})",
                    user.name,
                    dir.display(),
                    metadata.mode() & 0o7777,
                    metadata.uid(),
                    metadata.gid()
                ));
            }
        }
        Ok(())
    }
}

impl ServiceUser {
    fn lookup(name: &str) -> Option<ServiceUser> {
        let c_name = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer into static
        // storage (or null), read at once; check-config is single-threaded here.
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if entry.is_null() {
            return None;
        }
        // SAFETY: not null, so it points at a valid passwd record.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        let mut groups = vec![0 as libc::gid_t; 64];
        let mut count = groups.len() as libc::c_int;
        // SAFETY: the buffer holds `count` entries; getgrouplist writes at most that many
        // and sets `count` to the number found.
        let found =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        groups.truncate(if found < 0 { 0 } else { count as usize });
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Some(ServiceUser {
            name: name.to_owned(),
            uid,
            groups,
        })
    }

    /// Whether the user has `bits` (4 read, 1 search) on a file with this owner and mode,
    /// as the kernel decides: the owner's bits, else the group's, else the others'.
    fn may(&self, metadata: &std::fs::Metadata, bits: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = metadata.mode();
        let shift = if metadata.uid() == self.uid {
            6
        } else if self.groups.contains(&metadata.gid()) {
            3
        } else {
            0
        };
        (mode >> shift) & bits == bits
    }
}
