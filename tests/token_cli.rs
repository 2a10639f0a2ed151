//! The `smtprelay token` commands as an admin runs them, against the Entra and Exchange
//! doubles.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::entra::Entra;
use common::exchange::Exchange;
use common::tokens::{SECRET, account};
use tokio::process::Command;

struct Setup {
    dir: tempfile::TempDir,
    entra: Entra,
    exchange: Exchange,
    key: String,
}

impl Setup {
    async fn new(flow: &str, extra: &str) -> Setup {
        let (entra, exchange) = common::tokens::tenant().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let client_id = if flow == "client_credentials" {
            "app-secret"
        } else {
            "app-public"
        };
        let credential = if flow == "client_credentials" {
            "client_secret_file = \"secret\"\n"
        } else {
            ""
        };
        let text = format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
            account(
                &entra,
                "contoso",
                client_id,
                flow,
                &format!("{credential}{extra}")
            ),
            exchange.upstream_table(dir.path()),
        );
        std::fs::write(dir.path().join("smtprelay.toml"), text).unwrap();
        let key = hex_key();
        Setup {
            dir,
            entra,
            exchange,
            key,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        common::occupy_default_admin_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_smtprelay"));
        command
            .arg("--config")
            .arg(self.dir.path().join("smtprelay.toml"))
            .args(args)
            .env("SMTPRELAY_TOKEN_KEY", &self.key)
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("command hung")
            .unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }
}

fn hex_key() -> String {
    let key = smtprelay::oauth::TokenKey::generate();
    key.bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_test_passes_with_a_good_setup() {
    let setup = Setup::new("client_credentials", "").await;
    let (ok, stdout, stderr) = setup.run(&["token", "test"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok   claims   aud=https://outlook.office365.com"),
        "{stdout}"
    );
    assert!(stdout.contains("certificate verified"), "{stdout}");
    assert!(
        stdout.contains("ok   auth     AUTH XOAUTH2 as relay@contoso.com accepted"),
        "{stdout}"
    );
    assert_eq!(setup.exchange.state().auth_attempts, 1);
}

/// Issue 22: `token test` passed on the token cached in the store while the endpoint was
/// gone. It asks the endpoint every time, and fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_test_asks_the_endpoint_and_fails_when_it_is_gone() {
    let setup = Setup::new("client_credentials", "").await;
    let (ok, stdout, stderr) = setup.run(&["token", "test"]).await;
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = setup.run(&["token", "test"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        setup.entra.requests("client_credentials"),
        2,
        "a new token for each test, never the stored one"
    );
    // The endpoint moves to a port nothing listens on; the stored token is still valid.
    let gone = format!("http://127.0.0.1:{}/token", common::free_port());
    let config = setup.dir.path().join("smtprelay.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "flow = \"client_credentials\"\n",
        &format!("flow = \"client_credentials\"\ntoken_endpoint = {gone:?}\n"),
    );
    std::fs::write(&config, text).unwrap();
    let (ok, stdout, stderr) = setup.run(&["token", "test"]).await;
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.contains("FAIL token"), "{stdout}");
    assert!(stdout.contains(&gone), "{stdout}");
    assert_eq!(
        setup.exchange.state().auth_attempts,
        2,
        "no login without a new token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_test_explains_what_exchange_refuses() {
    let setup = Setup::new("client_credentials", "").await;
    // A mailbox the app has no rights on: 535 5.7.3.
    let (ok, stdout, _) = setup
        .run(&["token", "test", "--mailbox", "ceo@contoso.com"])
        .await;
    assert!(!ok);
    assert!(stdout.contains("FAIL auth"), "{stdout}");
    assert!(
        stdout.contains("Add-MailboxPermission") && stdout.contains("535 5.7.3"),
        "{stdout}"
    );
    // SMTP AUTH disabled for the mailbox: 535 5.7.139.
    setup
        .exchange
        .state()
        .auth_disabled
        .insert("relay@contoso.com".into());
    let (ok, stdout, _) = setup.run(&["token", "test"]).await;
    assert!(!ok);
    assert!(
        stdout.contains("SmtpClientAuthenticationDisabled $false"),
        "{stdout}"
    );
}

/// A provider other than Microsoft may say what a token allows differently: the claims are a
/// warning, and the login still decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_test_warns_about_claims_of_a_generic_provider_and_logs_in() {
    let setup = Setup::new("client_credentials", "").await;
    setup.entra.register(common::entra::App {
        secret: Some(SECRET.into()),
        permissions_unclaimed: true,
        ..common::tokens::app("app-secret")
    });
    let config = setup.dir.path().join("smtprelay.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "flow = \"client_credentials\"\n",
        &format!(
            "flow = \"client_credentials\"\nprovider = \"generic\"\ntoken_endpoint = {:?}\nscope = \"https://outlook.office365.com/.default\"\n",
            setup.entra.token_endpoint()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let (ok, stdout, stderr) = setup.run(&["token", "test"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("WARN claims") && stdout.contains("SMTP.SendAsApp"),
        "{stdout}"
    );
    assert!(stdout.contains("the provider is not microsoft"), "{stdout}");
    assert!(
        stdout.contains("ok   auth     AUTH XOAUTH2 as relay@contoso.com accepted"),
        "{stdout}"
    );
    assert_eq!(setup.exchange.state().auth_attempts, 1);
}

/// An endpoint that answers with something other than OAuth JSON (a proxy's error page) is
/// named, with its URL and what it said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_name_the_endpoint_its_url_and_its_answer() {
    let setup = Setup::new("device_code", "").await;
    let proxy = common::http_answering(
        "502 Bad Gateway",
        "502 Bad Gateway: upstream idp unreachable",
    )
    .await;
    let url = format!("http://{proxy}/devicecode");
    let config = setup.dir.path().join("smtprelay.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "flow = \"device_code\"\n",
        &format!("flow = \"device_code\"\ndevice_authorization_endpoint = {url:?}\n"),
    );
    std::fs::write(&config, text).unwrap();
    let (ok, stdout, stderr) = setup.run(&["token", "login", "--account", "contoso"]).await;
    assert!(!ok);
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains(&format!(
            "the device authorization endpoint {url} answered HTTP 502: <html><body>502 Bad Gateway: upstream idp unreachable</body></html>"
        )),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_test_flags_a_graph_token() {
    let setup = Setup::new(
        "client_credentials",
        "scope = \"https://graph.microsoft.com/.default\"",
    )
    .await;
    let (ok, stdout, _) = setup.run(&["token", "test"]).await;
    assert!(!ok);
    assert!(
        stdout.contains("FAIL claims") && stdout.contains("Microsoft Graph token"),
        "{stdout}"
    );
    assert_eq!(
        setup.exchange.state().connections,
        0,
        "no login attempt with a wrong token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_status_refresh_backup_restore_clear() {
    let setup = Setup::new("device_code", "").await;
    let (_, stdout, _) = setup.run(&["token", "status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[0]["state"], "no_token");
    assert_eq!(status[0]["auto_refresh"], false);

    // Login: read the code the command prints, and approve it as the user would.
    let mut child = setup
        .command(&["token", "login"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let printed =
        common::tokens::approve_device_login(&setup.entra, child.stdout.take().unwrap()).await;
    assert!(child.wait().await.unwrap().success(), "{printed}");
    assert!(
        printed.contains("https://microsoft.com/devicelogin"),
        "{printed}"
    );
    assert!(printed.contains("Logged in."), "{printed}");

    let (_, stdout, _) = setup.run(&["token", "status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[0]["state"], "valid");
    assert_eq!(status[0]["has_refresh_token"], true);
    assert!(status[0]["login_at"].is_u64());
    let (_, text, _) = setup.run(&["token", "status"]).await;
    assert!(text.contains("refresh token:  issued"), "{text}");

    let (ok, stdout, stderr) = setup.run(&["token", "refresh"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(setup.entra.requests("refresh_token"), 1);

    let backup = setup.dir.path().join("tokens.backup");
    let (ok, stdout, stderr) = setup
        .run(&["token", "backup", "--to", backup.to_str().unwrap()])
        .await;
    assert!(
        ok && stdout.contains("Backed up 1 account"),
        "{stdout}{stderr}"
    );

    let (ok, stdout, _) = setup.run(&["token", "clear"]).await;
    assert!(ok && stdout.contains("tokens removed"), "{stdout}");
    let (_, stdout, _) = setup.run(&["token", "status", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()[0]["state"],
        "no_token"
    );

    let (ok, stdout, stderr) = setup
        .run(&["token", "restore", backup.to_str().unwrap()])
        .await;
    assert!(
        ok && stdout.contains("Restored 1 account"),
        "{stdout}{stderr}"
    );
    let (_, stdout, _) = setup.run(&["token", "status", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()[0]["has_refresh_token"],
        true
    );
    assert_mode(&setup.dir.path().join("state/tokens.json.enc"), 0o600);
    assert_mode(&backup, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_private_key_once_and_a_wrong_key_is_refused() {
    let setup = Setup::new("client_credentials", "").await;
    let key_path = setup.dir.path().join("token.key");
    let mut command = setup.command(&["token", "keygen", "--to", key_path.to_str().unwrap()]);
    let output = command
        .env_remove("SMTPRELAY_TOKEN_KEY")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert_mode(&key_path, 0o600);
    let again = setup
        .command(&["token", "keygen", "--to", key_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let (ok, _, stderr) = setup.run(&["token", "refresh"]).await;
    assert!(ok, "{stderr}");
    let before = std::fs::read(setup.dir.path().join("state/tokens.json.enc")).unwrap();
    let wrong = Setup {
        key: hex_key(),
        ..setup
    };
    let (ok, _, stderr) = wrong.run(&["token", "refresh"]).await;
    assert!(!ok);
    assert!(stderr.contains("wrong token key"), "{stderr}");
    assert_eq!(
        std::fs::read(wrong.dir.path().join("state/tokens.json.enc")).unwrap(),
        before
    );
}

fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_gets_tokens_by_itself_and_stores_them() {
    let setup = Setup::new("client_credentials", "").await;
    let mut daemon = setup.command(&["serve"]).spawn().unwrap();
    let store = setup.dir.path().join("state/tokens.json.enc");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !store.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon fetched no token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.entra.requests("client_credentials"), 1);
    // The CLI sees what the daemon stored, through the shared encrypted store.
    let (_, stdout, _) = setup.run(&["token", "status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(status[0]["access_token_expires_in_secs"].as_i64().unwrap() > 3000);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id().unwrap() as i32, libc::SIGTERM) };
    assert!(daemon.wait().await.unwrap().success());
}

/// A relay started before its token store key existed starts delivering once `token keygen`
/// writes it: no reload, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_picks_up_a_new_token_key() {
    let setup = Setup::new("client_credentials", "").await;
    let config = setup.dir.path().join("smtprelay.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[tokens]\nkey_file = \"token.key\"\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    let (mut daemon, address, logs) = common::start_binary_with_logs(&config, &[]);
    let mut client = common::Client::connect(address).await;
    client.expect("EHLO app", 250).await;
    let (code, _) = client
        .send_message(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250);
    client.expect("QUIT", 221).await;
    // Held: no key, no token, nothing sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(setup.exchange.state().received.is_empty());

    let keygen = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["token", "keygen", "--config"])
        .arg(&config)
        .env_remove("SMTPRELAY_TOKEN_KEY")
        .output()
        .await
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while setup.exchange.state().received.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held message was not sent after keygen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::wait_for_log(
        &logs,
        "the token store key is usable now: reloading to start delivery",
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
