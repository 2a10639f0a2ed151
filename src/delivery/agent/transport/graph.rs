//! Microsoft Graph `sendMail`, for tenants that turned SMTP AUTH off: the spooled MIME,
//! base64-encoded, posted as the account's mailbox with a Graph-audience token. Graph has no
//! envelope, so recipients that no To/Cc/Bcc header names go in an added `Bcc:` header
//! ([`super::headers`]); every other byte goes as it was spooled.
//!
//! What Graph answers means is `delivery::meaning::graph`'s table.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{AccountEffect, Notes, Outcome, Outgoing, RecipientResult, SendError, Transport};
use crate::BoxFuture;
use crate::config::AccountConfig;
use crate::delivery::meaning::Explain;
use crate::delivery::meaning::graph::{self as meaning, Action};
use crate::oauth::manager::TokenManager;

/// Graph refuses a sendMail body (the base64 text) over 4 MB with 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Graph's error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// `Retry-After` in seconds (Graph does not send dates), within reason.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.clamp(1, 3600)))
}

pub struct GraphTransport {
    account: AccountConfig,
    http: Result<reqwest::Client, String>,
    tokens: Arc<TokenManager>,
    stop: CancellationToken,
}

impl GraphTransport {
    pub fn new(
        account: AccountConfig,
        tokens: Arc<TokenManager>,
        stop: CancellationToken,
    ) -> GraphTransport {
        let http = http_client(&account);
        GraphTransport {
            account,
            http,
            tokens,
            stop,
        }
    }

    async fn send_message(&mut self, message: &Outgoing<'_>) -> Result<Outcome, SendError> {
        let http = self.http.clone().map_err(SendError::NotSent)?;
        let (mut payload, message_id) = self.payload(message, false).await?;
        let done = |mut outcome: Outcome| {
            outcome.message_id.clone_from(&message_id);
            outcome.tls = "https";
            outcome
        };
        let account = &self.account.name;
        let mut refreshed = false;
        loop {
            let token = self
                .tokens
                .access_token_until(account, &self.stop)
                .await
                .map_err(SendError::no_token)?;
            let request = Request {
                http: &http,
                base: mailbox_url(&self.account, message.mailbox),
                token: token.token.expose(),
            };
            let answer = tokio::select! {
                answer = request.send(&payload, message.notes) => answer?,
                _ = self.stop.cancelled() => return Err(SendError::Interrupted),
            };
            let (action, reply) =
                meaning::read(answer.status, &answer.error.code, &answer.error.message);
            match action {
                Action::Delivered => {
                    return Ok(done(everyone(message, RecipientResult::Delivered(reply))));
                }
                // Graph's limit is what it says it is: the draft path takes any size.
                Action::FailMessage
                    if answer.status == 413 && matches!(payload, Payload::Mime(_)) =>
                {
                    payload = self.payload(message, true).await?.0;
                }
                Action::RefreshToken if !refreshed => {
                    self.tokens.invalidate(account, &token.token);
                    refreshed = true;
                }
                Action::RefreshToken => return Err(SendError::TokenRefused(reply.described())),
                Action::Throttled => {
                    let mut outcome = everyone(message, RecipientResult::Deferred(reply.clone()));
                    outcome.effect = Some(AccountEffect::Throttled(reply, answer.retry_after));
                    return Ok(done(outcome));
                }
                Action::HoldAccount => {
                    return Err(SendError::Account(AccountEffect::Hold(reply)));
                }
                Action::FailMessage => {
                    return Ok(done(everyone(message, RecipientResult::Failed(reply))));
                }
                Action::Retry => return Err(SendError::Failed(reply.described())),
            }
        }
    }

    /// What goes to Graph: the spooled MIME (checked against its checksum) with the envelope's
    /// unnamed recipients in a `Bcc:` header (and From rewritten, if asked), base64-encoded;
    /// or, when that is over Graph's 4 MB (or Graph said 413, or `draft`), the message
    /// rebuilt as a draft; or, when an earlier attempt recorded a draft, that draft (the
    /// content is not read). With the message's Message-ID, for the logs.
    async fn payload(
        &self,
        message: &Outgoing<'_>,
        draft: bool,
    ) -> Result<(Payload, Option<String>), SendError> {
        if let Some(id) = message.notes.graph_draft() {
            return Ok((Payload::Recorded(id), None));
        }
        let file = message.file.clone();
        let path = message.path.to_owned();
        let recipients = message.recipients.to_vec();
        let rewrite_from = message.rewrite_from.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let unreadable = |e: &dyn std::fmt::Display| {
                tracing::error!(queue_id = %file.envelope.id, error = %e, "cannot send the spooled message");
                SendError::NotSent(format!("cannot read the spooled message: {e}"))
            };
            let head = file
                .read_head(&path, super::headers::HEAD)
                .map_err(|e| unreadable(&e))?;
            let message_id = super::headers::message_id(&head);
            let edits =
                super::headers::HeaderEdits::plan(&head, Some(&recipients), rewrite_from.as_deref());
            let len = file.content_len as usize;
            if !draft && edits.len_after(len).div_ceil(3) * 4 <= MAX_BODY {
                // At most 3 MB: read whole.
                let content = file.read_content(&path).map_err(|e| unreadable(&e))?;
                let mime = STANDARD.encode(edits.apply(&content).as_ref());
                return Ok((Payload::Mime(mime), message_id));
            }
            // Mapped, not read: a draft's attachments are decoded from the page cache a chunk
            // at a time.
            let spooled: super::graph_draft::Spooled = match len {
                0 => Arc::new(Vec::new()),
                _ => Arc::new(file.map_content(&path).map_err(|e| unreadable(&e))?),
            };
            // Drafts take their recipients from the envelope, so the Bcc edit is not needed.
            super::graph_draft::draft(spooled, &recipients, rewrite_from.as_deref())
                .map(|draft| (Payload::Draft(draft), message_id))
                .map_err(SendError::NotSent)
        })
        .await
        .map_err(|e| SendError::NotSent(e.to_string()))?
    }
}

/// A message as Graph takes it.
enum Payload {
    /// sendMail's body.
    Mime(String),
    Draft(super::graph_draft::Draft),
    /// A draft an earlier attempt made and recorded: only its fate is left to learn.
    Recorded(String),
}

/// Graph's answer to the request that decides (sendMail, or the step of the draft path
/// that failed, or its `/send`).
struct Answer {
    status: u16,
    error: ErrorDetail,
    retry_after: Option<Duration>,
}

impl Answer {
    /// Graph's 202: the message is accepted for every recipient.
    fn accepted() -> Answer {
        Answer {
            status: 202,
            error: ErrorDetail::default(),
            retry_after: None,
        }
    }
}

/// The requests for one message, as one mailbox with one token.
struct Request<'a> {
    http: &'a reqwest::Client,
    /// `{graph_endpoint}/users/{mailbox}`.
    base: String,
    token: &'a str,
}

impl Request<'_> {
    async fn send(&self, payload: &Payload, notes: &dyn Notes) -> Result<Answer, SendError> {
        match payload {
            Payload::Mime(body) => {
                let request = self
                    .http
                    .post(format!("{}/sendMail", self.base))
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(body.clone());
                self.accepted(request).await
            }
            Payload::Draft(draft) => self.send_draft(draft, notes).await,
            Payload::Recorded(id) => self.send_recorded_draft(id).await,
        }
    }

    /// An earlier attempt made and recorded this draft, then could not tell whether `/send`
    /// went through (a timeout, a reset). A draft still there was not sent: send it. One
    /// Graph no longer has was sent (it moved to Sent Items): nothing more to do.
    async fn send_recorded_draft(&self, id: &str) -> Result<Answer, SendError> {
        let message = format!("{}/messages/{}", self.base, percent_encode(id));
        match self.call(self.http.get(&message), &[200]).await? {
            Ok(_) => {
                self.accepted(self.http.post(format!("{message}/send")))
                    .await
            }
            Err(answer) if answer.status == 404 => {
                tracing::info!(draft = %id, "the draft was sent by an earlier attempt");
                Ok(Answer::accepted())
            }
            Err(answer) => Ok(answer),
        }
    }

    /// Draft, attachments, send: the first step Graph refuses is the answer. The draft's id is
    /// recorded before `/send`, so an ambiguous failure there is never sent twice.
    async fn send_draft(
        &self,
        draft: &super::graph_draft::Draft,
        notes: &dyn Notes,
    ) -> Result<Answer, SendError> {
        let created = self
            .call(
                self.http
                    .post(format!("{}/messages", self.base))
                    .json(&draft.message),
                &[201],
            )
            .await?;
        let id = match created {
            Ok(body) => body["id"].as_str().unwrap_or_default().to_owned(),
            Err(answer) => return Ok(answer),
        };
        if id.is_empty() {
            return Err(SendError::Failed(
                "Graph created a draft without an id".into(),
            ));
        }
        let message = format!("{}/messages/{}", self.base, percent_encode(&id));
        for attachment in &draft.attachments {
            if attachment.size <= super::graph_draft::SMALL_ATTACHMENT {
                let request = self
                    .http
                    .post(format!("{message}/attachments"))
                    .json(&attachment.resource());
                if let Err(answer) = self.call(request, &[201]).await? {
                    return Ok(answer);
                }
                continue;
            }
            let request = self
                .http
                .post(format!("{message}/attachments/createUploadSession"))
                .json(&attachment.upload_item());
            let session = match self.call(request, &[200, 201]).await? {
                Ok(body) => body["uploadUrl"].as_str().unwrap_or_default().to_owned(),
                Err(answer) => return Ok(answer),
            };
            if let Err(answer) = self.upload(&session, attachment).await? {
                return Ok(answer);
            }
        }
        if !notes.record_graph_draft(&id).await {
            return Err(SendError::Interrupted);
        }
        self.accepted(self.http.post(format!("{message}/send")))
            .await
    }

    /// The attachment's bytes in chunks to the pre-authenticated upload URL (no token). Each
    /// chunk is decoded (off the runtime's threads) while the one before it travels: at most
    /// two chunks of a message are in memory.
    async fn upload(
        &self,
        url: &str,
        attachment: &super::graph_draft::Attachment,
    ) -> Result<Result<(), Answer>, SendError> {
        let total = attachment.size;
        let decode = |mut pieces: super::graph_draft::Pieces| {
            tokio::task::spawn_blocking(move || {
                let chunk = pieces.next_chunk();
                (pieces, chunk)
            })
        };
        let mut next = decode(attachment.pieces());
        let mut start = 0;
        loop {
            let (pieces, chunk) = next
                .await
                .map_err(|e| SendError::Failed(format!("cannot decode the attachment: {e}")))?;
            let Some(chunk) = chunk else { break };
            next = decode(pieces);
            let end = start + chunk.len() - 1;
            if end >= total {
                return Err(SendError::Failed(format!(
                    "the attachment {:?} decoded to more than its {total} bytes",
                    attachment.name
                )));
            }
            let request = self
                .http
                .put(url)
                .header(
                    reqwest::header::CONTENT_RANGE,
                    format!("bytes {start}-{end}/{total}"),
                )
                .body(chunk);
            let response = request.send().await.map_err(|e| unanswered(&e))?;
            let status = response.status().as_u16();
            if !matches!(status, 200 | 201) {
                return Ok(Err(answer_of(response).await));
            }
            start = end + 1;
        }
        Ok(Ok(()))
    }

    /// Sends a request that delivers the message: Graph's 202, or what it said instead.
    async fn accepted(&self, request: reqwest::RequestBuilder) -> Result<Answer, SendError> {
        Ok(self
            .call(request, &[202])
            .await?
            .map_or_else(|answer| answer, |_| Answer::accepted()))
    }

    /// Sends `request` with the token; the JSON body when the status is one of `expected`,
    /// else Graph's answer.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        expected: &[u16],
    ) -> Result<Result<Value, Answer>, SendError> {
        let response = request
            .bearer_auth(self.token)
            .send()
            .await
            .map_err(|e| unanswered(&e))?;
        let status = response.status().as_u16();
        if !expected.contains(&status) {
            return Ok(Err(answer_of(response).await));
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Ok(Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// Reads an answer Graph gave instead of what was expected.
async fn answer_of(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let bytes = response.bytes().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
    Answer {
        status,
        error: body.error,
        retry_after,
    }
}

/// What `token test` does for a Graph account: an authenticated sendMail with an empty body.
/// Graph checks the token and the right to send as `mailbox` before it reads the body, so a
/// 400 for the missing message means both passed, and nothing was sent.
pub async fn probe(account: &AccountConfig, mailbox: &str, token: &str) -> Result<String, String> {
    let http = http_client(account)?;
    let url = format!("{}/sendMail", mailbox_url(account, mailbox));
    let response = http
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body("")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe_http_error(&e)))?;
    let answer = answer_of(response).await;
    let (action, reply) = meaning::read(answer.status, &answer.error.code, &answer.error.message);
    match (answer.status, action) {
        (400, Action::FailMessage) => Ok(format!(
            "Graph accepted the token for {mailbox} (an empty message was refused, as it must be: nothing was sent)"
        )),
        _ => Err(format!("as {mailbox}: {}", reply.described())),
    }
}

/// `{graph_endpoint}/users/{mailbox}`: where a mailbox's requests go.
fn mailbox_url(account: &AccountConfig, mailbox: &str) -> String {
    format!(
        "{}/users/{}",
        account.graph_endpoint.trim_end_matches('/'),
        percent_encode(mailbox)
    )
}

/// An HTTP client that trusts the system roots and the account's `ca_file`, with its timeouts.
fn http_client(account: &AccountConfig) -> Result<reqwest::Client, String> {
    let tls = crate::tls::client_config(account.upstream.ca_file.as_deref())
        .map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(account.upstream.connect_timeout)
        .timeout(account.upstream.command_timeout)
        .user_agent(concat!("smtprelay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up HTTP: {e}"))
}

/// Whether Graph's endpoint answers at all (any HTTP status: no token is sent), for the
/// scheduler's probe of an account whose upstream could not be reached.
pub async fn endpoint_answers(account: &AccountConfig) -> Result<(), String> {
    let http = http_client(account)?;
    http.get(account.graph_endpoint.as_str())
        .send()
        .await
        .map(drop)
        .map_err(|e| describe_http_error(&e))
}

/// The same result for every recipient of the request.
fn everyone(message: &Outgoing<'_>, result: RecipientResult) -> Outcome {
    Outcome {
        results: message
            .recipients
            .iter()
            .map(|r| (r.clone(), result.clone()))
            .collect(),
        ..Outcome::default()
    }
}

/// A request Graph did not answer. One that could not connect never reached Graph; any
/// other (a timeout, a connection lost) may have, and counts as sent.
fn unanswered(error: &reqwest::Error) -> SendError {
    let description = describe_http_error(error);
    match error.is_connect() {
        true => SendError::NotSent(description),
        false => SendError::Failed(description),
    }
}

fn describe_http_error(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = format!("Graph request failed: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (the message may have been sent; it is tried again)");
    }
    text
}

/// A mailbox in a URL path: everything but unreserved characters and `@` escaped.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Transport for GraphTransport {
    fn send<'a>(
        &'a mut self,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Outcome, SendError>> {
        Box::pin(self.send_message(message))
    }

    /// Requests share reqwest's pool; nothing is held per worker.
    fn is_open(&self) -> bool {
        false
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "0".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(1)));
    }

    #[test]
    fn mailboxes_are_escaped_in_the_path() {
        assert_eq!(percent_encode("scan+x@contoso.com"), "scan%2Bx@contoso.com");
    }
}
