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
    // The status page and its report follow the same rule.
    for path in ["metrics", "", "status.json", "status.txt", "health"] {
        assert_eq!(http_get(&format!("{admin}/{path}")).await.0, 401, "/{path}");
        let right = client
            .get(format!("{admin}/{path}"))
            .bearer_auth("s3cret-admin-token")
            .send()
            .await
            .unwrap();
        // /health answers 503 here: the relay has no account.
        assert_ne!(right.status(), 401, "/{path}");
    }
    // /ready tells nothing but that the endpoint serves: probes need no token.
    assert_eq!(
        http_get(&format!("{admin}/ready")).await,
        (200, "ready\n".into())
    );
}

/// /health's JSON (any status code).
async fn health(admin: &str) -> serde_json::Value {
    let (_, text) = http_get(&format!("{admin}/health")).await;
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn deferring_deliveries_make_the_relay_degraded_until_one_goes_through() {
    let w = World::start(WorldOptions::default()).await;
    let (relay, exchange) = (&w.relay, &w.exchange);
    exchange.state().down = Some("421 4.3.2 Service not available".into());
    relay
        .send(
            "scanner@contoso.com",
            &["a@fabrikam.com"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    let admin = relay.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let report = loop {
        let report = health(&admin).await;
        if report["status"] == "degraded" {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let reasons = report["reasons"].to_string();
    assert!(
        reasons.contains("account contoso: deliveries defer since"),
        "{reasons}"
    );
    assert!(reasons.contains("421 4.3.2"), "{reasons}");
    assert_eq!(report["deferring"][0]["account"], "contoso");
    // The same state, the same answer.
    for _ in 0..5 {
        assert_eq!(health(&admin).await["status"], "degraded");
    }
    // Exchange is back: the next message goes through, and with it the deferred one.
    exchange.state().down = None;
    relay
        .send(
            "scanner@contoso.com",
            &["b@fabrikam.com"],
            b"Subject: y\r\n\r\ny\r\n",
        )
        .await;
    relay.drained().await;
    let report = health(&admin).await;
    assert_eq!(report["status"], "healthy", "{report}");
}

#[tokio::test]
async fn a_spool_that_cannot_be_written_makes_the_relay_degraded() {
    let w = World::start(WorldOptions::default()).await;
    let relay = &w.relay;
    let admin = relay.admin().await;
    let tmp = relay.spool.paths().tmp();
    // As root permissions do not stop a write; a file where the directory was does.
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"").unwrap();
    let report = health(&admin).await;
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(
        report["reasons"]
            .to_string()
            .contains("the spool cannot be written"),
        "{report}"
    );
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(health(&admin).await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_and_failing_requests_are_unhealthy_poll_after_poll() {
    let w = World::start(WorldOptions::default()).await;
    let tokens = w.relay.tokens.clone().unwrap();
    let token = tokens.access_token("contoso").await.unwrap();
    for _ in 0..200 {
        w.entra.fault(common::entra::Fault::Status(503));
    }
    // Exchange refused it: the token is gone and every request for a new one fails.
    tokens.invalidate("contoso", &token.token);
    assert!(tokens.access_token("contoso").await.is_err());
    let admin = w.relay.admin().await;
    // The manager keeps retrying in the background; /health must not flip while it does.
    for _ in 0..40 {
        let report = health(&admin).await;
        assert_eq!(report["status"], "unhealthy", "{report}");
        assert!(
            report["reasons"][0]
                .as_str()
                .unwrap()
                .contains("account contoso: no usable token and token requests fail"),
            "{report}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
