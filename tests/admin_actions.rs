//! Operators act from the signed-in status page: a message held from its row through the
//! control socket, the action logged with the user's name and shown under "Recent
//! actions"; a POST with the session cookie but without the page's CSRF token changes
//! nothing; a viewer sees the messages without any form and cannot act; a token refresh
//! and a test message through an account, from the page.

mod common;

use common::oidc::{Oidc, browser as client, location};
use common::{CapturedLogs, TIMEOUT};

/// Signs in through the double; the session cookie.
async fn sign_in(admin: &str) -> String {
    let callback = common::oidc::sign_in(admin).await;
    assert_eq!(callback.status(), 303, "{callback:?}");
    let cookie = callback.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

async fn page(admin: &str, cookie: &str) -> String {
    let response = client()
        .get(format!("{admin}/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

async fn post(admin: &str, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
    post_to(admin, "/action", cookie, form).await
}

async fn post_to(
    admin: &str,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(format!("{admin}{path}"))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_operator_holds_a_message_from_its_row_and_the_log_names_them() {
    let logs = CapturedLogs::install("info");
    let oidc = Oidc::start().await;
    let (w, _secret, id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;

    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = sign_in(&admin).await;
    let html = page(&admin, &olga).await;
    assert!(html.contains("Signed in as Olga Operator"), "{html}");
    // Its row: ID, sender, recipients, Subject, with the operator's forms.
    let row_at = html
        .find(&format!("<tr id=\"m-{id}\">"))
        .expect("the message's row");
    let row = &html[row_at..row_at + html[row_at..].find("</tr>").unwrap()];
    for shown in [
        "scanner@contoso.com",
        "a@fabrikam.com",
        "Quarterly scan",
        "value=\"hold\"",
    ] {
        assert!(row.contains(shown), "{shown}: {row}");
    }

    // The session cookie without the page's token (none, or a made-up one): refused, nothing held.
    let token = csrf(&html);
    let no_token = post(&admin, &olga, &[("action", "hold"), ("id", &id)]).await;
    assert!(no_token.status().is_client_error(), "{no_token:?}");
    let forged = post(
        &admin,
        &olga,
        &[("csrf", "forged"), ("action", "hold"), ("id", &id)],
    )
    .await;
    assert_eq!(forged.status(), 403);
    let html = page(&admin, &olga).await;
    assert!(!html.contains("held by an admin"), "{html}");
    assert!(
        !logs
            .text()
            .lines()
            .any(|l| l.contains("admin action") && l.contains(&id)),
        "a refused POST was carried out"
    );

    // With it: held, through the control socket, audited.
    let held = post(
        &admin,
        &olga,
        &[("csrf", &token), ("action", "hold"), ("id", &id)],
    )
    .await;
    assert_eq!(held.status(), 303);
    assert_eq!(location(&held), "/");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let html = loop {
        let html = page(&admin, &olga).await;
        if html.contains("held by an admin") {
            break html;
        }
        assert!(std::time::Instant::now() < deadline, "never held: {html}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let recent = &html[html.find("id=\"recent-actions\"").expect("Recent actions")..];
    assert!(
        recent.contains("<td>olga@contoso.com</td><td>hold</td>"),
        "{recent}"
    );
    assert!(
        recent.contains(&format!("<td>{id}</td><td>ok: ")),
        "{recent}"
    );
    let line = common::oidc::audit_line(&logs, &id);
    assert!(line.contains("user=olga@contoso.com"), "{line}");
    assert!(line.contains("action=hold"), "{line}");
    assert!(line.contains("result=ok"), "{line}");

    // A delete asks first: the first POST only shows a confirmation form.
    let ask = post(
        &admin,
        &olga,
        &[("csrf", &token), ("action", "delete"), ("id", &id)],
    )
    .await;
    assert_eq!(ask.status(), 200);
    assert!(
        ask.text()
            .await
            .unwrap()
            .contains("name=\"confirmed\" value=\"yes\"")
    );
    assert_eq!(w.relay.queued().len(), 1);

    // A viewer: the messages, no forms (so no token); a POST with one is refused too.
    oidc.sign_in_as("Vic Viewer", "vic@contoso.com", &["Relay.Viewer"]);
    let vic = sign_in(&admin).await;
    let html = page(&admin, &vic).await;
    assert!(html.contains(&format!("<tr id=\"m-{id}\">")), "{html}");
    assert!(!html.contains("action=\"/action\""), "{html}");
    let refused = post(
        &admin,
        &vic,
        &[("csrf", &token), ("action", "release"), ("id", &id)],
    )
    .await;
    assert_eq!(refused.status(), 403);
    assert!(page(&admin, &olga).await.contains("held by an admin"));

    // By selection, as `queue release --from` selects: the held message is released.
    let html = page(&admin, &olga).await;
    let token = csrf(&html);
    let by_sender = [
        ("csrf", token.as_str()),
        ("action", "release"),
        ("from", "scanner@*"),
    ];
    assert_eq!(
        post_to(&admin, "/select", &olga, &by_sender).await.status(),
        303
    );
    let html = page(&admin, &olga).await;
    assert!(!html.contains("held by an admin"), "{html}");
    assert!(
        html.contains("<td>release</td><td>from=scanner@*</td><td>1 of 1 message(s) done</td>"),
        "{html}"
    );
    // A delete by selection asks first, naming how many.
    let by_age = [
        ("csrf", token.as_str()),
        ("action", "delete"),
        ("older_than", "0s"),
    ];
    let ask = post_to(&admin, "/select", &olga, &by_age).await;
    assert!(
        ask.text()
            .await
            .unwrap()
            .contains("Delete the 1 message(s) chosen by older_than=0s?")
    );
    assert_eq!(w.relay.queued().len(), 1);
    // Without the page's token, a selection changes nothing either.
    let forged = [
        ("csrf", "forged"),
        ("action", "hold"),
        ("from", "scanner@*"),
    ];
    assert_eq!(
        post_to(&admin, "/select", &olga, &forged).await.status(),
        403
    );
    assert!(!page(&admin, &olga).await.contains("held by an admin"));
}

#[tokio::test]
async fn an_operator_refreshes_an_account_s_token_from_the_page() {
    let logs = CapturedLogs::install("info");
    let oidc = Oidc::start().await;
    let (w, _secret, _id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;
    let requests = || w.entra.state().requests.len();

    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = sign_in(&admin).await;
    let html = page(&admin, &olga).await;
    assert!(html.contains("id=\"refresh-contoso\""), "{html}");
    let token = csrf(&html);

    // A viewer sees no such form, and a POST of theirs (with a token, the operator's) asks
    // Entra for nothing.
    oidc.sign_in_as("Vera Viewer", "vera@contoso.com", &["Relay.Viewer"]);
    let vera = sign_in(&admin).await;
    let html = page(&admin, &vera).await;
    assert!(!html.contains("action=\"/token\""), "{html}");
    let before = requests();
    let refused = post_to(
        &admin,
        "/token",
        &vera,
        &[("csrf", &token), ("account", "contoso")],
    )
    .await;
    assert_eq!(refused.status(), 403);
    assert_eq!(requests(), before);

    // An account the configuration does not have: refused, nothing asked.
    let unknown = post_to(
        &admin,
        "/token",
        &olga,
        &[("csrf", &token), ("account", "nobody")],
    )
    .await;
    assert_eq!(unknown.status(), 400);
    assert_eq!(requests(), before);

    let refreshed = post_to(
        &admin,
        "/token",
        &olga,
        &[("csrf", &token), ("account", "contoso")],
    )
    .await;
    assert_eq!(refreshed.status(), 303);
    assert_eq!(requests(), before + 1, "one new token request");
    let html = page(&admin, &olga).await;
    let recent = &html[html.find("id=\"recent-actions\"").expect("Recent actions")..];
    assert!(
        recent.contains("<td>olga@contoso.com</td><td>token refresh</td><td>contoso</td><td>ok: a new token, valid for "),
        "{recent}"
    );
    assert!(
        logs.text().lines().any(|l| l.contains("admin action")
            && l.contains("token refresh")
            && l.contains("olga@contoso.com")),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn an_operator_sends_a_test_message_through_an_account_and_exchange_gets_it() {
    let logs = CapturedLogs::install("info");
    let oidc = Oidc::start().await;
    let (w, _secret, _id) = common::oidc::console(&oidc).await;
    let admin = w.relay.admin().await;
    let received = || w.exchange.state().received.len();

    oidc.sign_in_as("Olga Operator", "olga@contoso.com", &["Relay.Operator"]);
    let olga = sign_in(&admin).await;
    let html = page(&admin, &olga).await;
    assert!(html.contains("id=\"test-message\""), "{html}");
    assert!(html.contains("<option>contoso</option>"), "{html}");
    let token = csrf(&html);

    // A viewer has no such form, and their POST queues nothing.
    oidc.sign_in_as("Vera Viewer", "vera@contoso.com", &["Relay.Viewer"]);
    let vera = sign_in(&admin).await;
    assert!(!page(&admin, &vera).await.contains("/test-message"));
    let form = |to: &'static str, account: &'static str| {
        [
            ("csrf", token.clone()),
            ("account", account.to_owned()),
            ("to", to.to_owned()),
        ]
    };
    let queued_before = w.relay.queued().len();
    let refused = client()
        .post(format!("{admin}/test-message"))
        .header("cookie", &vera)
        .form(&form("helpdesk@fabrikam.com", "contoso"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // Not an address, or no such account: a 400 that says why, nothing queued.
    for (to, account, why) in [
        ("helpdesk", "contoso", "no domain"),
        ("a b@fabrikam.com", "contoso", "invalid character"),
        ("helpdesk@fabrikam.com", "nobody", "no such account"),
    ] {
        let bad = client()
            .post(format!("{admin}/test-message"))
            .header("cookie", &olga)
            .form(&form(to, account))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "{to} {account}");
        let text = bad.text().await.unwrap();
        assert!(text.contains(why), "{to}: {text}");
    }
    assert_eq!(w.relay.queued().len(), queued_before);

    let sent = client()
        .post(format!("{admin}/test-message"))
        .header("cookie", &olga)
        .form(&form(" helpdesk@fabrikam.com ", "contoso"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    assert_eq!(location(&sent), "/");
    let html = page(&admin, &olga).await;
    let recent = &html[html.find("id=\"recent-actions\"").expect("Recent actions")..];
    let shown = "<td>olga@contoso.com</td><td>test message</td><td>helpdesk@fabrikam.com through contoso</td><td>ok: queued as ";
    let at = recent.find(shown).unwrap_or_else(|| panic!("{recent}")) + shown.len();
    let id = recent[at..].split('<').next().unwrap().to_owned();
    let line = common::oidc::audit_line(&logs, &id);
    assert!(line.contains("user=olga@contoso.com"), "{line}");

    // Through the account's token and mailbox to the Exchange double, as any mail goes.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while received() == 0 {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let state = w.exchange.state();
    let message = &state.received[0];
    assert_eq!(message.recipients, ["helpdesk@fabrikam.com"]);
    assert_eq!(message.mailbox, "relay@contoso.com");
    assert_eq!(message.sender, "relay@contoso.com");
    let text = String::from_utf8_lossy(&message.data);
    assert!(
        text.contains("Subject: smtprelay test message through account contoso\r\n"),
        "{text}"
    );
    assert!(text.contains(&format!("Queue ID: {id}\r\n")), "{text}");
    assert!(
        text.contains("at the request of olga@contoso.com"),
        "{text}"
    );
}
