//! Delivery end to end: SMTP in, the spool, XOAUTH2 to the Exchange double with tokens from
//! the Entra double, and what each upstream reply does to the queue.

mod common;

use common::exchange::Stage;
use common::tokens::{World, WorldOptions};
use common::{TestRelay, without_received};

/// A relay whose single account sends through the Exchange double as relay@contoso.com.
async fn world(account: &str, extra: &str) -> World {
    world_with("client_credentials", account, extra).await
}

async fn world_with(flow: &str, account: &str, extra: &str) -> World {
    World::start(WorldOptions {
        flow,
        account,
        extra,
        ..Default::default()
    })
    .await
}

/// Waits until every queued message has had at least one attempt.
async fn every_message_attempted(relay: &TestRelay) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let attempted = |m: &smtprelay::queue::MessageFile| {
        relay
            .spool
            .paths()
            .read_state(&m.envelope)
            .unwrap()
            .attempts
            > 0
    };
    while !relay.spool.messages().iter().all(attempted) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every message was attempted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn send(relay: &TestRelay, from: &str, to: &[&str], data: &[u8]) -> String {
    relay.send(from, to, data).await
}

/// What the client sends after DATA (dot-stuffed) …
const MESSAGE: &[u8] = b"From: scanner@contoso.com\r\nSubject: scan\r\n\r\n..leading dot\r\n...two dots\r\n..\r\n8-bit \xc3\xa9\r\n";
/// … and the message itself, which must reach the upstream unchanged.
const CONTENT: &[u8] = b"From: scanner@contoso.com\r\nSubject: scan\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n8-bit \xc3\xa9\r\n";

#[tokio::test]
async fn messages_arrive_byte_identical_with_xoauth2() {
    let w = world("", "").await;
    let id = send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com", "b@fabrikam.com"],
        MESSAGE,
    )
    .await;
    let spooled = w.relay.queued();
    let stored = spooled[0].1.clone();
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].mailbox, "relay@contoso.com");
    assert_eq!(received[0].sender, "scanner@contoso.com");
    assert_eq!(received[0].recipients, ["a@fabrikam.com", "b@fabrikam.com"]);
    // Exactly the spooled bytes: Received header, then what the client sent (unstuffed).
    assert_eq!(received[0].data, stored);
    assert_eq!(without_received(&received[0].data), CONTENT);
    assert!(String::from_utf8_lossy(&stored).contains(&id));
    assert_eq!(w.entra.requests("client_credentials"), 1);
}

#[tokio::test]
async fn several_messages_share_a_connection() {
    let w = world("", "").await;
    send_numbered(&w.relay, 5).await;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 5);
    assert!(
        w.exchange.state().auth_attempts <= 2,
        "{}",
        w.exchange.state().auth_attempts
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_a_command_timeout_for_a_silent_quit() {
    let mut w = world("", "").await;
    w.exchange
        .state()
        .faults
        .push_back((Stage::Quit, "silent".into()));
    send_numbered(&w.relay, 1).await;
    w.relay.drained().await;
    // The connection stays open for the next message; shutdown ends it with QUIT, which
    // the server leaves unanswered. command_timeout is 10 s, QUIT waits 5 s.
    let started = std::time::Instant::now();
    w.relay.stop().await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(9), "{took:?}");
}

#[tokio::test]
async fn a_refused_token_is_refreshed_and_the_message_goes_out() {
    let w = world("", "").await;
    w.exchange
        .state()
        .auth_faults
        .push_back("535 5.7.3 Authentication unsuccessful [expired]");
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 1);
    assert_eq!(
        w.entra.requests("client_credentials"),
        2,
        "one fresh token after the 535"
    );
}

/// Issue 22: with tokens that live less than `refresh_before` (5 min by default), every
/// worker and the background task refreshed on every turn: thousands of token requests a
/// second. A token now lasts half its lifetime.
#[tokio::test]
async fn two_minute_tokens_are_not_refreshed_in_a_loop_while_relaying() {
    let w = World::start(WorldOptions {
        token_lifetime: Some(120),
        extra: "rate = \"100000/min\"\n",
        ..Default::default()
    })
    .await;
    send_numbered(&w.relay, 40).await;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 40);
    // Idle a moment too: the background task must not loop either.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let requests = w.entra.requests("client_credentials");
    assert!(requests <= 3, "{requests} token requests");
}

#[tokio::test]
async fn a_refused_recipient_bounces_and_the_others_are_delivered() {
    let w = world("", "").await;
    w.exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
            .into(),
    );
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com", "ghost@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received.len(), 2, "the message and its bounce");
    assert_eq!(received[0].recipients, ["a@fabrikam.com"]);
    // The report goes to the envelope sender, through the same account.
    let report = &received[1];
    assert_eq!(report.recipients, ["scanner@contoso.com"]);
    assert_eq!(report.sender, "relay@contoso.com");
    let text = String::from_utf8_lossy(&report.data);
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; ghost@fabrikam.com"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
        "{text}"
    );
    assert!(
        text.contains("Subject: scan"),
        "original headers quoted: {text}"
    );
    assert!(
        !text.contains("a@fabrikam.com>:"),
        "only the failed recipient is reported"
    );
}

#[tokio::test]
async fn a_null_sender_message_never_bounces() {
    let w = world("", "").await;
    w.exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 Recipient not found".into(),
    );
    send(&w.relay, "", &["ghost@fabrikam.com"], MESSAGE).await;
    w.relay.drained().await;
    assert!(w.exchange.state().received.is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried_on_schedule() {
    let w = world("", "[queue]\nretry = [\"1s\"]\n").await;
    {
        let mut state = w.exchange.state();
        state
            .faults
            .push_back((Stage::Mail, "451 4.7.0 Temporary server error".into()));
        state.faults.push_back((Stage::Dot, "drop".into()));
    }
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(
        received.len(),
        1,
        "delivered once, after two failed attempts"
    );
    assert_eq!(without_received(&received[0].data), CONTENT);
}

#[tokio::test]
async fn too_many_recipients_split_the_transaction() {
    let w = world("", "").await;
    w.exchange
        .state()
        .faults
        .push_back((Stage::Rcpt, "452 4.5.3 Too many recipients".into()));
    // The first RCPT is accepted, the second gets 452: the rest go in a second transaction.
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    let all: Vec<String> = received.iter().flat_map(|r| r.recipients.clone()).collect();
    assert_eq!(all.len(), 3, "{received:?}");
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].recipients, ["a@fabrikam.com"]);
}

/// Sends `count` one-line messages, subjects "0", "1", …, from scanner@contoso.com.
async fn send_numbered(relay: &TestRelay, count: usize) {
    for i in 0..count {
        let body = format!("Subject: {i}\r\n\r\nx\r\n");
        send(
            relay,
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            body.as_bytes(),
        )
        .await;
    }
}

/// The message's Subject line, to tell messages apart.
fn subject(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_messages_while_the_token_expires_every_few_seconds() {
    let w = world(
        "",
        "rate = \"100000/min\"\n[tokens]\nrefresh_before = \"1s\"\n[access]\nclient_rate = \"100000/min\"\n",
    )
    .await;
    w.entra.state().access_token_lifetime = 2;
    let tokens = w.relay.tokens.clone().unwrap();
    tokens.refresh_now("contoso").await.unwrap();
    let started = std::time::Instant::now();
    // Connections end often, so new ones log in with whatever token is current.
    w.exchange.state().messages_per_connection = Some(7);
    let mut clients = Vec::new();
    for c in 0..10 {
        let addr = w.relay.addr();
        clients.push(tokio::spawn(async move {
            let mut client = common::Client::connect(addr).await;
            client.expect("EHLO load", 250).await;
            for n in 0..50 {
                let body = format!("Subject: {c}-{n}\r\n\r\nline one\r\n..dotted\r\n");
                let (code, _) = client
                    .send_message("scanner@contoso.com", &["a@fabrikam.com"], body.as_bytes())
                    .await;
                assert_eq!(code, 250);
                if n % 5 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while !w.relay.spool.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} left",
            w.relay.spool.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let received = w.exchange.state().received.clone();
    let mut subjects: Vec<String> = received.iter().map(|r| subject(&r.data)).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(received.len(), 500, "each delivered exactly once");
    assert_eq!(subjects.len(), 500);
    for r in &received {
        assert!(without_received(&r.data).ends_with(b"line one\r\n.dotted\r\n"));
    }
    let renewals = w.entra.requests("client_credentials");
    let elapsed = started.elapsed().as_secs();
    assert!(
        renewals >= 3,
        "{renewals} tokens in {elapsed} s: not renewed along the way"
    );
}

#[tokio::test]
async fn mail_waits_while_the_upstream_is_down_and_goes_out_when_it_is_back() {
    let w = world("", "[queue]\nretry = [\"1s\"]\n").await;
    w.exchange.state().down =
        Some("421 4.3.2 Service not available, closing transmission channel".into());
    send_numbered(&w.relay, 5).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(w.relay.spool.len(), 5);
    let file = &w.relay.spool.messages()[0];
    let state = w.relay.spool.paths().read_state(&file.envelope).unwrap();
    assert!(
        state.attempts >= 1 && state.last_error.as_deref().unwrap_or("").contains("421"),
        "{state:?}"
    );
    // What an admin sees meanwhile.
    // Asynchronously: the relay runs on this test's runtime and answers the command.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["queue", "show", &file.envelope.id.to_string(), "--config"])
        .arg(w.relay.dir.path().join("smtprelay.toml"))
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("state:       deferred"), "{shown}");
    assert!(shown.contains("pending    <a@fabrikam.com>"), "{shown}");
    let waiting = shown.lines().find(|l| l.starts_with("waiting:")).unwrap();
    assert!(waiting.contains("upstream replied 421 4.3.2"), "{shown}");
    w.exchange.state().down = None;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 5);
}

#[tokio::test]
async fn throttling_pauses_the_account_then_delivers() {
    let w = world("", "[queue]\nretry = [\"1s\"]\n").await;
    w.exchange.state().faults.push_back((
        Stage::Mail,
        "451 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded".into(),
    ));
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 1);
}

#[tokio::test]
async fn the_rate_is_never_exceeded_in_any_window() {
    // Keys right after the upstream table belong to it.
    let w = world("", "rate = \"3/2s\"\n").await;
    send_numbered(&w.relay, 9).await;
    w.relay.drained().await;
    let times = w.exchange.state().accepted_at.clone();
    assert_eq!(times.len(), 9);
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < std::time::Duration::from_secs(2))
            .count();
        assert!(in_window <= 3, "{in_window} messages within 2 s");
    }
}

#[tokio::test]
async fn a_revoked_login_holds_mail_until_a_new_login() {
    let w = world_with("device_code", "", "").await;
    let tokens = w.relay.tokens.clone().unwrap();
    let login = || async {
        let oauth = tokens.oauth_account("contoso").unwrap();
        let entra = w.entra.clone();
        let response = oauth
            .device_code(tokens.client(), move |a| {
                entra.device_login(&a.user_code, common::entra::DeviceStatus::Approved)
            })
            .await
            .unwrap();
        tokens
            .store_response("contoso", response, true)
            .await
            .unwrap();
    };
    login().await;
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        b"Subject: first\r\n\r\nx\r\n",
    )
    .await;
    w.relay.drained().await;

    // The user's password is reset: the refresh token is revoked, the access token refused.
    w.entra.revoke_refresh_tokens();
    w.exchange
        .state()
        .auth_faults
        .push_back("535 5.7.3 Authentication unsuccessful [revoked]");
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        b"Subject: second\r\n\r\nx\r\n",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    assert_eq!(w.relay.spool.len(), 1, "held, not failed");
    let status = &tokens.statuses()[0];
    assert_eq!(status.health.name(), "needs_login", "{status:?}");
    let file = &w.relay.spool.messages()[0];
    let state = w.relay.spool.paths().read_state(&file.envelope).unwrap();
    assert_eq!(
        state.attempts, 0,
        "a token fault is not the message's attempt"
    );
    assert!(state.last_error.unwrap().contains("log in again"));

    login().await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received.len(), 2);
    assert_eq!(subject(&received[1].data), "second");
}

#[tokio::test]
async fn on_failure_keep_moves_the_message_to_failed() {
    let w = world("", "[queue]\non_failure = \"keep\"\n").await;
    w.exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 Recipient not found".into(),
    );
    let id = send(
        &w.relay,
        "scanner@contoso.com",
        &["ghost@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    assert!(
        w.exchange.state().received.is_empty(),
        "no bounce with keep"
    );
    let failed = w.relay.spool.paths().failed();
    assert!(failed.join(format!("{id}.msg")).exists());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(failed.join(format!("{id}.state"))).unwrap())
            .unwrap();
    // The reply is kept typed: DSNs and `queue show` read its code, not a string.
    let reply = &state["recipients"][0]["reply"];
    assert_eq!(reply["code"], 550, "{state}");
    assert_eq!(reply["enhanced"], "5.1.10", "{state}");
}

#[tokio::test]
async fn mail_older_than_max_age_fails_and_is_reported() {
    let w = world("", "[queue]\nretry = [\"1s\"]\nmax_age = \"2s\"\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    // Up again only for the report, once the message itself has expired: the queue then
    // holds the report alone (from the null sender).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let queued = w.relay.spool.messages();
        if !queued.is_empty() && queued.iter().all(|m| m.envelope.sender.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    w.exchange.state().down = None;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received.len(), 1, "only the report");
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(
        text.contains("Final-Recipient: rfc822; a@fabrikam.com"),
        "{text}"
    );
    assert!(
        text.contains("421 4.3.2"),
        "the last upstream reply is quoted: {text}"
    );
}

#[tokio::test]
async fn rewrite_sender_sends_as_the_mailbox() {
    let w = world("rewrite_sender = true", "").await;
    send(
        &w.relay,
        "printer@made-up.local",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(
        (received[0].mailbox.as_str(), received[0].sender.as_str()),
        ("relay@contoso.com", "relay@contoso.com")
    );
    assert_eq!(
        without_received(&received[0].data),
        CONTENT,
        "only the envelope changes"
    );
}

#[tokio::test]
async fn sender_mailboxes_send_as_themselves_and_a_forbidden_one_bounces() {
    let w = World::start(WorldOptions {
        mailbox: "{sender}",
        ..Default::default()
    })
    .await;
    w.exchange
        .state()
        .app_mailboxes
        .insert("alice@contoso.com".into());
    send(&w.relay, "alice@contoso.com", &["a@fabrikam.com"], MESSAGE).await;
    send(
        &w.relay,
        "mallory@contoso.com",
        &["a@fabrikam.com"],
        MESSAGE,
    )
    .await;
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received[0].mailbox, "alice@contoso.com");
    assert_eq!(received[0].sender, "alice@contoso.com");
    // Mallory's message fails (the app may not send as her) and her report goes... to her,
    // as her: refused too, and a report is never reported on.
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(w.relay.spool.is_empty());
}

/// Runs `smtprelay queue …` against the relay's config.
fn queue_cli(relay: &TestRelay, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(relay.dir.path().join("smtprelay.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_control_while_the_relay_runs() {
    let w = world("", "[queue]\nretry = [\"1h\"]\non_failure = \"keep\"\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    let mut ids = Vec::new();
    for name in ["held", "flushed", "deleted"] {
        ids.push(
            send(
                &w.relay,
                "scanner@contoso.com",
                &["a@fabrikam.com"],
                format!("Subject: {name}\r\n\r\nx\r\n").as_bytes(),
            )
            .await,
        );
    }
    // Each has failed once and now waits an hour.
    every_message_attempted(&w.relay).await;
    let (ok, text) = queue_cli(&w.relay, &["hold", &ids[0]]);
    assert!(ok && text.contains("held"), "{text}");
    let (ok, text) = queue_cli(&w.relay, &["delete", &ids[2]]);
    assert!(ok && text.contains("deleted"), "{text}");
    let (ok, text) = queue_cli(&w.relay, &["delete", &ids[2]]);
    assert!(!ok && text.contains("no message"), "{text}");

    w.exchange.state().down = None;
    let (ok, text) = queue_cli(&w.relay, &["flush"]);
    assert!(ok && text.contains("1 message(s) due now"), "{text}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.exchange.state().received.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flush did not deliver"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, listing) = queue_cli(&w.relay, &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(rows[0]["state"], "held");

    let (ok, text) = queue_cli(&w.relay, &["release", &ids[0]]);
    assert!(ok && text.contains("released"), "{text}");
    w.relay.drained().await;
    let subjects: Vec<String> = w
        .exchange
        .state()
        .received
        .iter()
        .map(|r| subject(&r.data))
        .collect();
    assert_eq!(subjects, ["flushed", "held"]);

    // A failed message kept in failed/ comes back with `retry --failed`.
    w.exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 Recipient not found".into(),
    );
    send(
        &w.relay,
        "scanner@contoso.com",
        &["ghost@fabrikam.com"],
        b"Subject: kept\r\n\r\nx\r\n",
    )
    .await;
    w.relay.drained().await;
    w.exchange.state().rcpt_replies.clear();
    let (ok, text) = queue_cli(&w.relay, &["retry", "--failed"]);
    assert!(ok && text.contains("1 failed message(s) back"), "{text}");
    w.relay.drained().await;
    assert_eq!(subject(&w.exchange.state().received[2].data), "kept");
}

/// Mail deferred while the upstream is away goes out when it answers again, though its
/// retry is ten minutes off and no new mail arrives: the relay probes the upstream meanwhile
/// (a connection and EHLO, no login).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_mail_goes_out_when_the_upstream_answers_again_without_new_mail() {
    let w = world("", "[queue]\nretry = [\"10m\"]\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    for n in 0..3 {
        let subject = format!("Subject: {n}\r\n\r\nx\r\n");
        send(
            &w.relay,
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            subject.as_bytes(),
        )
        .await;
    }
    every_message_attempted(&w.relay).await;
    // The next connection is a probe: no message is due for ten minutes.
    let connections = w.exchange.state().connections;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.exchange.state().connections == connections {
        assert!(tokio::time::Instant::now() < deadline, "no probe");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(w.exchange.state().auth_attempts, 0);

    w.exchange.state().down = None;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 3);
}

/// Issue 22, point 6: `queue release` while the upstream cannot be reached used to try the
/// message at once, which counted an attempt and pushed the next one a retry interval out.
/// Now the message waits for the upstream (probed at once, no attempt) and goes when it
/// answers, with no new mail and long before its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_released_while_the_upstream_is_away_costs_no_attempt() {
    let w = world("", "[queue]\nretry = [\"10m\"]\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    let id = send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    every_message_attempted(&w.relay).await;
    let (ok, text) = queue_cli(&w.relay, &["hold", &id]);
    assert!(ok && text.contains("held"), "{text}");

    let connections = w.exchange.state().connections;
    let (ok, text) = queue_cli(&w.relay, &["release", &id]);
    assert!(ok && text.contains("when the upstream answers"), "{text}");
    let (_, text) = queue_cli(&w.relay, &["show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&text).expect(&text);
    assert_eq!(shown["standing"]["standing"], "deferred", "{shown}");
    assert_eq!(shown["state"]["attempts"], 1, "{shown}");
    let waiting = shown["waiting"].as_str().unwrap();
    assert!(!waiting.contains("1970"), "{waiting}");
    // The release probes at once: a connection without a login.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.exchange.state().connections == connections {
        assert!(tokio::time::Instant::now() < deadline, "no probe");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.exchange.state().auth_attempts, 0);
    let file = w.relay.spool.get(id.parse().unwrap()).await.unwrap();
    let state = w.relay.spool.paths().read_state(&file.envelope).unwrap();
    assert_eq!(state.attempts, 1, "{state:?}");

    w.exchange.state().down = None;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 1);
}

#[tokio::test]
async fn queue_commands_say_so_when_the_relay_is_not_running() {
    let relay = TestRelay::start("").await; // no account, so no delivery and no control socket
    let (ok, text) = queue_cli(&relay, &["flush"]);
    assert!(!ok);
    assert!(text.contains("smtprelay is not running"), "{text}");
}

/// A hold placed while the message's attempt is under way is kept, however the attempt ends
/// (here: a 421), and survives a restart; release then delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_in_flight_is_kept() {
    let w = world("", "[queue]\nretry = [\"1s\"]\n").await;
    {
        let mut exchange = w.exchange.state();
        exchange.slow = Some(std::time::Duration::from_millis(1500));
        exchange
            .faults
            .push_back((Stage::Dot, "421 4.4.2 Connection dropped".into()));
    }
    let id = send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        b"Subject: x\r\n\r\nx\r\n",
    )
    .await;
    // In flight: the upstream sits on the final dot.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.exchange.state().connections == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (ok, text) = queue_cli(&w.relay, &["hold", &id]);
    assert!(ok && text.contains("held when this attempt ends"), "{text}");
    // The attempt fails; the retry interval (1 s) passes; nothing is sent.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(w.exchange.state().received.is_empty());
    let file = w.relay.spool.get(id.parse().unwrap()).await.unwrap();
    let state = w.relay.spool.paths().read_state(&file.envelope).unwrap();
    assert!(state.held, "{state:?}");
    assert_eq!(state.attempts, 1, "{state:?}");
    let (_, text) = queue_cli(&w.relay, &["list"]);
    assert!(text.contains("held"), "{text}");

    let (ok, text) = queue_cli(&w.relay, &["release", &id]);
    assert!(ok && text.contains("released"), "{text}");
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 1);
    let (ok, text) = queue_cli(&w.relay, &["release", &id]);
    assert!(!ok && text.contains("no message"), "{text}");
}

/// When Exchange comes back, mail deferred while it was down goes at once (at the budget's
/// pace), not at each message's retry time: the first attempt that reaches it lets the
/// account's deferred mail go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_mail_goes_at_once_when_the_upstream_is_back() {
    let w = world("", "[queue]\nretry = [\"1h\"]\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    for n in 0..3 {
        send(
            &w.relay,
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            format!("Subject: {n}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    // Each has failed once and now waits an hour.
    every_message_attempted(&w.relay).await;
    w.exchange.state().down = None;
    send(
        &w.relay,
        "scanner@contoso.com",
        &["a@fabrikam.com"],
        b"Subject: back\r\n\r\nx\r\n",
    )
    .await;
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 4);
}

#[tokio::test]
async fn rewrite_from_sends_as_the_mailbox_and_keeps_the_sender_as_reply_to() {
    let w = world("rewrite_from = true\n", "").await;
    let message = b"From: Scanner <scan@printer.local>\r\nTo: a@fabrikam.com\r\nSubject: scan\r\n\r\nFrom: a body line\r\n..dot\r\n";
    send(&w.relay, "scan@printer.local", &["a@fabrikam.com"], message).await;
    let spooled = w.relay.queued()[0].1.clone();
    w.relay.drained().await;
    let received = w.exchange.state().received.clone();
    assert_eq!(received.len(), 1);
    let data = &received[0].data;
    // Only the From field changed (the original is now Reply-To); every other byte, the
    // Received header and the body's "From:" line included, as spooled.
    let from_at = spooled.windows(6).position(|w| w == b"From: ").unwrap();
    let to_at = spooled.windows(4).position(|w| w == b"To: ").unwrap();
    let mut expected = spooled[..from_at].to_vec();
    expected.extend_from_slice(
        b"Reply-To: Scanner <scan@printer.local>\r\nFrom: relay@contoso.com\r\n",
    );
    expected.extend_from_slice(&spooled[to_at..]);
    assert_eq!(data, &expected);
    assert!(data.ends_with(b"From: a body line\r\n.dot\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_say_why_a_message_waits_and_bulk_commands_select() {
    let w = world("", "[queue]\nretry = [\"1h\"]\n").await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    let mut ids = Vec::new();
    for (from, to, subject) in [
        ("scanner@contoso.com", "a@fabrikam.com", "one"),
        ("scanner@contoso.com", "b@northwind.com", "two"),
        ("printer@contoso.com", "a@fabrikam.com", "three"),
        ("printer@contoso.com", "c@fabrikam.com", "four"),
    ] {
        let content = format!("Subject: {subject}\r\n\r\nx\r\n");
        ids.push(send(&w.relay, from, &[to], content.as_bytes()).await);
    }
    every_message_attempted(&w.relay).await;

    let (_, listing) = queue_cli(&w.relay, &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let now = smtprelay::clock::unix_secs();
    for (row, subject) in rows
        .as_array()
        .unwrap()
        .iter()
        .zip(["one", "two", "three", "four"])
    {
        assert_eq!(row["subject"], subject, "{row}");
        assert_eq!(row["account"], "contoso", "{row}");
        let next = row["next_attempt_at"].as_u64().unwrap();
        assert!(next > now + 3500 && next <= now + 3601, "{row}");
        let waiting = row["waiting"].as_str().unwrap();
        assert!(waiting.starts_with("deferred until "), "{row}");
        assert!(waiting.contains("421 4.3.2"), "{row}");
    }
    let (ok, text) = queue_cli(&w.relay, &["show", &ids[0]]);
    assert!(ok, "{text}");
    for expected in [
        "subject:     one",
        "account:     contoso",
        "waiting:     deferred until",
        "next try:",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    let (_, text) = queue_cli(&w.relay, &["list"]);
    assert!(
        text.contains("subject: two") && text.contains("(account contoso)"),
        "{text}"
    );

    // Bulk: by sender, then the same selection again finds nothing left to hold.
    let (ok, text) = queue_cli(&w.relay, &["hold", "--from", "printer@*"]);
    assert!(ok && text.contains("2 message(s) done."), "{text}");
    let (ok, text) = queue_cli(&w.relay, &["hold", "--from", "printer@*"]);
    assert!(ok && text.contains("No message matches."), "{text}");
    let held = |listing: &str| -> Vec<String> {
        let rows: serde_json::Value = serde_json::from_str(listing).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "held")
            .map(|r| r["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        held(&queue_cli(&w.relay, &["list", "--json"]).1),
        ["three", "four"]
    );
    let (_, listing) = queue_cli(&w.relay, &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert!(
        rows[2]["waiting"]
            .as_str()
            .unwrap()
            .starts_with("held by an admin"),
        "{listing}"
    );
    // By recipient: only the held one to c@ is released.
    let (ok, text) = queue_cli(&w.relay, &["release", "--to", "c@*"]);
    assert!(
        ok && text.contains(&format!("{} released", ids[3])),
        "{text}"
    );
    assert_eq!(held(&queue_cli(&w.relay, &["list", "--json"]).1), ["three"]);
    // By age: nothing is an hour old.
    let (ok, text) = queue_cli(&w.relay, &["delete", "--all", "--older-than", "1h"]);
    assert!(ok && text.contains("No message matches."), "{text}");
    let (ok, text) = queue_cli(&w.relay, &["retry", "--to", "*@northwind.com"]);
    assert!(
        ok && text.contains(&format!("{} due now", ids[1])),
        "{text}"
    );
    // IDs named one by one go as they are, so the daemon says why not.
    let (ok, text) = queue_cli(&w.relay, &["release", &ids[0]]);
    assert!(!ok && text.contains("is not held"), "{text}");
    let (ok, text) = queue_cli(&w.relay, &["hold"]);
    assert!(
        !ok && text.contains("name queue IDs, or select messages with --all"),
        "{text}"
    );
    let (ok, text) = queue_cli(&w.relay, &["delete", "--older-than", "soon"]);
    assert!(
        !ok && text.contains("--older-than: expected a duration"),
        "{text}"
    );
    let (ok, text) = queue_cli(&w.relay, &["delete", "--all"]);
    assert!(ok && text.contains("4 message(s) done."), "{text}");
    assert!(w.relay.spool.is_empty());
}
