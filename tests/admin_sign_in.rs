//! `[admin.sign_in]` over HTTP against an OpenID Connect double that signs real RS256 ID
//! tokens: an operator and a viewer sign in and see the page with their name, someone with
//! neither role gets 403 and nothing of the queue, tampered ID tokens are refused, the
//! callback goes nowhere but `/`, and a session past its timeout must sign in again.
//!
//! The requests are a browser's, made one by one (redirects read, not followed). The
//! configured redirect URL names `localhost` without a port (the admin endpoint's port is
//! only known once bound to port 0), so the callback the double sends the browser to is
//! requested at the endpoint's real address, path and query unchanged.

mod common;

use std::time::{Duration, Instant};

use common::oidc::{CLIENT_SECRET, Oidc, Tamper, browser as client, location, sign_in};
use common::{TIMEOUT, TestRelay};

async fn relay(oidc: &Oidc, timeout: &str) -> TestRelay {
    TestRelay::start_with(config(oidc, timeout, "console-app", OPERATORS)).await
}

const OPERATORS: &str = r#"["role:Relay.Operator", "boss@contoso.com"]"#;

/// The relay's configuration: the console signs in with `oidc` as `client_id`.
fn config(
    oidc: &Oidc,
    timeout: &str,
    client_id: &str,
    operators: &str,
) -> impl Fn(&std::path::Path) -> String {
    let (issuer, timeout) = (oidc.issuer.clone(), timeout.to_owned());
    let (client_id, operators) = (client_id.to_owned(), operators.to_owned());
    move |state| {
        let secret = state.parent().unwrap().join("console.secret");
        std::fs::write(&secret, CLIENT_SECRET).unwrap();
        common::config_text(
            state,
            common::PLAIN_LISTENER,
            &format!(
                "[admin.sign_in]\nissuer = {issuer:?}\nclient_id = {client_id:?}\n\
                 client_secret_file = {secret:?}\nredirect_url = \"http://localhost/signin/callback\"\n\
                 viewers = [\"role:Relay.Viewer\"]\noperators = {operators}\n\
                 session_timeout = {timeout:?}\n"
            ),
        )
    }
}

fn session_cookie(callback: &reqwest::Response) -> String {
    let cookie = callback
        .headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no session cookie: {callback:?}"))
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["; Secure", "; HttpOnly", "; SameSite=Lax", "; Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

async fn page(admin: &str, cookie: Option<&str>) -> reqwest::Response {
    get(&format!("{admin}/"), cookie).await
}

async fn get(url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn operators_and_viewers_see_the_page_others_get_403() {
    let oidc = Oidc::start().await;
    let relay = relay(&oidc, "1h").await;
    let admin = relay.admin().await;

    // Without a session the page sends the browser to sign in; probes stay open.
    let anonymous = page(&admin, None).await;
    assert_eq!(anonymous.status(), 303);
    assert_eq!(location(&anonymous), "/signin");
    let status = get(&format!("{admin}/status.json"), None).await.status();
    assert_eq!(status, 303);
    let status = get(&format!("{admin}/health"), None).await.status();
    assert_ne!(status, 303);

    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let callback = sign_in(&admin).await;
    assert_eq!(callback.status(), 303, "{callback:?}");
    // Always the page itself: the callback follows no address from the request.
    assert_eq!(location(&callback), "/");
    let cookie = session_cookie(&callback);
    let shown = page(&admin, Some(&cookie)).await;
    assert_eq!(shown.status(), 200);
    let html = shown.text().await.unwrap();
    assert!(
        html.contains("Signed in as Olga Operator (olga@contoso.com, operator)"),
        "{html}"
    );
    // No self-refresh once signed in: it would keep the session alive for ever.
    assert!(!html.contains("http-equiv=\"refresh\""), "{html}");

    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let cookie = session_cookie(&sign_in(&admin).await);
    let html = page(&admin, Some(&cookie)).await.text().await.unwrap();
    assert!(html.contains("(vic@contoso.com, viewer)"), "{html}");

    // Named as a user in operators, with no role at all.
    oidc.sign_in_as("The Boss", "Boss@Contoso.com", &[]);
    let cookie = session_cookie(&sign_in(&admin).await);
    let html = page(&admin, Some(&cookie)).await.text().await.unwrap();
    assert!(html.contains("operator)"), "{html}");

    // Neither: 403, no session, nothing of the queue.
    oidc.sign_in_as("Nina Nobody", "nina@contoso.com", &["Other.Role"]);
    let refused = sign_in(&admin).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("set-cookie").is_none());
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("nina@contoso.com may not see this relay"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("queue"), "{text}");

    // Signing out ends the session.
    let out = get(&format!("{admin}/signout"), Some(&cookie)).await;
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(page(&admin, Some(&cookie)).await.status(), 303);
    // The double saw every code redeemed with its verifier.
    assert!(
        oidc.state().refusals.is_empty(),
        "{:?}",
        oidc.state().refusals
    );
}

#[tokio::test]
async fn tampered_id_tokens_replayed_codes_and_forged_callbacks_are_refused() {
    let oidc = Oidc::start().await;
    let relay = relay(&oidc, "1h").await;
    let admin = relay.admin().await;
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    for tamper in Tamper::EVERY {
        oidc.state().tamper = tamper;
        let callback = sign_in(&admin).await;
        assert_eq!(callback.status(), 403, "{tamper:?}");
        assert!(callback.headers().get("set-cookie").is_none(), "{tamper:?}");
    }
    oidc.state().tamper = Tamper::None;

    // A callback with a state this relay never issued (a forged or replayed link) is
    // refused before any code is redeemed, wherever it says to go.
    let forged = client()
        .get(format!(
            "{admin}/signin/callback?code=stolen&state=made-up&redirect_uri=https://evil.example/"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("location").is_none());
    // A good sign-in with extra parameters still lands on `/` only.
    let http = client();
    let start = http
        .get(format!("{admin}/signin?next=https://evil.example/"))
        .send()
        .await
        .unwrap();
    assert!(!location(&start).contains("evil"), "{}", location(&start));
    let authorize = http.get(location(&start)).send().await.unwrap();
    let back = url::Url::parse(&location(&authorize)).unwrap();
    let query = back.query().unwrap();
    let callback = http
        .get(format!(
            "{admin}/signin/callback?{query}&next=https://evil.example/&redirect=//evil.example"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/");
    // The same callback again: its state was used up.
    let again = http
        .get(format!("{admin}/signin/callback?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 403);
}

#[tokio::test]
async fn a_session_unused_past_its_timeout_signs_in_again() {
    let oidc = Oidc::start().await;
    let relay = relay(&oidc, "2s").await;
    let admin = relay.admin().await;
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let cookie = session_cookie(&sign_in(&admin).await);
    let signed_in = Instant::now();
    assert_eq!(page(&admin, Some(&cookie)).await.status(), 200);
    let used = Instant::now();
    // Waits for the condition (the session's end), checking it did not come early.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let response = page(&admin, Some(&cookie)).await;
        if response.status() == 303 {
            assert_eq!(location(&response), "/signin");
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "the session never ended");
        // Each use renews it: stop using it, then look once it must be over.
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    assert!(used.elapsed() >= Duration::from_secs(2));
    assert!(signed_in.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn a_reload_keeps_sessions_and_actions_under_the_new_lists_a_new_client_signs_everyone_out() {
    let oidc = Oidc::start().await;
    let mut relay = relay(&oidc, "1h").await;
    let admin = relay.admin().await;
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = session_cookie(&sign_in(&admin).await);
    oidc.sign_in_as("The Boss", "boss@contoso.com", &[]);
    let boss = session_cookie(&sign_in(&admin).await);
    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let vic = session_cookie(&sign_in(&admin).await);

    // An action before the reload (a flush: this relay has no delivery, so it fails, and is
    // audited all the same).
    let html = page(&admin, Some(&olga)).await.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = html[at..].split('"').next().unwrap().to_owned();
    let flushed = client()
        .post(format!("{admin}/action"))
        .header("cookie", &olga)
        .form(&[("csrf", csrf.as_str()), ("action", "flush")])
        .send()
        .await
        .unwrap();
    assert_eq!(flushed.status(), 303);

    // The boss is no longer named in operators.
    relay
        .reload_with(config(
            &oidc,
            "1h",
            "console-app",
            r#"["role:Relay.Operator"]"#,
        ))
        .await;
    assert_eq!(relay.admin().await, admin, "the admin socket was handed on");
    let html = page(&admin, Some(&olga)).await.text().await.unwrap();
    assert!(html.contains("(olga@contoso.com, operator)"), "{html}");
    assert!(
        html.contains(&format!("name=\"csrf\" value=\"{csrf}\"")),
        "the same session, the same CSRF token: {html}"
    );
    let recent = &html[html.find("id=\"recent-actions\"").unwrap()..];
    assert!(
        recent.contains("<td>olga@contoso.com</td><td>flush</td>"),
        "{recent}"
    );
    let html = page(&admin, Some(&vic)).await.text().await.unwrap();
    assert!(html.contains("(vic@contoso.com, viewer)"), "{html}");
    let dropped = page(&admin, Some(&boss)).await;
    assert_eq!(dropped.status(), 303);
    assert_eq!(location(&dropped), "/signin");

    // Another client id: whoever vouched for these sessions is no longer trusted.
    relay
        .reload_with(config(&oidc, "1h", "another-app", OPERATORS))
        .await;
    for cookie in [&olga, &vic] {
        let response = page(&admin, Some(cookie)).await;
        assert_eq!(response.status(), 303);
        assert_eq!(location(&response), "/signin");
    }
}

#[tokio::test]
async fn a_console_with_a_certificate_signs_in_with_an_assertion_signed_by_its_key() {
    use common::tokens::{certificate, fixture};
    let oidc = Oidc::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(keys.path(), &fixture("app-key.pem"), "console");
    let (_, _, other) = certificate(keys.path(), &fixture("other-key.pem"), "other");
    let issuer = oidc.issuer.clone();
    let relay = TestRelay::start_with(move |state| {
        common::config_text(
            state,
            common::PLAIN_LISTENER,
            &format!(
                "[admin.sign_in]\nissuer = {issuer:?}\nclient_id = \"console-app\"\n\
                 client_certificate = {cert:?}\nclient_private_key = {key:?}\n\
                 client_assertion_algorithm = \"RS256\"\n\
                 redirect_url = \"http://localhost/signin/callback\"\n\
                 operators = [\"role:Relay.Operator\"]\n"
            ),
        )
    })
    .await;
    let admin = relay.admin().await;
    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);

    // The app has another certificate uploaded: the assertion is refused, and so the sign-in.
    oidc.state().certificate = Some(other);
    let refused = sign_in(&admin).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(oidc.state().refusals, ["client credential"]);

    oidc.state().certificate = Some(der);
    let callback = sign_in(&admin).await;
    assert_eq!(callback.status(), 303, "{callback:?}");
    let cookie = session_cookie(&callback);
    let html = page(&admin, Some(&cookie)).await.text().await.unwrap();
    assert!(html.contains("(olga@contoso.com, operator)"), "{html}");
    assert_eq!(oidc.state().refusals.len(), 1, "no new refusal");
}
