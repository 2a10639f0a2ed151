//! The packaged unit under real systemd: the Debian root from `packaging/test-install.sh`
//! (with systemd installed in it) booted with `systemd-nspawn --boot`, sharing the host's
//! network so the Entra and Exchange doubles are reachable on loopback. The admin's steps
//! (edit the configuration, `token refresh` as root, start), then a message relayed, `/health`,
//! the sandbox systemd put the relay in, `systemctl reload`, an upgrade that restarts it, and
//! `systemctl stop`. Needs root; ignored by a plain `cargo test`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http_get;
use common::installed::{
    configuration, delivered, free_privileged_port, gid, in_root, install_private, root, send,
    succeeds,
};
use common::tokens::tenant;

/// Where test-install.sh puts the package inside the root, for the upgrade.
const PACKAGE: &str = "/root/smtprelay.deb";
/// capability.h: the bit of CAP_NET_BIND_SERVICE in /proc/PID/status's CapEff.
const CAP_NET_BIND_SERVICE: u32 = 10;
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// A booted container; powered off when dropped.
struct Container {
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    init: u32,
}

impl Container {
    fn boot(root: &Path) -> Container {
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--boot", "-D"])
            .arg(root)
            // This machine mounts cgroup v1; the container's systemd gets its own v2 tree.
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn (Debian package systemd-container)");
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let init = loop {
            if let Some(pid) = children(nspawn.id())
                .into_iter()
                .find(|pid| comm(*pid).as_deref() == Some("systemd"))
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the container did not boot");
            std::thread::sleep(Duration::from_millis(100));
        };
        Container { nspawn, init }
    }

    /// A command inside the container (its mounts, processes and systemd).
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.init.to_string(), "-m", "-u", "-i", "-p", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        command
    }

    fn output(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn journal(&self) -> String {
        self.output(&["journalctl", "-u", "smtprelay", "--no-pager", "-o", "cat"])
    }

    fn main_pid(&self) -> String {
        self.output(&["systemctl", "show", "-P", "MainPID", "smtprelay"])
    }

    /// Waits until the unit is active (READY=1 received); panics with its journal if it
    /// fails or takes too long.
    fn wait_active(&self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let state = self.output(&["systemctl", "is-active", "smtprelay"]);
            match state.as_str() {
                "active" => return,
                "failed" => panic!("smtprelay.service failed:\n{}", self.journal()),
                _ if Instant::now() > deadline => {
                    panic!("smtprelay.service is {state}:\n{}", self.journal())
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `systemctl ARGS`, off the runtime (the doubles must keep answering meanwhile).
    async fn systemctl(&self, args: &[&str]) {
        let mut full = vec!["systemctl"];
        full.extend_from_slice(args);
        succeeds(self.command(&full)).await;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // nspawn turns SIGTERM into an orderly poweroff of a booted container.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while self.nspawn.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// The line `name:` of /proc/PID/status inside the container.
fn proc_status(container: &Container, pid: &str, name: &str) -> String {
    let status = container.output(&["cat", &format!("/proc/{pid}/status")]);
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, systemd-nspawn and the Debian root from packaging/test-install.sh"]
async fn the_packaged_unit_runs_the_relay_under_systemd() {
    let root = root();
    let (entra, exchange) = tenant().await;
    let port = free_privileged_port();
    let admin_port = common::free_port();
    let config_path = root.join("etc/smtprelay/smtprelay.toml");
    let shipped = std::fs::read_to_string(&config_path).unwrap();

    // The admin edits the configuration the unit reads, checks it and gets a token, as root.
    let text = configuration(&root, &entra, &exchange, port, admin_port);
    install_private(&root, "smtprelay.toml", &text);
    succeeds(in_root(&root, &["smtprelay", "check-config"])).await;
    succeeds(in_root(&root, &["smtprelay", "token", "refresh"])).await;
    let requests = entra.requests("client_credentials");
    // The service must read the key as its systemd credential: the file itself is now
    // unreadable for the smtprelay user.
    let key = root.join("etc/smtprelay/token.key");
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The shipped WatchdogSec=30s, shortened so the test sees pings.
    let drop_in = root.join("etc/systemd/system/smtprelay.service.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    std::fs::write(drop_in.join("test.conf"), "[Service]\nWatchdogSec=2s\n").unwrap();

    let container = tokio::task::spawn_blocking({
        let root = root.clone();
        move || Container::boot(&root)
    })
    .await
    .unwrap();
    // Enabled by the package, so the boot started it.
    container.wait_active();
    send(port, b"Subject: first\r\n\r\nthrough the unit\r\n").await;
    delivered(&exchange, 1).await;
    assert_eq!(entra.requests("client_credentials"), requests);

    let (code, body) = http_get(&format!("http://127.0.0.1:{admin_port}/health")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"healthy\""), "{body}");

    // `systemctl status` shows what the relay said of itself.
    let status_text = container.output(&["systemctl", "show", "-P", "StatusText", "smtprelay"]);
    assert!(
        status_text.starts_with(&format!("listening on 127.0.0.1:{port}; ")),
        "{status_text}"
    );

    // The sandbox systemd built from the unit.
    let pid = container.main_pid();
    let uid = proc_status(&container, &pid, "Uid");
    let service_uid = std::fs::metadata(root.join("var/lib/smtprelay"))
        .unwrap()
        .uid()
        .to_string();
    assert_eq!(uid.split_whitespace().next(), Some(service_uid.as_str()));
    assert_eq!(
        proc_status(&container, &pid, "CapEff"),
        format!("{:016x}", 1u64 << CAP_NET_BIND_SERVICE)
    );
    assert_eq!(proc_status(&container, &pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(&container, &pid, "Seccomp"), "2");
    // The watchdog hears from it: its last ping moves on (a ping per second here).
    let last_ping = || {
        let shown = container.output(&[
            "systemctl",
            "show",
            "-P",
            "WatchdogTimestampMonotonic",
            "smtprelay",
        ]);
        shown.parse::<u64>().unwrap_or(0)
    };
    let first = last_ping();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        last_ping() > first,
        "no watchdog ping:\n{}",
        container.journal()
    );

    // Reload: same process, the file read again. The new file asks for text logs, which
    // take a restart: the relay says so in a warning.
    install_private(
        &root,
        "smtprelay.toml",
        &text.replace("format = \"json\"", "format = \"text\""),
    );
    container.systemctl(&["reload", "smtprelay"]).await;
    let deadline = Instant::now() + common::TIMEOUT;
    while !container.journal().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "{}", container.journal());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(container.main_pid(), pid);
    // Lines reach the journal with their priority: the warning is one, the info line not.
    let warnings = container.output(&[
        "journalctl",
        "-u",
        "smtprelay",
        "-p",
        "warning",
        "--no-pager",
        "-o",
        "cat",
    ]);
    assert!(
        warnings.contains("format changes take effect"),
        "{warnings}"
    );
    assert!(!warnings.contains("configuration reloaded"), "{warnings}");
    // A broken file: `systemctl reload` fails and says why; the relay runs on as it was.
    install_private(&root, "smtprelay.toml", "[server\n");
    let output = container
        .command(&["systemctl", "reload", "smtprelay"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(container.main_pid(), pid);
    assert_eq!(
        container.output(&["systemctl", "is-active", "smtprelay"]),
        "active"
    );
    install_private(&root, "smtprelay.toml", &text);

    // An upgrade restarts the running service; it goes on relaying.
    let upgrade = container.command(&["dpkg", "-i", PACKAGE]);
    succeeds(upgrade).await;
    container.wait_active();
    let restarted = container.main_pid();
    assert_ne!(restarted, pid, "{}", container.journal());
    send(
        port,
        b"Subject: after the upgrade\r\n\r\nthrough the unit\r\n",
    )
    .await;
    delivered(&exchange, 2).await;

    // Stop: a graceful exit, nothing left behind in the queue.
    container.systemctl(&["stop", "smtprelay"]).await;
    assert_eq!(
        container.output(&["systemctl", "is-active", "smtprelay"]),
        "inactive"
    );
    let journal = container.journal();
    assert!(
        journal.contains("\"message\":\"stopped\",\"queued\":0"),
        "{journal}"
    );
    drop(container);

    std::fs::remove_dir_all(&drop_in).unwrap();
    std::fs::write(&config_path, shipped).unwrap();
    std::os::unix::fs::chown(&key, Some(0), Some(gid(&root, "smtprelay"))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
}
