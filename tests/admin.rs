//! The admin endpoint: /health, /ready and /metrics against a relay that has delivered mail.

mod common;

use common::tokens::{World, WorldOptions};
use common::{PLAIN_LISTENER, TestRelay, config_text, http_get};

#[tokio::test]
async fn health_and_metrics_describe_what_happened() {
    let w = World::start(WorldOptions::default()).await;
    let (relay, exchange) = (&w.relay, &w.exchange);
    exchange.state().rcpt_replies.insert(
        "ghost@fabrikam.com".into(),
        "550 5.1.10 Recipient not found".into(),
    );
    let mut client = relay.connect().await;
    client.expect("EHLO app", 250).await;
    let body = b"Subject: x\r\n\r\nx\r\n";
    assert_eq!(
        client
            .send_message("scanner@contoso.com", &["a@fabrikam.com"], body)
            .await
            .0,
        250
    );
    assert_eq!(
        client
            .send_message("scanner@contoso.com", &["ghost@fabrikam.com"], body)
            .await
            .0,
        250
    );
    client.expect("QUIT", 221).await;
    relay.drained().await;
    let admin = relay.admin().await;

    let (status, text) = http_get(&format!("{admin}/health")).await;
    assert_eq!(status, 200, "{text}");
    let health: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["status"], "healthy", "{text}");
    assert_eq!(health["accounts"][0]["state"], "valid");
    assert!(
        health["accounts"][0]["access_token_expires_in_secs"]
            .as_i64()
            .unwrap()
            > 3000
    );
    assert_eq!(health["queue"]["depth"], 0);
    assert_eq!(health["last_delivery"]["account"], "contoso");

    assert_eq!(http_get(&format!("{admin}/ready")).await.0, 200);

    let (status, text) = http_get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, account: Option<&str>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && account.is_none_or(|a| s.labels.get("account") == Some(a))
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    assert_eq!(value("smtprelay_messages_received_total", None), 2.0);
    assert_eq!(value("smtprelay_sessions_total", None), 1.0);
    // The good message and the bounce report went out; the other message bounced.
    assert_eq!(
        value("smtprelay_messages_delivered_total", Some("contoso")),
        2.0
    );
    assert_eq!(
        value("smtprelay_messages_bounced_total", Some("contoso")),
        1.0
    );
    assert_eq!(value("smtprelay_queue_depth", None), 0.0);
    assert!(value("smtprelay_token_expires_in_seconds", Some("contoso")) > 3000.0);
    assert_eq!(
        value("smtprelay_token_refreshes_total", Some("contoso")),
        1.0
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "smtprelay_delivery_latency_seconds")
        .expect("latency histogram");
    assert!(matches!(
        histogram.value,
        prometheus_parse::Value::Histogram(_)
    ));
}

#[tokio::test]
async fn an_account_without_a_login_makes_the_relay_unhealthy() {
    let w = World::start(WorldOptions {
        flow: "device_code",
        ..Default::default()
    })
    .await;
    assert_unhealthy_but_ready(&w.relay, "token login").await;
}

#[tokio::test]
async fn a_relay_without_accounts_is_unhealthy() {
    // A fresh install: mail is accepted, but nothing can send it on.
    let relay = TestRelay::start("").await;
    assert_unhealthy_but_ready(&relay, "no [[account]]").await;
}

/// /health answers 503 "unhealthy" with `reason` in its first reason; /ready still 200.
async fn assert_unhealthy_but_ready(relay: &TestRelay, reason: &str) {
    let admin = relay.admin().await;
    let (status, text) = http_get(&format!("{admin}/health")).await;
    assert_eq!(status, 503, "{text}");
    let health: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert!(
        health["reasons"][0].as_str().unwrap().contains(reason),
        "{text}"
    );
    assert_eq!(http_get(&format!("{admin}/ready")).await.0, 200);
}

#[tokio::test]
async fn a_bearer_token_guards_the_endpoint_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let admin_table = format!("[admin]\nbearer_token_file = {token_file:?}\n");
    let relay =
        TestRelay::start_with(move |state| config_text(state, PLAIN_LISTENER, &admin_table)).await;
    let admin = relay.admin().await;
    assert_eq!(http_get(&format!("{admin}/health")).await.0, 401);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let wrong = client
        .get(format!("{admin}/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(format!("{admin}/metrics"))
        .bearer_auth("s3cret-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}
