//! Admission control as the running binary does it: past `[queue] max_messages`, past an
//! account's `max_backlog` or below `[queue] min_free_space`, every RCPT and DATA gets
//! `452 4.3.1`; nothing accepted is lost; intake resumes when the queue drains; one
//! account's cap leaves the others' mail flowing.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::tokens::{SECRET, secret_account, tenant};
use common::{Client, start_binary_with_admin};

/// An account whose identity provider and upstream are absent: its mail stays queued.
fn stuck_account(senders: &str, extra: &str) -> String {
    let absent = common::free_port();
    format!(
        "[[account]]\nname = \"stuck\"\nprovider = \"generic\"\nclient_id = \"app\"\n\
         client_secret_file = \"secret\"\ntoken_endpoint = \"http://127.0.0.1:{absent}/token\"\n\
         mailbox = \"relay@stuck.example\"\nsenders = [{senders:?}]\n{extra}\n\
         [account.upstream]\nhost = \"127.0.0.1\"\nport = {absent}\n"
    )
}

/// Writes the configuration (JSON logs, every listener on port 0) into `dir`.
fn write_config(dir: &Path, state_dir: &Path, tables: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let config = dir.join("smtprelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = {state_dir:?}\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [access]\nclient_rate = \"100000/min\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{tables}"
        ),
    )
    .unwrap();
    config
}

struct Relay {
    child: std::process::Child,
    smtp: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
    _logs: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Relay {
    fn start(config: std::path::PathBuf) -> Relay {
        let key_hex = common::token_key_hex();
        let env = [("SMTPRELAY_TOKEN_KEY", key_hex.as_str())];
        let (child, smtp, admin, logs) = start_binary_with_admin(&config, &env);
        Relay {
            child,
            smtp,
            admin: admin.expect("the admin endpoint listens"),
            config,
            _logs: logs,
        }
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        let (_, body) = common::http_get(&format!("http://{}{path}", self.admin)).await;
        serde_json::from_str(&body).unwrap()
    }

    async fn metrics(&self) -> String {
        common::http_get(&format!("http://{}/metrics", self.admin))
            .await
            .1
    }

    /// `smtprelay queue <args> --config …`: whether it succeeded, and what it printed.
    fn queue_cli(&self, args: &[&str]) -> (bool, String) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// The IDs `queue list` shows.
    fn listed(&self) -> BTreeSet<String> {
        let (ok, text) = self.queue_cli(&["list", "--json"]);
        assert!(ok, "{text}");
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls the status report until `accept` takes it.
    async fn status_until(&self, what: &str, accept: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let report = self.json("/status.json").await;
            if accept(&report) {
                return;
            }
            assert!(Instant::now() < deadline, "never {what}: {report}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What became of one message sent in a session of its own.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Queued(String),
    /// Refused at RCPT, DATA or the final dot: the command and its reply.
    Refused(&'static str, u16, String),
}

async fn send(address: SocketAddr, from: &str, to: &str, content: &[u8]) -> Sent {
    let mut client = Client::connect(address).await;
    client.expect("EHLO app", 250).await;
    client.expect(&format!("MAIL FROM:<{from}>"), 250).await;
    let (code, text) = client.cmd(&format!("RCPT TO:<{to}>")).await;
    if code != 250 {
        return Sent::Refused("RCPT", code, text);
    }
    let (code, text) = client.cmd("DATA").await;
    if code != 354 {
        return Sent::Refused("DATA", code, text);
    }
    client.send_raw(content).await;
    client.send_raw(b".\r\n").await;
    match client.reply().await {
        (250, text) => Sent::Queued(text.rsplit(' ').next().unwrap().to_owned()),
        (code, text) => Sent::Refused("end of DATA", code, text),
    }
}

/// Sends until a message is refused (at most `limit`); returns the IDs queued and the refusal.
async fn send_until_refused(
    address: SocketAddr,
    from: &str,
    content: &[u8],
    limit: usize,
) -> (Vec<String>, Sent) {
    let mut queued = Vec::new();
    for _ in 0..limit {
        match send(address, from, "someone@fabrikam.example", content).await {
            Sent::Queued(id) => queued.push(id),
            refused => return (queued, refused),
        }
    }
    panic!("{limit} messages from {from} accepted, none refused");
}

fn assert_full(sent: &Sent, command: &str, words: &str) {
    assert_full_at(sent, &[command], words);
}

/// Refused with 452 4.3.1 at one of `commands`, with `words` in the reply.
fn assert_full_at(sent: &Sent, commands: &[&str], words: &str) {
    match sent {
        Sent::Refused(at, 452, text) if commands.contains(at) => {
            assert!(text.starts_with("4.3.1 ") && text.contains(words), "{text}");
        }
        other => panic!("expected 452 4.3.1 at {commands:?}, got {other:?}"),
    }
}

/// `smtprelay_refusals_total{reason="…"}`, 0 when absent.
fn refusals(metrics: &str, reason: &str) -> u64 {
    let series = format!("smtprelay_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_messages_every_rcpt_and_data_is_refused_until_the_queue_drains() {
    const CAP: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let tables = format!("[queue]\nmax_messages = {CAP}\n{}", stuck_account("*", ""));
    let state = dir.path().join("state");
    let relay = Relay::start(write_config(dir.path(), &state, &tables));
    let content = b"Subject: backlog\r\n\r\nscan\r\n";
    let from = "app@a.example";

    let mut queued = Vec::new();
    for n in 1..CAP {
        match send(relay.smtp, from, "someone@fabrikam.example", content).await {
            Sent::Queued(id) => queued.push(id),
            refused => panic!("message {n} of {CAP} refused: {refused:?}"),
        }
    }
    // A transaction whose RCPT came before the cap, and whose DATA comes after it.
    let mut late = Client::connect(relay.smtp).await;
    late.expect("EHLO app", 250).await;
    late.expect(&format!("MAIL FROM:<{from}>"), 250).await;
    late.expect("RCPT TO:<late@fabrikam.example>", 250).await;
    match send(relay.smtp, from, "last@fabrikam.example", content).await {
        Sent::Queued(id) => queued.push(id),
        refused => panic!("message {CAP} refused: {refused:?}"),
    }
    let (code, text) = late.cmd("DATA").await;
    assert_full(&Sent::Refused("DATA", code, text), "DATA", "Queue full");
    // Every new RCPT is refused, whoever sends.
    for from in ["app@a.example", "printer@b.example", ""] {
        let refused = send(relay.smtp, from, "x@fabrikam.example", content).await;
        assert_full(&refused, "RCPT", "Queue full");
    }

    // Nothing accepted is lost: every 250 is in the queue, and nothing else.
    let accepted: BTreeSet<String> = queued.iter().cloned().collect();
    assert_eq!(common::queued_messages(&state), CAP);
    assert_eq!(relay.listed(), accepted);
    assert_eq!(refusals(&relay.metrics().await, "queue_full"), 4);
    let health = relay.json("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("the queue is full (300 messages"),
        "{health}"
    );

    // Below the cap again, intake resumes.
    // The newest: the oldest are with the account's workers, waiting for a token.
    let newest = [&queued[CAP - 1], &queued[CAP - 2]];
    let (ok, text) = relay.queue_cli(&["delete", newest[0], newest[1]]);
    assert!(ok && text.matches(" deleted").count() == 2, "{text}");
    for n in 0..2 {
        let sent = send(relay.smtp, from, "again@fabrikam.example", content).await;
        assert!(
            matches!(sent, Sent::Queued(_)),
            "message {n} after the drain: {sent:?}"
        );
    }
    assert_full(
        &send(relay.smtp, from, "x@fabrikam.example", content).await,
        "RCPT",
        "Queue full",
    );
    assert_eq!(common::queued_messages(&state), CAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_backlog_cap_refuses_its_mail_while_the_others_flows() {
    const CAP: usize = 20;
    let (entra, exchange) = tenant().await;
    let dir = tempfile::tempdir().unwrap();
    let tables = format!(
        "{}{}{}",
        secret_account(&entra),
        exchange.upstream_table(dir.path()),
        stuck_account("*@stuck.example", &format!("max_backlog = {CAP}")),
    );
    let state = dir.path().join("state");
    let relay = Relay::start(write_config(dir.path(), &state, &tables));
    let content = b"Subject: loop\r\n\r\nagain\r\n";
    // A transaction that passed RCPT before the cap, and comes to DATA after it.
    let mut late = Client::connect(relay.smtp).await;
    late.expect("EHLO app", 250).await;
    late.expect("MAIL FROM:<app@stuck.example>", 250).await;
    late.expect("RCPT TO:<late@fabrikam.example>", 250).await;

    // The scheduler counts each message as it arrives; a sender in a loop may pass the cap
    // by the messages it sends before the count has caught up, never by more.
    let (queued, refused) = send_until_refused(relay.smtp, "app@stuck.example", content, 100).await;
    // At RCPT, or at DATA when the count caught up between the two.
    assert_full_at(&refused, &["RCPT", "DATA"], "account stuck");
    assert!(
        (CAP..CAP + 3).contains(&queued.len()),
        "{} queued for a cap of {CAP}",
        queued.len()
    );
    relay
        .status_until("the stuck account full", |report| {
            let stuck = &report["accounts"][1]["backlog"];
            stuck["full"] == true && stuck["queued"] == queued.len() && stuck["max"] == CAP
        })
        .await;
    // The other account's mail is taken and delivered.
    for n in 0..3 {
        let sent = send(relay.smtp, "scanner@contoso.com", "a@fabrikam.com", content).await;
        assert!(
            matches!(sent, Sent::Queued(_)),
            "contoso message {n}: {sent:?}"
        );
    }
    let deadline = Instant::now() + common::TIMEOUT;
    while exchange.state().received.len() < 3 {
        assert!(Instant::now() < deadline, "contoso's mail not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still full for the stuck account, at DATA too.
    let (code, text) = late.cmd("DATA").await;
    assert_full(&Sent::Refused("DATA", code, text), "DATA", "account stuck");

    let report = relay.json("/status.json").await;
    let stuck = &report["accounts"][1];
    assert_eq!(stuck["name"], "stuck");
    // Against the default daily budget of 10000 recipients.
    let days = (queued.len() as f64 / 10_000.0 * 100.0).round() / 100.0;
    assert_eq!(stuck["backlog"]["days"], days, "{report}");
    assert_eq!(report["accounts"][0]["backlog"]["full"], false, "{report}");
    assert!(
        report["reasons"].to_string().contains("account stuck:"),
        "{report}"
    );
    let metrics = relay.metrics().await;
    assert_eq!(refusals(&metrics, "account_backlog"), 2);
    assert!(
        metrics.contains(&format!(
            "smtprelay_account_backlog{{account=\"stuck\"}} {}",
            queued.len()
        )),
        "{metrics}"
    );
    // Nothing accepted is lost.
    assert_eq!(common::queued_messages(&state), queued.len());
    assert_eq!(relay.listed(), queued.into_iter().collect());
}

fn free_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_space_mail_is_refused_before_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_tmpfs) = common::mount_tmpfs(&state, "8m") else {
        return;
    };
    let tables = format!(
        "[queue]\nmin_free_space = \"3MiB\"\n{}",
        stuck_account("*", "")
    );
    let relay = Relay::start(write_config(dir.path(), &state, &tables));
    // 200 KiB scans: about 25 fit above the 3 MiB the relay keeps free.
    let line = format!("{}\r\n", "x".repeat(1022));
    let content = format!("Subject: scan\r\n\r\n{}", line.repeat(200));
    // A transaction that passed RCPT while there was room, and comes to DATA after.
    let mut late = Client::connect(relay.smtp).await;
    late.expect("EHLO app", 250).await;
    late.expect("MAIL FROM:<scanner@a.example>", 250).await;
    late.expect("RCPT TO:<late@fabrikam.example>", 250).await;

    let (queued, refused) =
        send_until_refused(relay.smtp, "scanner@a.example", content.as_bytes(), 60).await;
    assert_full(&refused, "RCPT", "disk is nearly full");
    assert!(queued.len() >= 10, "only {} queued", queued.len());
    // Refused before the disk filled: room is left, and no write ever failed for want of it.
    let free = free_bytes(&state);
    assert!(free > 2 << 20, "{free} bytes left");
    let metrics = relay.metrics().await;
    assert_eq!(refusals(&metrics, "low_free_space"), 1);
    assert_eq!(refusals(&metrics, "insufficient_storage"), 0);
    let (code, text) = late.cmd("DATA").await;
    assert_full(
        &Sent::Refused("DATA", code, text),
        "DATA",
        "disk is nearly full",
    );
    let health = relay.json("/health").await;
    assert!(
        health["reasons"].to_string().contains("min_free_space"),
        "{health}"
    );
    // Nothing accepted is lost.
    assert_eq!(common::queued_messages(&state), queued.len());
    assert_eq!(relay.listed(), queued.into_iter().collect());
    drop(relay);
}
