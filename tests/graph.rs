//! Delivery through Microsoft Graph sendMail (`transport = "graph"`), against the Graph double.

mod common;

use base64::Engine;

use std::time::Duration;

use common::graph::{Graph, GraphFault};
use common::tokens::{SECRET, World, WorldOptions, app};
use common::{TIMEOUT, TestRelay};

/// A relay whose account sends through the Graph double, with `account` keys added.
async fn graph_world(account: &str, extra: &str) -> (World, Graph) {
    let graph = Graph::start().await;
    let keys = format!("{}{account}", graph.account_keys());
    let w = World::start(WorldOptions {
        account: &keys,
        extra,
        extra_ca: &graph.pki.ca_pem,
        ..Default::default()
    })
    .await;
    graph.trust(&w.entra);
    (w, graph)
}

/// The usual scan, to one recipient.
async fn send_scan(relay: &TestRelay) {
    relay
        .send("scanner@contoso.com", &["ann@fabrikam.com"], MESSAGE)
        .await;
}

/// Waits until `done` holds, or fails after the harness's timeout.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes Mail.Send away from the app; the token the relay holds goes, so the next one is
/// issued without it.
async fn deny_mail_send(w: &World) {
    w.entra.register(common::entra::App {
        secret: Some(SECRET.into()),
        graph_mail_send_denied: true,
        ..app("app-secret")
    });
    let manager = w.relay.tokens.clone().unwrap();
    let held = manager.access_token("contoso").await.unwrap();
    manager.invalidate("contoso", &held.token);
}

/// The delivery state's last error for the one queued message.
fn last_error(relay: &TestRelay) -> Option<String> {
    let file = relay.spool.messages().pop()?;
    relay
        .spool
        .paths()
        .read_state(&file.envelope)
        .ok()?
        .last_error
}

const MESSAGE: &[u8] = b"From: Scanner <scanner@contoso.com>\r\nTo: ann@fabrikam.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n8-bit UTF-8: \xc3\xa9\xc3\xa8 \xe2\x82\xac\r\n";

#[tokio::test]
async fn mail_goes_through_graph_with_envelope_only_recipients_as_bcc() {
    let (w, graph) = graph_world("", "").await;
    w.relay
        .send(
            "scanner@contoso.com",
            &["ann@fabrikam.com", "hidden@fabrikam.com"],
            MESSAGE,
        )
        .await;
    let spooled = w.relay.queued()[0].1.clone();
    w.relay.drained().await;
    let sent = graph.state().sent.clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mailbox, "relay@contoso.com");
    assert_eq!(
        sent[0].recipients,
        ["hidden@fabrikam.com", "ann@fabrikam.com"]
    );
    // One header added in front; every spooled byte (8-bit text included) as it was.
    let mut expected = b"Bcc: hidden@fabrikam.com\r\n".to_vec();
    expected.extend_from_slice(&spooled);
    assert_eq!(sent[0].mime, expected);
    assert!(sent[0].mime.ends_with(b"\xc3\xa9\xc3\xa8 \xe2\x82\xac\r\n"));
    // No SMTP connection was made: the account has no SMTP side.
    assert!(w.exchange.state().received.is_empty());
}

#[tokio::test]
async fn a_burst_of_429s_is_ridden_out_without_a_duplicate() {
    let (w, graph) = graph_world("", "").await;
    graph.state().faults.extend([
        GraphFault::Refuse(429, "ApplicationThrottled", Some(1)),
        GraphFault::Refuse(429, "ApplicationThrottled", Some(1)),
        GraphFault::Refuse(503, "ErrorServerBusy", Some(1)),
    ]);
    send_scan(&w.relay).await;
    w.relay.drained().await;
    let state = graph.state();
    assert_eq!(state.sent.len(), 1, "sent once");
    let statuses: Vec<u16> = state.requests.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [429, 429, 503, 202]);
    // Each retry waited as long as Graph asked.
    for pair in state.requests.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(waited >= Duration::from_millis(950), "{waited:?}");
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_mail_goes() {
    let (w, graph) = graph_world("", "").await;
    send_scan(&w.relay).await;
    w.relay.drained().await;
    // Revoke what was issued: the relay's cached token is now refused with 401.
    w.entra.state().issued.clear();
    let tokens_before = w.entra.requests("client_credentials");
    send_scan(&w.relay).await;
    w.relay.drained().await;
    assert_eq!(graph.state().sent.len(), 2);
    let statuses: Vec<u16> = graph.state().requests.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [202, 401, 202]);
    assert_eq!(w.entra.requests("client_credentials"), tokens_before + 1);
}

#[tokio::test]
async fn a_token_for_the_wrong_audience_holds_the_mail() {
    // An Outlook (SMTP) token: Graph refuses it even when fresh.
    let (w, graph) = graph_world("scope = \"https://outlook.office365.com/.default\"\n", "").await;
    send_scan(&w.relay).await;
    until("the refusal is recorded", || {
        last_error(&w.relay).is_some_and(|e| e.contains("535 5.7.3"))
    })
    .await;
    let error = last_error(&w.relay).unwrap();
    assert!(error.contains("https://graph.microsoft.com"), "{error}");
    // Refused twice (a fresh token once), then held: queued, not failed, nothing sent.
    let statuses: Vec<u16> = graph.state().requests.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [401, 401]);
    assert_eq!(w.relay.spool.len(), 1);
    assert!(graph.state().sent.is_empty());
}

#[tokio::test]
async fn no_mail_send_permission_holds_the_account_and_says_why() {
    let (hook, hooked) = common::webhook().await;
    let (w, graph) = graph_world("", &format!("[alerts]\nwebhook = {hook:?}\n")).await;
    deny_mail_send(&w).await;
    send_scan(&w.relay).await;
    until("the hold is recorded", || {
        last_error(&w.relay).is_some_and(|e| e.contains("ErrorAccessDenied"))
    })
    .await;
    assert!(last_error(&w.relay).unwrap().contains("Mail.Send"));
    // Held, not failed: nothing bounced, and /health names the paused mailbox.
    assert_eq!(w.relay.spool.len(), 1);
    until("the mailbox shows as held", || {
        w.relay
            .delivery_status
            .held()
            .iter()
            .any(|h| h.mailbox == "relay@contoso.com" && h.needs_admin)
    })
    .await;
    assert!(graph.state().sent.is_empty());
    // The admin hears of it, in plain words.
    until("the alert fires", || !hooked.lock().unwrap().is_empty()).await;
    let alert = hooked.lock().unwrap()[0].clone();
    assert_eq!(
        alert["key"], "mailbox:contoso:relay@contoso.com:held",
        "{alert}"
    );
    assert_eq!(alert["state"], "firing");
    assert!(
        alert["summary"].as_str().unwrap().contains("Mail.Send"),
        "{alert}"
    );
}

#[tokio::test]
async fn invalid_recipients_fail_the_message_and_the_sender_hears_of_it() {
    let (w, graph) = graph_world("", "").await;
    graph
        .state()
        .invalid_recipients
        .insert("ghost@fabrikam.com".into());
    let message =
        b"From: scanner@contoso.com\r\nTo: ghost@fabrikam.com\r\nSubject: scan\r\n\r\nx\r\n";
    w.relay
        .send("scanner@contoso.com", &["ghost@fabrikam.com"], message)
        .await;
    until("the report is sent", || !graph.state().sent.is_empty()).await;
    w.relay.drained().await;
    let sent = graph.state().sent.clone();
    assert_eq!(sent.len(), 1, "only the report");
    assert_eq!(sent[0].recipients, ["scanner@contoso.com"]);
    let report = String::from_utf8_lossy(&sent[0].mime);
    assert!(report.contains("multipart/report"), "{report}");
    assert!(report.contains("Status: 5.1.3"), "{report}");
    assert!(report.contains("ErrorInvalidRecipients"), "{report}");
}

/// A scanner's PDF of `len` bytes (bytes no text encoding would keep), written to `client`
/// base64-encoded in 76-character lines as it is made; its SHA-256. Neither side holds the
/// whole message.
async fn stream_pdf(client: &mut common::Client, len: usize) -> Vec<u8> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; 57 * 4096];
    let mut text = Vec::with_capacity(78 * 4096);
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        for byte in &mut block[..n] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = (state >> 24) as u8;
        }
        digest.update(&block[..n]);
        text.clear();
        for line in block[..n].chunks(57) {
            let start = text.len();
            text.resize(start + line.len().div_ceil(3) * 4, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(line, &mut text[start..])
                .unwrap();
            text.truncate(start + written);
            text.extend_from_slice(b"\r\n");
        }
        client.send_raw(&text).await;
        left -= n;
    }
    digest.finish().as_ref().to_vec()
}

#[tokio::test]
async fn a_100_mb_scan_arrives_intact_through_a_draft_and_an_upload_session() {
    let graph = Graph::start().await;
    let keys = graph.account_keys();
    let w = World::start(WorldOptions {
        account: &keys,
        max_message_size: "150MiB",
        extra_ca: &graph.pki.ca_pem,
        ..Default::default()
    })
    .await;
    graph.trust(&w.entra);
    const LEN: usize = 100 * 1024 * 1024;
    let mut client = w.relay.connect().await;
    client.expect("EHLO scanner", 250).await;
    client.expect("MAIL FROM:<scanner@contoso.com>", 250).await;
    client.expect("RCPT TO:<ann@fabrikam.com>", 250).await;
    client.expect("RCPT TO:<hidden@fabrikam.com>", 250).await;
    client.expect("DATA", 354).await;
    client.send_raw(b"From: Scanner <scanner@contoso.com>\r\nTo: ann@fabrikam.com\r\nSubject: Scan 0042\r\nX-Device: MFP-3\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nYour scan, caf\xc3\xa9.\r\n--b\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").await;
    let sha256 = stream_pdf(&mut client, LEN).await;
    client.expect("--b--\r\n.", 250).await;
    client.expect("QUIT", 221).await;
    // Delivery of 100 MB takes a few seconds in the unoptimised test build: wait for it
    // longer than for the usual message.
    let deadline = tokio::time::Instant::now() + 3 * TIMEOUT;
    while !w.relay.spool.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = graph.state();
    assert!(state.sent.is_empty(), "too large for sendMail");
    assert!(state.drafts.is_empty(), "the draft was sent");
    assert_eq!(state.sent_drafts.len(), 1);
    let draft = &state.sent_drafts[0];
    assert_eq!(draft.message["subject"], "Scan 0042");
    assert_eq!(draft.message["body"]["content"], "Your scan, caf\u{e9}.");
    assert_eq!(
        draft.message["toRecipients"][0]["emailAddress"]["address"],
        "ann@fabrikam.com"
    );
    assert_eq!(
        draft.message["bccRecipients"][0]["emailAddress"]["address"],
        "hidden@fabrikam.com"
    );
    assert_eq!(
        draft.message["internetMessageHeaders"][0]["name"],
        "X-Device"
    );
    assert_eq!(draft.attachments.len(), 1);
    let attachment = &draft.attachments[0];
    assert!(attachment.uploaded, "through an upload session");
    assert_eq!(attachment.name, "scan.pdf");
    assert_eq!(attachment.content_type, "application/pdf");
    assert_eq!(attachment.len, LEN);
    assert!(attachment.sha256 == sha256, "the attachment arrived intact");
    // Chunks of at most 4 MiB, multiples of 320 KiB but the last (the double checks each),
    // in order, covering the attachment.
    assert_eq!(
        state.chunks.len(),
        LEN.div_ceil(smtprelay::delivery::agent::transport::graph_draft::CHUNK)
    );
    let (last_start, last_len) = *state.chunks.last().unwrap();
    assert_eq!(last_start + last_len, LEN);
}

#[tokio::test]
async fn token_test_checks_the_graph_token_and_makes_a_request_that_sends_nothing() {
    use smtprelay::cli::token_test::token_test;
    let (w, graph) = graph_world("", "").await;
    let manager = w.relay.tokens.clone().unwrap();
    let steps = token_test(&manager, "contoso", None, "relay.test").await;
    let titles: Vec<(&str, bool)> = steps.iter().map(|s| (s.title.as_str(), s.ok)).collect();
    assert_eq!(
        titles,
        [("token", true), ("claims", true), ("graph", true)],
        "{steps:?}"
    );
    assert!(steps[1].detail.contains("aud=https://graph.microsoft.com"));
    assert!(steps[2].detail.contains("nothing was sent"));
    assert!(graph.state().sent.is_empty());
    assert_eq!(graph.state().requests.len(), 1);

    // A mailbox Graph cannot send as fails the request step, in plain words.
    graph
        .state()
        .rest_disabled
        .insert("relay@contoso.com".into());
    let steps = token_test(&manager, "contoso", None, "relay.test").await;
    let last = steps.last().unwrap();
    assert!(!last.ok && last.title == "graph", "{steps:?}");
    assert!(
        last.detail.contains("MailboxNotEnabledForRESTAPI"),
        "{}",
        last.detail
    );
    assert!(
        last.detail.contains("unlicensed, on-premises"),
        "{}",
        last.detail
    );
}

#[tokio::test]
async fn token_test_says_when_mail_send_is_missing() {
    use smtprelay::cli::token_test::token_test;
    let (w, _graph) = graph_world("", "").await;
    deny_mail_send(&w).await;
    let manager = w.relay.tokens.clone().unwrap();
    let steps = token_test(&manager, "contoso", None, "relay.test").await;
    let claims = steps.iter().find(|s| s.title == "claims").unwrap();
    assert!(!claims.ok, "{steps:?}");
    assert!(
        claims.detail.contains("lacks Mail.Send"),
        "{}",
        claims.detail
    );
}

#[tokio::test]
async fn with_smtp_auth_disabled_the_same_mail_flows_through_graph() {
    let graph = Graph::start().await;
    let keys = format!(
        "fallback_transport = \"graph\"\ngraph_endpoint = {:?}\n",
        graph.endpoint()
    );
    let w = World::start(WorldOptions {
        account: &keys,
        extra_ca: &graph.pki.ca_pem,
        ..Default::default()
    })
    .await;
    graph.trust(&w.entra);
    // Security defaults: Exchange answers 535 5.7.139 to AUTH.
    w.exchange
        .state()
        .auth_disabled
        .insert("relay@contoso.com".into());
    send_scan(&w.relay).await;
    let spooled = w.relay.queued()[0].1.clone();
    w.relay.drained().await;
    let sent = graph.state().sent.clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].mime, spooled,
        "every recipient is named: no header added"
    );
    assert!(w.exchange.state().received.is_empty());

    // /health says the account sends through Graph, and why.
    until("the fallback is published", || {
        !w.relay.delivery_status.fallbacks().is_empty()
    })
    .await;
    let (code, body) = common::http_get(&format!("{}/health", w.relay.admin().await)).await;
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{body}");
    assert_eq!(health["graph_fallbacks"][0]["account"], "contoso", "{body}");
    assert!(body.contains("sending through Microsoft Graph"), "{body}");
    assert!(body.contains("5.7.139"), "{body}");
    // The twin has a Graph token of its own.
    let tokens = w.relay.tokens.clone().unwrap();
    assert!(
        tokens
            .statuses()
            .iter()
            .any(|s| s.account == "contoso/graph")
    );

    // While the switch lasts, mail goes straight to Graph: no SMTP login is tried.
    let logins = w.exchange.state().auth_attempts;
    send_scan(&w.relay).await;
    w.relay.drained().await;
    assert_eq!(graph.state().sent.len(), 2);
    assert_eq!(w.exchange.state().auth_attempts, logins);
}

#[tokio::test]
async fn rewrite_from_applies_to_graph_as_well() {
    let (w, graph) = graph_world("rewrite_from = true\n", "").await;
    send_scan(&w.relay).await;
    w.relay.drained().await;
    let sent = graph.state().sent.clone();
    let parsed = mail_parser::MessageParser::default()
        .parse(&sent[0].mime[..])
        .unwrap();
    let first = |a: Option<&mail_parser::Address>| {
        a.and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned)
    };
    assert_eq!(first(parsed.from()).as_deref(), Some("relay@contoso.com"));
    assert_eq!(
        first(parsed.reply_to()).as_deref(),
        Some("scanner@contoso.com")
    );
    assert!(sent[0].mime.ends_with(b"\xc3\xa9\xc3\xa8 \xe2\x82\xac\r\n"));
}

#[tokio::test]
async fn a_send_whose_answer_is_lost_is_not_sent_again() {
    let graph = Graph::start().await;
    let keys = graph.account_keys();
    let w = World::start(WorldOptions {
        account: &keys,
        max_message_size: "8MiB",
        upstream_timeout: "1s",
        extra: "[queue]\nretry = [\"1s\"]\n",
        extra_ca: &graph.pki.ca_pem,
        ..Default::default()
    })
    .await;
    graph.trust(&w.entra);
    // /send goes through, but its answer comes after the relay stopped waiting.
    graph.state().stall_next_send = Some(Duration::from_secs(3));
    let mut message =
        b"From: scanner@contoso.com\r\nTo: ann@fabrikam.com\r\nSubject: long\r\n\r\n".to_vec();
    // Over 4 MB once base64-encoded: the draft path.
    for _ in 0..40_000 {
        message.extend_from_slice(&[b'x'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    w.relay
        .send("scanner@contoso.com", &["ann@fabrikam.com"], &message)
        .await;
    w.relay.drained().await;
    let state = graph.state();
    assert_eq!(state.sent_drafts.len(), 1, "sent once");
    // The retry asked for the recorded draft, found it gone (sent), and sent nothing more.
    assert_eq!(state.lookups, [404]);
    assert!(state.drafts.is_empty());
}

#[tokio::test]
async fn a_413_for_send_mail_takes_the_draft_path() {
    let (w, graph) = graph_world("", "").await;
    graph
        .state()
        .faults
        .push_back(GraphFault::Refuse(413, "ErrorRequestEntityTooLarge", None));
    send_scan(&w.relay).await;
    w.relay.drained().await;
    let state = graph.state();
    assert!(state.sent.is_empty());
    assert_eq!(state.sent_drafts.len(), 1, "sent as a draft instead");
    assert_eq!(
        state.sent_drafts[0].message["toRecipients"][0]["emailAddress"]["address"],
        "ann@fabrikam.com"
    );
}
