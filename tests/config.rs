//! `check-config` on good and bad files: every problem, each with file, line and key.

use std::process::Command;

fn check_config(path: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smtprelay.toml");
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
}

#[test]
fn the_reference_config_uses_every_key_we_implement() {
    // A copy of ../shared/docs/config-reference.toml: its only problem is the placeholder hash.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config-reference.toml");
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    let problems: Vec<&str> = stderr.lines().collect();
    assert_eq!(problems.len(), 1, "{stderr}");
    assert!(
        problems[0].contains(":48:1: user[1].password_hash: not a password hash"),
        "{stderr}"
    );
}

#[test]
fn every_problem_is_listed_with_file_line_and_key() {
    let (_dir, path) = write(
        r#"[server]
hostname = "relay"
max_message_size = "35 parsecs"
max_recipients = "many"
colour = "blue"

[[listen]]
address = "0.0.0.0:25"
tls = "starttls"

[[listen]]
address = "0.0.0.0:587"
auth = "required"
tls = "sometimes"

[access]
trusted_networks = ["10.0.0.0/33"]
client_rate = "lots"

[queue]
retry = ["1m", "soon"]
"#,
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 78, "{stdout}");
    let file = path.display().to_string();
    for expected in [
        ":3:20: server.max_message_size: unknown size unit",
        ":4:18: server.max_recipients: expected a whole number, found string",
        ":5:1: server.colour: unknown key",
        ":7:1: listen[1].tls: this listener uses TLS but there is no [tls] table",
        ":14:7: listen[2].tls: unknown value \"sometimes\"",
        ":11:1: listen[2].auth: AUTH is offered but no [[user]] is configured",
        ":17:20: access.trusted_networks: item 1: expected a network",
        ":18:15: access.client_rate: expected a rate",
        ":21:9: queue.retry: item 2: expected a duration",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {file}")) && l.contains(expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let (_dir, path) = write("[server]\nhostname = \"relay\"\nstate_dir = /var/lib\n");
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    assert!(stderr.contains("smtprelay.toml:3:"), "{stderr}");
    assert!(stderr.contains("not valid TOML"), "{stderr}");
}

#[test]
fn an_unreadable_file_is_named() {
    let (code, _, stderr) = check_config(std::path::Path::new("/nonexistent/smtprelay.toml"));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("/nonexistent/smtprelay.toml: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn a_tls_certificate_that_cannot_be_read_is_reported() {
    let (_dir, path) = write(
        "[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\nauth = \"none\"\n[tls]\ncertificate = \"missing.pem\"\nprivate_key = \"missing.key\"\n",
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[test]
fn an_admin_endpoint_off_loopback_needs_a_bearer_token() {
    let (_dir, path) = write(
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n[admin]\nlisten = \"0.0.0.0:8025\"\n",
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    assert!(
        stderr.contains(
            ":5:1: admin.listen: 0.0.0.0:8025 is not a loopback address: set bearer_token_file"
        ),
        "{stderr}"
    );
}
