//! What operators do from the status page (with `[admin.sign_in]`): hold, release, retry or
//! delete a message from its row or by selection, flush, refresh an account's token, and
//! send a test message through an account. Plain HTML forms, each POST carrying the
//! session's CSRF token; a delete asks for confirmation first (a second form, so no
//! JavaScript is needed). Every queue command goes through the control socket, as
//! `smtprelay queue` sends it, and every action is audited: one log line (user, action, target,
//! result) and the page's "Recent actions" (the last [`super::audit::RECENT`]). The page's message list
//! is `queue list`'s rows, [`PAGE`] at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::Admin;
use super::audit::Audited;
use super::page::escape;
use super::sign_in::Role;
use super::sign_in::sessions::Session;
use crate::delivery::Control;
use crate::queue::QueueId;

pub const PAGE: usize = 50;

#[derive(serde::Deserialize)]
pub struct ActionForm {
    csrf: String,
    action: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    confirmed: Option<String>,
}

fn command(action: &str, id: Option<QueueId>) -> Option<Control> {
    Some(match (action, id) {
        ("flush", None) => Control::Flush,
        ("hold", Some(id)) => Control::Hold(id),
        ("release", Some(id)) => Control::Release(id),
        ("retry", Some(id)) => Control::Retry(id),
        ("delete", Some(id)) => Control::Delete(id),
        _ => return None,
    })
}

/// `POST /action`.
pub async fn act(
    State(admin): State<Arc<Admin>>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = refuse(&session, &form.csrf) {
        return refused;
    }
    let id = match form.id.as_deref().filter(|id| !id.is_empty()) {
        Some(text) => match text.parse::<QueueId>() {
            Ok(id) => Some(id),
            Err(_) => return (StatusCode::BAD_REQUEST, "no such message ID\n").into_response(),
        },
        None => None,
    };
    let Some(control) = command(&form.action, id) else {
        return (StatusCode::BAD_REQUEST, "unknown action\n").into_response();
    };
    if form.action == "delete" && form.confirmed.as_deref() != Some("yes") {
        return confirm_delete(&session, &form.csrf, id.expect("delete names a message"));
    }
    let target = id.map_or_else(|| "queue".to_owned(), |id| id.to_string());
    let result =
        match crate::admin::control::request(&admin.config.server.state_dir, &control).await {
            Ok(message) => format!("ok: {message}"),
            Err(e) => format!("failed: {e}"),
        };
    audit(&admin, &session, &form.action, target, result);
    // Post/redirect/get: a reload of the page repeats nothing.
    Redirect::to("/").into_response()
}

#[derive(serde::Deserialize)]
pub struct SelectionForm {
    csrf: String,
    action: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    older_than: String,
    #[serde(default)]
    confirmed: Option<String>,
}

/// `POST /select`: an action on the messages a selection (sender, recipient, age) picks,
/// as `smtprelay queue ACTION --from --to --older-than` picks them.
pub async fn act_on_selection(
    State(admin): State<Arc<Admin>>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<SelectionForm>,
) -> Response {
    if let Some(refused) = refuse(&session, &form.csrf) {
        return refused;
    }
    let given = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let (from, to, older_than) = (given(&form.from), given(&form.to), given(&form.older_than));
    let target = [("from", &from), ("to", &to), ("older_than", &older_than)]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let config = Arc::clone(&admin.config);
    let action = form.action.clone();
    let chosen = tokio::task::spawn_blocking(move || {
        crate::cli::selected_commands(&config, &action, from, to, older_than)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let commands = match chosen {
        Ok(commands) => commands,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if form.action == "delete" && form.confirmed.as_deref() != Some("yes") {
        let hidden = |name: &str, value: &str| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(value)
            )
        };
        let html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Delete {n} messages?</title></head><body>\
             <h1>Delete the {n} message(s) chosen by {}?</h1><p>They are removed from the queue without a report to their senders.</p>\
             <form method=\"post\" action=\"/select\">{}{}{}{}{}{}\
             <button type=\"submit\" id=\"confirm-delete\">Delete</button> <a href=\"/\">Cancel</a></form></body></html>",
            escape(&target),
            csrf_field(&form.csrf),
            hidden("action", "delete"),
            hidden("from", &form.from),
            hidden("to", &form.to),
            hidden("older_than", &form.older_than),
            hidden("confirmed", "yes"),
            n = commands.len(),
        );
        return (
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response();
    }
    let mut done = 0;
    for command in &commands {
        if crate::admin::control::request(&admin.config.server.state_dir, command)
            .await
            .is_ok()
        {
            done += 1;
        }
    }
    let result = format!("{done} of {} message(s) done", commands.len());
    audit(&admin, &session, &form.action, target, result);
    Redirect::to("/").into_response()
}

#[derive(serde::Deserialize)]
pub struct TokenForm {
    csrf: String,
    account: String,
}

/// `POST /token`: `smtprelay token refresh` for an account: a new access token from the
/// identity provider now (after a consent or permission change, say), audited.
pub async fn refresh_token(
    State(admin): State<Arc<Admin>>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(refused) = refuse(&session, &form.csrf) {
        return refused;
    }
    if admin.config.account(&form.account).is_none() {
        return (StatusCode::BAD_REQUEST, "no such account\n").into_response();
    }
    let result = match &admin.tokens {
        None => "failed: tokens unavailable: no token store key".to_owned(),
        Some(tokens) => match tokens.refresh_now(&form.account).await {
            Ok(token) => {
                let left = token.expires_at.saturating_sub(crate::clock::unix_secs());
                format!("ok: a new token, valid for {left} s")
            }
            Err(e) => format!("failed: {e}"),
        },
    };
    audit(&admin, &session, "token refresh", form.account, result);
    Redirect::to("/").into_response()
}

#[derive(serde::Deserialize)]
pub struct TestMessageForm {
    csrf: String,
    account: String,
    to: String,
}

/// `POST /test-message`: a test message to an address through an account, queued like any
/// other (see `test_message.rs`); the Recent actions row gives its queue ID, which `queue
/// list` and the delivery log lines name.
pub async fn send_test_message(
    State(admin): State<Arc<Admin>>,
    axum::Extension(session): axum::Extension<Session>,
    Form(form): Form<TestMessageForm>,
) -> Response {
    if let Some(refused) = refuse(&session, &form.csrf) {
        return refused;
    }
    let Some(account) = admin.config.account(&form.account) else {
        return (StatusCode::BAD_REQUEST, "no such account\n").into_response();
    };
    let to = match crate::smtp::command::recipient_address(form.to.trim()) {
        Ok(to) => to,
        Err(why) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an address to send to: {why}\n"),
            )
                .into_response();
        }
    };
    let queued =
        super::test_message::queue(&admin.spool, &admin.config, account, &to, session.user()).await;
    let result = match queued {
        Ok(id) => format!("ok: queued as {id}"),
        Err(e) => format!("failed: {e}"),
    };
    let target = format!("{to} through {}", account.name);
    audit(&admin, &session, "test message", target, result);
    Redirect::to("/").into_response()
}

/// Why `session` may not act with `csrf`, if it may not.
fn refuse(session: &Session, csrf: &str) -> Option<Response> {
    // The token is compared by digest, like the bearer token: timing says nothing.
    let digest = |t: &str| {
        ring::digest::digest(&ring::digest::SHA256, t.as_bytes())
            .as_ref()
            .to_vec()
    };
    if digest(csrf) != digest(&session.csrf) {
        tracing::warn!(user = %crate::logging::Untrusted(session.user()), "admin action refused: no valid CSRF token");
        return Some(
            (
                StatusCode::FORBIDDEN,
                "this form is stale or not the page's: reload the page\n",
            )
                .into_response(),
        );
    }
    if session.role != Role::Operator {
        return Some((StatusCode::FORBIDDEN, "only operators act on the queue\n").into_response());
    }
    None
}

/// One log line and a row of "Recent actions".
fn audit(admin: &Admin, session: &Session, action: &str, target: String, result: String) {
    tracing::info!(
        user = %crate::logging::Untrusted(session.user()),
        action = %crate::logging::Untrusted(action),
        target = %crate::logging::Untrusted(&target),
        result = %crate::logging::Untrusted(&result),
        "admin action"
    );
    admin.recent.push(Audited {
        at_ms: crate::clock::unix_ms(),
        user: session.user().to_owned(),
        action: action.to_owned(),
        target,
        result,
    });
}

fn confirm_delete(session: &Session, csrf: &str, id: QueueId) -> Response {
    let _ = session;
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Delete {id}?</title></head><body>\
         <h1>Delete message {id}?</h1><p>It is removed from the queue without a report to its sender.</p>\
         <form method=\"post\" action=\"/action\">{}<input type=\"hidden\" name=\"action\" value=\"delete\">\
         <input type=\"hidden\" name=\"id\" value=\"{id}\"><input type=\"hidden\" name=\"confirmed\" value=\"yes\">\
         <button type=\"submit\" id=\"confirm-delete\">Delete</button> <a href=\"/\">Cancel</a></form></body></html>",
        csrf_field(csrf)
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

/// `queue list`'s rows, from the spool and the running scheduler.
async fn messages(admin: &Admin) -> Vec<crate::cli::QueueRow> {
    let asked = crate::admin::control::request(&admin.config.server.state_dir, &Control::Standings);
    let standings = tokio::time::timeout(Duration::from_secs(2), asked)
        .await
        .ok()
        .and_then(|a| a.ok())
        .and_then(|text| {
            serde_json::from_str::<Vec<(QueueId, crate::delivery::Standing)>>(&text).ok()
        })
        .map(|list| {
            list.into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        });
    let config = Arc::clone(&admin.config);
    tokio::task::spawn_blocking(move || {
        let paths = crate::queue::SpoolPaths::new(config.spool_dir());
        let scan = paths.scan().ok()?;
        let mut rows = crate::cli::queue_rows(&config, &paths, &scan, standings.as_ref());
        rows.sort_by_key(|r| r.received_at);
        Some(rows)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// The page's sections for a signed-in person: the messages (page `page`, from 0), with
/// forms for an operator, and the recent actions.
pub async fn sections(admin: &Admin, session: &Session, page: usize) -> String {
    let rows = messages(admin).await;
    let operator = session.role == Role::Operator;
    let csrf = csrf_field(&session.csrf);
    let mut html = String::from("<h2>Messages</h2>");
    if operator {
        html.push_str(&format!(
            "<form method=\"post\" action=\"/action\">{csrf}<input type=\"hidden\" name=\"action\" value=\"flush\"><button type=\"submit\" id=\"flush\">Flush: try every deferred message now</button></form>"
        ));
    }
    if operator {
        // `token refresh` for each account.
        for account in &admin.config.accounts {
            let name = escape(&account.name);
            html.push_str(&format!(
                "<form method=\"post\" action=\"/token\" style=\"display:inline\">{csrf}<input type=\"hidden\" name=\"account\" value=\"{name}\"><button type=\"submit\" id=\"refresh-{name}\">Refresh the token of {name}</button></form> "
            ));
        }
        if !admin.config.accounts.is_empty() {
            let options: String = admin
                .config
                .accounts
                .iter()
                .map(|a| format!("<option>{}</option>", escape(&a.name)))
                .collect();
            html.push_str(&format!(
                "<form method=\"post\" action=\"/test-message\" id=\"test-message\">{csrf}\
                 Send a test message through <select name=\"account\">{options}</select> \
                 to <input name=\"to\" type=\"email\" required placeholder=\"you@contoso.com\"> \
                 <button type=\"submit\">Send</button></form>"
            ));
        }
        html.push_str(&format!(
            "<form method=\"post\" action=\"/select\" id=\"selection\">{csrf}\
             <select name=\"action\"><option>hold</option><option>release</option><option>retry</option><option>delete</option></select> \
             the messages from <input name=\"from\" placeholder=\"*@contoso.com\"> \
             to <input name=\"to\" placeholder=\"*@fabrikam.com\"> \
             older than <input name=\"older_than\" placeholder=\"2h\"> \
             <button type=\"submit\">Apply</button></form>"
        ));
    }
    let pages = rows.len().div_ceil(PAGE).max(1);
    let page = page.min(pages - 1);
    html.push_str("<table id=\"messages\"><tr><th>ID</th><th>Age</th><th>Sender</th><th>Recipients</th><th>Subject</th><th>Why it waits</th>");
    if operator {
        html.push_str("<th>Act</th>");
    }
    html.push_str("</tr>");
    for row in rows.iter().skip(page * PAGE).take(PAGE) {
        let id = escape(&row.id);
        html.push_str(&format!(
            "<tr id=\"m-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            escape(&super::status::duration_words(row.age_seconds)),
            escape(if row.sender.is_empty() { "<>" } else { &row.sender }),
            escape(&row.recipients.join(", ")),
            escape(row.subject.as_deref().unwrap_or("")),
            escape(&row.waiting),
        ));
        if operator {
            html.push_str("<td>");
            for action in ["hold", "release", "retry", "delete"] {
                html.push_str(&format!(
                    "<form method=\"post\" action=\"/action\" style=\"display:inline\">{csrf}<input type=\"hidden\" name=\"action\" value=\"{action}\"><input type=\"hidden\" name=\"id\" value=\"{id}\"><button type=\"submit\" name=\"do\" value=\"{action}\">{action}</button></form>"
                ));
            }
            html.push_str("</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    if pages > 1 {
        html.push_str(&format!("<p>Page {} of {pages}: ", page + 1));
        if page > 0 {
            html.push_str(&format!("<a href=\"/?page={}\">previous</a> ", page - 1));
        }
        if page + 1 < pages {
            html.push_str(&format!("<a href=\"/?page={}\">next</a>", page + 1));
        }
        html.push_str("</p>");
    }
    html.push_str("<h2>Recent actions</h2><table id=\"recent-actions\"><tr><th>When</th><th>Who</th><th>Action</th><th>Target</th><th>Result</th></tr>");
    for a in admin.recent.list() {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&crate::clock::rfc3339(a.at_ms / 1000)),
            escape(&a.user),
            escape(&a.action),
            escape(&a.target),
            escape(&a.result)
        ));
    }
    html.push_str("</table>");
    html
}
