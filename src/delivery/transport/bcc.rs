//! Recipients that only the envelope names. Graph (like any transport without an envelope)
//! delivers to the To, Cc and Bcc headers; a recipient the client left out of them (a Bcc it
//! already stripped) must be added as a `Bcc:` header, or it never gets the message. The
//! headers are read with mail-parser; the message's bytes are kept, the header goes first.

use std::borrow::Cow;
use std::collections::HashSet;

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// `content` with a `Bcc:` header for every recipient in `recipients` that no To, Cc or Bcc
/// header names (compared without case), or `content` itself when there is none.
pub fn with_envelope_bcc<'a>(content: &'a [u8], recipients: &[String]) -> Cow<'a, [u8]> {
    let named = named_recipients(content);
    let unnamed: Vec<&str> = recipients
        .iter()
        .map(String::as_str)
        .filter(|r| !named.contains(&r.to_ascii_lowercase()))
        .collect();
    if unnamed.is_empty() {
        return Cow::Borrowed(content);
    }
    let mut header = format!("Bcc: {}", unnamed.join(",\r\n "));
    header.push_str("\r\n");
    let mut out = Vec::with_capacity(header.len() + content.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(content);
    Cow::Owned(out)
}

/// Every address of every To, Cc and Bcc header, lowercased.
fn named_recipients(content: &[u8]) -> HashSet<String> {
    let mut named = HashSet::new();
    let Some(message) = MessageParser::default().parse_headers(content) else {
        return named;
    };
    for header in message.headers() {
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

    const MESSAGE: &[u8] = b"Received: from scanner\r\n\tby relay; now\r\nFrom: Scanner <scan@contoso.com>\r\nTo: \"Ann\" <ann@contoso.com>, bob@fabrikam.com\r\nCc: Team: carol@contoso.com;\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nH\xc3\xa9llo\r\n";

    fn recipients(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn named_recipients_leave_the_bytes_alone() {
        let out = with_envelope_bcc(
            MESSAGE,
            &recipients(&["ANN@contoso.com", "bob@fabrikam.com", "carol@contoso.com"]),
        );
        assert!(matches!(out, Cow::Borrowed(_)));
    }

    #[test]
    fn envelope_only_recipients_go_in_one_bcc_header_before_the_rest() {
        let out = with_envelope_bcc(
            MESSAGE,
            &recipients(&["ann@contoso.com", "dave@contoso.com", "eve@fabrikam.com"]),
        );
        let (head, rest) = out.split_at(out.len() - MESSAGE.len());
        assert_eq!(rest, MESSAGE);
        assert_eq!(head, b"Bcc: dave@contoso.com,\r\n eve@fabrikam.com\r\n");
        let parsed = MessageParser::default().parse(out.as_ref()).unwrap();
        let bcc: Vec<&str> = parsed
            .bcc()
            .unwrap()
            .iter()
            .filter_map(|a| a.address())
            .collect();
        assert_eq!(bcc, ["dave@contoso.com", "eve@fabrikam.com"]);
    }

    #[test]
    fn a_message_without_headers_gets_them_all_as_bcc() {
        let out = with_envelope_bcc(b"\r\nbody\r\n", &recipients(&["a@x.example"]));
        assert_eq!(out.as_ref(), b"Bcc: a@x.example\r\n\r\nbody\r\n");
    }
}
