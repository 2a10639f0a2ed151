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
    let listening = next_until("smtp::listener: listening address=", &mut seen);
    let address = listening
        .split("address=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
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
    // The message waits in the queue for a token, as README says.
    let queued = common::queued_messages(&copy.path().join("var"));
    assert_eq!(queued, 1);
}
