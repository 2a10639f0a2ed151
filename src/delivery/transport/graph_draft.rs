//! Messages too large for one sendMail request (its base64 body is at most 4 MB): the message
//! is rebuilt as a Graph draft — subject, body, From, Reply-To, recipients, `x-` headers —
//! its attachments are added (small ones in one request, larger ones through an upload
//! session), and the draft is sent. mail-parser takes the MIME apart.
//!
//! What this path cannot keep: the exact bytes, and every header other than `x-` ones (Graph
//! accepts no others on a draft; it writes its own Message-ID, Date and MIME structure).

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde_json::{Value, json};

/// Attachments up to this size go in one request; larger ones through an upload session.
pub const SMALL_ATTACHMENT: usize = 3 * 1024 * 1024;
/// Upload session chunks: at most 4 MiB and a multiple of 320 KiB (but the last).
pub const CHUNK: usize = 10 * 320 * 1024;
const _: () = assert!(CHUNK <= 4 * 1024 * 1024 && CHUNK.is_multiple_of(320 * 1024));
/// Graph accepts a few custom headers on a draft.
const MAX_X_HEADERS: usize = 5;

#[derive(Debug)]
pub struct Draft {
    /// The `message` resource for `POST …/messages`.
    pub message: Value,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub content_id: Option<String>,
    pub inline: bool,
}

impl Attachment {
    /// The `fileAttachment` resource for a small attachment.
    pub fn resource(&self) -> Value {
        use base64::Engine;
        let mut resource = json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(&self.bytes),
            "isInline": self.inline,
        });
        if let Some(id) = &self.content_id {
            resource["contentId"] = json!(id);
        }
        resource
    }

    /// The body of `createUploadSession` for a large one.
    pub fn upload_item(&self) -> Value {
        let mut item = json!({
            "attachmentType": "file",
            "name": self.name,
            "size": self.bytes.len(),
            "contentType": self.content_type,
            "isInline": self.inline,
        });
        if let Some(id) = &self.content_id {
            item["contentId"] = json!(id);
        }
        json!({ "AttachmentItem": item })
    }
}

/// The draft for `mime`, sent to the envelope's `recipients` (To and Cc as the headers say,
/// the others as Bcc), with From rewritten to `rewrite_from` when given.
pub fn draft(
    mime: &[u8],
    recipients: &[String],
    rewrite_from: Option<&str>,
) -> Result<Draft, String> {
    let message = MessageParser::default()
        .parse(mime)
        .ok_or("the message cannot be parsed as MIME")?;
    let in_header = |address: Option<&Address<'_>>, recipient: &str| {
        address.is_some_and(|a| {
            a.iter().any(|a| {
                a.address()
                    .is_some_and(|x| x.eq_ignore_ascii_case(recipient))
            })
        })
    };
    let (mut to, mut cc, mut bcc) = (Vec::new(), Vec::new(), Vec::new());
    for recipient in recipients {
        let entry = json!({ "emailAddress": { "address": recipient } });
        if in_header(message.to(), recipient) {
            to.push(entry);
        } else if in_header(message.cc(), recipient) {
            cc.push(entry);
        } else {
            bcc.push(entry);
        }
    }
    let addresses = |address: Option<&Address<'_>>| -> Vec<Value> {
        address
            .map(|a| {
                a.iter()
                    .filter_map(|a| {
                        let mut email = json!({ "address": a.address()? });
                        if let Some(name) = a.name() {
                            email["name"] = json!(name);
                        }
                        Some(json!({ "emailAddress": email }))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let original_from = addresses(message.from());
    let mut reply_to = addresses(message.reply_to());
    let from = match rewrite_from {
        Some(mailbox) => {
            if reply_to.is_empty() {
                reply_to = original_from.clone();
            }
            Some(json!({ "emailAddress": { "address": mailbox } }))
        }
        None => original_from.into_iter().next(),
    };
    // A real HTML part wins; mail-parser would otherwise offer the text converted to HTML.
    let html = message
        .html_bodies()
        .find(|p| p.is_content_type("text", "html"))
        .and_then(|p| p.text_contents());
    let body = match html {
        Some(html) => json!({ "contentType": "HTML", "content": html }),
        None => json!({
            "contentType": "Text",
            "content": message.body_text(0).unwrap_or_default(),
        }),
    };
    let headers: Vec<Value> = message
        .headers_raw()
        .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case("x-"))
        .take(MAX_X_HEADERS)
        .map(|(name, value)| json!({ "name": name, "value": value.trim() }))
        .collect();
    let mut resource = json!({
        "subject": message.subject().unwrap_or_default(),
        "body": body,
        "toRecipients": to,
        "ccRecipients": cc,
        "bccRecipients": bcc,
        "replyTo": reply_to,
    });
    if let Some(from) = from {
        resource["from"] = from;
    }
    if !headers.is_empty() {
        resource["internetMessageHeaders"] = json!(headers);
    }
    let attachments = message
        .attachments()
        .enumerate()
        .map(|(i, part)| {
            let content_type = part.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |t| format!("{}/{}", t.ctype(), t.subtype().unwrap_or("octet-stream")),
            );
            let inline = part.content_disposition().is_some_and(|d| d.is_inline());
            Attachment {
                name: part
                    .attachment_name()
                    .map_or_else(|| format!("attachment-{}", i + 1), str::to_owned),
                content_type,
                bytes: part.contents().to_vec(),
                content_id: part
                    .content_id()
                    .map(|id| id.trim_matches(['<', '>']).to_owned()),
                inline,
            }
        })
        .collect();
    Ok(Draft {
        message: resource,
        attachments,
    })
}

/// The `Content-Range` of each upload chunk: `(start, end_inclusive)`.
pub fn chunks(size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..size)
        .step_by(CHUNK)
        .map(move |start| (start, (start + CHUNK).min(size) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCAN: &str = "Received: from scanner by relay\r\nFrom: Scanner <scan@printer.local>\r\nTo: ann@contoso.com\r\nCc: bob@contoso.com\r\nSubject: Scan 0042\r\nX-Device: MFP-3\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour scan, caf\u{e9}.\r\n--b\r\nContent-Type: application/pdf; name=scan.pdf\r\nContent-Disposition: attachment; filename=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";

    #[test]
    fn a_scan_becomes_a_draft_with_its_attachment() {
        let recipients = [
            "ann@contoso.com".to_owned(),
            "bob@contoso.com".to_owned(),
            "hidden@contoso.com".to_owned(),
        ];
        let draft = draft(SCAN.as_bytes(), &recipients, None).unwrap();
        let m = &draft.message;
        assert_eq!(m["subject"], "Scan 0042");
        assert_eq!(m["body"]["contentType"], "Text");
        assert_eq!(m["body"]["content"], "Your scan, caf\u{e9}.");
        assert_eq!(
            m["toRecipients"][0]["emailAddress"]["address"],
            "ann@contoso.com"
        );
        assert_eq!(
            m["ccRecipients"][0]["emailAddress"]["address"],
            "bob@contoso.com"
        );
        assert_eq!(
            m["bccRecipients"][0]["emailAddress"]["address"],
            "hidden@contoso.com"
        );
        assert_eq!(m["from"]["emailAddress"]["address"], "scan@printer.local");
        assert_eq!(m["internetMessageHeaders"][0]["name"], "X-Device");
        assert_eq!(draft.attachments.len(), 1);
        let pdf = &draft.attachments[0];
        assert_eq!(
            (pdf.name.as_str(), pdf.content_type.as_str()),
            ("scan.pdf", "application/pdf")
        );
        assert_eq!(pdf.bytes, b"%PDF-1.4\n");
        assert!(!pdf.inline);
    }

    #[test]
    fn html_with_an_inline_image_keeps_the_image_inline_with_its_content_id() {
        let mime = "From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: logo\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n\r\n--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi <img src=\"cid:logo@x\"></p>\r\n--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline; filename=logo.png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n";
        let draft = draft(mime.as_bytes(), &["b@contoso.com".to_owned()], None).unwrap();
        assert_eq!(draft.message["body"]["contentType"], "HTML");
        assert!(
            draft.message["body"]["content"]
                .as_str()
                .unwrap()
                .contains("cid:logo@x")
        );
        assert_eq!(draft.attachments.len(), 1);
        let logo = &draft.attachments[0];
        assert!(logo.inline);
        assert_eq!(logo.content_id.as_deref(), Some("logo@x"));
        assert_eq!(logo.content_type, "image/png");
        assert_eq!(logo.bytes, b"\x89PNG\r\n\x1a\n");
        let resource = logo.resource();
        assert_eq!(resource["isInline"], true);
        assert_eq!(resource["contentId"], "logo@x");
    }

    #[test]
    fn rewrite_from_moves_the_sender_to_reply_to() {
        let draft = draft(
            SCAN.as_bytes(),
            &["ann@contoso.com".to_owned()],
            Some("relay@contoso.com"),
        )
        .unwrap();
        assert_eq!(
            draft.message["from"]["emailAddress"]["address"],
            "relay@contoso.com"
        );
        assert_eq!(
            draft.message["replyTo"][0]["emailAddress"]["address"],
            "scan@printer.local"
        );
    }

    #[test]
    fn chunks_are_multiples_of_320_kib_and_cover_everything() {
        let size = 30 * 1024 * 1024 + 17;
        let ranges: Vec<(usize, usize)> = chunks(size).collect();
        assert_eq!(ranges.first(), Some(&(0, CHUNK - 1)));
        assert_eq!(ranges.last().unwrap().1, size - 1);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1 + 1, pair[1].0);
            assert_eq!((pair[0].1 + 1 - pair[0].0) % (320 * 1024), 0);
        }
    }
}
