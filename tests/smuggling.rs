//! SMTP smuggling regression (CVE-2023-51764/51765/51766 and the SEC Consult payloads): a
//! fake end-of-data with a bare CR or LF must never end the message, so the commands behind
//! it stay inside the first message instead of becoming a second one.

mod common;

use common::{PLAIN_LISTENER, TestRelay, config_text, without_received};

/// The published end-of-data variants that some servers accept and others do not.
const PAYLOADS: &[&[u8]] = &[
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r", b"\r.\r\n", b"\r.\n", b"\n.\r",
];

const SMUGGLED: &[u8] = b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<finance@victim.example>\r\nDATA\r\nFrom: ceo@victim.example\r\nSubject: smuggled\r\n\r\nPay now.\r\n";

async fn run(policy: &str) {
    let relay = TestRelay::start_with(|state| {
        config_text(state, PLAIN_LISTENER, "").replace(
            "[server]\n",
            &format!("[server]\nbare_newline = \"{policy}\"\n"),
        )
    })
    .await;
    for (i, payload) in PAYLOADS.iter().enumerate() {
        let mut client = relay.connect().await;
        client.expect("EHLO attacker.example", 250).await;
        client
            .expect("MAIL FROM:<attacker@evil.example>", 250)
            .await;
        client.expect("RCPT TO:<someone@victim.example>", 250).await;
        client.expect("DATA", 354).await;
        let mut data = b"Subject: harmless\r\n\r\nHello".to_vec();
        data.extend_from_slice(payload);
        data.extend_from_slice(SMUGGLED);
        data.extend_from_slice(b".\r\n");
        client.send_raw(&data).await;
        let (code, text) = client.reply().await;
        // If the payload had ended DATA, the smuggled commands would have produced replies
        // of their own, and NOOP's would not be next.
        let (noop, _) = client.cmd("NOOP").await;
        assert_eq!(
            noop, 250,
            "payload {payload:?}: extra replies in the stream"
        );
        match policy {
            "normalize" => {
                assert_eq!(code, 250, "payload {payload:?}: {text}");
                let queued = relay.queued();
                assert_eq!(queued.len(), i + 1, "payload {payload:?} split the message");
                let content = without_received(&queued[i].1);
                assert!(content.starts_with(b"Subject: harmless\r\n"));
                assert!(
                    content.windows(8).any(|w| w == b"smuggled"),
                    "payload {payload:?}"
                );
                // No bare CR or LF survives into the spool.
                for (j, &b) in content.iter().enumerate() {
                    if b == b'\n' {
                        assert_eq!(content[j - 1], b'\r', "bare LF at {j} for {payload:?}");
                    }
                    if b == b'\r' {
                        assert_eq!(content[j + 1], b'\n', "bare CR at {j} for {payload:?}");
                    }
                }
            }
            _ => {
                assert_eq!(code, 550, "payload {payload:?}: {text}");
                assert!(relay.queued().is_empty());
            }
        }
    }
}

#[tokio::test]
async fn fake_end_of_data_stays_inside_the_message_when_normalising() {
    run("normalize").await;
}

#[tokio::test]
async fn fake_end_of_data_is_refused_whole_when_rejecting() {
    run("reject-all").await;
}
