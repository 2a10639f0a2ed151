//! The token manager against the Entra double, over real HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::entra::{DeviceStatus, Entra, Fault};
use common::tokens::{
    SECRET, TokenFixture, account, app, certificate, claims, fixture, secret_account,
};
use smtprelay::oauth::error::ErrorClass;
use smtprelay::oauth::manager::Health;

async fn secret_fixture() -> TokenFixture {
    let entra = Entra::start().await;
    entra.register(common::entra::App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    });
    TokenFixture::new(entra, secret_account).await
}

fn health(manager: &smtprelay::oauth::manager::TokenManager, account: &str) -> Health {
    manager
        .statuses()
        .into_iter()
        .find(|s| s.account == account)
        .unwrap()
        .health
}

#[tokio::test]
async fn client_secret_gets_an_app_only_token_and_caches_it() {
    let fx = secret_fixture().await;
    let manager = fx.manager().await;
    let token = manager.access_token("contoso").await.unwrap();
    let claims = claims(token.token.expose());
    assert_eq!(claims["aud"], "https://outlook.office365.com");
    assert_eq!(claims["roles"][0], "SMTP.SendAsApp");
    assert!(fx.entra.validate(token.token.expose()).is_some());
    let again = manager.access_token("contoso").await.unwrap();
    assert_eq!(again.token, token.token);
    assert_eq!(fx.entra.requests("client_credentials"), 1);
    // Persisted, encrypted.
    let stored = fx.stored("contoso").await.unwrap();
    assert_eq!(stored.access_token, Some(token.token.clone()));
    let raw = std::fs::read_to_string(fx.store_path()).unwrap();
    assert!(!raw.contains(token.token.expose()));
    assert_eq!(health(&manager, "contoso"), Health::Valid);
}

#[tokio::test]
async fn certificate_assertions_ps256_and_rs256_are_accepted() {
    for algorithm in ["PS256", "RS256"] {
        let entra = Entra::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = certificate(dir.path(), &fixture("app-key.pem"), "app");
        entra.register(common::entra::App {
            certificate: Some(der),
            ..app("app-cert")
        });
        let extra = format!(
            "client_certificate = {cert:?}\nclient_private_key = {key:?}\nclient_assertion_algorithm = {algorithm:?}"
        );
        let fx = TokenFixture::new(entra, move |e| {
            account(e, "contoso", "app-cert", "client_credentials", &extra)
        })
        .await;
        let manager = fx.manager().await;
        let token = manager
            .access_token("contoso")
            .await
            .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        assert!(
            fx.entra.validate(token.token.expose()).is_some(),
            "{algorithm}"
        );
    }
}

#[tokio::test]
async fn a_certificate_with_the_wrong_key_is_misconfigured_and_explained() {
    let entra = Entra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, registered) = certificate(dir.path(), &fixture("app-key.pem"), "registered");
    // The relay is given a certificate for another key than the one uploaded to Entra.
    let (cert, key, _) = certificate(dir.path(), &fixture("other-key.pem"), "other");
    entra.register(common::entra::App {
        certificate: Some(registered),
        ..app("app-cert")
    });
    let extra = format!("client_certificate = {cert:?}\nclient_private_key = {key:?}");
    let fx = TokenFixture::new(entra, move |e| {
        account(e, "contoso", "app-cert", "client_credentials", &extra)
    })
    .await;
    let manager = fx.manager().await;
    let error = manager.access_token("contoso").await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Misconfigured);
    let Health::Misconfigured(reason) = health(&manager, "contoso") else {
        panic!()
    };
    assert!(
        reason.contains("does not match client_private_key"),
        "{reason}"
    );
    assert!(reason.contains("AADSTS700027"), "{reason}");
}

#[tokio::test]
async fn a_wrong_secret_is_misconfigured_and_not_retried_in_a_hot_loop() {
    let entra = Entra::start().await;
    entra.register(common::entra::App {
        secret: Some("the-real-one".into()),
        ..app("app-secret")
    });
    let fx = TokenFixture::new(entra, secret_account).await;
    let manager = fx.manager().await;
    let error = manager.access_token("contoso").await.unwrap_err();
    assert!(
        error.to_string().contains("Value, not its Secret ID"),
        "{error}"
    );
    for _ in 0..10 {
        assert!(manager.access_token("contoso").await.is_err());
    }
    assert_eq!(
        fx.entra.requests("client_credentials"),
        1,
        "held accounts make no requests"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_callers_make_one_token_request() {
    let fx = secret_fixture().await;
    fx.entra.state().delay = Some(Duration::from_millis(300));
    let manager = fx.manager().await;
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.access_token("contoso").await.unwrap().token })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap());
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fx.entra.requests("client_credentials"), 1);

    // And again when the token is refused upstream: one refresh for all.
    manager.invalidate("contoso", &tokens[0]);
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.access_token("contoso").await.unwrap().token })
        })
        .collect();
    for caller in callers {
        assert_ne!(caller.await.unwrap(), tokens[0]);
    }
    assert_eq!(fx.entra.requests("client_credentials"), 2);
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_and_retry_after() {
    let fx = secret_fixture().await;
    fx.entra.fault(Fault::Status(503));
    fx.entra.fault(Fault::Throttle(1));
    let manager = fx.manager().await;
    let started = std::time::Instant::now();
    manager.access_token("contoso").await.unwrap();
    assert_eq!(fx.entra.requests("client_credentials"), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
}

#[tokio::test]
async fn exhausted_retries_leave_the_account_failing_and_its_tokens_stored() {
    let fx = secret_fixture().await;
    let manager = fx.manager().await;
    let first = manager.access_token("contoso").await.unwrap();
    for _ in 0..4 {
        fx.entra.fault(Fault::Status(502));
    }
    manager.invalidate("contoso", &first.token);
    let error = manager.access_token("contoso").await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient);
    assert!(matches!(health(&manager, "contoso"), Health::Failing(_)));
    assert_eq!(fx.entra.requests("client_credentials"), 5);
    // Nothing was thrown away.
    assert_eq!(
        fx.stored("contoso").await.unwrap().access_token,
        Some(first.token)
    );
    // Once the endpoint is back, the next caller recovers.
    assert!(manager.access_token("contoso").await.is_ok());
}

async fn device_fixture() -> TokenFixture {
    let entra = Entra::start().await;
    entra.register(common::entra::App {
        public_client: true,
        ..app("app-public")
    });
    TokenFixture::new(entra, |e| {
        account(e, "contoso", "app-public", "device_code", "")
    })
    .await
}

/// Runs a device code login, approving (or declining) it from "the browser".
async fn device_login(
    fx: &TokenFixture,
    outcome: DeviceStatus,
) -> Result<(), smtprelay::oauth::error::TokenError> {
    let manager = fx.manager().await;
    let oauth = manager.oauth_account("contoso").unwrap();
    let entra = fx.entra.clone();
    let response = oauth
        .device_code(manager.client(), move |authorization| {
            assert_eq!(
                authorization.verification_uri,
                "https://microsoft.com/devicelogin"
            );
            let code = authorization.user_code.clone();
            tokio::spawn(async move {
                // The user takes a moment to sign in: the first polls see "pending".
                tokio::time::sleep(Duration::from_millis(2500)).await;
                entra.device_login(&code, outcome);
            });
        })
        .await?;
    manager.store_response("contoso", response, true).await?;
    Ok(())
}

#[tokio::test]
async fn device_code_login_then_refresh_rotates_and_persists_before_use() {
    let fx = device_fixture().await;
    device_login(&fx, DeviceStatus::Approved).await.unwrap();
    let polls = fx
        .entra
        .requests("urn:ietf:params:oauth:grant-type:device_code");
    assert!(polls >= 2, "expected pending polls first, got {polls}");
    let stored = fx.stored("contoso").await.unwrap();
    let first_refresh = stored.refresh_token.clone().unwrap();
    assert!(stored.login_at.is_some());

    let manager = fx.manager().await;
    let token = manager.access_token("contoso").await.unwrap();
    assert_eq!(claims(token.token.expose())["scp"], "SMTP.Send");
    manager.invalidate("contoso", &token.token);
    let fresh = manager.access_token("contoso").await.unwrap();
    assert_ne!(fresh.token, token.token);
    let rotated = fx.stored("contoso").await.unwrap().refresh_token.unwrap();
    assert_ne!(
        rotated, first_refresh,
        "the rotated refresh token was not saved"
    );

    // A new process (a restart) continues with the rotated token; the old one is dead.
    let restarted = fx.manager().await;
    restarted.refresh_now("contoso").await.unwrap();
    assert_eq!(fx.entra.requests("refresh_token"), 2);
    let status = &restarted.statuses()[0];
    assert!(status.has_refresh_token && status.auto_refresh);
    assert!(status.refresh_token_expires_at.unwrap() > status.last_refresh_at.unwrap());
}

#[tokio::test]
async fn a_declined_device_login_is_reported() {
    let fx = device_fixture().await;
    let error = device_login(&fx, DeviceStatus::Declined).await.unwrap_err();
    assert!(error.to_string().contains("declined"), "{error}");
    assert!(fx.stored("contoso").await.is_none());
}

#[tokio::test]
async fn without_a_login_the_account_needs_one() {
    let fx = device_fixture().await;
    let manager = fx.manager().await;
    let error = manager.access_token("contoso").await.unwrap_err();
    assert!(
        error.to_string().contains("smtprelay token login"),
        "{error}"
    );
    assert!(matches!(health(&manager, "contoso"), Health::NeedsLogin(_)));
    assert_eq!(fx.entra.state().requests.len(), 0);
}

#[tokio::test]
async fn a_revoked_refresh_token_holds_the_account_until_a_new_login() {
    let fx = device_fixture().await;
    device_login(&fx, DeviceStatus::Approved).await.unwrap();
    let manager = fx.manager().await;
    let mut events = manager.subscribe();
    let token = manager.access_token("contoso").await.unwrap();
    fx.entra.revoke_refresh_tokens();
    manager.invalidate("contoso", &token.token);
    let error = manager.access_token("contoso").await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Reauthenticate);
    let Health::NeedsLogin(reason) = health(&manager, "contoso") else {
        panic!()
    };
    assert!(reason.contains("log in again"), "{reason}");
    // What metrics and alerts subscribe to.
    let kinds: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| {
            serde_json::to_value(&e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["invalidated", "needs_login"]);
    // Held: no more requests, and the stored tokens are kept.
    let requests = fx.entra.state().requests.len();
    assert!(manager.access_token("contoso").await.is_err());
    assert_eq!(fx.entra.state().requests.len(), requests);
    assert!(fx.stored("contoso").await.unwrap().refresh_token.is_some());

    // `token login` in another process writes the store; the manager picks it up.
    device_login(&fx, DeviceStatus::Approved).await.unwrap();
    let token = manager.access_token("contoso").await.unwrap();
    assert!(fx.entra.validate(token.token.expose()).is_some());
    assert_eq!(health(&manager, "contoso"), Health::Valid);
}

async fn auth_code_fixture(port: u16) -> TokenFixture {
    let entra = Entra::start().await;
    entra.register(common::entra::App {
        public_client: true,
        ..app("app-web")
    });
    TokenFixture::new(entra, move |e| {
        account(
            e,
            "contoso",
            "app-web",
            "authorization_code",
            &format!("redirect_port = {port}"),
        )
    })
    .await
}

/// Plays the browser: follows the authorization URL to Entra, which redirects with a code.
async fn browser(url: String) -> String {
    // reqwest is built without a default TLS provider (the relay passes its own config).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 302);
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn authorization_code_with_pkce_through_the_loopback_listener() {
    let port = common::free_port();
    let fx = auth_code_fixture(port).await;
    let manager = fx.manager().await;
    let oauth = manager.oauth_account("contoso").unwrap();
    let (_paste, pasted) = tokio::sync::mpsc::channel(1);
    let response = oauth
        .authorization_code(
            manager.client(),
            |url| {
                assert!(url.contains("code_challenge_method=S256"));
                let url = url.to_owned();
                tokio::spawn(async move {
                    let redirect = browser(url).await;
                    // The browser follows the redirect to the relay's listener.
                    let page = reqwest::Client::builder()
                        .build()
                        .unwrap()
                        .get(&redirect)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    assert!(page.contains("You can close this window"));
                });
            },
            pasted,
        )
        .await
        .unwrap();
    manager
        .store_response("contoso", response, true)
        .await
        .unwrap();
    assert!(manager.access_token("contoso").await.is_ok());
}

/// A login where the browser runs elsewhere and the admin pastes what `paste` makes of the
/// redirected URL, line by line.
async fn pasted_login(
    paste: fn(String) -> Vec<String>,
) -> Result<smtprelay::oauth::http::TokenResponse, smtprelay::oauth::error::TokenError> {
    let fx = auth_code_fixture(common::free_port()).await;
    let manager = fx.manager().await;
    let oauth = manager.oauth_account("contoso").unwrap();
    let (lines, pasted) = tokio::sync::mpsc::channel(4);
    oauth
        .authorization_code(
            manager.client(),
            |url| {
                let url = url.to_owned();
                tokio::spawn(async move {
                    for line in paste(browser(url).await) {
                        lines.send(line).await.unwrap();
                    }
                });
            },
            pasted,
        )
        .await
}

#[tokio::test]
async fn authorization_code_with_a_pasted_redirect_url() {
    let response = pasted_login(|redirect| vec!["not the url".into(), redirect])
        .await
        .unwrap();
    assert!(response.refresh_token.is_some());
}

#[tokio::test]
async fn a_forged_redirect_state_is_refused() {
    let error = pasted_login(|redirect| vec![redirect.replace("state=", "state=x")])
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("state does not match"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tenant_that_does_not_exist_is_misconfigured() {
    let entra = Entra::start().await;
    entra.register(common::entra::App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    });
    let fx = TokenFixture::new(entra, |e| {
        secret_account(e).replace("contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com")
    })
    .await;
    let error = fx
        .manager()
        .await
        .access_token("contoso")
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Misconfigured);
    assert!(
        error.to_string().contains("tenant was not found"),
        "{error}"
    );
}

#[tokio::test]
async fn a_store_with_the_wrong_key_holds_accounts_and_is_not_overwritten() {
    let fx = secret_fixture().await;
    fx.manager().await.access_token("contoso").await.unwrap();
    let before = std::fs::read(fx.store_path()).unwrap();
    let wrong = TokenFixture {
        key: smtprelay::oauth::TokenKey::generate(),
        ..fx
    };
    let manager = wrong.manager().await;
    let error = manager.access_token("contoso").await.unwrap_err();
    assert!(error.to_string().contains("wrong token key"), "{error}");
    assert_eq!(std::fs::read(wrong.store_path()).unwrap(), before);
}

/// Each account keeps its token fresh in its own task: an account whose token endpoint hangs
/// does not keep another from getting its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_endpoint_holds_up_only_its_own_account() {
    let slow = Entra::start().await;
    slow.register(common::entra::App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    });
    slow.state().delay = Some(Duration::from_secs(30));
    let fixture = TokenFixture::new(slow.clone(), |slow| {
        // Sorted first, so a single loop over the accounts would reach it first.
        account(
            slow,
            "a-slow",
            "app-secret",
            "client_credentials",
            "client_secret_file = \"secret\"",
        )
    })
    .await;
    let fast = Entra::start().await;
    fast.register(common::entra::App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    });
    let text = std::fs::read_to_string(fixture.dir.path().join("smtprelay.toml")).unwrap()
        + &account(
            &fast,
            "b-fast",
            "app-secret",
            "client_credentials",
            "client_secret_file = \"secret\"",
        );
    let path = fixture.dir.path().join("smtprelay.toml");
    std::fs::write(&path, text).unwrap();
    let config = smtprelay::config::Config::load(&path).unwrap();
    let manager = Arc::new(
        smtprelay::oauth::manager::TokenManager::new(
            &config,
            Arc::new(fixture.store()),
            smtprelay::oauth::http::TokenClient::new().unwrap(),
        )
        .await,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fast.requests("client_credentials") == 0
        || manager
            .statuses()
            .iter()
            .any(|s| s.account == "b-fast" && s.health != Health::Valid)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b-fast got no token while a-slow hung"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.requests("client_credentials"),
        1,
        "a-slow's request is still under way"
    );
    shutdown.cancel();
}
