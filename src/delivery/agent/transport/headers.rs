//! Changes a transport makes to a message's header block, found with mail-parser; every
//! other byte goes as it was spooled.
//!
//! - Recipients only the envelope names: Graph (like any transport without an envelope)
//!   delivers to the To, Cc and Bcc headers, so a recipient the client left out of them (a
//!   Bcc it already stripped) goes in an added `Bcc:` header, or never gets the message.
//! - `rewrite_from`: devices whose made-up From makes Exchange answer `550 5.7.60` /
//!   SendAsDenied get the account's mailbox as From; the original From becomes Reply-To
//!   when the message has none, so replies still reach the sender.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// How much of the content's start is read to find the headers to change (SMTP streams the
/// rest untouched). A header block longer than this has only what lies inside it changed.
pub const HEAD: usize = 64 * 1024;

/// The Message-ID in a message's head (without its angle brackets), for the logs.
pub fn message_id(head: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse_headers(head)?
        .message_id()
        .map(str::to_owned)
}

/// Byte ranges of the content and what goes there instead, in order, not overlapping.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    edits: Vec<(Range<usize>, Vec<u8>)>,
}

impl HeaderEdits {
    /// The edits for a message whose content starts with `head`: a `Bcc:` for every
    /// `recipients` entry no To, Cc or Bcc header names (when given), and From rewritten to
    /// `rewrite_from` (when given).
    pub fn plan(head: &[u8], recipients: Option<&[String]>, rewrite_from: Option<&str>) -> Self {
        let message = MessageParser::default().parse_headers(head);
        let headers = message.as_ref().map_or(&[][..], |m| m.headers());
        let mut edits = Vec::new();
        if let Some(recipients) = recipients {
            let named = named_recipients(headers);
            let unnamed: Vec<&str> = recipients
                .iter()
                .map(String::as_str)
                .filter(|r| !named.contains(&r.to_ascii_lowercase()))
                .collect();
            if !unnamed.is_empty() {
                let field = format!("Bcc: {}\r\n", unnamed.join(",\r\n "));
                edits.push((0..0, field.into_bytes()));
            }
        }
        if let Some(mailbox) = rewrite_from {
            let from = headers.iter().find(|h| h.name == HeaderName::From);
            let has_reply_to = headers.iter().any(|h| h.name == HeaderName::ReplyTo);
            let new_from = format!("From: {mailbox}\r\n").into_bytes();
            match from {
                Some(from) => {
                    let (field, value) = (from.offset_field as usize, from.offset_start as usize);
                    let end = from.offset_end as usize;
                    let mut replacement = Vec::new();
                    if !has_reply_to {
                        replacement.extend_from_slice(b"Reply-To:");
                        replacement.extend_from_slice(&head[value..end]);
                    }
                    replacement.extend_from_slice(&new_from);
                    edits.push((field..end, replacement));
                }
                // A From may lie beyond the head; adding one there would make two.
                None if ends_headers(head) => edits.push((0..0, new_from)),
                None => {}
            }
        }
        merge_inserts(&mut edits);
        HeaderEdits { edits }
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// The length of `len` bytes of content once edited.
    pub fn len_after(&self, len: usize) -> usize {
        self.edits
            .iter()
            .fold(len, |len, (range, bytes)| len - range.len() + bytes.len())
    }

    /// `content` (or its head) with the edits made.
    pub fn apply<'a>(&self, content: &'a [u8]) -> Cow<'a, [u8]> {
        if self.edits.is_empty() {
            return Cow::Borrowed(content);
        }
        let added: usize = self.edits.iter().map(|(_, b)| b.len()).sum();
        let mut out = Vec::with_capacity(content.len() + added);
        let mut at = 0;
        for (range, bytes) in &self.edits {
            out.extend_from_slice(&content[at..range.start]);
            out.extend_from_slice(bytes);
            at = range.end;
        }
        out.extend_from_slice(&content[at..]);
        Cow::Owned(out)
    }
}

/// Two insertions at the start become one, in the order they were planned.
fn merge_inserts(edits: &mut Vec<(Range<usize>, Vec<u8>)>) {
    edits.sort_by_key(|(range, _)| range.start);
    let mut merged: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(edits.len());
    for (range, bytes) in edits.drain(..) {
        match merged.last_mut() {
            Some((last, last_bytes)) if last.start == last.end && last.start == range.start => {
                last_bytes.extend_from_slice(&bytes);
                last.end = range.end;
            }
            _ => merged.push((range, bytes)),
        }
    }
    *edits = merged;
}

/// Whether the header block ends inside `head`.
fn ends_headers(head: &[u8]) -> bool {
    head.starts_with(b"\r\n") || memchr::memmem::find(head, b"\r\n\r\n").is_some()
}

/// Every address of every To, Cc and Bcc header, lowercased.
fn named_recipients(headers: &[mail_parser::Header<'_>]) -> HashSet<String> {
    let mut named = HashSet::new();
    for header in headers {
        if !matches!(
            header.name,
            HeaderName::To | HeaderName::Cc | HeaderName::Bcc
        ) {
            continue;
        }
        if let HeaderValue::Address(address) = &header.value {
            collect(address, &mut named);
        }
    }
    named
}

fn collect(address: &Address<'_>, into: &mut HashSet<String>) {
    for addr in address.iter() {
        if let Some(email) = addr.address() {
            into.insert(email.to_ascii_lowercase());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Received: from scanner\r\n\tby relay; now\r\nFrom: Scanner\r\n <scan@printer.local>\r\nTo: \"Ann\" <ann@contoso.com>, bob@fabrikam.com\r\nCc: Team: carol@contoso.com;\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nH\xc3\xa9llo\r\nFrom: not a header\r\n";

    fn recipients(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn edited(recipients: Option<&[String]>, from: Option<&str>, content: &[u8]) -> Vec<u8> {
        HeaderEdits::plan(content, recipients, from)
            .apply(content)
            .into_owned()
    }

    #[test]
    fn the_message_id_is_read_from_the_head() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-Id:\r\n <a.b@c>\r\n\r\nbody").as_deref(),
            Some("a.b@c")
        );
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <no@body>\r\n"),
            None
        );
    }

    #[test]
    fn named_recipients_leave_the_bytes_alone() {
        let all = recipients(&["ANN@contoso.com", "bob@fabrikam.com", "carol@contoso.com"]);
        assert!(HeaderEdits::plan(MESSAGE, Some(&all), None).is_empty());
    }

    #[test]
    fn envelope_only_recipients_go_in_one_bcc_header_before_the_rest() {
        let list = recipients(&["ann@contoso.com", "dave@contoso.com", "eve@fabrikam.com"]);
        let edits = HeaderEdits::plan(MESSAGE, Some(&list), None);
        assert_eq!(edits.len_after(MESSAGE.len()), edits.apply(MESSAGE).len());
        let out = edited(Some(&list), None, MESSAGE);
        let (head, rest) = out.split_at(out.len() - MESSAGE.len());
        assert_eq!(rest, MESSAGE);
        assert_eq!(head, b"Bcc: dave@contoso.com,\r\n eve@fabrikam.com\r\n");
        let parsed = MessageParser::default().parse(&out[..]).unwrap();
        let bcc: Vec<&str> = parsed
            .bcc()
            .unwrap()
            .iter()
            .filter_map(|a| a.address())
            .collect();
        assert_eq!(bcc, ["dave@contoso.com", "eve@fabrikam.com"]);
    }

    #[test]
    fn from_is_rewritten_and_the_original_becomes_reply_to() {
        let edits = HeaderEdits::plan(MESSAGE, None, Some("relay@contoso.com"));
        assert_eq!(edits.len_after(MESSAGE.len()), edits.apply(MESSAGE).len());
        let out = edited(None, Some("relay@contoso.com"), MESSAGE);
        let expected = [
            &b"Received: from scanner\r\n\tby relay; now\r\nReply-To: Scanner\r\n <scan@printer.local>\r\nFrom: relay@contoso.com\r\n"[..],
            &MESSAGE[MESSAGE.windows(4).position(|w| w == b"To: ").unwrap()..],
        ]
        .concat();
        assert_eq!(out, expected);
        let parsed = MessageParser::default().parse(&out[..]).unwrap();
        assert_eq!(
            parsed.from().unwrap().first().unwrap().address(),
            Some("relay@contoso.com")
        );
        assert_eq!(
            parsed.reply_to().unwrap().first().unwrap().address(),
            Some("scan@printer.local")
        );
        // The body's "From:" line is not a header.
        assert!(out.ends_with(b"From: not a header\r\n"));
    }

    #[test]
    fn an_existing_reply_to_is_kept_and_a_missing_from_is_added() {
        let with_reply_to = b"Reply-To: desk@contoso.com\r\nFrom: x@printer.local\r\n\r\nbody\r\n";
        assert_eq!(
            edited(None, Some("relay@contoso.com"), with_reply_to),
            b"Reply-To: desk@contoso.com\r\nFrom: relay@contoso.com\r\n\r\nbody\r\n"
        );
        let list = recipients(&["a@x.example"]);
        assert_eq!(
            edited(Some(&list), Some("relay@contoso.com"), b"\r\nbody\r\n"),
            b"Bcc: a@x.example\r\nFrom: relay@contoso.com\r\n\r\nbody\r\n"
        );
        // A head cut inside the header block: no From is added that might make two.
        assert!(HeaderEdits::plan(b"X-Long: aaaa\r\nX-More: b", None, Some("r@c")).is_empty());
    }
}
