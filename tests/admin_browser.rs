//! The signed-in console in real headless Chromium (WebDriver), against the OpenID Connect
//! double: an operator signs in, sees their name and the queue, holds a message from its
//! row, and the log line names them; a viewer sees the page without actions; a user with no
//! role gets 403.

mod common;

use common::CapturedLogs;
use common::oidc::Oidc;
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
