//! One SMTP transaction on an authenticated upstream connection: MAIL, RCPT per recipient,
//! DATA with the spooled bytes dot-stuffed on the fly, and a verdict per recipient.

use super::transport::headers::{HEAD, HeaderEdits};
use std::io::SeekFrom;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::client::{ClientError, UpstreamConnection};
use super::transport::{AccountEffect, Outcome, Outgoing, RecipientResult};
use crate::delivery::meaning::{Verdict, classify};
use crate::queue::UpstreamReply;

const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error(transparent)]
    Connection(#[from] ClientError),
    #[error("the spooled message is damaged: {0}")]
    Corrupt(String),
    #[error("cannot read the spooled message: {0}")]
    Read(std::io::Error),
}

fn effect_of(verdict: Verdict, reply: &UpstreamReply) -> Option<AccountEffect> {
    match verdict {
        Verdict::TokenRejected => Some(AccountEffect::TokenRejected(reply.clone())),
        Verdict::Throttled => Some(AccountEffect::Throttled(reply.clone(), None)),
        Verdict::QuotaExceeded => Some(AccountEffect::QuotaExceeded(reply.clone())),
        Verdict::HoldAccount => Some(AccountEffect::Hold(reply.clone())),
        _ => None,
    }
}

/// What a refusal of the whole message means for each of `recipients`.
fn all(recipients: &[String], verdict: Verdict, reply: &UpstreamReply) -> Outcome {
    let result = match verdict {
        Verdict::Permanent => RecipientResult::Failed(reply.clone()),
        _ => RecipientResult::Deferred(reply.clone()),
    };
    Outcome {
        results: recipients
            .iter()
            .map(|r| (r.clone(), result.clone()))
            .collect(),
        effect: effect_of(verdict, reply),
        ..Outcome::default()
    }
}

pub async fn send(
    connection: &mut UpstreamConnection,
    message: &Outgoing<'_>,
) -> Result<Outcome, TransactionError> {
    let envelope = &message.file.envelope;
    let mut mail = format!("MAIL FROM:<{}>", message.sender);
    if connection.has_extension("SIZE") {
        mail.push_str(&format!(" SIZE={}", message.file.content_len));
    }
    if envelope.eight_bit && connection.has_extension("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if envelope.smtputf8 && connection.has_extension("SMTPUTF8") {
        mail.push_str(" SMTPUTF8");
    }
    connection.send(&mail).await?;
    let reply = connection.read_reply().await?;
    let verdict = classify(&reply);
    if verdict != Verdict::Accepted {
        return Ok(all(message.recipients, verdict, &reply));
    }

    let mut outcome = Outcome::default();
    let mut accepted = Vec::new();
    let mut split = false;
    for recipient in message.recipients {
        if split {
            outcome
                .results
                .push((recipient.clone(), RecipientResult::Split));
            continue;
        }
        connection.send(&format!("RCPT TO:<{recipient}>")).await?;
        let reply = connection.read_reply().await?;
        let verdict = classify(&reply);
        let result = match verdict {
            Verdict::Accepted => {
                accepted.push(recipient.clone());
                continue;
            }
            Verdict::TooManyRecipients if !accepted.is_empty() => {
                split = true;
                RecipientResult::Split
            }
            Verdict::Permanent => RecipientResult::Failed(reply.clone()),
            _ => RecipientResult::Deferred(reply.clone()),
        };
        if outcome.effect.is_none() {
            outcome.effect = effect_of(verdict, &reply);
        }
        outcome.results.push((recipient.clone(), result));
    }
    if accepted.is_empty() {
        connection.command("RSET", 250).await?;
        return Ok(outcome);
    }

    connection.send("DATA").await?;
    let reply = connection.read_reply().await?;
    if reply.code != 354 {
        let rest = all(&accepted, classify(&reply), &reply);
        outcome.results.extend(rest.results);
        outcome.effect = outcome.effect.or(rest.effect);
        return Ok(outcome);
    }
    outcome.message_id = write_content(connection, message).await?;
    let reply = connection.read_reply().await?;
    let verdict = classify(&reply);
    let results: Vec<(String, RecipientResult)> = match verdict {
        Verdict::Accepted => accepted
            .into_iter()
            .map(|r| (r, RecipientResult::Delivered(reply.clone())))
            .collect(),
        _ => {
            let rest = all(&accepted, verdict, &reply);
            outcome.effect = outcome.effect.or(rest.effect);
            rest.results
        }
    };
    outcome.results.extend(results);
    Ok(outcome)
}

/// Streams the content dot-stuffed, checks its checksum, and ends the data. On a checksum
/// mismatch the data is never ended: the upstream drops the transaction with the connection.
/// Returns the Message-ID found in the content's first read.
async fn write_content(
    connection: &mut UpstreamConnection,
    message: &Outgoing<'_>,
) -> Result<Option<String>, TransactionError> {
    // Read through the blocking pool, never on the runtime's threads.
    let mut file = tokio::fs::File::open(message.path)
        .await
        .map_err(TransactionError::Read)?;
    file.seek(SeekFrom::Start(message.file.content_offset))
        .await
        .map_err(TransactionError::Read)?;
    let mut remaining = message.file.content_len;
    let mut crc = crc32fast::Hasher::new();
    let mut stuffer = DotStuffer::default();
    let mut chunk = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 16);
    let mut message_id = None;
    if let Some(mailbox) = message.rewrite_from {
        // The headers to change lie in the head: it goes edited, the rest as spooled. The
        // checksum is the spooled bytes'.
        let n = (remaining as usize).min(HEAD);
        let mut head = vec![0u8; n];
        file.read_exact(&mut head)
            .await
            .map_err(TransactionError::Read)?;
        remaining -= n as u64;
        crc.update(&head);
        message_id = message_id_in(&head);
        let edited = HeaderEdits::plan(&head, None, Some(mailbox));
        stuffer.stuff(&edited.apply(&head), &mut out);
        connection.write_all(&out).await?;
    }
    let mut first = message.rewrite_from.is_none();
    while remaining > 0 {
        let n = (remaining as usize).min(CHUNK);
        file.read_exact(&mut chunk[..n])
            .await
            .map_err(TransactionError::Read)?;
        remaining -= n as u64;
        if std::mem::take(&mut first) {
            message_id = message_id_in(&chunk[..n]);
        }
        crc.update(&chunk[..n]);
        out.clear();
        stuffer.stuff(&chunk[..n], &mut out);
        connection.write_all(&out).await?;
    }
    if crc.finalize() != message.file.crc {
        return Err(TransactionError::Corrupt(
            "content checksum mismatch".into(),
        ));
    }
    let end: &[u8] = if stuffer.at_line_start {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    connection.write_all(end).await?;
    Ok(message_id)
}

fn message_id_in(start: &[u8]) -> Option<String> {
    super::transport::headers::message_id(&start[..start.len().min(HEAD)])
}

/// Doubles a dot at the start of every line (RFC 5321 4.5.2), across chunk boundaries.
pub struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
        }
    }
}

impl DotStuffer {
    pub fn stuff(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        if self.at_line_start && input.first() == Some(&b'.') {
            out.push(b'.');
        }
        for newline in memchr::memchr_iter(b'\n', input) {
            if input.get(newline + 1) == Some(&b'.') {
                out.extend_from_slice(&input[start..=newline]);
                out.push(b'.');
                start = newline + 1;
            }
        }
        out.extend_from_slice(&input[start..]);
        if let Some(&last) = input.last() {
            self.at_line_start = last == b'\n';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_stuffed_across_chunks() {
        let content = b".first\r\nmiddle\r\n.\r\n..two\r\nend.\r\n.";
        let expected = b"..first\r\nmiddle\r\n..\r\n...two\r\nend.\r\n..";
        for split in 0..content.len() {
            let mut stuffer = DotStuffer::default();
            let mut out = Vec::new();
            stuffer.stuff(&content[..split], &mut out);
            stuffer.stuff(&content[split..], &mut out);
            assert_eq!(out, expected, "split at {split}");
        }
    }
}
