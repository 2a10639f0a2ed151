//! The status page at `GET /` on the admin port, loaded in a real headless Chromium (Debian's
//! `chromium`), and `smtprelay status`: both must say what `/health` says.

mod common;

use std::time::Duration;

use common::tokens::{World, WorldOptions};
use common::{chromium_dom, http_get};

/// The text of the first element that starts with `start` (an opening tag's prefix).
fn element<'a>(dom: &'a str, start: &str) -> &'a str {
    let at = dom
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in\n{dom}"));
    let rest = &dom[at..];
    let open_end = rest.find('>').unwrap() + 1;
    let tag = start[1..].split([' ', '>']).next().unwrap();
    let close = rest.find(&format!("</{tag}>")).unwrap();
    &rest[open_end..close]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_health_says() {
    let w = World::start(WorldOptions::default()).await;
    let (relay, exchange) = (&w.relay, &w.exchange);
    exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 Recipient not found".into(),
    );
    relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: a\r\n\r\na\r\n",
        )
        .await;
    relay
        .send(
            "scanner@contoso.com",
            &["ghost@fabrikam.com"],
            b"Subject: b\r\n\r\nb\r\n",
        )
        .await;
    relay.drained().await;
    // Exchange has trouble: the next message defers and the relay is degraded.
    exchange.state().faults.push_back((
        common::exchange::Stage::Mail,
        "421 4.3.2 Service not available".into(),
    ));
    relay
        .send(
            "printer@contoso.com",
            &["c@fabrikam.com"],
            b"Subject: c\r\n\r\nc\r\n",
        )
        .await;
    let admin = relay.admin().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (_, text) = http_get(&format!("{admin}/health")).await;
        let health: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The queue census is published each second: wait for it to count the deferral.
        let (_, status) = http_get(&format!("{admin}/status.json")).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if health["status"] == "degraded" && status["queue"]["deferred"] == 1 {
            break health;
        }
        assert!(std::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let dom = tokio::task::spawn_blocking(move || chromium_dom(&format!("{admin}/")))
        .await
        .unwrap();
    // The verdict and its reasons, as /health gives them.
    assert_eq!(element(&dom, "<span id=\"status\""), "degraded");
    let reasons = element(&dom, "<ul id=\"reasons\"");
    for reason in health["reasons"].as_array().unwrap() {
        let reason = reason.as_str().unwrap();
        let shown = reason
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(reasons.contains(&shown), "{reason} not in {reasons}");
    }
    assert!(
        reasons.contains("account contoso: deliveries defer since"),
        "{reasons}"
    );
    // The account and its token, counted down by the page's script.
    let account = element(&dom, "<tr data-account=\"contoso\"");
    assert!(
        account.contains(health["accounts"][0]["state"].as_str().unwrap()),
        "{account}"
    );
    let countdown = element(account, "<span class=\"countdown\"");
    assert!(
        countdown.ends_with('s') && countdown.contains("m "),
        "the script did not run: {countdown}"
    );
    // The budget: four sends as the account's mailbox (two, the bounce report, and the
    // deferred attempt, which counts as the budget cannot know how far Exchange got).
    let budget = element(&dom, "<tr data-mailbox=\"relay@contoso.com\"");
    assert!(budget.contains("4 of 30"), "{budget}");
    // The queue, by what it waits for.
    let queue = element(&dom, "<table id=\"queue\"");
    assert!(
        queue.contains(&format!(
            "data-count=\"depth\">{}<",
            health["queue"]["depth"]
        )),
        "{queue}"
    );
    assert!(queue.contains("data-count=\"deferred\">1<"), "{queue}");
    // The last deliveries, newest first, with their replies.
    let deliveries = element(&dom, "<table id=\"deliveries\"");
    let mut results: Vec<&str> = deliveries
        .match_indices("class=\"result ")
        .map(|(at, _)| deliveries[at + 14..].split('"').next().unwrap())
        .collect();
    // The deferral came last; the others finished in whatever order their records did.
    assert_eq!(results[0], "deferred", "{deliveries}");
    results[1..].sort();
    assert_eq!(
        results,
        ["deferred", "bounced", "delivered", "delivered"],
        "{deliveries}"
    );
    assert!(
        deliveries.contains("<td>&lt;&gt;</td>"),
        "the report's null sender: {deliveries}"
    );
    assert!(
        deliveries.contains("421 4.3.2 Service not available"),
        "{deliveries}"
    );
    assert!(deliveries.contains("550 5.1.10"), "{deliveries}");
    // The chart: three received, two delivered (one the bounce report), one deferred.
    let chart = element(&dom, "<div id=\"chart\"");
    for (series, total) in [("received", 3), ("delivered", 2), ("deferred", 1)] {
        let group = element(chart, &format!("<g class=\"{series}\""));
        let sum: u64 = group
            .match_indices("data-value=\"")
            .map(|(at, _)| {
                group[at + 12..]
                    .split('"')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(sum, total, "{series}: {group}");
    }
    // Nothing is loaded from elsewhere.
    assert!(!dom.contains("src=\"http"), "{dom}");
    assert!(!dom.contains("href=\"http"), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtprelay_status_prints_the_summary_with_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let w = World::start(WorldOptions {
        extra: &format!("[admin]\nbearer_token_file = {token_file:?}\n"),
        ..Default::default()
    })
    .await;
    w.relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: a\r\n\r\na\r\n",
        )
        .await;
    w.relay.drained().await;
    let admin = w.relay.admin().await;
    let config = dir.path().join("smtprelay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = {:?}\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [admin]\nbearer_token_file = {token_file:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(["status", "--config"])
            .arg(&config)
            .args(["--url", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(text.contains("on relay.test: healthy"), "{text}");
    assert!(text.contains("contoso              smtp as relay@contoso.com (client_credentials): token valid, expires in"), "{text}");
    assert!(text.contains("1/30 in the rate window"), "{text}");
    assert!(
        text.contains("Last hour: 1 received, 1 delivered, 0 deferred"),
        "{text}"
    );
    assert!(
        text.contains("delivered contoso <scanner@contoso.com> (1 rcpt): 250"),
        "{text}"
    );
}

/// Runs `smtprelay COMMAND --url ADMIN` (with a configuration that has no admin endpoint of
/// its own, so only --url says where to ask).
async fn cli_against(command: &'static str, admin: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("smtprelay.toml");
        std::fs::write(
            &config,
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n[admin]\nlisten = \"\"\n",
        )
        .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args([command, "--config"])
            .arg(&config)
            .args(["--url", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Waits until `/health` says `status`.
async fn health_becomes(admin: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let (_, body) = http_get(&format!("{admin}/health")).await;
        if body.contains(&format!("\"status\":\"{status}\"")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_health_exit_with_the_verdict() {
    // (status's exit code, health's) for each verdict, as monitoring and probes read them.
    let w = World::start(WorldOptions::default()).await;
    w.relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: a\r\n\r\na\r\n",
        )
        .await;
    w.relay.drained().await;
    let admin = w.relay.admin().await;
    health_becomes(&admin, "healthy").await;
    let (status, health) = (
        cli_against("status", admin.clone()).await,
        cli_against("health", admin.clone()).await,
    );
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    assert_eq!(String::from_utf8_lossy(&health.stdout), "healthy\n");

    // Deliveries that defer: mail still flows (or will), the admin should look.
    w.exchange.state().rcpt_replies.insert(
        "b@fabrikam.com".into(),
        "451 4.3.0 Temporary server error".into(),
    );
    w.relay
        .send(
            "scanner@contoso.com",
            &["b@fabrikam.com"],
            b"Subject: b\r\n\r\nb\r\n",
        )
        .await;
    health_becomes(&admin, "degraded").await;
    let (status, health) = (
        cli_against("status", admin.clone()).await,
        cli_against("health", admin.clone()).await,
    );
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(": DEGRADED"),
        "{status:?}"
    );
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stdout)
            .starts_with("degraded: account contoso: deliveries defer"),
        "{health:?}"
    );

    // No account: mail cannot flow.
    let lone = common::TestRelay::start("").await;
    let admin = lone.admin().await;
    health_becomes(&admin, "unhealthy").await;
    let (status, health) = (
        cli_against("status", admin.clone()).await,
        cli_against("health", admin.clone()).await,
    );
    assert_eq!(status.status.code(), Some(2), "{status:?}");
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stderr).starts_with("unhealthy: "),
        "{health:?}"
    );

    // Nobody answering counts as the worst.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let (status, health) = (
        cli_against("status", closed.clone()).await,
        cli_against("health", closed).await,
    );
    assert_eq!(status.status.code(), Some(2), "{status:?}");
    assert_eq!(health.status.code(), Some(1), "{health:?}");
}
