//! Delivery end to end: SMTP in, the spool, XOAUTH2 to the Exchange double with tokens from
//! the Entra double, and what each upstream reply does to the queue.

mod common;

use common::entra::Entra;
use common::exchange::{Exchange, Stage};
use common::tokens::{account, tenant};
use common::{PLAIN_LISTENER, TestRelay, config_text, without_received};

struct World {
    relay: TestRelay,
    entra: Entra,
    exchange: Exchange,
    _upstream_dir: tempfile::TempDir,
}

/// A relay whose single account sends through the Exchange double as relay@contoso.com.
async fn world(extra_account: &str, extra: &str) -> World {
    let (entra, exchange) = tenant().await;
    let upstream_dir = tempfile::tempdir().unwrap();
    let secret = upstream_dir.path().join("secret");
    std::fs::write(&secret, common::tokens::SECRET).unwrap();
    let table = format!(
        "{}{}",
        account(
            &entra,
            "contoso",
            "app-secret",
            "client_credentials",
            &format!("client_secret_file = {secret:?}\n{extra_account}"),
        ),
        exchange.upstream_table(upstream_dir.path()),
    );
    let extra = format!("{table}{extra}");
    let relay =
        TestRelay::start_with(move |state| config_text(state, PLAIN_LISTENER, &extra)).await;
    World {
        relay,
        entra,
        exchange,
        _upstream_dir: upstream_dir,
    }
}

async fn send(relay: &TestRelay, from: &str, to: &[&str], data: &[u8]) -> String {
    let mut client = relay.connect().await;
    client.expect("EHLO app", 250).await;
    let (code, text) = client.send_message(from, to, data).await;
    assert_eq!(code, 250, "{text}");
    client.expect("QUIT", 221).await;
    text.rsplit(' ').next().unwrap().to_owned()
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
    for i in 0..5 {
        send(
            &w.relay,
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    w.relay.drained().await;
    assert_eq!(w.exchange.state().received.len(), 5);
    assert!(
        w.exchange.state().auth_attempts <= 2,
        "{}",
        w.exchange.state().auth_attempts
    );
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
