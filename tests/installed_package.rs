//! The installed .deb, in a fresh Debian root made by `packaging/test-install.sh` (which
//! also checks the user, modes, conffile, upgrade, remove and purge): the shipped binary and
//! configuration, run as the `smtprelay` user with only CAP_NET_BIND_SERVICE, as the unit
//! runs them. Needs root (chroot) and the root's path in `SMTPRELAY_INSTALL_ROOT`, hence
//! ignored by a plain `cargo test`. `tests/installed_service.rs` runs the unit itself.

mod common;

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use common::installed::{
    SERVICE, as_user, configuration, delivered, free_privileged_port, in_root, install_private,
    root, send, succeeds,
};
use common::tokens::tenant;

#[test]
#[ignore = "needs root and the Debian root from packaging/test-install.sh"]
fn the_shipped_configuration_checks_as_the_service_user() {
    let root = root();
    let config = "/etc/smtprelay/smtprelay.toml";
    let check = ["smtprelay", "check-config", "--config", config];
    let output = as_user(&root, SERVICE, &check).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Other users cannot read it: it is 0640 root:smtprelay.
    let output = as_user(&root, ("nobody", "nogroup"), &check)
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
    let port = free_privileged_port();
    let text = configuration(&root, &entra, &exchange, port, common::free_port());
    let config = install_private(&root, "install-test.toml", &text);

    // The admin's first step, as root (`sudo smtprelay token refresh`): the token store it
    // makes must still belong to the service.
    let output = succeeds(in_root(
        &root,
        &["smtprelay", "token", "refresh", "--config", &config],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
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

    send(port, b"Subject: installed\r\n\r\nfrom the package\r\n").await;

    delivered(&exchange, 1).await;
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

    // SIGTERM, as `systemctl stop` sends it: a clean exit. Waited for off the runtime: the
    // Exchange double must still answer the relay's QUIT.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || relay.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_file(root.join(config.trim_start_matches('/'))).unwrap();
}
