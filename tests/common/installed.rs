//! Helpers for tests against the installed .deb in the Debian root that
//! `packaging/test-install.sh` makes (path in `SMTPRELAY_INSTALL_ROOT`).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::entra::Entra;
use super::exchange::Exchange;
use super::tokens::{SECRET, account};

pub const SERVICE: (&str, &str) = ("smtprelay", "smtprelay");
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("SMTPRELAY_INSTALL_ROOT")
            .expect("SMTPRELAY_INSTALL_ROOT: the Debian root packaging/test-install.sh made"),
    )
}

/// A command run inside the root as root.
pub fn in_root(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("chroot");
    command.arg(root).args(args).env_clear().env("PATH", PATH);
    command
}

/// A command run inside the root as `user` and `group`, with the unit's capability set.
pub fn as_user(root: &Path, (user, group): (&str, &str), args: &[&str]) -> Command {
    let reuid = format!("--reuid={user}");
    let regid = format!("--regid={group}");
    let mut setpriv = vec![
        "setpriv",
        &reuid,
        &regid,
        "--init-groups",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
        "--no-new-privs",
    ];
    setpriv.extend_from_slice(args);
    in_root(root, &setpriv)
}

/// Runs `command` off the async runtime (which serves the doubles meanwhile); panics with
/// its stderr unless it succeeds.
pub async fn succeeds(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The group id of `name` in the root's /etc/group.
pub fn gid(root: &Path, name: &str) -> u32 {
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    groups
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == name).then(|| fields[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no group {name}"))
}

/// Writes `text` to `/etc/smtprelay/<name>` in the root, root:smtprelay 0640 like the
/// shipped configuration; returns the path as seen inside the root.
pub fn install_private(root: &Path, name: &str, text: &str) -> String {
    let path = root.join("etc/smtprelay").join(name);
    std::fs::write(&path, text).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(gid(root, "smtprelay"))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    format!("/etc/smtprelay/{name}")
}

/// A loopback port below 1024 that nothing listens on, so that binding it needs
/// CAP_NET_BIND_SERVICE.
pub fn free_privileged_port() -> u16 {
    (600..1024)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free privileged port")
}

/// The installed configuration with the SMTP listener on 127.0.0.1:`port`, the admin
/// endpoint on 127.0.0.1:`admin_port`, JSON logs, and one client-credentials account that
/// sends through the doubles (its secret and CA installed next to it). Everything else
/// (state directory, token key, trusted networks) as shipped.
pub fn configuration(
    root: &Path,
    entra: &Entra,
    exchange: &Exchange,
    port: u16,
    admin_port: u16,
) -> String {
    let shipped = std::fs::read_to_string(root.join("etc/smtprelay/smtprelay.toml")).unwrap();
    let mut document: toml_edit::DocumentMut = shipped.parse().unwrap();
    document["listen"][0]["address"] = toml_edit::value(format!("127.0.0.1:{port}"));
    document["admin"]["listen"] = toml_edit::value(format!("127.0.0.1:{admin_port}"));
    document["log"]["format"] = toml_edit::value("json");
    let secret = install_private(root, "contoso.secret", SECRET);
    let ca = install_private(root, "upstream-ca.pem", &exchange.pki.ca_pem);
    format!(
        "{document}\n{}[account.upstream]\nhost = \"localhost\"\nport = {}\nca_file = {ca:?}\n",
        account(
            entra,
            "contoso",
            "app-secret",
            "client_credentials",
            &format!("client_secret_file = {secret:?}\nsenders = [\"*\"]\n")
        ),
        exchange.addr.port()
    )
}

/// Sends one message from scanner@contoso.com to someone@fabrikam.com through the relay on
/// 127.0.0.1:`port`, as a printer would; `data` ends in CRLF.
pub async fn send(port: u16, data: &[u8]) {
    let mut client = super::Client::connect(([127, 0, 0, 1], port).into()).await;
    client.expect("EHLO printer", 250).await;
    let (code, text) = client
        .send_message("scanner@contoso.com", &["someone@fabrikam.com"], data)
        .await;
    assert_eq!(code, 250, "{text}");
    client.expect("QUIT", 221).await;
}

/// Waits until the Exchange double holds `count` messages.
pub async fn delivered(exchange: &Exchange, count: usize) {
    let deadline = std::time::Instant::now() + super::TIMEOUT;
    while exchange.state().received.len() < count {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
