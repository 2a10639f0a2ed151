//! SMTP command parsing (RFC 5321, 1869, 3207, 4954, 6152, 6531). No I/O: one line in, one
//! [`Command`] or [`SmtpError`] out, so the fuzzer and the tests drive it directly.
//!
//! Lenient where devices are sloppy (a space after `FROM:`, a missing `<>` around the address,
//! lower-case verbs), strict where it matters (address syntax, unknown parameters).

use super::error::SmtpError;
use super::sasl::Mechanism;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        /// Empty for the null reverse-path `<>`.
        sender: String,
        params: MailParams,
    },
    Rcpt {
        recipient: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: Mechanism,
        initial_response: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// The size the client declared with `SIZE=`.
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Longest path accepted (RFC 5321 4.5.3.1.3).
const MAX_PATH_LENGTH: usize = 256;

/// Parses one command line without its line terminator.
pub fn parse(line: &[u8]) -> Result<Command, SmtpError> {
    let line = std::str::from_utf8(line).map_err(|_| SmtpError::Syntax("invalid UTF-8"))?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    if verb.len() > 8 {
        return Err(SmtpError::UnknownCommand);
    }
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => domain_argument(rest, "EHLO hostname").map(Command::Ehlo),
        "HELO" => domain_argument(rest, "HELO hostname").map(Command::Helo),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_argument(rest, Command::Data),
        "RSET" => no_argument(rest, Command::Rset),
        "QUIT" => no_argument(rest, Command::Quit),
        "STARTTLS" => no_argument(rest, Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(rest),
        "EXPN" => Err(SmtpError::NotImplemented("EXPN")),
        "BDAT" => Err(SmtpError::NotImplemented("BDAT")),
        "ETRN" => Err(SmtpError::NotImplemented("ETRN")),
        "TURN" | "ATRN" => Err(SmtpError::NotImplemented("TURN")),
        "SEND" | "SOML" | "SAML" => Err(SmtpError::NotImplemented("SEND")),
        _ => Err(SmtpError::UnknownCommand),
    }
}

fn no_argument(rest: &str, command: Command) -> Result<Command, SmtpError> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(SmtpError::Syntax("this command takes no parameters"))
    }
}

fn domain_argument(rest: &str, usage: &'static str) -> Result<String, SmtpError> {
    let name = rest.split_whitespace().next().unwrap_or("");
    if name.is_empty() {
        return Err(SmtpError::Syntax(usage));
    }
    if name.chars().any(|c| c.is_control()) || name.len() > 255 {
        return Err(SmtpError::Syntax("invalid host name"));
    }
    Ok(name.to_owned())
}

fn parse_mail(rest: &str) -> Result<Command, SmtpError> {
    let rest = strip_keyword(rest, "FROM:").ok_or(SmtpError::Syntax("MAIL FROM:<address>"))?;
    let (path, params_text) = split_path(rest).map_err(SmtpError::BadSenderSyntax)?;
    let sender = parse_path(path, PathKind::Reverse).map_err(SmtpError::BadSenderSyntax)?;
    let mut params = MailParams::default();
    for param in params_text.split_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                // A number too large for u64 is still just "too large".
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => params.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Body::EightBitMime
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 5: the AUTH parameter may be ignored by a server that does not trust it.
            ("AUTH", Some(_)) => {}
            _ => return Err(SmtpError::UnsupportedParameter(param.to_owned())),
        }
    }
    if !params.smtputf8 && !sender.is_ascii() {
        return Err(SmtpError::NonAsciiAddress);
    }
    Ok(Command::Mail { sender, params })
}

fn parse_rcpt(rest: &str) -> Result<Command, SmtpError> {
    let rest = strip_keyword(rest, "TO:").ok_or(SmtpError::Syntax("RCPT TO:<address>"))?;
    let (path, params_text) = split_path(rest).map_err(SmtpError::BadRecipientSyntax)?;
    let recipient = parse_path(path, PathKind::Forward).map_err(SmtpError::BadRecipientSyntax)?;
    if let Some(param) = params_text.split_whitespace().next() {
        return Err(SmtpError::UnsupportedParameter(param.to_owned()));
    }
    Ok(Command::Rcpt { recipient })
}

fn parse_auth(rest: &str) -> Result<Command, SmtpError> {
    let mut words = rest.split_whitespace();
    let mechanism = Mechanism::parse(
        words
            .next()
            .ok_or(SmtpError::Syntax("AUTH mechanism [initial-response]"))?,
    );
    let initial_response = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(SmtpError::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

/// Strips `FROM:` or `TO:` (any case), allowing spaces around the colon as many devices send.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let word = &keyword[..keyword.len() - 1];
    let head = rest.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let after = rest[word.len()..].trim_start();
    Some(after.strip_prefix(':')?.trim_start())
}

/// Splits `<path> params` into the path (without brackets) and the parameter text.
fn split_path(text: &str) -> Result<(&str, &str), &'static str> {
    if let Some(inner) = text.strip_prefix('<') {
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    let params = &inner[i + 1..];
                    if !params.is_empty() && !params.starts_with(' ') {
                        return Err("text after the closing >");
                    }
                    return Ok((&inner[..i], params.trim_start()));
                }
                _ => {}
            }
        }
        Err("missing closing >")
    } else {
        // Devices that omit the brackets: the address ends at the first space.
        Ok(match text.split_once(' ') {
            Some((path, params)) => (path, params.trim_start()),
            None => (text, ""),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// MAIL FROM: may be empty (`<>`).
    Reverse,
    /// RCPT TO: may be a bare `postmaster`.
    Forward,
}

/// `address` as RCPT TO would take it (a mailbox, or `postmaster`), for addresses that come
/// from elsewhere than a session (the console's test message).
pub fn recipient_address(address: &str) -> Result<String, &'static str> {
    parse_path(address, PathKind::Forward)
}

fn parse_path(path: &str, kind: PathKind) -> Result<String, &'static str> {
    if path.len() > MAX_PATH_LENGTH {
        return Err("address too long");
    }
    // RFC 5321 4.1.2: a source route ("@a,@b:user@c") is accepted and ignored.
    let mailbox = match path.strip_prefix('@') {
        Some(route) => route.split_once(':').ok_or("bad source route")?.1,
        None => path,
    };
    if mailbox.is_empty() {
        return match kind {
            PathKind::Reverse => Ok(String::new()),
            PathKind::Forward => Err("empty address"),
        };
    }
    if kind == PathKind::Forward && mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(mailbox.to_owned());
    }
    let at = mailbox.rfind('@').ok_or("the address has no domain")?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    check_local_part(local)?;
    check_domain(domain)?;
    Ok(mailbox.to_owned())
}

fn check_local_part(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > 64 {
        return Err("local part too long");
    }
    if let Some(quoted) = local.strip_prefix('"') {
        let inner = quoted
            .strip_suffix('"')
            .ok_or("unterminated quoted local part")?;
        let mut escaped = false;
        for c in inner.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Err("unescaped quote in local part"),
                c if c.is_control() => return Err("control character in address"),
                _ => {}
            }
        }
        return if escaped {
            Err("dangling backslash")
        } else {
            Ok(())
        };
    }
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    let atom_char = |c: char| c.is_alphanumeric() || SPECIALS.contains(c) || !c.is_ascii();
    if !local.chars().all(atom_char) {
        return Err("invalid character in local part");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced dot in local part");
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("empty domain");
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal
            .strip_suffix(']')
            .ok_or("unterminated address literal")?;
        let valid = match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if valid {
            Ok(())
        } else {
            Err("invalid address literal")
        };
    }
    if domain.len() > 255 {
        return Err("domain too long");
    }
    for label in domain.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || !c.is_ascii());
        if !valid {
            return Err("invalid domain");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(line: &str) -> Result<(String, MailParams), SmtpError> {
        match parse(line.as_bytes())? {
            Command::Mail { sender, params } => Ok((sender, params)),
            other => panic!("not MAIL: {other:?}"),
        }
    }

    #[test]
    fn verbs_any_case() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"data  "), Ok(Command::Data));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse(b"FOO"), Err(SmtpError::UnknownCommand));
        assert_eq!(parse(b"EXPN list"), Err(SmtpError::NotImplemented("EXPN")));
        assert!(matches!(parse(b"EHLO"), Err(SmtpError::Syntax(_))));
        assert!(matches!(parse(b"QUIT now"), Err(SmtpError::Syntax(_))));
    }

    #[test]
    fn mail_from_variants() {
        assert_eq!(mail("MAIL FROM:<a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(mail("MAIL FROM: <a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(mail("mail from:a@b.example").unwrap().0, "a@b.example");
        assert_eq!(mail("MAIL FROM:<>").unwrap().0, "");
        assert_eq!(
            mail("MAIL FROM:<@relay.example:a@b.example>").unwrap().0,
            "a@b.example"
        );
        assert_eq!(
            mail("MAIL FROM:<\"odd > name\"@b.example>").unwrap().0,
            "\"odd > name\"@b.example"
        );
        let (_, params) = mail("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap();
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Body::EightBitMime);
        let (_, params) =
            mail("MAIL FROM:<a@b.example> AUTH=<> SIZE=99999999999999999999999").unwrap();
        assert_eq!(params.size, Some(u64::MAX));
    }

    #[test]
    fn mail_from_errors() {
        assert!(matches!(
            mail("MAIL FROM:<a@b.example"),
            Err(SmtpError::BadSenderSyntax(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<ab.example>"),
            Err(SmtpError::BadSenderSyntax(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b..example>"),
            Err(SmtpError::BadSenderSyntax(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a b@c.example>"),
            Err(SmtpError::BadSenderSyntax(_))
        ));
        assert!(matches!(
            mail("MAIL TO:<a@b.example>"),
            Err(SmtpError::Syntax(_))
        ));
        assert_eq!(
            mail("MAIL FROM:<a@b.example> FOO=BAR"),
            Err(SmtpError::UnsupportedParameter("FOO=BAR".into()))
        );
        assert!(matches!(
            mail("MAIL FROM:<a@b.example> SIZE=x"),
            Err(SmtpError::UnsupportedParameter(_))
        ));
        assert_eq!(
            mail("MAIL FROM:<jörg@b.example>"),
            Err(SmtpError::NonAsciiAddress)
        );
        assert!(mail("MAIL FROM:<jörg@b.example> SMTPUTF8").is_ok());
        let long = format!("MAIL FROM:<{}@b.example>", "a".repeat(300));
        assert!(matches!(mail(&long), Err(SmtpError::BadSenderSyntax(_))));
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                recipient: "Postmaster".into()
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<user@[192.0.2.1]>"),
            Ok(Command::Rcpt {
                recipient: "user@[192.0.2.1]".into()
            })
        );
        assert!(matches!(
            parse(b"RCPT TO:<>"),
            Err(SmtpError::BadRecipientSyntax(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<a@b.example> NOTIFY=NEVER"),
            Err(SmtpError::UnsupportedParameter(_))
        ));
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse(b"AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: Mechanism::Plain,
                initial_response: Some("AGEAYg==".into())
            })
        );
        assert!(matches!(parse(b"AUTH"), Err(SmtpError::Syntax(_))));
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        assert!(matches!(
            parse(b"MAIL FROM:<\xff@b>"),
            Err(SmtpError::Syntax(_))
        ));
    }
}
