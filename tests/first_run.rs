//! README's first command, on a fresh copy of the repository (its config/ as committed: no
//! state, no token key), as a newcomer runs it: check-config is clean, and the relay starts,
//! accepts and holds a message, and stops without one ERROR line.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The relay's arguments in README's first command (`cargo run --release -- ARGS  # …`).
fn readme_first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README has a sh block");
    let line = block.lines().next().unwrap();
    let command = line.split('#').next().unwrap().trim();
    let args = command
        .strip_prefix("cargo run --release -- ")
        .unwrap_or_else(|| {
            panic!("README's first command is not `cargo run --release -- …`: {line}")
        });
    args.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_s_first_command_runs_cleanly_on_a_fresh_copy() {
    let args = readme_first_command();
    assert_eq!(args[..2], ["serve", "--config"], "{args:?}");
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("config")).unwrap();
    for file in ["smtprelay.toml", "reference.toml"] {
        std::fs::copy(
            format!("{ROOT}/config/{file}"),
            copy.path().join("config").join(file),
        )
        .unwrap();
    }
    // Port 0 for the listeners: CI machines may run other relays on 2525 and 8025.
    let config = copy.path().join(&args[2]);
    let text = std::fs::read_to_string(&config).unwrap();
    let loopback = text
        .replace("address = \"127.0.0.1:2525\"", "address = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:8025\"", "listen = \"127.0.0.1:0\"");
    assert_eq!(
        loopback.matches("127.0.0.1:0").count(),
        2,
        "the example's ports moved"
    );
    std::fs::write(&config, loopback).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["check-config", "--config", &args[2]])
        .current_dir(copy.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");

    let mut relay = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(&args)
        .current_dir(copy.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(relay.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(relay.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let next_until = |needle: &str, seen: &mut Vec<String>| -> String {
        loop {
            let line = lines
                .recv_timeout(common::TIMEOUT)
                .unwrap_or_else(|_| panic!("no {needle:?} in:\n{}", seen.join("\n")));
            seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    };
    let address_in = |line: String| -> std::net::SocketAddr {
        line.split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let admin = address_in(next_until("admin HTTP listening address=", &mut seen));
    let address = address_in(next_until("smtp::listener: listening address=", &mut seen));
    let mut client = common::Client::connect(address).await;
    client.expect("EHLO newcomer.lan", 250).await;
    let (code, text) = client
        .send_message(
            "scanner@contoso.com",
            &["someone@contoso.com"],
            b"Subject: first\r\n\r\nhello\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    client.expect("QUIT", 221).await;
    next_until("message accepted", &mut seen);
    next_until("held until the account has a token", &mut seen);
    views_agree_the_message_waits_for_a_login(copy.path(), &args[2], admin).await;

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    assert!(relay.wait().unwrap().success());
    seen.extend(lines.iter());
    let log = seen.join("\n");
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(log.contains("made the token store key"), "{log}");
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(copy.path().join("var/token.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert!(
        !log.contains("token request failed"),
        "no request was made:\n{log}"
    );
    assert!(log.contains("waiting for a login"), "{log}");
    // The message waits in the queue for a token, as README says.
    let queued = common::queued_messages(&copy.path().join("var"));
    assert_eq!(queued, 1);
}

/// `queue list`, `status`, `/health` and `/metrics` tell one story about a message whose
/// account was never logged in: it waits for a token, the account needs a login, and no
/// token request failed.
async fn views_agree_the_message_waits_for_a_login(
    dir: &std::path::Path,
    config: &str,
    admin: std::net::SocketAddr,
) {
    let smtprelay = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(args)
            .args(["--config", config])
            .current_dir(dir)
            .output()
            .unwrap()
    };
    // The log line comes from the attempt's record, a moment before the scheduler takes the
    // message back from its attempt: until then `queue list` says it is being delivered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let list = smtprelay(&["queue", "list", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        if rows[0]["standing"] != "in_flight" || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(rows[0]["standing"], "waiting_for_token", "{rows}");
    let waiting = rows[0]["waiting"].as_str().unwrap();
    assert!(
        waiting.starts_with("waiting for a token: no token yet: log in once with `smtprelay token login --account contoso`"),
        "{waiting}"
    );
    let text = String::from_utf8(smtprelay(&["queue", "list"]).stdout).unwrap();
    assert!(text.contains("no token"), "{text}");
    assert!(!text.contains("due"), "{text}");

    // The page's census is the scheduler's, published every second.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let status = loop {
        let (_, status) = common::http_get(&format!("http://{admin}/status.json")).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if status["queue"]["waiting_for_token"] == 1 {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status["queue"]["due"], 0, "{status}");
    // Nothing went out, so the mailbox's budgets count nothing.
    assert_eq!(status["budgets"][0]["sent"], 0, "{status}");
    assert_eq!(status["budgets"][0]["recipients_today"], 0, "{status}");
    let (_, health) = common::http_get(&format!("http://{admin}/health")).await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let accounts = health["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{health}");
    assert_eq!(accounts[0]["account"], "contoso");
    assert_eq!(accounts[0]["state"], "needs_login");
    assert_eq!(accounts[0]["refresh_failures_total"], 0, "{health}");
    let (_, metrics) = common::http_get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains("smtprelay_token_refresh_failures_total{account=\"contoso\"} 0"),
        "{metrics}"
    );
}
