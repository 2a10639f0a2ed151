//! Delivery status notifications (RFC 3464 multipart/report) for recipients that failed for
//! good, with the upstream's reply and a diagnosis in plain words.

use crate::delivery::meaning::Explain;
use crate::queue::{DeliveryState, Envelope, MessageFile, QueueId, Spool};

/// The original headers quoted in the report are cut at this size.
const MAX_QUOTED_HEADERS: usize = 64 * 1024;

pub struct Bounce<'a> {
    pub original: &'a MessageFile,
    pub original_content_head: &'a [u8],
    pub state: &'a DeliveryState,
    pub hostname: &'a str,
    /// The address the report is written From (the account's mailbox: Exchange lets the
    /// relay send only as mailboxes it may use).
    pub from: &'a str,
    pub upstream_host: &'a str,
}

/// Builds the report's bytes (CRLF lines).
pub fn report(bounce: &Bounce<'_>) -> Vec<u8> {
    let envelope = &bounce.original.envelope;
    let boundary = format!("{}/{}", envelope.id, bounce.hostname);
    let date = chrono::Utc::now().to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp_millis(envelope.received_at as i64)
        .map(|d| d.to_rfc2822())
        .unwrap_or_else(|| date.clone());
    let mut text = String::new();
    let mut status = String::new();
    for recipient in bounce.state.failed() {
        let (reply, code, diagnosis) = match &recipient.reply {
            Some(reply) => (
                clean(&reply.to_string()),
                // The action is "failed", so the status is permanent whatever the last reply.
                reply
                    .enhanced
                    .as_deref()
                    .and_then(|e| e.get(1..))
                    .map_or_else(|| "5.0.0".to_owned(), |rest| format!("5{rest}")),
                reply.diagnosis(),
            ),
            None => ("no reply recorded".to_owned(), "5.0.0".to_owned(), None),
        };
        text.push_str(&format!("<{}>: {}\r\n", recipient.address, reply));
        if let Some(diagnosis) = diagnosis {
            text.push_str(&format!("    {diagnosis}\r\n"));
        }
        text.push_str("\r\n");
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {code}\r\nRemote-MTA: dns; {}\r\nDiagnostic-Code: smtp; {reply}\r\n\r\n",
            recipient.address, bounce.upstream_host
        ));
    }
    let head_end = bounce
        .original_content_head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bounce.original_content_head.len(), |i| i + 2)
        .min(MAX_QUOTED_HEADERS);
    let headers = String::from_utf8_lossy(&bounce.original_content_head[..head_end]);
    let mut out = format!(
        "From: Mail Delivery System <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail relay at {host}.\r\n\
         \r\n\
         Your message (queue ID {id}) could not be delivered to the following\r\n\
         recipients. The relay will not try again.\r\n\
         \r\n\
         {text}\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Smtprelay-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n\
         \r\n\
         {status}\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n",
        from = bounce.from,
        to = envelope.sender,
        id = envelope.id,
        host = bounce.hostname,
    )
    .into_bytes();
    out.extend_from_slice(normalise(&headers).as_bytes());
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// One line, no control characters: replies go into header-like fields.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// Queues the report for `bounce`; it goes out like any other message and never bounces itself.
pub async fn queue(spool: &std::sync::Arc<Spool>, bounce: &Bounce<'_>) -> std::io::Result<QueueId> {
    let original = &bounce.original.envelope;
    let envelope = Envelope::from_relay(&original.sender, bounce.hostname, original.smtputf8);
    let mut writer = spool.create(envelope);
    writer.write(&report(bounce)).await?;
    writer.commit().await
}
