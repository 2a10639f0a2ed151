//! `check-config` on good and bad files: every problem, each with file, line and key.

mod common;

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
fn the_example_config_is_valid_as_it_is_and_a_named_key_file_must_exist() {
    // A fresh clone has no token key, and needs none: the relay makes one in state_dir.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smtprelay.toml");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smtprelay.toml");
    std::fs::copy(&example, &config).unwrap();
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(!stderr.contains("error"), "{stderr}");

    // A key file the configuration names is the admin's to make: check-config says how.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("# key_file = \"token.key\"", "key_file = \"token.key\"");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, 78);
    let key = dir.path().join("token.key");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "tokens.key_file: {0}: No such file or directory (os error 2); create it with `smtprelay token keygen --to {0}`",
            key.display()
        )),
        "{stderr}"
    );
    let keygen = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["token", "keygen", "--to"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
}

#[test]
fn the_reference_config_uses_every_key_we_implement() {
    // config/reference.toml (shipped in the packages): its only problems are the placeholder
    // hash and [admin.sign_in] showing both ways of its credential (the files it names live
    // on a production host, so only its keys are checked).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.toml");
    let error = smtprelay::config::Config::load(&path).unwrap_err();
    let mut problems: Vec<String> = error.problems.iter().map(|p| p.to_string()).collect();
    let both = problems.iter().position(|p| {
        p.contains(": admin.sign_in.client_secret_file: the console signs in with either")
    });
    problems.remove(both.unwrap_or_else(|| panic!("{problems:?}")));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$...\""))
        .unwrap()
        + 1;
    assert!(
        problems[0].contains(&format!(
            ":{line}:1: user[scanner-3rd-floor].password_hash: not a password hash"
        )),
        "{problems:?}"
    );
    // The example points its readers to it.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smtprelay.toml"),
    )
    .unwrap();
    assert!(example.contains("See reference.toml beside this file"));
}

#[test]
fn files_the_config_names_must_exist_and_be_readable_by_the_service_user() {
    let (dir, path) = write(
        r#"[[listen]]
address = "127.0.0.1:2525"
auth = "none"
[tokens]
key_file = "token.key"
[admin]
bearer_token_file = "admin.token"
[[account]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_file = "contoso.secret"
mailbox = "relay@contoso.com"
[account.upstream]
ca_file = "ca.pem"
"#,
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    for expected in [
        ":5:1: tokens.key_file: ",
        ":7:1: admin.bearer_token_file: ",
        ":12:1: account[contoso].client_secret_file: ",
        ":15:1: account[contoso].upstream.ca_file: ",
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| {
                panic!(
                    "no {expected:?} in
{stderr}"
                )
            });
        assert!(line.contains("No such file or directory"), "{line}");
    }
    for file in ["token.key", "admin.token", "contoso.secret", "ca.pem"] {
        std::fs::write(dir.path().join(file), "x").unwrap();
    }
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    // Run as root (as admins and CI do), the service user's view counts: a file only root
    // may read fails, however readable it is to check-config itself.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::PermissionsExt;
        let secret = dir.path().join("contoso.secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(["check-config", "--service-user", "nobody", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(":12:1: account[contoso].client_secret_file: ")
                && stderr.contains(
                    "the service user nobody cannot read it (owner uid 0, gid 0, mode 0600)"
                ),
            "{stderr}"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(["check-config", "--service-user", "nobody", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
}

#[test]
fn each_mistake_is_reported_once_by_name_with_a_suggestion() {
    let (_dir, path) = write(
        r#"[[listen]]
address = "127.0.0.1:587"
auth = "required"
tls = "STARTTLS"
[access]
trusted_networks = ["10.0.0.0/8", "bogus", "192.168.0.0/33", "::1/128", "also bogus"]
[[account]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "x"
flow = "Client_Credentials"
client_secret_file = "/dev/null"
mailbox = "relay@contoso.com"
mialbox = "typo@contoso.com"
[[user]]
name = "app"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$NM0paWxc5jr5wbv6dIJnkg$PaSTC8HoQR5NqGpsXGbdYE5380lZCafKOg59BZhasc8"
"#,
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        r#":4:7: listen[1].tls: unknown value "STARTTLS"; did you mean "starttls"?"#,
        ":6:35: access.trusted_networks: item 2: expected a network",
        ":6:44: access.trusted_networks: item 3: expected a network",
        ":6:73: access.trusted_networks: item 5: expected a network",
        r#":11:8: account[contoso].flow: unknown value "Client_Credentials"; did you mean "client_credentials"?"#,
        r#":14:1: account[contoso].mialbox: unknown key; did you mean "mailbox"?"#,
    ];
    // Nothing follows from the mistakes: the AUTH-without-TLS and credential checks hold off.
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(
            line.contains(expected),
            "{expected:?} in
{stderr}"
        );
    }
}

/// A file with thousands of mistakes is reported in full, each at its own line (how long it
/// takes, and that it grows linearly, is benchmarks/check_config.sh's business).
#[test]
fn a_file_with_many_unknown_keys_is_reported_in_full() {
    let mut text =
        String::from("[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n[server]\n");
    for n in 0..10_000 {
        text.push_str(&format!("unknown_{n} = 1\n"));
    }
    let (_dir, path) = write(&text);
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 10_000);
    assert!(
        lines[9_999].contains(":10004:1: server.unknown_9999: unknown key"),
        "{}",
        lines[9_999]
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
        ":17:21: access.trusted_networks: item 1: expected a network",
        ":18:15: access.client_rate: expected a rate",
        ":21:16: queue.retry: item 2: expected a duration",
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

#[test]
fn admin_https_needs_a_certificate_given_as_a_pair_and_only_with_tls() {
    let listen = "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n";
    let refused = |admin: &str, expected: &str| {
        let (_dir, path) = write(&format!("{listen}[admin]\n{admin}"));
        let (code, _, stderr) = check_config(&path);
        assert_eq!(code, 78, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    // Neither its own certificate nor a [tls] table to take one from.
    refused("tls = true\n", ":5:1: admin.tls: HTTPS needs a certificate");
    // Half a pair; and a pair without tls = true.
    refused(
        "tls = true\ncertificate = \"cert.pem\"\n",
        ":6:1: admin.certificate: certificate and private_key go together",
    );
    refused(
        "certificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n",
        ":5:1: admin.certificate: only used with tls = true",
    );
    // [tls]'s pair is the default: the files it names are checked as the admin's.
    let (dir, path) = write(&format!(
        "{listen}[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n[admin]\ntls = true\n"
    ));
    let pki = common::TestPki::new();
    std::fs::copy(pki.cert_path(), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(pki.key_path(), dir.path().join("key.pem")).unwrap();
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn sign_in_problems_are_each_named_where_they_stand() {
    let (_dir, path) = write(
        r#"[[listen]]
address = "127.0.0.1:2525"
auth = "none"
[admin.sign_in]
issuer = "http://login.example/tenant/v2.0"
redirect_url = "https://relay.example:8025/signin/callback"
viewers = ["role:", "Everyone"]
session_timeout = "soon"
"#,
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    for expected in [
        ":4:1: admin.sign_in.client_id: this key is required",
        ":5:1: admin.sign_in.issuer: plain http is accepted only for loopback addresses",
        ":4:1: admin.sign_in.client_secret_file: the console signs in with either client_secret_file or client_certificate",
        ":7:12: admin.sign_in.viewers: item 1: \"role:\" names no app role",
        ":7:21: admin.sign_in.viewers: item 2: expected \"role:<app role>\", \"group:<object id>\" or a user's UPN or e-mail",
        ":8:19: admin.sign_in.session_timeout: expected a duration",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 6, "{stderr}");
}

/// Under systemd the service reads the token key as its credential (the file is root's):
/// check-config, run by the unit as the service user, must not call that a problem.
#[test]
fn a_token_key_supplied_as_a_credential_need_not_be_readable_as_a_file() {
    let (dir, path) = write(
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n[tokens]\nkey_file = \"token.key\"\n",
    );
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("token-key"), "00".repeat(32)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78);
    assert!(stderr.contains("tokens.key_file: "), "{stderr}");
    // ExecReload= does not see the credential under ProtectSystem= (systemd#35227): the
    // packaged unit says where the key comes from instead.
    let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["check-config", "--token-key-from-credential", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn the_legacy_tls_profile_needs_a_tls_listener_and_check_config_says_what_it_weakens() {
    let (_dir, path) = write(
        "[[listen]]\naddress = \"127.0.0.1:25\"\nauth = \"none\"\ntls_profile = \"legacy\"\n\
         [[listen]]\naddress = \"127.0.0.1:26\"\nauth = \"none\"\ntls = \"starttls\"\ntls_profile = \"legasy\"\n",
    );
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(":4:1: listen[1].tls_profile: only for a listener with TLS"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listen[2].tls_profile") && stderr.contains("did you mean \"legacy\""),
        "{stderr}"
    );

    // A legacy listener on an ECDSA certificate: valid, with two warnings.
    for (pki, rsa) in [
        (common::TestPki::new(), false),
        (common::TestPki::new_rsa(), true),
    ] {
        let (_dir, path) = write(&format!(
            "[[listen]]\naddress = \"127.0.0.1:25\"\nauth = \"none\"\ntls = \"starttls\"\ntls_profile = \"legacy\"\n{}",
            pki.tls_table()
        ));
        let (code, stdout, stderr) = check_config(&path);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(": ok (1 listener(s)"), "{stdout}");
        assert!(
            stderr.contains("warning: ")
                && stderr.contains(
                    "listen[1] (127.0.0.1:25): tls_profile = \"legacy\" accepts TLS 1.0 and 1.1"
                ),
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("the private key is not RSA"),
            !rsa,
            "{stderr}"
        );
        // What the relay would warn about at start is said here too.
        assert!(
            stderr.contains(
                "warning: no [[account]] is configured: mail is queued but has nowhere to go"
            ),
            "{stderr}"
        );
    }
}

/// Every key in a TOML document as `table.key`, lists of tables without positions.
fn written_keys(
    prefix: &str,
    table: &dyn toml_edit::TableLike,
    out: &mut std::collections::BTreeSet<String>,
) {
    for (key, item) in table.iter() {
        let path = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        match item {
            toml_edit::Item::Table(t) => {
                out.insert(path.clone());
                written_keys(&path, t, out)
            }
            toml_edit::Item::ArrayOfTables(a) => {
                out.insert(path.clone());
                a.iter().for_each(|t| written_keys(&path, t, out))
            }
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => written_keys(&path, t, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_reference_documents_every_key_the_reader_accepts_and_no_other() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let accepted = smtprelay::config::Config::accepted_keys(&text);
    let document: toml_edit::DocumentMut = text.parse().unwrap();
    let mut written = std::collections::BTreeSet::new();
    written_keys("", document.as_table(), &mut written);
    // Keys the reader asks for only to say where they went (the [tokens] Redis keys moved
    // to [cluster]) are not documented as keys.
    let retired = ["tokens.redis_url"];
    let undocumented: Vec<&String> = accepted
        .iter()
        .filter(|k| !written.contains(*k) && !retired.contains(&k.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "accepted but not in config/reference.toml: {undocumented:?}"
    );
    let unknown: Vec<&String> = written.iter().filter(|k| !accepted.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "in config/reference.toml but not accepted: {unknown:?}"
    );
}

#[test]
fn check_config_warns_of_a_secret_every_user_can_read_as_the_relay_does() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = write(
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n\
         [[account]]\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"x\"\n\
         flow = \"client_credentials\"\nclient_secret_file = \"contoso.secret\"\nmailbox = \"relay@contoso.com\"\n\
         [tokens]\nkey_file = \"token.key\"\n",
    );
    let secret = dir.path().join("contoso.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::write(dir.path().join("token.key"), common::token_key_hex()).unwrap();
    for (file, mode) in [(&secret, 0o644), (&dir.path().join("token.key"), 0o600)] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(
        stderr.contains("warning: account[contoso].client_secret_file: ")
            && stderr.contains(
                "contoso.secret is readable by every user (mode 0644); chmod 0640 or stricter"
            ),
        "{stderr}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("readable by every user"), "{stderr}");
    // As root on a machine without the service user, the check that needs it says so.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let output = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args([
                "check-config",
                "--service-user",
                "no-such-user-here",
                "--config",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("warning: there is no user no-such-user-here on this machine"),
            "{stderr}"
        );
    }
}

#[test]
fn a_name_given_twice_is_reported_where_it_is_repeated_and_host_bits_are_refused() {
    let account = "[[account]]\nname = \"contoso\"\ntenant = \"t\"\nclient_id = \"x\"\nflow = \"device_code\"\nmailbox = \"a@b.c\"\n";
    let (_dir, path) = write(&format!(
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\n\
         [access]\ntrusted_networks = [\"127.0.0.0/8\", \"192.168.1.10/24\"]\n{account}{account}"
    ));
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 78, "{stderr}");
    // The second table's name line: 5 lines of listen and access, 6 of the first account.
    assert!(
        stderr.contains(":13:1: account[contoso].name: account \"contoso\" is defined twice"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "access.trusted_networks: item 2: \"192.168.1.10/24\" has host bits set: write the network \"192.168.1.0/24\", or the host \"192.168.1.10/32\""
        ),
        "{stderr}"
    );
}
