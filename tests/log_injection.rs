//! Client-supplied text in log lines is escaped and cut: a user name with a newline cannot
//! forge a log line, an escape sequence cannot recolour the admin's terminal, and a huge user
//! name does not flood the log. Its own test binary: it installs the global log subscriber.

mod common;

use base64::Engine;
use common::{TestRelay, config_text};

const FORGED: &str = "2026-11-28T09:00:00.000000Z  INFO smtprelay::smtp::session::auth: authenticated peer=10.0.0.1:1 user=admin";

#[tokio::test]
async fn client_text_cannot_forge_or_flood_log_lines() {
    let captured = common::CapturedLogs::install("debug");
    let hash = smtprelay::smtp::policy::hash_password("pw");
    let relay = TestRelay::start_with(move |state| {
        let listen = "[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"optional\"\nallow_plaintext_auth = true\n";
        config_text(
            state,
            listen,
            &format!("[[user]]\nname = \"app\"\npassword_hash = {hash:?}\n[access]\ntrusted_networks = []\n"),
        )
    })
    .await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut client = relay.connect().await;
    client.expect("EHLO x", 250).await;
    // AUTH PLAIN: authzid, user name with a forged line and a colour escape, password.
    let user = format!("evil\n{FORGED}\x1b[31m");
    let plain = [b"\0".as_slice(), user.as_bytes(), b"\0wrong"].concat();
    client
        .expect(&format!("AUTH PLAIN {}", b64(&plain)), 535)
        .await;
    // AUTH LOGIN with a user name of 600 characters.
    client.expect("AUTH LOGIN", 334).await;
    client.expect(&b64("u".repeat(600).as_bytes()), 334).await;
    client.expect(&b64(b"wrong"), 535).await;
    // An ESMTP parameter with an escape sequence, and a mechanism with one.
    client
        .expect("MAIL FROM:<a@b.example> X-\x1b[2J=1", 555)
        .await;
    client.expect("AUTH X\x1b[2J", 504).await;
    client.expect("QUIT", 221).await;

    let text = captured.text();
    assert!(
        !text.contains('\x1b'),
        "a raw escape reached the log:\n{text}"
    );
    for line in text.lines() {
        assert!(!line.starts_with(FORGED), "forged line in the log:\n{text}");
    }
    assert!(text.contains("user=evil\\n2026-11-28T09:00:00"), "{text}");
    let long = text
        .lines()
        .find(|l| l.contains("authentication failed") && l.contains("uuuu"))
        .expect("the long user name's failure is logged");
    assert!(long.len() < 600, "{} characters: {long}", long.len());
    assert!(long.contains("344 more characters"), "{long}");
}

/// Every refusal leaves one log line (peer, user, sender, recipient, reply, reason) and is
/// counted by reason in /metrics.
#[tokio::test]
async fn refusals_are_logged_and_counted() {
    let captured = common::CapturedLogs::install("debug");
    let relay = TestRelay::start(
        "[access]\ntrusted_networks = []\nallowed_senders = [\"*@contoso.com\"]\n",
    )
    .await;
    let mut client = relay.connect().await;
    client.expect("EHLO x", 250).await;
    client
        .expect("MAIL FROM:<intruder@evil.example>", 550)
        .await;
    client.expect("MAIL FROM:<printer@contoso.com>", 250).await;
    client
        .expect("RCPT TO:<victim@fabrikam.example>", 554)
        .await;
    client.expect("QUIT", 221).await;

    let text = captured.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" refused "))
        .filter(|l| l.contains("evil.example") || l.contains("victim@fabrikam.example"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("reply=550 5.7.1") && lines[0].contains("reason=\"sender_not_allowed\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("from=printer@contoso.com")
            && lines[1].contains("to=victim@fabrikam.example"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("reply=554 5.7.1") && lines[1].contains("reason=\"relay_denied\""),
        "{}",
        lines[1]
    );

    let mut metrics = String::new();
    relay.metrics.render(&mut metrics);
    assert!(
        metrics.contains("smtprelay_refusals_total{reason=\"relay_denied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtprelay_refusals_total{reason=\"sender_not_allowed\"} 1"),
        "{metrics}"
    );
}
