//! Log lines an admin greps, like Postfix's: the accept line names the recipients, each
//! delivery line says how long the message took, where it went and which attempt it was,
//! and a deferral that has gone on for long is a warning. Its own test binary: it installs
//! the global log subscriber.

mod common;

use std::time::Duration;

use common::tokens::{World, WorldOptions};

/// The captured lines that mention `needle`.
fn lines_with(captured: &common::CapturedLogs, needle: &str) -> Vec<String> {
    captured
        .text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn accept_and_delivery_lines_carry_postfix_fields() {
    let captured = common::CapturedLogs::install("info");
    let w = World::start(WorldOptions::default()).await;
    let id = w
        .relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com", "b@fabrikam.com"],
            b"Subject: x\r\nMessage-ID: <scan-0042@printer.contoso.com>\r\n\r\nx\r\n",
        )
        .await;
    w.relay.drained().await;
    let accepted = lines_with(&captured, &format!("queue_id={id}"))
        .into_iter()
        .find(|l| l.contains("message accepted"))
        .unwrap();
    assert!(
        accepted.contains("to=<a@fabrikam.com>,<b@fabrikam.com>"),
        "{accepted}"
    );
    let relay = format!("relay=localhost:{}", w.exchange.addr.port());
    let delivered: Vec<String> = lines_with(&captured, &format!("queue_id={id}"))
        .into_iter()
        .filter(|l| l.contains(" recipient "))
        .collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    for line in &delivered {
        assert!(
            line.contains("result=\"delivered\"") || line.contains("result=delivered"),
            "{line}"
        );
        assert!(line.contains(&relay), "{line}");
        assert!(line.contains("attempt=1"), "{line}");
        assert!(line.contains(" delay=0."), "{line}");
        // Exchange's double speaks TLS 1.3, as Exchange Online does.
        assert!(
            line.contains("tls=\"TLSv1.3\"") || line.contains("tls=TLSv1.3"),
            "{line}"
        );
        assert!(
            line.contains("message_id=scan-0042@printer.contoso.com"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_deferral_that_goes_on_for_long_is_a_warning() {
    let captured = common::CapturedLogs::install("info");
    let w = World::start(WorldOptions {
        extra: "[queue]\nretry = [\"1s\"]\n[alerts]\nqueue_age_warning = \"1s\"\n",
        ..Default::default()
    })
    .await;
    w.exchange.state().down = Some("421 4.3.2 Service not available".into());
    let id = w
        .relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    let deferrals = || -> Vec<String> {
        lines_with(&captured, &format!("queue_id={id}"))
            .into_iter()
            .filter(|l| l.contains("deferred"))
            .collect()
    };
    while !deferrals().iter().any(|l| l.contains("WARN")) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", deferrals());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = deferrals();
    // The first deferral, seconds after arrival, is routine.
    assert!(lines[0].contains("INFO"), "{lines:?}");
    let warning = lines.iter().find(|l| l.contains("WARN")).unwrap();
    assert!(warning.contains("age_secs="), "{warning}");
    assert!(warning.contains("4.3.2"), "{warning}");
}
