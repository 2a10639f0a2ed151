//! SMTP replies and the one place where an intake error becomes a reply.

use std::borrow::Cow;
use std::fmt::Write;

use super::error::SmtpError;

/// One reply: a basic code, an enhanced status code (RFC 3463) and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status such as `"5.7.1"`; empty for the greeting and EHLO, which carry none.
    pub status: &'static str,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: "",
            lines,
        }
    }

    pub fn ok(text: impl Into<Cow<'static, str>>) -> Self {
        Reply::new(250, "2.0.0", text)
    }

    /// The reply's first line without its line ending, for a log line.
    pub fn first_line(&self) -> String {
        match (self.status, self.lines.first()) {
            ("", line) => format!("{} {}", self.code, line.map_or("", |l| l.as_ref())),
            (status, line) => format!("{} {status} {}", self.code, line.map_or("", |l| l.as_ref())),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form, CRLF-terminated, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            let _ = write!(text, "{}{}", self.code, separator);
            if !self.status.is_empty() {
                let _ = write!(text, "{} ", self.status);
            }
            text.push_str(line);
            text.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(text, "{} {}\r\n", self.code, self.status);
        }
        out.extend_from_slice(text.as_bytes());
    }
}

impl From<&SmtpError> for Reply {
    fn from(error: &SmtpError) -> Reply {
        use SmtpError::*;
        let (code, status) = match error {
            UnknownCommand => (500, "5.5.2"),
            LineTooLong => (500, "5.5.6"),
            NotImplemented(_) => (502, "5.5.1"),
            Syntax(_) => (501, "5.5.4"),
            BadSenderSyntax(_) => (501, "5.1.7"),
            BadRecipientSyntax(_) => (501, "5.1.3"),
            NonAsciiAddress => (553, "5.6.7"),
            UnsupportedParameter(_) => (555, "5.5.4"),
            BadSequence(_) => (503, "5.5.1"),
            TlsRequired => (530, "5.7.0"),
            TlsUnavailable => (454, "4.7.0"),
            AuthRequired => (530, "5.7.0"),
            AuthUnavailable => (503, "5.5.1"),
            AlreadyAuthenticated => (503, "5.5.1"),
            UnsupportedMechanism(_) => (504, "5.5.4"),
            AuthCancelled => (501, "5.0.0"),
            AuthMalformed => (501, "5.5.2"),
            AuthFailed => (535, "5.7.8"),
            AuthLockedOut => (454, "4.7.0"),
            AuthTemporaryFailure => (454, "4.7.0"),
            RelayDenied => (554, "5.7.1"),
            SenderNotAllowed(_) => (550, "5.7.1"),
            RecipientNotAllowed(_) => (550, "5.7.1"),
            NoValidRecipients => (554, "5.5.1"),
            TooManyRecipients { .. } => (452, "4.5.3"),
            MessageTooLarge => (552, "5.3.4"),
            RateLimited => (450, "4.7.0"),
            BareNewline => (550, "5.6.0"),
            StorageFailed => (451, "4.3.0"),
            InsufficientStorage => (452, "4.3.1"),
            // Admission control: "mail system full", which clients retry.
            QueueFull | LowFreeSpace | AccountBacklogFull(_) => (452, "4.3.1"),
            ShuttingDown => (421, "4.3.0"),
            TooManyErrors => (421, "4.7.0"),
            Timeout => (421, "4.4.2"),
            TooManyConnections | TooManyConnectionsFromClient => (421, "4.7.0"),
            NotFromProxy => (554, "5.7.1"),
            BadProxyHeader => (421, "4.7.0"),
        };
        Reply::new(code, status, error.to_string())
    }
}

impl From<SmtpError> for Reply {
    fn from(error: SmtpError) -> Reply {
        Reply::from(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&Reply::ok("Ok")), "250 2.0.0 Ok\r\n");
        let ehlo = Reply::multiline(250, vec!["relay".into(), "PIPELINING".into()]);
        assert_eq!(wire(&ehlo), "250-relay\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn every_error_reply_has_an_enhanced_code_of_its_class() {
        let reply = Reply::from(&SmtpError::RelayDenied);
        assert_eq!((reply.code, reply.status), (554, "5.7.1"));
        let reply = Reply::from(&SmtpError::TooManyRecipients {
            beyond_overshoot: false,
        });
        assert_eq!(reply.status.as_bytes()[0], b'4');
    }

    #[test]
    fn every_admission_refusal_is_452_4_3_1() {
        for error in [
            SmtpError::QueueFull,
            SmtpError::LowFreeSpace,
            SmtpError::AccountBacklogFull("contoso".into()),
        ] {
            let reply = Reply::from(&error);
            assert_eq!((reply.code, reply.status), (452, "4.3.1"), "{error:?}");
        }
        let text = Reply::from(&SmtpError::AccountBacklogFull("contoso".into())).first_line();
        assert!(text.contains("account contoso"), "{text}");
    }
}
