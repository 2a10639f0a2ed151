//! Exchange's per-mailbox budgets as the running binary keeps them: spent, they hold mail
//! without holding up a reload or a stop, they survive both, and `/health` says which budget
//! holds the mail and until when.

mod common;

use std::time::{Duration, Instant};

use common::tokens::{SECRET, account, tenant};
use common::{Client, start_binary_with_admin, wait_for_log};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits for the child to exit; returns how long it took.
fn exit_time(child: &mut std::process::Child, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return start.elapsed();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn send(address: std::net::SocketAddr, n: usize) {
    let mut client = Client::connect(address).await;
    client.expect("EHLO app", 250).await;
    let data = format!("Subject: {n}\r\n\r\nmessage {n}\r\n");
    let (code, text) = client
        .send_message("scanner@contoso.com", &["a@fabrikam.com"], data.as_bytes())
        .await;
    assert_eq!(code, 250, "{text}");
}

async fn health(admin: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = common::http_get(&format!("http://{admin}/health")).await;
    serde_json::from_str(&body).unwrap()
}

/// The first `/health` report that names a held mailbox.
async fn health_with_held_mailbox(admin: std::net::SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let report = health(admin).await;
        if report["held_mailboxes"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            return report;
        }
        assert!(Instant::now() < deadline, "no held mailbox: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_holds_mail_across_reload_stop_and_restart() {
    let (entra, exchange) = tenant().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let config = dir.path().join("smtprelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\nshutdown_timeout = \"{}s\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{}{}daily_recipients = 2\n",
            SHUTDOWN_TIMEOUT.as_secs(),
            account(&entra, "contoso", "app-secret", "client_credentials", "client_secret_file = \"secret\""),
            exchange.upstream_table(dir.path()),
        ),
    )
    .unwrap();
    let key_hex = common::token_key_hex();
    let env = [("SMTPRELAY_TOKEN_KEY", key_hex.as_str())];

    let (mut relay, address, admin, logs) = start_binary_with_admin(&config, &env);
    let admin = admin.expect("the admin endpoint listens");
    for n in 0..3 {
        send(address, n).await;
    }
    // Two recipients are the day's budget: the third message waits, and /health says why.
    let report = health_with_held_mailbox(admin).await;
    assert_eq!(exchange.state().received.len(), 2);
    assert_eq!(report["status"], "degraded", "{report}");
    let held = &report["held_mailboxes"][0];
    assert_eq!(held["mailbox"], "relay@contoso.com", "{report}");
    assert_eq!(held["budget"], "daily", "{report}");
    assert_eq!(held["messages"], 1, "{report}");
    // Sending resumes a day after the first send.
    let until = held["until"].as_u64().unwrap();
    let now = smtprelay::clock::unix_secs();
    assert!(
        until > now + 86_000 && until <= now + 86_401,
        "{until} vs {now}"
    );
    let reasons = report["reasons"].to_string();
    assert!(
        reasons.contains("daily recipient budget spent"),
        "{reasons}"
    );

    // A reload completes at once and keeps the budget.
    let start = Instant::now();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "reload took {:?}",
        start.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(exchange.state().received.len(), 2);

    // A stop ends within the shutdown timeout; the waiting message stays queued.
    signal(&relay, libc::SIGTERM);
    let took = exit_time(&mut relay, SHUTDOWN_TIMEOUT * 3);
    assert!(took < SHUTDOWN_TIMEOUT, "stop took {took:?}");

    // The state directory and the saved budgets are the service user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: std::path::PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path().join("state")), 0o750);
    assert_eq!(mode(dir.path().join("state/budgets.json")), 0o600);

    // After a restart the day's budget is still spent: nothing more goes out.
    let (mut relay, _, admin, _logs) = start_binary_with_admin(&config, &env);
    let report = health_with_held_mailbox(admin.expect("the admin endpoint listens")).await;
    assert_eq!(report["held_mailboxes"][0]["budget"], "daily", "{report}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(exchange.state().received.len(), 2);
    assert_eq!(report["queue"]["depth"], 1, "{report}");
    signal(&relay, libc::SIGTERM);
    exit_time(&mut relay, SHUTDOWN_TIMEOUT * 3);
}
