//! Exchange's per-mailbox budgets as the running binary keeps them: spent, they hold mail
//! without holding up a reload or a stop, they survive both, and `/health` says which budget
//! holds the mail and until when.

mod common;

use std::time::{Duration, Instant};

use common::tokens::{SECRET, secret_account, tenant};
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
            secret_account(&entra),
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

/// The first `/status.json` whose queue has `attempts` or more attempts behind every one of
/// `messages` messages; polled, as the relay retries every second.
async fn after_attempts(
    config: &std::path::Path,
    messages: usize,
    attempts: u64,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + common::TIMEOUT * 2;
    loop {
        let list = std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(["queue", "list", "--json", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
        if rows.len() == messages
            && rows
                .iter()
                .all(|r| r["attempts"].as_u64() >= Some(attempts))
        {
            return rows;
        }
        assert!(Instant::now() < deadline, "not yet tried: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Five messages to an upstream that refuses every connection, each tried twice: Exchange
/// never saw a transaction, so the mailbox's budgets count none of them, in the budgets
/// file and in a cluster's Redis alike, and `/status.json` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_never_reach_exchange_cost_the_mailbox_nothing() {
    let redis = common::redis::RedisServer::start();
    let (entra, exchange) = tenant().await;
    // A port nothing listens on: every connection is refused.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for cluster in [
        String::new(),
        format!(
            "[cluster]\nredis_url = \"{}\"\nnode_name = \"only\"\nkey_prefix = \"given-back:\"\n",
            redis.url()
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let config = dir.path().join("smtprelay.toml");
        let upstream = exchange.upstream_table(dir.path()).replace(
            &format!("port = {}", exchange.addr.port()),
            &format!("port = {refused}"),
        );
        std::fs::write(
            &config,
            format!(
                "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n\
                 [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
                 [queue]\nretry = [\"1s\"]\n{cluster}{}{upstream}",
                secret_account(&entra),
            ),
        )
        .unwrap();
        let key_hex = common::token_key_hex();
        let env = [("SMTPRELAY_TOKEN_KEY", key_hex.as_str())];
        let (mut relay, address, admin, _logs) = start_binary_with_admin(&config, &env);
        let admin = admin.expect("the admin endpoint listens");
        for n in 0..5 {
            send(address, n).await;
        }
        let rows = after_attempts(&config, 5, 2).await;
        assert!(
            rows.iter()
                .all(|r| r["last_error"].as_str().unwrap_or("").contains("refused")),
            "{rows:?}"
        );
        let (_, status) = common::http_get(&format!("http://{admin}/status.json")).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let budget = &status["budgets"][0];
        assert_eq!(budget["mailbox"], "relay@contoso.com", "{status}");
        assert_eq!(budget["sent"], 0, "{cluster}: {status}");
        assert_eq!(budget["recipients_today"], 0, "{cluster}: {status}");
        assert_eq!(budget["next_send_at"], serde_json::Value::Null, "{status}");
        if cluster.is_empty() {
            signal(&relay, libc::SIGTERM);
            exit_time(&mut relay, SHUTDOWN_TIMEOUT * 3);
            let saved: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.path().join("state/budgets.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(saved["mailboxes"], serde_json::json!({}), "{saved}");
        } else {
            let key = "given-back:rate:relay@contoso.com";
            assert_eq!(redis.integer(&format!("ZCARD {key}")), 0);
            let daily = redis.bulk("HGET given-back:daily:relay@contoso.com total");
            assert!(matches!(daily.as_deref(), None | Some("0")), "{daily:?}");
            signal(&relay, libc::SIGTERM);
            exit_time(&mut relay, SHUTDOWN_TIMEOUT * 3);
        }
    }
}
