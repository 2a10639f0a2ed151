//! The command line: `--version`, `hash-password`, `token keygen --to`, and `queue list` reading the spool of a
//! running relay.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::TestRelay;

fn smtprelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtprelay"))
}

#[test]
fn version() {
    let output = smtprelay().arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("smtprelay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn keygen_to_a_file_needs_no_configuration() {
    // What the package scripts run, even when the admin's file would not load.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("smtprelay.toml");
    std::fs::write(&broken, "[server\n").unwrap();
    let key = dir.path().join("token.key");
    let output = smtprelay()
        .args(["token", "keygen", "--to"])
        .arg(&key)
        .arg("--config")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64, "{text}");
    // Without --to the key file comes from the configuration, which must load.
    let output = smtprelay()
        .args(["token", "keygen", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
}

#[test]
fn hash_password_reads_stdin_and_prints_a_verifiable_hash() {
    let mut child = smtprelay()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"printer pw\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let hash = argon2::PasswordHash::new(hash.trim()).unwrap();
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    use argon2::PasswordVerifier;
    assert!(
        argon2::Argon2::default()
            .verify_password(b"printer pw", &hash)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"printer", &hash)
            .is_err()
    );
}

#[tokio::test]
async fn queue_list_shows_what_a_running_relay_queued() {
    let relay = TestRelay::start("").await;
    let mut client = relay.connect().await;
    client.expect("EHLO x", 250).await;
    let body = b"Subject: one\r\n\r\nfirst\r\n";
    client
        .send_message("a@b.example", &["c@d.example", "e@f.example"], body)
        .await;
    client.send_message("", &["g@h.example"], body).await;
    let config = relay.dir.path().join("smtprelay.toml");

    let output = smtprelay()
        .args(["queue", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let queued = relay.queued();
    assert_eq!(rows[0]["id"], queued[0].0.envelope.id.to_string());
    assert_eq!(rows[0]["sender"], "a@b.example");
    assert_eq!(
        rows[0]["recipients"],
        serde_json::json!(["c@d.example", "e@f.example"])
    );
    assert_eq!(rows[0]["size"], queued[0].1.len());
    assert_eq!(rows[0]["state"], "queued");
    assert_eq!(rows[1]["sender"], "");

    let output = smtprelay()
        .args(["queue", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains(&queued[1].0.envelope.id.to_string()));
    assert!(table.contains("  <>"), "{table}");
    assert!(table.contains("-> e@f.example"), "{table}");
    assert!(table.contains("-- 2 message(s)"), "{table}");
}

/// `smtprelay queue list | head` and friends: a reader that goes away ends the command the way
/// it ends `ls`, by SIGPIPE, without a panic or a backtrace.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smtprelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = {:?}\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    for args in [
        &["queue", "list"][..],
        &["queue", "list", "--json"],
        &["check-config"],
        &["token", "status"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = smtprelay()
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("RUST_BACKTRACE", "1")
            .env("SMTPRELAY_TOKEN_KEY", "11".repeat(32))
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
    }
}
