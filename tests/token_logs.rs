//! No secret or token ever reaches a log line or a Debug string: every flow runs with all
//! logging on (TRACE, every target, dependencies included), then the output is searched.

mod common;

use base64::Engine;
use common::entra::DeviceStatus;
use common::tokens::{SECRET, TokenFixture, account};
use smtprelay::oauth::TokenStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_tokens_never_appear_in_logs() {
    let captured = common::CapturedLogs::install("trace");

    let (entra, exchange) = common::tokens::tenant().await;
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = exchange.upstream_table(upstream_dir.path());
    let fx = TokenFixture::new(entra.clone(), move |e| {
        format!(
            "{}{upstream}{}",
            account(
                e,
                "app",
                "app-secret",
                "client_credentials",
                "client_secret_file = \"secret\""
            ),
            account(e, "user", "app-public", "device_code", ""),
        )
    })
    .await;
    let manager = fx.manager().await;
    let mut seen = Vec::new();

    // Client credentials, an upstream login with the token, a refused token, a refresh.
    let token = manager.access_token("app").await.unwrap();
    let steps = smtprelay::cli::token_test::token_test(&manager, "app", None, "relay.test").await;
    assert!(steps.iter().all(|s| s.ok), "{steps:?}");
    seen.push(format!("{token:?} {steps:?} {:?}", manager.statuses()));
    manager.invalidate("app", &token.token);
    manager.access_token("app").await.unwrap();

    // Device code login, refresh with rotation, then a revoked grant.
    let oauth = manager.oauth_account("user").unwrap();
    let entra_for_login = entra.clone();
    let response = oauth
        .device_code(manager.client(), move |authorization| {
            entra_for_login.device_login(&authorization.user_code, DeviceStatus::Approved);
        })
        .await
        .unwrap();
    seen.push(format!("{response:?}"));
    manager
        .store_response("user", response, true)
        .await
        .unwrap();
    let token = manager.refresh_now("user").await.unwrap();
    entra.revoke_refresh_tokens();
    manager.invalidate("user", &token.token);
    assert!(manager.access_token("user").await.is_err());
    seen.push(format!("{:?}", fx.store().load_all().await));

    let logs = captured.text() + &seen.join("\n");
    assert!(logs.contains("token refreshed"), "nothing was logged?");
    let mut secrets = entra.secrets();
    secrets.push(SECRET.to_owned());
    assert!(secrets.len() >= 6, "{}", secrets.len());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret appears in the logs: {secret:.12}…"
        );
        // The XOAUTH2 string and form bodies carry tokens encoded.
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(!logs.contains(&b64[..b64.len().min(40)]));
        let urlencoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(!logs.contains(&urlencoded));
    }
}
