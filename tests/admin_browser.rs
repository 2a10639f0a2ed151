//! The signed-in console in real headless Chromium (WebDriver), against the OpenID Connect
//! double: an operator signs in, sees their name and the queue, holds a message from its
//! row, and the log line names them; a viewer sees the page without actions; a user with no
//! role gets 403. Another site's forms that POST with the session cookie but without the
//! page's CSRF token change nothing; tampered ID tokens are refused; the callback sends the
//! browser nowhere but `/`; a session past its timeout is sent to sign in again; an HTTPS
//! admin endpoint serves no page over plain HTTP.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::CapturedLogs;
use common::oidc::{Oidc, Tamper};
use common::webdriver::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_holds_a_message_a_viewer_only_looks_a_stranger_gets_403() {
    let logs = CapturedLogs::install("info");
    let oidc = Oidc::start().await;
    let (w, _secret, id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;
    oidc.state().callback_base = Some(admin.clone());

    // The operator: / → sign-in → the double → the callback → /, all followed by Chromium.
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = Browser::start().await;
    olga.goto(&format!("{admin}/")).await;
    let page = olga.wait_for("Signed in as Olga Operator").await;
    assert!(page.contains(&format!("id=\"m-{id}\"")), "{page}");
    assert!(page.contains("Quarterly scan"), "{page}");
    olga.click(&format!("#m-{id} button[value=hold]")).await;
    olga.wait_for("held by an admin").await;
    let page = olga
        .wait_for("<td>olga@contoso.com</td><td>hold</td>")
        .await;
    assert!(page.contains(&format!("<td>{id}</td><td>ok: ")), "{page}");
    let line = common::oidc::audit_line(&logs, &id);
    assert!(
        line.contains("user=olga@contoso.com") && line.contains("action=hold"),
        "{line}"
    );
    olga.quit().await;

    // A viewer: the page and the message, no form to act with.
    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let vic = Browser::start().await;
    vic.goto(&format!("{admin}/")).await;
    let page = vic.wait_for("Signed in as Vic Viewer").await;
    assert!(page.contains(&format!("id=\"m-{id}\"")), "{page}");
    assert!(!page.contains("<form"), "{page}");
    vic.quit().await;

    // Neither role: 403, nothing of the queue.
    oidc.sign_in_as("Nina Nobody", "nina@contoso.com", &[]);
    let nina = Browser::start().await;
    nina.goto(&format!("{admin}/")).await;
    let page = nina.wait_for("may not see this relay").await;
    assert!(!page.contains(&id), "{page}");
    assert!(!page.contains("Quarterly scan"), "{page}");
    nina.quit().await;
}

/// Another site on loopback (another origin, the same site as the relay's `127.0.0.1`, so a
/// SameSite=Lax cookie goes along with its POSTs): pages whose forms post to the relay by
/// themselves, and a landing page that counts the browsers redirected to it.
struct Attacker {
    base: String,
    landed: Arc<AtomicUsize>,
}

impl Attacker {
    async fn start(admin: &str, id: &str) -> Attacker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let landed = Arc::new(AtomicUsize::new(0));
        let form = |csrf: &str| {
            axum::response::Html(format!(
                "<!doctype html><form id=\"f\" method=\"post\" action=\"{admin}/action\">{csrf}\
                 <input type=\"hidden\" name=\"action\" value=\"hold\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\"></form>\
                 <script>document.getElementById('f').submit()</script>"
            ))
        };
        let (without, forged) = (
            form(""),
            form("<input type=\"hidden\" name=\"csrf\" value=\"forged\">"),
        );
        let counter = Arc::clone(&landed);
        let app = axum::Router::new()
            .route(
                "/without-token",
                axum::routing::get(move || async move { without }),
            )
            .route(
                "/forged-token",
                axum::routing::get(move || async move { forged }),
            )
            .route(
                "/landing",
                axum::routing::get(move || async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "the attacker's page"
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Attacker { base, landed }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_tokens_redirects_and_forms_without_the_page_s_token_are_refused() {
    let logs = CapturedLogs::install("info");
    let oidc = Oidc::start().await;
    let (w, _secret, id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;
    oidc.state().callback_base = Some(admin.clone());
    let evil = Attacker::start(&admin, &id).await;
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = Browser::start().await;

    // Each tampered ID token: the issuer's answer is refused, no session is opened.
    for tamper in Tamper::EVERY {
        oidc.state().tamper = tamper;
        olga.goto(&format!("{admin}/")).await;
        let page = olga.wait_for("the sign-in was refused").await;
        assert!(!page.contains(&id), "{tamper:?}: {page}");
        let cookies = olga.cookie_names().await;
        assert!(
            !cookies.iter().any(|c| c == "smtprelay_session"),
            "{tamper:?}: {cookies:?}"
        );
    }
    assert!(
        oidc.state().refusals.is_empty(),
        "the issuer itself said yes"
    );
    oidc.state().tamper = Tamper::None;

    // Wherever a sign-in or a callback says to go, the browser lands on the page itself.
    let landing = format!("{}/landing", evil.base);
    olga.goto(&format!(
        "{admin}/signin?next={landing}&redirect_uri={landing}"
    ))
    .await;
    olga.wait_for("Signed in as Olga Operator").await;
    assert_eq!(olga.current_url().await, format!("{admin}/"));
    olga.goto(&format!(
        "{admin}/signin/callback?code=stolen&state=made-up&redirect_uri={landing}&next={landing}"
    ))
    .await;
    olga.wait_for("the sign-in was refused").await;
    assert!(olga.current_url().await.starts_with(&admin));
    assert_eq!(
        evil.landed.load(Ordering::SeqCst),
        0,
        "sent to the attacker"
    );

    // Signed in, Olga visits the other site, whose forms post to the relay by themselves:
    // her cookie goes along (the relay finds her session), the page's token does not.
    olga.goto(&format!("{}/without-token", evil.base)).await;
    olga.wait_for("missing field `csrf`").await;
    olga.goto(&format!("{}/forged-token", evil.base)).await;
    olga.wait_for("this form is stale or not the page's").await;
    olga.goto(&format!("{admin}/")).await;
    let page = olga.wait_for("Signed in as Olga Operator").await;
    assert!(!page.contains("held by an admin"), "{page}");
    assert!(
        !logs
            .text()
            .lines()
            .any(|l| l.contains("admin action") && l.contains(&id)),
        "a forged POST was carried out"
    );
    // The page's own form, in the same browser, does it.
    olga.click(&format!("#m-{id} button[value=hold]")).await;
    olga.wait_for("held by an admin").await;
    olga.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_timeout_is_sent_to_sign_in_again() {
    let oidc = Oidc::start().await;
    let (w, _secret, _id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;
    oidc.state().callback_base = Some(admin.clone());
    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let vic = Browser::start().await;
    vic.goto(&format!("{admin}/")).await;
    vic.wait_for("Signed in as Vic Viewer").await;
    let signed_in = oidc.state().authorizations;
    assert_eq!(signed_in, 1);

    // Used within the timeout: the page, without a trip to the issuer.
    w.relay
        .age_console_sessions(std::time::Duration::from_secs(3000));
    vic.goto(&format!("{admin}/")).await;
    vic.wait_for("Signed in as Vic Viewer").await;
    assert_eq!(oidc.state().authorizations, signed_in);

    // Unused for longer than `session_timeout` (1 h): off to the issuer again.
    w.relay
        .age_console_sessions(std::time::Duration::from_secs(3601));
    vic.goto(&format!("{admin}/")).await;
    vic.wait_for("Signed in as Vic Viewer").await;
    assert_eq!(oidc.state().authorizations, signed_in + 1);
    assert_eq!(vic.current_url().await, format!("{admin}/"));
    vic.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_console_serves_nothing_over_plain_http() {
    let oidc = Oidc::start().await;
    let pki = common::TestPki::new();
    let (issuer, cert, key) = (oidc.issuer.clone(), pki.cert_path(), pki.key_path());
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("console.secret");
    std::fs::write(&secret, common::oidc::CLIENT_SECRET).unwrap();
    let relay = common::TestRelay::start_with(move |state| {
        common::config_text(
            state,
            common::PLAIN_LISTENER,
            &format!(
                "[admin]\ntls = true\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
                 [admin.sign_in]\nissuer = {issuer:?}\nclient_id = \"{}\"\n\
                 client_secret_file = {secret:?}\nredirect_url = \"https://localhost/signin/callback\"\n\
                 viewers = [\"role:Relay.Viewer\"]\n",
                common::oidc::CLIENT_ID
            ),
        )
    })
    .await;
    let plain = relay.admin().await;
    let https = plain.replacen("http://", "https://", 1);
    oidc.state().callback_base = Some(https.clone());
    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let vic = Browser::accepting_any_certificate().await;

    // Plain HTTP: no HTTP answer (Chromium shows its own error page, ERR_INVALID_HTTP_RESPONSE
    // in this version), no redirect to sign in, nothing of the relay.
    let loaded = vic.try_goto(&format!("{plain}/")).await;
    let page = vic.source().await;
    assert!(
        loaded.is_err() || page.contains("ERR_"),
        "{loaded:?}: {page}"
    );
    for relay_s in ["smtprelay", "Signed in", "signin"] {
        assert!(!page.contains(relay_s), "{relay_s}: {page}");
    }
    assert_eq!(oidc.state().authorizations, 0);

    // The same port over HTTPS: the sign-in and the page.
    vic.goto(&format!("{https}/")).await;
    vic.wait_for("Signed in as Vic Viewer").await;
    assert_eq!(vic.current_url().await, format!("{https}/"));
    vic.quit().await;
}
