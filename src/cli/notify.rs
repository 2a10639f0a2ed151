//! systemd's readiness protocol (sd_notify(3)) for `Type=notify`: `systemctl start` returns
//! once the listeners are bound (and fails if they cannot be), `systemctl reload` once the new
//! configuration runs or was refused, and `systemctl status` shows what the relay is doing.
//! Without `$NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub enum State<'a> {
    /// Listening; `status` is shown by `systemctl status`.
    Ready { status: &'a str },
    /// Loading the configuration again (SIGHUP).
    Reloading,
    /// Draining sessions and deliveries before exit.
    Stopping,
    /// Running: the current status line, and a watchdog ping when the unit has one.
    Running { status: &'a str, watchdog: bool },
}

/// How often to tell systemd the relay is alive: half the unit's `WatchdogSec=`, if it has
/// one and it is meant for this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse() != Ok(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

pub fn notify(state: State) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = match state {
        State::Ready { status } => format!("READY=1\nSTATUS={status}"),
        // MONOTONIC_USEC lets `Type=notify-reload` (systemd 253+) match the reload it asked for.
        State::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
        State::Stopping => "STOPPING=1".to_owned(),
        State::Running { status, watchdog } => match watchdog {
            true => format!("WATCHDOG=1\nSTATUS={status}"),
            false => format!("STATUS={status}"),
        },
    };
    if let Err(e) = send(&socket, message.as_bytes()) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn send(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    // "@name" is a socket in the abstract namespace.
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sender.send_to_addr(message, &address)?;
    Ok(())
}

fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}
