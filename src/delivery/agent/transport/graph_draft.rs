//! Messages too large for one sendMail request (its base64 body is at most 4 MB): the message
//! is rebuilt as a Graph draft — subject, body, From, Reply-To, recipients, `x-` headers —
//! its attachments are added (small ones in one request, larger ones through an upload
//! session), and the draft is sent. mail-parser takes the MIME apart.
//!
//! What this path cannot keep: the exact bytes, and every header other than `x-` ones (Graph
//! accepts no others on a draft; it writes its own Message-ID, Date and MIME structure).
//!
//! Memory does not grow with the message: the spooled content is mapped, not read
//! ([`Spooled`]), and mail-parser, which decodes every part it parses, is given a *skeleton*:
//! the message with the bodies of its large attachments cut out ([`large_bodies`] finds them
//! the way mail-parser's own scanner would). Those attachments stay encoded in the mapped file
//! and are decoded one upload chunk at a time ([`Pieces`]) on their way to Graph.

use std::ops::Range;
use std::sync::Arc;

use mail_parser::parsers::MessageStream;
use mail_parser::{
    Address, Encoding, GetHeader, HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType,
};
use serde_json::{Value, json};

/// Attachments up to this size go in one request; larger ones through an upload session.
pub const SMALL_ATTACHMENT: usize = 3 * 1024 * 1024;
/// Upload session chunks: at most 4 MiB and a multiple of 320 KiB (but the last).
pub const CHUNK: usize = 10 * 320 * 1024;
const _: () = assert!(CHUNK <= 4 * 1024 * 1024 && CHUNK.is_multiple_of(320 * 1024));
/// Graph accepts a few custom headers on a draft.
const MAX_X_HEADERS: usize = 5;
/// Attachment bodies at least this large (encoded) are left in the spooled file.
const LEFT_IN_PLACE: usize = 64 * 1024;
/// A message with more parts than this is parsed whole (no scanner works for ever).
const MAX_SCANNED_PARTS: usize = 10_000;

/// The spooled content: the mapped spool file (so its bytes stay in the page cache, never on
/// the heap), or bytes already in memory.
pub type Spooled = Arc<dyn AsRef<[u8]> + Send + Sync>;

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
    /// Decoded size, in bytes.
    pub size: usize,
    contents: Contents,
    pub content_id: Option<String>,
    pub inline: bool,
}

/// Where an attachment's decoded bytes come from.
#[derive(Clone)]
enum Contents {
    /// Decoded by mail-parser (a small part, or a message parsed whole).
    Decoded(Arc<Vec<u8>>),
    /// Still encoded in the spooled content, decoded piece by piece.
    Encoded {
        spooled: Spooled,
        range: Range<usize>,
        encoding: Encoding,
    },
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contents::Decoded(bytes) => write!(f, "Decoded({} bytes)", bytes.len()),
            Contents::Encoded {
                range, encoding, ..
            } => write!(f, "Encoded({range:?}, {encoding:?})"),
        }
    }
}

impl Attachment {
    /// The `fileAttachment` resource for a small attachment.
    pub fn resource(&self) -> Value {
        use base64::Engine;
        let mut bytes = Vec::with_capacity(self.size);
        let mut pieces = self.pieces();
        while let Some(piece) = pieces.next_chunk() {
            bytes.extend_from_slice(&piece);
        }
        let mut resource = json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(&bytes),
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
            "size": self.size,
            "contentType": self.content_type,
            "isInline": self.inline,
        });
        if let Some(id) = &self.content_id {
            item["contentId"] = json!(id);
        }
        json!({ "AttachmentItem": item })
    }

    /// The decoded bytes in upload chunks, decoded as they are asked for.
    pub fn pieces(&self) -> Pieces {
        Pieces {
            contents: self.contents.clone(),
            at: 0,
            quad: Quad::default(),
            spill: Vec::new(),
        }
    }

    /// All the decoded bytes (tests).
    #[cfg(test)]
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut pieces = self.pieces();
        while let Some(piece) = pieces.next_chunk() {
            bytes.extend_from_slice(&piece);
        }
        bytes
    }
}

/// An attachment's decoded bytes, [`CHUNK`] at a time: each chunk is decoded from the
/// spooled content when it is asked for, so one attachment holds at most a chunk (and the
/// part of a line that did not fit) in memory.
pub struct Pieces {
    contents: Contents,
    /// How far into the decoded bytes (`Decoded`) or the encoded range (`Encoded`).
    at: usize,
    quad: Quad,
    /// Decoded bytes past the last chunk's end, for the next one.
    spill: Vec<u8>,
}

impl Pieces {
    /// The next chunk: [`CHUNK`] bytes, fewer for the last one, `None` after it.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let (spooled, range, encoding) = match &self.contents {
            Contents::Decoded(bytes) => {
                let piece = bytes.get(self.at..(self.at + CHUNK).min(bytes.len()))?;
                self.at += piece.len();
                return (!piece.is_empty()).then(|| piece.to_vec());
            }
            Contents::Encoded {
                spooled,
                range,
                encoding,
            } => (spooled, range, *encoding),
        };
        let raw = &(**spooled).as_ref()[range.clone()];
        let mut out = std::mem::take(&mut self.spill);
        out.reserve(CHUNK + 1024 - out.len().min(CHUNK));
        while out.len() < CHUNK && self.at < raw.len() {
            let rest = &raw[self.at..];
            if encoding == Encoding::None {
                let n = rest.len().min(CHUNK - out.len());
                out.extend_from_slice(&rest[..n]);
                self.at += n;
                continue;
            }
            let line = memchr::memchr(b'\n', rest).map_or(rest, |n| &rest[..=n]);
            self.at += line.len();
            match encoding {
                Encoding::Base64 => self.quad.decode(line, &mut out),
                _ => {
                    // mail-parser's own decoder, a line at a time (quoted-printable never
                    // carries anything from one line to the next but a soft break).
                    let (_, decoded) = MessageStream::new(line).decode_quoted_printable_mime(b"");
                    out.extend_from_slice(&decoded);
                }
            }
        }
        if out.len() > CHUNK {
            self.spill = out.split_off(CHUNK);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Base64 decoding across line breaks: up to three characters wait for the rest of their
/// group. Anything outside the alphabet (line breaks, spaces) is skipped; `=` ends a group.
#[derive(Default)]
struct Quad {
    sextets: [u8; 4],
    len: usize,
}

impl Quad {
    fn decode(&mut self, line: &[u8], out: &mut Vec<u8>) {
        use base64::Engine;
        let text = line.trim_ascii_end();
        // The usual line (whole groups, nothing pending): the optimised decoder. What it
        // refuses (padding inside the line, a stray character) is decoded below, after what
        // it left in `out` is taken back.
        if self.len == 0 && text.len().is_multiple_of(4) {
            let start = out.len();
            if base64::engine::general_purpose::STANDARD
                .decode_vec(text, out)
                .is_ok()
            {
                return;
            }
            out.truncate(start);
        }
        for &c in line {
            let sextet = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => {
                    self.flush(out);
                    continue;
                }
                _ => continue,
            };
            self.sextets[self.len] = sextet;
            self.len += 1;
            if self.len == 4 {
                self.flush(out);
            }
        }
    }

    /// The bytes of the group so far (a padded group ends early).
    fn flush(&mut self, out: &mut Vec<u8>) {
        let [a, b, c, d] = self.sextets;
        let bytes = [a << 2 | b >> 4, b << 4 | c >> 2, c << 6 | d];
        out.extend_from_slice(&bytes[..self.len.saturating_sub(1)]);
        self.sextets = [0; 4];
        self.len = 0;
    }
}

/// The body of an attachment left in the spooled content: its encoded range (where
/// mail-parser would end it) and its transfer encoding.
#[derive(Debug, Clone, PartialEq)]
struct Cut {
    range: Range<usize>,
    encoding: Encoding,
}

/// The bodies of large attachments, found as mail-parser's parser finds parts (its header
/// parser, and the first `--boundary` of the innermost multipart ends a part) without
/// decoding anything. Text meant as the message's body, multiparts and attached messages are
/// never cut. What this scanner cannot follow ends the scan: the parts after it are parsed
/// as they are.
fn large_bodies(data: &[u8]) -> Vec<Cut> {
    let parser = MessageParser::default();
    let mut stream = MessageStream::new(data);
    // The multiparts we are in, innermost last: boundary, and whether it is a digest.
    let mut open: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut cuts = Vec::new();
    'parts: for _ in 0..MAX_SCANNED_PARTS {
        let mut headers = Vec::new();
        if !stream.parse_headers(&parser, &mut headers) {
            break;
        }
        let body = stream.offset();
        let content_type = headers
            .header_value(&HeaderName::ContentType)
            .and_then(|c| c.as_content_type());
        let (ctype, subtype) = content_type.map_or(("", None), |c| (c.ctype(), c.subtype()));
        if ctype == "multipart" {
            let Some(boundary) = content_type.and_then(|c| c.attribute("boundary")) else {
                break;
            };
            if !stream.seek_next_part(boundary.as_bytes()) {
                break;
            }
            open.push((boundary.as_bytes().to_vec(), subtype == Some("digest")));
            stream.skip_crlf();
            continue;
        }
        let encoding = match headers.header_value(&HeaderName::ContentTransferEncoding) {
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => Encoding::Base64,
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => {
                Encoding::QuotedPrintable
            }
            _ => Encoding::None,
        };
        let message = (ctype == "message" && matches!(subtype, Some("rfc822" | "global")))
            || (content_type.is_none() && open.last().is_some_and(|(_, digest)| *digest));
        let attached = headers
            .header_value(&HeaderName::ContentDisposition)
            .and_then(|d| d.as_content_type())
            .is_some_and(|d| d.is_attachment());
        // text/plain and text/html may be the body (unless attached); mail-parser parses an
        // unencoded attached message itself.
        let cuttable = !(message && encoding == Encoding::None)
            && content_type.is_some()
            && (ctype != "text" || !matches!(subtype, Some("plain" | "html")) || attached);
        let Some((boundary, _)) = open.last() else {
            // A message of one part: its body runs to the end.
            if cuttable && data.len() - body >= LEFT_IN_PLACE {
                cuts.push(Cut {
                    range: body..data.len(),
                    encoding,
                });
            }
            break;
        };
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(boundary);
        let Some(at) = memchr::memmem::find(&data[body..], &delimiter).map(|at| body + at) else {
            break;
        };
        // Where mail-parser ends the body: before the line break that precedes the
        // delimiter, if one does.
        let end = if at > body && data[at - 1] == b'\n' {
            if at - 1 > body && data[at - 2] == b'\r' {
                at - 2
            } else {
                at - 1
            }
        } else {
            at
        };
        if cuttable && end - body >= LEFT_IN_PLACE {
            cuts.push(Cut {
                range: body..end,
                encoding,
            });
        }
        stream.skip_bytes(at + delimiter.len() - body);
        while stream.is_multipart_end() {
            open.pop();
            let Some((boundary, _)) = open.last() else {
                break 'parts;
            };
            if stream.seek_next_part_offset(boundary).is_none() {
                break 'parts;
            }
        }
    }
    cuts
}

/// The message with the `cuts` taken out, and where each cut is in it.
fn skeleton(data: &[u8], cuts: &[Cut]) -> (Vec<u8>, Vec<usize>) {
    let removed: usize = cuts.iter().map(|c| c.range.len()).sum();
    let mut skeleton = Vec::with_capacity(data.len() - removed);
    let mut at = 0;
    let mut places = Vec::with_capacity(cuts.len());
    for cut in cuts {
        skeleton.extend_from_slice(&data[at..cut.range.start]);
        places.push(skeleton.len());
        at = cut.range.end;
    }
    skeleton.extend_from_slice(&data[at..]);
    (skeleton, places)
}

/// The draft for the `spooled` message, sent to the envelope's `recipients` (To and Cc as
/// the headers say, the others as Bcc), with From rewritten to `rewrite_from` when given.
pub fn draft(
    spooled: Spooled,
    recipients: &[String],
    rewrite_from: Option<&str>,
) -> Result<Draft, String> {
    let data = (*spooled).as_ref();
    let parser = MessageParser::default();
    let cuts = large_bodies(data);
    let (skeleton, places) = skeleton(data, &cuts);
    let unparsable = "the message cannot be parsed as MIME";
    let message = parser.parse(&skeleton[..]).ok_or(unparsable)?;
    if let Some(cut_parts) = cut_parts(&message, &places) {
        let contents = |id: usize| {
            cut_parts[id].map(|cut: usize| Contents::Encoded {
                spooled: Arc::clone(&spooled),
                range: cuts[cut].range.clone(),
                encoding: cuts[cut].encoding,
            })
        };
        return Ok(build(&message, recipients, rewrite_from, contents));
    }
    // The scanner and mail-parser disagree about this message's structure: mail-parser
    // decides, on the whole message (its large attachments decoded in memory).
    tracing::debug!(
        parts = cuts.len(),
        "the message's large attachments could not be left in place; parsing it whole"
    );
    drop(message);
    let message = parser.parse(data).ok_or(unparsable)?;
    Ok(build(&message, recipients, rewrite_from, |_| None))
}

/// For each part of the skeleton, the cut whose body it is; `None` unless every cut is the
/// empty body of a distinct attachment at its place (and not the message's text).
fn cut_parts(message: &mail_parser::Message<'_>, places: &[usize]) -> Option<Vec<Option<usize>>> {
    let mut cut_parts = vec![None; message.parts.len()];
    for (cut, &place) in places.iter().enumerate() {
        let id = message
            .attachments
            .iter()
            .map(|&id| id as usize)
            .find(|&id| {
                let part = &message.parts[id];
                let in_body = |ids: &[u32]| ids.iter().any(|&b| b as usize == id);
                part.offset_body as usize == place
                    && part.offset_end as usize == place
                    && !part.is_encoding_problem
                    && !matches!(part.body, PartType::Message(_) | PartType::Multipart(_))
                    && !in_body(&message.text_body)
                    && !in_body(&message.html_body)
                    && cut_parts[id].is_none()
            })?;
        cut_parts[id] = Some(cut);
    }
    Some(cut_parts)
}

/// The draft from the parsed message; `cut(part id)` says where an attachment's contents
/// are when they are not in the parsed part.
fn build(
    message: &mail_parser::Message<'_>,
    recipients: &[String],
    rewrite_from: Option<&str>,
    cut: impl Fn(usize) -> Option<Contents>,
) -> Draft {
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
        .attachments
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let part = &message.parts[id as usize];
            let content_type = part.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |t| format!("{}/{}", t.ctype(), t.subtype().unwrap_or("octet-stream")),
            );
            let inline = part.content_disposition().is_some_and(|d| d.is_inline());
            let contents = cut(id as usize)
                .unwrap_or_else(|| Contents::Decoded(Arc::new(part.contents().to_vec())));
            let size = match &contents {
                Contents::Decoded(bytes) => bytes.len(),
                Contents::Encoded { .. } => 0,
            };
            let mut attachment = Attachment {
                name: part
                    .attachment_name()
                    .map_or_else(|| format!("attachment-{}", i + 1), str::to_owned),
                content_type,
                size,
                contents,
                content_id: part
                    .content_id()
                    .map(|id| id.trim_matches(['<', '>']).to_owned()),
                inline,
            };
            if matches!(attachment.contents, Contents::Encoded { .. }) {
                // Graph wants the size before the first byte: decoding it once tells.
                let mut pieces = attachment.pieces();
                while let Some(piece) = pieces.next_chunk() {
                    attachment.size += piece.len();
                }
            }
            attachment
        })
        .collect();
    Draft {
        message: resource,
        attachments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(mime: &str) -> Spooled {
        Arc::new(mime.as_bytes().to_vec())
    }

    const SCAN: &str = "Received: from scanner by relay\r\nFrom: Scanner <scan@printer.local>\r\nTo: ann@contoso.com\r\nCc: bob@contoso.com\r\nSubject: Scan 0042\r\nX-Device: MFP-3\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour scan, caf\u{e9}.\r\n--b\r\nContent-Type: application/pdf; name=scan.pdf\r\nContent-Disposition: attachment; filename=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";

    #[test]
    fn a_scan_becomes_a_draft_with_its_attachment() {
        let recipients = [
            "ann@contoso.com".to_owned(),
            "bob@contoso.com".to_owned(),
            "hidden@contoso.com".to_owned(),
        ];
        let draft = draft(spooled(SCAN), &recipients, None).unwrap();
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
        assert_eq!(pdf.bytes(), b"%PDF-1.4\n");
        assert!(!pdf.inline);
    }

    #[test]
    fn html_with_an_inline_image_keeps_the_image_inline_with_its_content_id() {
        let mime = "From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: logo\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n\r\n--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi <img src=\"cid:logo@x\"></p>\r\n--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline; filename=logo.png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n";
        let draft = draft(spooled(mime), &["b@contoso.com".to_owned()], None).unwrap();
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
        assert_eq!(logo.bytes(), b"\x89PNG\r\n\x1a\n");
        let resource = logo.resource();
        assert_eq!(resource["isInline"], true);
        assert_eq!(resource["contentId"], "logo@x");
    }

    #[test]
    fn rewrite_from_moves_the_sender_to_reply_to() {
        let draft = draft(
            spooled(SCAN),
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

    /// A scan whose PDF is `pdf`, encoded with `encoding` in lines of about `width`.
    fn scan_with(pdf: &[u8], encoding: &str, width: usize) -> String {
        use base64::Engine;
        let tokens: Vec<String> = match encoding {
            "base64" => base64::engine::general_purpose::STANDARD
                .encode(pdf)
                .chars()
                .map(String::from)
                .collect(),
            "quoted-printable" => pdf
                .iter()
                .map(|&b| match b {
                    b'!'..=b'<' | b'>'..=b'~' => (b as char).to_string(),
                    _ => format!("={b:02X}"),
                })
                .collect(),
            _ => pdf.iter().map(|&b| (b as char).to_string()).collect(),
        };
        // A quoted-printable line ends in a soft break.
        let soft = if encoding == "quoted-printable" {
            "="
        } else {
            ""
        };
        let mut lines = String::new();
        let mut line = String::new();
        for token in tokens {
            if line.len() + token.len() > width {
                lines.push_str(&line);
                lines.push_str(soft);
                lines.push_str("\r\n");
                line.clear();
            }
            line.push_str(&token);
        }
        lines.push_str(&line);
        format!(
            "From: scan@printer.local\r\nTo: ann@contoso.com\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: application/pdf; name=big.pdf\r\nContent-Disposition: attachment; filename=big.pdf\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{lines}\r\n--b\r\nContent-Type: image/png; name=small.png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\nepilogue\r\n"
        )
    }

    /// Bytes with every value, not a multiple of 3 or of a chunk.
    fn pdf(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn large_attachments_stay_in_place_and_decode_a_chunk_at_a_time() {
        let pdf = pdf(2 * CHUNK + 12_345);
        for (encoding, width) in [
            ("base64", 76),
            ("base64", 77),
            ("base64", 4000),
            ("quoted-printable", 76),
        ] {
            let mime = scan_with(&pdf, encoding, width);
            let cuts = large_bodies(mime.as_bytes());
            assert_eq!(cuts.len(), 1, "{encoding} {width}");
            let draft = draft(spooled(&mime), &["ann@contoso.com".to_owned()], None).unwrap();
            assert_eq!(draft.message["body"]["content"], "See attached.");
            assert_eq!(draft.attachments.len(), 2);
            let big = &draft.attachments[0];
            assert!(
                matches!(big.contents, Contents::Encoded { .. }),
                "{encoding} {width}"
            );
            assert_eq!((big.name.as_str(), big.size), ("big.pdf", pdf.len()));
            let mut pieces = big.pieces();
            let mut sizes = Vec::new();
            let mut bytes = Vec::new();
            while let Some(piece) = pieces.next_chunk() {
                sizes.push(piece.len());
                bytes.extend_from_slice(&piece);
            }
            assert_eq!(sizes, [CHUNK, CHUNK, 12_345], "{encoding} {width}");
            assert!(bytes == pdf, "{encoding} {width}: decoded differently");
            let small = &draft.attachments[1];
            assert_eq!(small.name, "small.png");
            assert_eq!(small.bytes(), b"\x89PNG\r\n\x1a\n");
        }
    }

    #[test]
    fn a_cut_part_decodes_as_mail_parser_decodes_it() {
        // The same attachment, parsed whole by mail-parser and left in place.
        let data = pdf(LEFT_IN_PLACE * 3);
        for encoding in ["base64", "quoted-printable", "8bit"] {
            let text: Vec<u8> = data.iter().map(|b| b'a' + b % 26).collect();
            let content = if encoding == "8bit" { &text } else { &data };
            let mime = scan_with(content, encoding, 76);
            let whole = MessageParser::default().parse(mime.as_bytes()).unwrap();
            let expected = whole.attachments().next().unwrap().contents().to_vec();
            let draft = draft(spooled(&mime), &[], None).unwrap();
            assert!(matches!(
                draft.attachments[0].contents,
                Contents::Encoded { .. }
            ));
            assert!(draft.attachments[0].bytes() == expected, "{encoding}");
        }
    }

    #[test]
    fn base64_decodes_across_lines_padding_and_stray_characters() {
        let mut quad = Quad::default();
        let mut out = Vec::new();
        // Groups split across lines, a padded group inside a line (two encodings
        // concatenated), a space in a line of whole groups.
        for line in ["QU", "JD\r\n", "QQ==QUJD\r\n", "QU JDQUJ\r\n", "D\r\n"] {
            quad.decode(line.as_bytes(), &mut out);
        }
        assert_eq!(out, b"ABCAABCABCABC");
    }

    #[test]
    fn a_message_of_one_large_part_is_its_attachment() {
        use base64::Engine;
        let pdf = pdf(LEFT_IN_PLACE * 2);
        let mime = format!(
            "From: a@contoso.com\r\nSubject: x\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(&pdf)
        );
        let draft = draft(spooled(&mime), &[], None).unwrap();
        assert_eq!(draft.attachments.len(), 1);
        assert!(matches!(
            draft.attachments[0].contents,
            Contents::Encoded { .. }
        ));
        assert!(draft.attachments[0].bytes() == pdf);
    }

    #[test]
    fn large_text_meant_as_the_body_is_never_cut() {
        let text = "x".repeat(78) + "\r\n";
        let mime = format!(
            "From: a@contoso.com\r\nSubject: x\r\n\r\n{}",
            text.repeat(2000)
        );
        assert!(large_bodies(mime.as_bytes()).is_empty());
        let draft = draft(spooled(&mime), &[], None).unwrap();
        assert!(draft.attachments.is_empty());
        assert_eq!(
            draft.message["body"]["content"].as_str().unwrap().len(),
            80 * 2000
        );
    }

    #[test]
    fn the_skeleton_gives_the_draft_the_whole_message_gives() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| {
            let text = base64::engine::general_purpose::STANDARD.encode(bytes);
            let lines: Vec<&str> = text
                .as_bytes()
                .chunks(76)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            lines.join("\r\n")
        };
        let big = b64(&pdf(LEFT_IN_PLACE * 2));
        let csv = "a,b,c\r\n--not-the-boundary\r\n".repeat(LEFT_IN_PLACE / 10);
        let messages = [
            // Nested: mixed > related > (html, inline image), then a PDF.
            format!(
                "From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: nested\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: multipart/related; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>hi <img src=cid:i@x></p>\r\n--inner\r\nContent-Type: image/png\r\nContent-ID: <i@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n{big}\r\n--inner--\r\n\r\n--outer\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{big}\r\n--outer--\r\n"
            ),
            // An attached message with a large attachment of its own, then a CSV.
            format!(
                "From: a@contoso.com\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nforwarded\r\n--m\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@contoso.com\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=n\r\n\r\n--n\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{big}\r\n--n--\r\n\r\n--m\r\nContent-Type: text/csv; name=t.csv\r\nContent-Disposition: attachment; filename=t.csv\r\n\r\n{csv}\r\n--m--\r\n"
            ),
            // A delimiter not at the start of a line; LF line ends; no closing delimiter.
            format!(
                "From: a@contoso.com\nSubject: odd\nContent-Type: multipart/mixed; boundary=z\n\n--z\nContent-Type: application/zip\nContent-Transfer-Encoding: base64\n\n{big}--z\nContent-Type: text/plain\n\nafter\n--z\nContent-Type: application/octet-stream\n\n{csv}"
            ),
        ];
        for mime in &messages {
            let whole = MessageParser::default().parse(mime.as_bytes()).unwrap();
            let expected = build(&whole, &[], None, |_| None);
            let got = draft(spooled(mime), &[], None).unwrap();
            // Every large body was left in place (no whole parse behind the scenes).
            let cuts = large_bodies(mime.as_bytes()).len();
            let encoded = got
                .attachments
                .iter()
                .filter(|a| matches!(a.contents, Contents::Encoded { .. }))
                .count();
            assert!(
                cuts > 0 && encoded == cuts,
                "{cuts} cuts, {encoded} left in place"
            );
            assert_eq!(got.message, expected.message);
            assert_eq!(got.attachments.len(), expected.attachments.len());
            for (got, expected) in got.attachments.iter().zip(&expected.attachments) {
                let meta = |a: &Attachment| {
                    (
                        a.name.clone(),
                        a.content_type.clone(),
                        a.size,
                        a.content_id.clone(),
                        a.inline,
                    )
                };
                assert_eq!(meta(got), meta(expected));
                assert!(got.bytes() == expected.bytes(), "{}", got.name);
            }
        }
    }

    #[test]
    fn when_the_scanner_and_mail_parser_disagree_the_message_is_parsed_whole() {
        let pdf = pdf(LEFT_IN_PLACE * 2);
        let mime = scan_with(&pdf, "base64", 76);
        let cuts = large_bodies(mime.as_bytes());
        // A cut that is not where mail-parser puts an attachment's body.
        let wrong = [Cut {
            range: cuts[0].range.start - 10..cuts[0].range.end,
            encoding: Encoding::Base64,
        }];
        for (cuts, agree) in [(&wrong[..], false), (&cuts[..], true)] {
            let (bytes, places) = skeleton(mime.as_bytes(), cuts);
            let message = MessageParser::default().parse(&bytes[..]).unwrap();
            assert_eq!(cut_parts(&message, &places).is_some(), agree);
        }
    }
}
