//! DATA: streams the message through the [`DataReceiver`] into the spool and answers 250 only
//! once the spool says the message is durable.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{End, Flow, Session, Transaction};
use crate::config::BareNewline;
use crate::queue::{ClientInfo, Envelope, QueueId};
use crate::smtp::command::Body;
use crate::smtp::data::DataReceiver;
use crate::smtp::error::SmtpError;
use crate::smtp::reply::Reply;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn data(&mut self) -> Result<Flow, End> {
        let transaction = match self.transaction.take() {
            None => return self.refuse(SmtpError::BadSequence("need MAIL before DATA")),
            Some(t) if t.recipients.is_empty() => {
                // Keep the transaction: a pipelining client may still be sending RCPTs that
                // failed; RFC 2920 says reply 554 and let it RSET.
                self.transaction = Some(t);
                return self.refuse(SmtpError::NoValidRecipients);
            }
            Some(t) => t,
        };
        // Limits reached since RCPT: the transaction ends here, as after any refused DATA.
        if let Err(error) = self
            .intake
            .admit(&transaction.sender, &transaction.recipients[0])
        {
            return self.refuse(error);
        }
        self.push(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let result = self.receive(transaction).await?;
        match result {
            Ok(reply) => self.push(reply),
            Err(error) => {
                self.refuse(error)?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Reads the content to its end. Always consumes the whole message, even when it will be
    /// refused, so the next command is read in step.
    async fn receive(&mut self, transaction: Transaction) -> Result<Result<Reply, SmtpError>, End> {
        let max_size = self.config().server.max_message_size;
        let data_timeout = self.config().server.data_timeout;
        let min_rate = self.config().server.min_data_rate.max(1) as f64;
        // The content must keep up `min_data_rate`: every byte buys 1/min_rate seconds, and
        // no wait for more may be longer than `data_timeout`. A client that trickles a byte
        // now and then is cut off after about `data_timeout`.
        let mut deadline = Instant::now() + data_timeout;
        let id = QueueId::generate();
        let received_header = self.received_header(id, &transaction);
        let envelope = Envelope {
            id,
            received_at: crate::clock::unix_ms(),
            sender: transaction.sender,
            recipients: transaction.recipients,
            smtputf8: transaction.params.smtputf8,
            eight_bit: transaction.params.body == Body::EightBitMime,
            client: ClientInfo {
                address: self.peer.ip(),
                helo: self
                    .helo
                    .as_ref()
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
                user: self.user.clone(),
                tls: self.stream.is_tls(),
            },
            is_dsn: false,
            account: None,
        };
        let mut writer = Some(self.intake.spool.create(envelope));
        let mut refusal = None;
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(received_header.as_bytes()).await
        {
            tracing::error!(error = %e, "cannot write to the spool");
            refusal = Some(SmtpError::from_storage(&e));
            writer = None;
        }

        let mut receiver = DataReceiver::new();
        let mut content = Vec::with_capacity(16 * 1024);
        let mut size: u64 = 0;
        loop {
            if !self.input.pending().is_empty() {
                content.clear();
                let consumed = receiver.feed(self.input.pending(), &mut content);
                self.input.consume(consumed);
                deadline = (deadline + Duration::from_secs_f64(consumed as f64 / min_rate))
                    .min(Instant::now() + data_timeout);
                size += content.len() as u64;
                if size > max_size && refusal.is_none() {
                    refusal = Some(SmtpError::MessageTooLarge);
                    writer = None;
                }
                if let Some(w) = writer.as_mut()
                    && let Err(e) = w.write(&content).await
                {
                    tracing::error!(error = %e, "cannot write to the spool");
                    refusal = Some(SmtpError::from_storage(&e));
                    writer = None;
                }
                if receiver.is_done() {
                    break;
                }
            }
            self.flush().await?;
            self.read_more(deadline, false, super::DATA_READ).await?;
        }

        // Give back DATA's larger buffer: sessions often idle between messages.
        self.input.shrink();
        let policy = self.config().server.bare_newline;
        let reject_bare =
            policy == BareNewline::RejectAll || (policy == BareNewline::Reject && !self.trusted);
        if receiver.saw_bare_newline() && reject_bare && refusal.is_none() {
            refusal = Some(SmtpError::BareNewline);
        }
        if let Some(error) = refusal {
            self.intake
                .metrics
                .messages_refused_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(peer = %self.peer, %error, size, "message refused");
            return Ok(Err(error));
        }
        let writer = writer.expect("no refusal means the writer is intact");
        let envelope_log = (
            writer.content_len(),
            id,
            format!("<{}>", crate::logging::Untrusted(&writer.envelope().sender)),
            writer.envelope().recipients.len(),
            recipient_list(&writer.envelope().recipients),
        );
        match writer.commit().await {
            Ok(id) => {
                self.intake.metrics.received();
                if self.on_outdated_tls() {
                    let now = crate::clock::unix_secs();
                    let client = self.peer.ip().to_canonical();
                    self.intake.metrics.tls.message(client, now);
                }
                let (tls, cipher) = match &self.tls {
                    Some(negotiated) => (negotiated.version.as_str(), negotiated.cipher.as_str()),
                    None => ("none", ""),
                };
                tracing::info!(queue_id = %id, peer = %self.peer, from = %envelope_log.2,
                    to = %envelope_log.4, nrcpt = envelope_log.3, size = envelope_log.0,
                    user = self.user.as_deref().unwrap_or(""), tls, cipher, "message accepted");
                Ok(Ok(Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))))
            }
            Err(e) => {
                tracing::error!(queue_id = %envelope_log.1, error = %e, "cannot commit to the spool");
                Ok(Err(SmtpError::from_storage(&e)))
            }
        }
    }

    /// The trace header (RFC 5321 4.4), with the protocol keyword of RFC 3848.
    fn received_header(&self, id: QueueId, transaction: &Transaction) -> String {
        let helo = self.helo.as_ref();
        let helo_name: String = helo
            .map(|h| h.name.as_str())
            .unwrap_or("unknown")
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '(' && c != ')' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let protocol = match (
            helo.is_some_and(|h| h.extended),
            self.stream.is_tls(),
            self.user.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let address = match self.peer.ip() {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => format!("[{v4}]"),
                None => format!("[IPv6:{v6}]"),
            },
        };
        // Naming the recipient only when there is one keeps Bcc recipients private.
        let recipient = match transaction.recipients.as_slice() {
            [only] => format!("\r\n\tfor <{only}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo_name} ({address})\r\n\tby {} (smtprelay) with {protocol} id {id}{recipient};\r\n\t{}\r\n",
            self.config().server.hostname,
            chrono::Utc::now().to_rfc2822(),
        )
    }
}

/// The recipients for the accept line: each escaped, the first [`LOGGED_RECIPIENTS`], then how
/// many more (a message to a thousand addresses must not make a thousand-address line).
fn recipient_list(recipients: &[String]) -> String {
    let mut list: Vec<String> = recipients
        .iter()
        .take(LOGGED_RECIPIENTS)
        .map(|r| format!("<{}>", crate::logging::Untrusted(r)))
        .collect();
    if recipients.len() > LOGGED_RECIPIENTS {
        list.push(format!("and {} more", recipients.len() - LOGGED_RECIPIENTS));
    }
    list.join(",")
}

const LOGGED_RECIPIENTS: usize = 20;
