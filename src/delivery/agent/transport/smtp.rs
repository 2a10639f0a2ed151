//! SMTP AUTH XOAUTH2 to Exchange Online: one upstream connection, kept open and reused for
//! message after message, logged in as the message's mailbox. A token refused with `535 5.7.3`
//! is invalidated and a fresh one tried once; a pooled connection the upstream closed
//! meanwhile is replaced once.

use std::sync::Arc;

use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::{AccountEffect, Outcome, Outgoing, SendError, Transport};
use crate::BoxFuture;
use crate::config::{AccountConfig, Mailbox};
use crate::delivery::agent::client::{ClientError, UpstreamConnection, explain_client_error};
use crate::delivery::agent::transaction::{self, TransactionError};
use crate::delivery::meaning::{Explain, Verdict, classify};
use crate::oauth::manager::TokenManager;

pub struct SmtpTransport {
    account: AccountConfig,
    tls: Result<Arc<ClientConfig>, String>,
    tokens: Arc<TokenManager>,
    /// Our name in EHLO.
    hostname: String,
    /// Waiting for a token or a connection ends when this is cancelled.
    stop: CancellationToken,
    connected: Option<Connected>,
}

struct Connected {
    connection: UpstreamConnection,
    mailbox: String,
    used: bool,
}

impl SmtpTransport {
    pub fn new(
        account: AccountConfig,
        tls: Result<Arc<ClientConfig>, String>,
        tokens: Arc<TokenManager>,
        hostname: String,
        stop: CancellationToken,
    ) -> SmtpTransport {
        SmtpTransport {
            account,
            tls,
            tokens,
            hostname,
            stop,
            connected: None,
        }
    }

    async fn send_message(&mut self, message: &Outgoing<'_>) -> Result<Outcome, SendError> {
        let mut stale_retry = true;
        loop {
            if self
                .connected
                .as_ref()
                .is_some_and(|c| c.mailbox != message.mailbox)
            {
                self.close_connection().await;
            }
            if self.connected.is_none() {
                let connected = tokio::select! {
                    connected = self.connect(message.mailbox) => connected?,
                    _ = self.stop.cancelled() => return Err(SendError::Interrupted),
                };
                self.connected = Some(connected);
            }
            let connected = self.connected.as_mut().expect("just connected");
            let reused = connected.used;
            connected.used = true;
            match transaction::send(&mut connected.connection, message).await {
                Ok(mut outcome) => {
                    outcome.tls = connected.connection.tls_version();
                    // After an account-wide reply the next attempt starts on a new connection.
                    if outcome.effect.is_some() {
                        self.connected = None;
                    }
                    return Ok(outcome);
                }
                Err(TransactionError::Connection(e)) => {
                    self.connected = None;
                    if reused && stale_retry {
                        stale_retry = false;
                        tracing::debug!(queue_id = %message.file.envelope.id, error = %e,
                            "stale upstream connection; reconnecting");
                        continue;
                    }
                    return Err(SendError::Failed(e.to_string()));
                }
                Err(e) => {
                    self.connected = None;
                    tracing::error!(queue_id = %message.file.envelope.id, error = %e,
                        "cannot send the spooled message");
                    return Err(SendError::Failed(e.to_string()));
                }
            }
        }
    }

    /// Connects and logs in as `mailbox`.
    async fn connect(&self, mailbox: &str) -> Result<Connected, SendError> {
        let tls = self.tls.clone().map_err(SendError::NotSent)?;
        let account = &self.account.name;
        for try_number in 0..2 {
            let token = self
                .tokens
                .access_token_until(account, &self.stop)
                .await
                .map_err(SendError::no_token)?;
            let mut connection = UpstreamConnection::connect(
                &self.account.upstream,
                Arc::clone(&tls),
                &self.hostname,
            )
            .await
            .map_err(|e| SendError::NotSent(explain_client_error(&e)))?;
            match connection.auth_xoauth2(mailbox, &token.token).await {
                Ok(()) => {
                    return Ok(Connected {
                        connection,
                        mailbox: mailbox.to_owned(),
                        used: false,
                    });
                }
                Err(ClientError::Rejected(reply)) if reply.is_status(535, "5.7.3") => {
                    // A token just issued and refused too is kept: asking for yet another
                    // would only loop (the token manager's floor would hold every mailbox of
                    // the account back for it).
                    if try_number == 0 {
                        self.tokens.invalidate(account, &token.token);
                    }
                    connection.quit().await;
                    // With a fresh token refused too, a per-sender mailbox is the problem, not
                    // the token: that message cannot go, the others can.
                    if try_number == 1 && self.account.mailbox == Mailbox::Sender {
                        return Err(SendError::Refused(reply));
                    }
                    if try_number == 1 {
                        return Err(SendError::TokenRefused(reply.described()));
                    }
                }
                Err(ClientError::Rejected(reply)) => {
                    connection.quit().await;
                    return Err(SendError::Account(match classify(&reply) {
                        Verdict::Throttled => AccountEffect::Throttled(reply, None),
                        Verdict::QuotaExceeded => AccountEffect::QuotaExceeded(reply),
                        _ => AccountEffect::Hold(reply),
                    }));
                }
                Err(e) => return Err(SendError::NotSent(explain_client_error(&e))),
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn close_connection(&mut self) {
        if let Some(connected) = self.connected.take() {
            connected.connection.quit().await;
        }
    }
}

impl Transport for SmtpTransport {
    fn send<'a>(
        &'a mut self,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Outcome, SendError>> {
        Box::pin(self.send_message(message))
    }

    fn is_open(&self) -> bool {
        self.connected.is_some()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.close_connection())
    }
}
