//! Alerts reach a webhook and a mailbox, once when a condition starts and once when it clears.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::tokens::{World, WorldOptions};
use common::webhook;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_account_alerts_once_and_clears_once() {
    let (hook, hooked) = webhook().await;
    let alerts = format!("[alerts]\nwebhook = {hook:?}\nemail = \"admin@contoso.com\"\n");
    let w = World::start(WorldOptions {
        secret: "an-expired-secret",
        extra: &alerts,
        ..Default::default()
    })
    .await;
    let (relay, entra, exchange) = (&w.relay, &w.entra, &w.exchange);
    // The relay runs its alerter, as `serve` does.
    let tokens = relay.tokens.clone().unwrap();

    let wait_for = |count: usize| {
        let hooked = Arc::clone(&hooked);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while hooked.lock().unwrap().len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    hooked.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1).await;
    let firing = hooked.lock().unwrap()[0].clone();
    assert_eq!(firing["key"], "account:contoso:misconfigured");
    assert_eq!(firing["state"], "firing");
    assert!(
        firing["summary"]
            .as_str()
            .unwrap()
            .contains("client secret is wrong"),
        "{firing}"
    );

    // The admin puts the right secret in place (here: Entra learns the relay's one).
    entra.register(common::entra::App {
        secret: Some("an-expired-secret".into()),
        ..common::tokens::app("app-secret")
    });
    tokens.refresh_now("contoso").await.unwrap();
    wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = hooked.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "de-duplicated: {events:?}");
    assert_eq!(events[1]["key"], "account:contoso:misconfigured");
    assert_eq!(events[1]["state"], "resolved");

    // Both alerts also went out as e-mail once the account could send again.
    relay.drained().await;
    let mails: Vec<String> = exchange
        .state()
        .received
        .iter()
        .filter(|r| r.recipients == ["admin@contoso.com"])
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        mails
            .iter()
            .any(|m| m.contains("] FIRING: account contoso is misconfigured"))
    );
    assert!(mails.iter().any(|m| m.contains("] RESOLVED: ")));
    assert!(
        mails
            .iter()
            .all(|m| m.contains("X-Smtprelay-Alert: account:contoso:misconfigured"))
    );
}
