//! The installed .deb, in a fresh Debian root made by `packaging/test-install.sh` (which
//! also checks the user, modes, conffile, upgrade, remove and purge): the shipped binary and
//! configuration, run as the `smtprelay` user with only CAP_NET_BIND_SERVICE, as the unit
//! runs them. Needs root (chroot) and the root's path in `SMTPRELAY_INSTALL_ROOT`, hence
//! ignored by a plain `cargo test`.

mod common;

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::tokens::{SECRET, account, tenant};
use common::{Client, TIMEOUT};

fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("SMTPRELAY_INSTALL_ROOT")
            .expect("SMTPRELAY_INSTALL_ROOT: the Debian root packaging/test-install.sh made"),
    )
}

const SERVICE: (&str, &str) = ("smtprelay", "smtprelay");

/// A command run inside the root as `user` and `group`, with the unit's capability set.
fn as_user(root: &Path, (user, group): (&str, &str), args: &[&str]) -> Command {
    let mut command = Command::new("chroot");
    command.arg(root).args([
        "setpriv",
        &format!("--reuid={user}"),
        &format!("--regid={group}"),
        "--init-groups",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
        "--no-new-privs",
    ]);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    command
}

/// The group id of `name` in the root's /etc/group.
fn gid(root: &Path, name: &str) -> u32 {
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
/// shipped configuration.
fn install_private(root: &Path, name: &str, text: &str) -> String {
    let path = root.join("etc/smtprelay").join(name);
    std::fs::write(&path, text).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(gid(root, "smtprelay"))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    format!("/etc/smtprelay/{name}")
}

/// A loopback port below 1024 that nothing listens on, so that binding it needs
/// CAP_NET_BIND_SERVICE.
fn free_privileged_port() -> u16 {
    (600..1024)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free privileged port")
}

#[test]
#[ignore = "needs root and the Debian root from packaging/test-install.sh"]
fn the_shipped_configuration_checks_as_the_service_user() {
    let root = root();
    let config = "/etc/smtprelay/smtprelay.toml";
    let output = as_user(
        &root,
        SERVICE,
        &["smtprelay", "check-config", "--config", config],
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Other users cannot read it: it is 0640 root:smtprelay.
    let output = as_user(
        &root,
        ("nobody", "nogroup"),
        &["smtprelay", "check-config", "--config", config],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(config), "{stderr}");
}

#[tokio::test]
#[ignore = "needs root and the Debian root from packaging/test-install.sh"]
async fn the_installed_relay_delivers_a_message_as_the_service_user() {
    let root = root();
    let (entra, exchange) = tenant().await;

    // The shipped configuration, on ports this test owns, with one account that uses the
    // doubles. Everything else (state directory, token key, trusted networks) as shipped.
    let port = free_privileged_port();
    let shipped = std::fs::read_to_string(root.join("etc/smtprelay/smtprelay.toml")).unwrap();
    let mut document: toml_edit::DocumentMut = shipped.parse().unwrap();
    document["listen"][0]["address"] = toml_edit::value(format!("127.0.0.1:{port}"));
    document["admin"]["listen"] = toml_edit::value(format!("127.0.0.1:{}", common::free_port()));
    document["log"]["format"] = toml_edit::value("json");
    let secret = install_private(&root, "contoso.secret", SECRET);
    let ca = install_private(&root, "upstream-ca.pem", &exchange.pki.ca_pem);
    let text = format!(
        "{document}\n{}[account.upstream]\nhost = \"localhost\"\nport = {}\nca_file = {ca:?}\n",
        account(
            &entra,
            "contoso",
            "app-secret",
            "client_credentials",
            &format!("client_secret_file = {secret:?}\nsenders = [\"*\"]\n")
        ),
        exchange.addr.port()
    );
    let config = install_private(&root, "install-test.toml", &text);

    // The admin's first step, as root (`sudo smtprelay token refresh`): the token store it
    // makes must still belong to the service.
    let mut refresh = Command::new("chroot");
    refresh
        .arg(&root)
        .args(["smtprelay", "token", "refresh", "--config", &config])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // Off the runtime, which serves the Entra double meanwhile.
    let output = tokio::task::spawn_blocking(move || refresh.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The package's dependencies brought the system trust roots Exchange Online needs.
    assert!(!stderr.contains("no system trust roots"), "{stderr}");

    let mut relay = as_user(&root, SERVICE, &["smtprelay", "serve", "--config", &config])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut logs = std::io::BufReader::new(relay.stderr.take().unwrap()).lines();
    loop {
        let line = logs.next().expect("relay exited before listening").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "listening" {
            break;
        }
    }
    std::thread::spawn(move || logs.for_each(drop));

    let mut client = Client::connect(([127, 0, 0, 1], port).into()).await;
    client.expect("EHLO printer", 250).await;
    let (code, text) = client
        .send_message(
            "scanner@contoso.com",
            &["someone@fabrikam.com"],
            b"Subject: installed\r\n\r\nfrom the package\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    client.expect("QUIT", 221).await;

    let deadline = std::time::Instant::now() + TIMEOUT;
    while exchange.state().received.is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let received = exchange.state().received.clone();
    assert_eq!(received[0].mailbox, "relay@contoso.com");
    assert_eq!(received[0].sender, "scanner@contoso.com");
    assert!(received[0].data.ends_with(b"\r\nfrom the package\r\n"));
    // With the token the admin's refresh stored: no second request to Entra.
    assert_eq!(entra.requests("client_credentials"), 1);

    // The token store is the service user's alone, whoever wrote it.
    let service_uid = std::fs::metadata(root.join("var/lib/smtprelay"))
        .unwrap()
        .uid();
    assert_ne!(service_uid, 0);
    for file in ["tokens.json.enc", "tokens.json.enc.lock"] {
        let meta = std::fs::metadata(root.join("var/lib/smtprelay").join(file)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{file}");
        assert_eq!(meta.uid(), service_uid, "{file}");
    }

    // SIGTERM, as `systemctl stop` sends it: a clean exit.
    // Waited for off the runtime: the Exchange double must still answer the relay's QUIT.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || relay.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_file(root.join(config.trim_start_matches('/'))).unwrap();
}
