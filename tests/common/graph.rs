//! A test double of Microsoft Graph's `sendMail` (v1.0), as strict as `exchange-online.md`:
//! bearer tokens the Entra double issued, for the Graph audience, with Mail.Send (app-only
//! `roles` or delegated `scp` for the mailbox's own user); the body is base64 MIME sent as
//! `text/plain` and at most 4 MB; recipients come from the To/Cc/Bcc headers (there is no
//! envelope); Graph's JSON error bodies; 429 with `Retry-After`; and answers that come after
//! the mail was accepted.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::entra::{Entra, GRAPH_RESOURCE};

/// Graph refuses a sendMail body over this with 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Sent {
    pub mailbox: String,
    /// The MIME as Graph decoded it from the request.
    pub mime: Vec<u8>,
    /// Every To, Cc and Bcc address, lowercased: whom Exchange delivers to.
    pub recipients: Vec<String>,
}

/// A scripted answer for the next sendMail request that passes authentication.
#[derive(Debug, Clone)]
pub enum GraphFault {
    /// Refuse with this status and error code, and `Retry-After` seconds if given.
    Refuse(u16, &'static str, Option<u64>),
    /// Accept the mail, then answer with this status anyway (Graph does, now and then).
    AcceptThenFail(u16, &'static str),
}

#[derive(Default)]
pub struct GraphState {
    pub sent: Vec<Sent>,
    pub faults: VecDeque<GraphFault>,
    /// Mailboxes that are unlicensed or on-premises (MailboxNotEnabledForRESTAPI).
    pub rest_disabled: HashSet<String>,
    /// Addresses Exchange refuses as recipients (ErrorInvalidRecipients).
    pub invalid_recipients: HashSet<String>,
    /// When each sendMail request came, and what it was answered.
    pub requests: Vec<(Instant, u16)>,
}

#[derive(Clone)]
pub struct Graph {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<GraphState>>,
    entra: Arc<Mutex<Option<Entra>>>,
}

impl Graph {
    pub async fn start() -> Graph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let graph = Graph {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            entra: Arc::default(),
        };
        let app = axum::Router::new()
            .route(
                "/v1.0/users/{user}/sendMail",
                axum::routing::post(send_mail),
            )
            // Larger bodies must reach the handler, which answers 413 as Graph does.
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(graph.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        graph
    }

    /// Tokens are checked against what this Entra issued.
    pub fn trust(&self, entra: &Entra) {
        *self.entra.lock().unwrap() = Some(entra.clone());
    }

    /// The `[[account]]` keys that send through this double.
    pub fn account_keys(&self) -> String {
        format!(
            "transport = \"graph\"\ngraph_endpoint = \"http://{}/v1.0\"\n",
            self.addr
        )
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, GraphState> {
        self.state.lock().unwrap()
    }
}

/// Graph's error body.
fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": "2026-11-28T00:00:00",
                "request-id": "00000000-0000-0000-0000-000000000000",
                "client-request-id": "00000000-0000-0000-0000-000000000000"
            }
        }
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn send_mail(
    State(graph): State<Graph>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let response = answer(&graph, &user, &headers, &body);
    graph
        .state()
        .requests
        .push((Instant::now(), response.status().as_u16()));
    response
}

fn answer(graph: &Graph, user: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let mailbox = user.to_ascii_lowercase();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    let entra = graph.entra.lock().unwrap().clone();
    let Some(token) = entra.and_then(|entra| entra.validate(bearer)) else {
        return error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        );
    };
    if token.audience != GRAPH_RESOURCE {
        return error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        );
    }
    let may_send = token.permissions.iter().any(|p| p == "Mail.Send")
        && token
            .user
            .as_ref()
            .is_none_or(|u| u.eq_ignore_ascii_case(&mailbox));
    if !may_send {
        return error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        );
    }
    let mut state = graph.state();
    if state.rest_disabled.contains(&mailbox) {
        return error(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        );
    }
    let text_plain = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap().trim() == "text/plain");
    if !text_plain {
        return error(
            400,
            "ErrorInvalidRequest",
            "MIME content must be sent as text/plain.",
        );
    }
    if body.len() > MAX_BODY {
        return error(
            413,
            "ErrorRequestEntityTooLarge",
            "The maximum request length supported is 4MB.",
        );
    }
    let Ok(mime) = STANDARD.decode(body) else {
        return error(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let recipients = header_recipients(&mime);
    if recipients.is_empty() {
        return error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is required.",
        );
    }
    if recipients
        .iter()
        .any(|r| state.invalid_recipients.contains(r))
    {
        return error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid.",
        );
    }
    let sent = Sent {
        mailbox,
        mime,
        recipients,
    };
    match state.faults.pop_front() {
        Some(GraphFault::Refuse(status, code, retry_after)) => {
            let mut response = error(status, code, "Scripted refusal.");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
            }
            response
        }
        Some(GraphFault::AcceptThenFail(status, code)) => {
            state.sent.push(sent);
            error(status, code, "The server is busy.")
        }
        None => {
            state.sent.push(sent);
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// Every address of every To, Cc and Bcc header, lowercased.
fn header_recipients(mime: &[u8]) -> Vec<String> {
    use mail_parser::{HeaderName, HeaderValue, MessageParser};
    let Some(message) = MessageParser::default().parse_headers(mime) else {
        return Vec::new();
    };
    let mut recipients = Vec::new();
    for header in message.headers() {
        if !matches!(
            header.name,
            HeaderName::To | HeaderName::Cc | HeaderName::Bcc
        ) {
            continue;
        }
        if let HeaderValue::Address(address) = &header.value {
            for addr in address.iter() {
                if let Some(email) = addr.address() {
                    recipients.push(email.to_ascii_lowercase());
                }
            }
        }
    }
    recipients
}
