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

/// A draft (the path for messages over 4 MB), as Graph keeps it until `/send`.
#[derive(Debug, Clone)]
pub struct Draft {
    pub mailbox: String,
    /// The `message` resource as posted.
    pub message: serde_json::Value,
    pub attachments: Vec<DraftAttachment>,
}

#[derive(Debug, Clone)]
pub struct DraftAttachment {
    pub name: String,
    pub content_type: String,
    /// The bytes of an attachment added in one request; an uploaded one keeps only its
    /// length and digest (the double would otherwise hold a 150 MB upload in memory).
    pub bytes: Vec<u8>,
    pub len: usize,
    pub sha256: Vec<u8>,
    pub content_id: Option<String>,
    pub inline: bool,
    /// Came through an upload session.
    pub uploaded: bool,
}

impl DraftAttachment {
    /// From a `fileAttachment` resource or an upload session's `AttachmentItem`.
    fn described(item: &serde_json::Value, bytes: Vec<u8>, uploaded: bool) -> DraftAttachment {
        let text = |key: &str| item[key].as_str().unwrap_or_default().to_owned();
        DraftAttachment {
            name: text("name"),
            content_type: text("contentType"),
            len: bytes.len(),
            sha256: sha256(&bytes),
            bytes,
            content_id: item["contentId"].as_str().map(str::to_owned),
            inline: item["isInline"].as_bool().unwrap_or(false),
            uploaded,
        }
    }
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

struct UploadSession {
    draft: String,
    attachment: DraftAttachment,
    size: usize,
    /// What has arrived so far: its length and digest.
    received: usize,
    digest: ring::digest::Context,
}

#[derive(Default)]
pub struct GraphState {
    pub sent: Vec<Sent>,
    pub drafts: std::collections::HashMap<String, Draft>,
    /// Drafts that were sent, in order.
    pub sent_drafts: Vec<Draft>,
    uploads: std::collections::HashMap<String, UploadSession>,
    /// Upload chunks received, as (start, length).
    pub chunks: Vec<(usize, usize)>,
    /// The next draft `/send` is carried out, but answered only after this long (a client
    /// with a shorter timeout cannot tell whether it went).
    pub stall_next_send: Option<std::time::Duration>,
    /// Draft lookups (`GET …/messages/{id}`) and their answers.
    pub lookups: Vec<u16>,
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
    /// Its HTTPS certificate's CA (the relay trusts it through `ca_file`).
    pub pki: Arc<super::TestPki>,
    entra: Arc<Mutex<Option<Entra>>>,
}

/// HTTPS for axum: TLS with the double's rcgen certificate on each accepted connection.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl Graph {
    pub async fn start() -> Graph {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pki = Arc::new(super::TestPki::new());
        let tls = smtprelay::smtp::tls::acceptor(&smtprelay::config::TlsConfig {
            certificate: pki.cert_path(),
            private_key: pki.key_path(),
        })
        .unwrap();
        let graph = Graph {
            addr: tcp.local_addr().unwrap(),
            state: Arc::default(),
            pki,
            entra: Arc::default(),
        };
        let listener = TlsListener { tcp, tls };
        let app = axum::Router::new()
            .route(
                "/v1.0/users/{user}/sendMail",
                axum::routing::post(send_mail),
            )
            .route(
                "/v1.0/users/{user}/messages",
                axum::routing::post(create_draft),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}",
                axum::routing::get(get_draft),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments",
                axum::routing::post(add_attachment),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments/createUploadSession",
                axum::routing::post(create_upload_session),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}/send",
                axum::routing::post(send_draft),
            )
            .route("/upload/{session}", axum::routing::put(upload))
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
            "transport = \"graph\"\ngraph_endpoint = \"{}\"\n",
            self.endpoint()
        )
    }

    /// Its base URL, as `graph_endpoint` names it (HTTPS, the certificate is for localhost).
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}/v1.0", self.addr.port())
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

/// A refusal, as Graph answers it.
type Refused = Box<Response>;

/// The checks every Graph request passes first: a current token the Entra double issued, for
/// Graph, with `permission` (app-only role, or delegated scope for the mailbox's own user),
/// for a mailbox Graph serves.
fn authorise(
    graph: &Graph,
    mailbox: &str,
    headers: &HeaderMap,
    permission: &str,
) -> Result<(), Refused> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return Err(Box::new(error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        )));
    };
    let entra = graph.entra.lock().unwrap().clone();
    let Some(token) = entra.and_then(|entra| entra.validate(bearer)) else {
        return Err(Box::new(error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )));
    };
    if token.audience != GRAPH_RESOURCE {
        return Err(Box::new(error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )));
    }
    let permitted = token.permissions.iter().any(|p| p == permission)
        && token
            .user
            .as_ref()
            .is_none_or(|u| u.eq_ignore_ascii_case(mailbox));
    if !permitted {
        return Err(Box::new(error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )));
    }
    if graph.state().rest_disabled.contains(mailbox) {
        return Err(Box::new(error(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )));
    }
    Ok(())
}

fn answer(graph: &Graph, user: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let mailbox = user.to_ascii_lowercase();
    if let Err(refused) = authorise(graph, &mailbox, headers, "Mail.Send") {
        return *refused;
    }
    let mut state = graph.state();
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

/// A request on drafts (Mail.ReadWrite) with a JSON body: the mailbox and the body.
fn draft_request(
    graph: &Graph,
    user: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, serde_json::Value), Refused> {
    let mailbox = user.to_ascii_lowercase();
    authorise(graph, &mailbox, headers, "Mail.ReadWrite")?;
    Ok((mailbox, json_body(body)?))
}

fn json_body(body: &[u8]) -> Result<serde_json::Value, Refused> {
    serde_json::from_slice(body).map_err(|_| {
        Box::new(error(
            400,
            "BadRequest",
            "Unable to read JSON request payload.",
        ))
    })
}

fn not_found() -> Response {
    error(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

async fn create_draft(
    State(graph): State<Graph>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (mailbox, message) = match draft_request(&graph, &user, &headers, &body) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    // Only x- headers may be set on a draft.
    if let Some(headers) = message["internetMessageHeaders"].as_array()
        && headers.iter().any(|h| {
            !h["name"]
                .as_str()
                .is_some_and(|n| n.to_ascii_lowercase().starts_with("x-"))
        })
    {
        return error(
            400,
            "InvalidInternetMessageHeader",
            "The internet message header name should start with 'x-' or 'X-'.",
        );
    }
    let id = format!("AAMkAD{}", uuid_like());
    graph.state().drafts.insert(
        id.clone(),
        Draft {
            mailbox,
            message,
            attachments: Vec::new(),
        },
    );
    (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response()
}

async fn add_attachment(
    State(graph): State<Graph>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (mailbox, resource) = match draft_request(&graph, &user, &headers, &body) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let Some(bytes) = resource["contentBytes"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
    else {
        return error(400, "ErrorInvalidRequest", "contentBytes is not base64.");
    };
    if bytes.len() > 3 * 1024 * 1024 {
        return error(
            413,
            "ErrorRequestEntityTooLarge",
            "Attachments over 3 MB need an upload session.",
        );
    }
    let mut state = graph.state();
    let Some(draft) = state.drafts.get_mut(&id).filter(|d| d.mailbox == mailbox) else {
        return not_found();
    };
    draft
        .attachments
        .push(DraftAttachment::described(&resource, bytes, false));
    StatusCode::CREATED.into_response()
}

async fn create_upload_session(
    State(graph): State<Graph>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (mailbox, request) = match draft_request(&graph, &user, &headers, &body) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let item = &request["AttachmentItem"];
    let size = item["size"].as_u64().unwrap_or(0) as usize;
    if item["attachmentType"] != "file" || size == 0 || size > 150 * 1024 * 1024 {
        return error(400, "ErrorInvalidRequest", "Invalid AttachmentItem.");
    }
    let mut state = graph.state();
    if state.drafts.get(&id).is_none_or(|d| d.mailbox != mailbox) {
        return not_found();
    }
    let session = uuid_like();
    state.uploads.insert(
        session.clone(),
        UploadSession {
            draft: id,
            attachment: DraftAttachment::described(item, Vec::new(), true),
            size,
            received: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        },
    );
    let url = format!("https://localhost:{}/upload/{session}", graph.addr.port());
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "uploadUrl": url,
            "expirationDateTime": "2026-11-28T23:59:59Z",
            "nextExpectedRanges": ["0-"],
        })),
    )
        .into_response()
}

/// One chunk, as Graph's upload sessions take them: no Authorization header (the URL is the
/// credential), `Content-Range: bytes a-b/total` continuing where the last chunk ended, at
/// most 4 MiB, a multiple of 320 KiB unless it is the last.
async fn upload(
    State(graph): State<Graph>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if headers.contains_key("authorization") {
        return error(
            401,
            "InvalidAuthenticationToken",
            "The upload URL is pre-authenticated; an Authorization header is not accepted.",
        );
    }
    let range = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| {
            let (span, total) = v.split_once('/')?;
            let (a, b) = span.split_once('-')?;
            Some((
                a.parse::<usize>().ok()?,
                b.parse::<usize>().ok()?,
                total.parse::<usize>().ok()?,
            ))
        });
    let Some((start, end, total)) = range else {
        return error(
            400,
            "InvalidContentRange",
            "Content-Range is missing or malformed.",
        );
    };
    let mut state = graph.state();
    let Some(upload) = state.uploads.get_mut(&session) else {
        return not_found();
    };
    let len = body.len();
    let last = end + 1 == upload.size;
    let valid = total == upload.size
        && start == upload.received
        && end >= start
        && end - start + 1 == len
        && len <= 4 * 1024 * 1024
        && (last || len.is_multiple_of(320 * 1024));
    if !valid {
        return error(
            400,
            "InvalidContentRange",
            "The Content-Range does not match the expected range or chunk size rules.",
        );
    }
    upload.received += len;
    upload.digest.update(&body);
    state.chunks.push((start, len));
    if !last {
        return (
            StatusCode::OK,
            axum::Json(json!({ "nextExpectedRanges": [format!("{}-", end + 1)] })),
        )
            .into_response();
    }
    let done = state.uploads.remove(&session).unwrap();
    let mut attachment = done.attachment;
    attachment.len = done.received;
    attachment.sha256 = done.digest.finish().as_ref().to_vec();
    match state.drafts.get_mut(&done.draft) {
        Some(draft) => {
            draft.attachments.push(attachment);
            StatusCode::CREATED.into_response()
        }
        None => not_found(),
    }
}

/// A draft is there until it is sent (then it is in Sent Items, under another id).
async fn get_draft(
    State(graph): State<Graph>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mailbox = user.to_ascii_lowercase();
    if let Err(refused) = authorise(&graph, &mailbox, &headers, "Mail.ReadWrite") {
        return *refused;
    }
    let mut state = graph.state();
    let found = state.drafts.get(&id).is_some_and(|d| d.mailbox == mailbox);
    state.lookups.push(if found { 200 } else { 404 });
    if found {
        (
            StatusCode::OK,
            axum::Json(json!({ "id": id, "isDraft": true })),
        )
            .into_response()
    } else {
        not_found()
    }
}

async fn send_draft(
    State(graph): State<Graph>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mailbox = user.to_ascii_lowercase();
    if let Err(refused) = authorise(&graph, &mailbox, &headers, "Mail.Send") {
        return *refused;
    }
    let stall = {
        let mut state = graph.state();
        match state.drafts.remove(&id) {
            Some(draft) if draft.mailbox == mailbox => {
                state.sent_drafts.push(draft);
                state.requests.push((Instant::now(), 202));
                state.stall_next_send.take()
            }
            Some(draft) => {
                state.drafts.insert(id, draft);
                return not_found();
            }
            None => return not_found(),
        }
    };
    // Sent either way; a stalled answer leaves the client not knowing.
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    StatusCode::ACCEPTED.into_response()
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}{:08x}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}
