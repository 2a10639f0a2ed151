//! EHLO/HELO, MAIL and RCPT: the envelope half of a transaction.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Helo, Session, Transaction};
use crate::config::{AuthMode, ListenTls};
use crate::smtp::command::MailParams;
use crate::smtp::error::SmtpError;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::Mechanism;

/// Recipients past `max_recipients` a client may send before each further one counts as an
/// error (Postfix's smtpd_recipient_overshoot_limit).
const RECIPIENT_OVERSHOOT: usize = 1000;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) fn ehlo(&mut self, name: String, extended: bool) -> Reply {
        // RFC 5321 4.1.4: EHLO resets the transaction like RSET.
        self.transaction = None;
        let hostname = &self.config().server.hostname;
        let first = format!("{hostname} Hello {name} [{}]", self.peer.ip());
        let reply = if extended {
            let mut lines: Vec<Cow<'static, str>> = vec![
                first.into(),
                format!("SIZE {}", self.config().server.max_message_size).into(),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "ENHANCEDSTATUSCODES".into(),
                "PIPELINING".into(),
            ];
            if self.starttls_offered() {
                lines.push("STARTTLS".into());
            }
            if self.auth_offered() {
                let offered: Vec<&str> = Mechanism::OFFERED.iter().map(Mechanism::name).collect();
                lines.push(format!("AUTH {}", offered.join(" ")).into());
            }
            Reply::multiline(250, lines)
        } else {
            Reply::new(250, "", first)
        };
        if self.on_outdated_tls() {
            self.intake
                .metrics
                .tls
                .named(self.peer.ip().to_canonical(), &name);
        }
        self.helo = Some(Helo { name, extended });
        reply
    }

    pub(super) fn starttls_offered(&self) -> bool {
        self.listener.tls == ListenTls::StartTls
            && self.intake.tls.is_some()
            && !self.stream.is_tls()
    }

    /// AUTH is offered on listeners that allow it, only over TLS unless the admin allowed
    /// plaintext, and not again once authenticated.
    pub(super) fn auth_offered(&self) -> bool {
        self.listener.auth != AuthMode::None
            && !self.config().users.is_empty()
            && (self.stream.is_tls() || self.listener.allow_plaintext_auth)
            && self.user.is_none()
    }

    pub(super) fn mail(&mut self, sender: String, params: MailParams) -> Result<Reply, SmtpError> {
        if self.helo.is_none() {
            return Err(SmtpError::BadSequence("send EHLO or HELO first"));
        }
        if self.transaction.is_some() {
            return Err(SmtpError::BadSequence("nested MAIL command"));
        }
        if self.listener.require_tls && !self.stream.is_tls() {
            return Err(SmtpError::TlsRequired);
        }
        if self.listener.auth == AuthMode::Required && self.user.is_none() {
            return Err(SmtpError::AuthRequired);
        }
        if params
            .size
            .is_some_and(|size| size > self.config().server.max_message_size)
        {
            return Err(SmtpError::MessageTooLarge);
        }
        let policy = &self.intake.policy;
        policy.check_sender(&sender, self.user.as_deref())?;
        policy.check_client_rate(self.peer.ip())?;
        let reply = Reply::new(250, "2.1.0", format!("Sender <{sender}> OK"));
        self.transaction = Some(Transaction {
            sender,
            params,
            recipients: Vec::new(),
            overshoot: 0,
        });
        Ok(reply)
    }

    /// Takes `recipient` into the transaction; a refused one is kept for the refusal's log
    /// line.
    pub(super) fn rcpt(&mut self, recipient: String) -> Result<Reply, SmtpError> {
        match self.check_rcpt(&recipient) {
            Ok(()) => {
                let reply = Reply::new(250, "2.1.5", format!("Recipient <{recipient}> OK"));
                let transaction = self.transaction.as_mut().expect("checked");
                transaction.recipients.push(recipient);
                Ok(reply)
            }
            Err(error) => {
                self.refused_recipient = Some(recipient);
                Err(error)
            }
        }
    }

    fn check_rcpt(&mut self, recipient: &str) -> Result<(), SmtpError> {
        let max_recipients = self.config().server.max_recipients;
        let relay_allowed = self.trusted || self.user.is_some();
        let policy = &self.intake.policy;
        let Some(transaction) = self.transaction.as_mut() else {
            return Err(SmtpError::BadSequence("need MAIL before RCPT"));
        };
        if !relay_allowed {
            return Err(SmtpError::RelayDenied);
        }
        if transaction.recipients.len() >= max_recipients {
            transaction.overshoot += 1;
            return Err(SmtpError::TooManyRecipients {
                beyond_overshoot: transaction.overshoot > RECIPIENT_OVERSHOOT,
            });
        }
        if !transaction.params.smtputf8 && !recipient.is_ascii() {
            return Err(SmtpError::NonAsciiAddress);
        }
        policy.check_recipient(recipient)?;
        let first = transaction
            .recipients
            .first()
            .map_or(recipient, String::as_str);
        self.intake.admit(&transaction.sender, first)
    }
}
