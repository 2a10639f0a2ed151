//! AUTH PLAIN and LOGIN (RFC 4954) against the configured users, with the failure lockout.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{End, Flow, Session};
use crate::logging::Untrusted;
use crate::smtp::error::SmtpError;
use crate::smtp::line::Line;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials, Mechanism};

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn auth(
        &mut self,
        mechanism: Mechanism,
        initial_response: Option<String>,
    ) -> Result<Flow, End> {
        if self.user.is_some() {
            return self.refuse(SmtpError::AlreadyAuthenticated);
        }
        if !self.auth_offered() {
            return self.refuse(SmtpError::AuthUnavailable);
        }
        if self.transaction.is_some() {
            return self.refuse(SmtpError::BadSequence(
                "AUTH is not allowed during a transaction",
            ));
        }
        let ip = self.peer.ip();
        if self.intake.policy.auth_locked_out(ip) {
            return self.refuse(SmtpError::AuthLockedOut);
        }
        let credentials = match self.sasl_exchange(mechanism, initial_response).await? {
            Ok(credentials) => credentials,
            Err(error) => return self.refuse(error),
        };
        let username = credentials.username.clone();
        match self
            .intake
            .policy
            .authenticate(ip, &credentials.username, credentials.password)
            .await
        {
            Ok(user) => {
                tracing::info!(peer = %self.peer, user = %user, "authenticated");
                self.user = Some(user);
                self.push(Reply::new(235, "2.7.0", "Authentication successful"));
                Ok(Flow::Continue)
            }
            Err(error) => {
                tracing::warn!(peer = %self.peer, user = %Untrusted(&username), "authentication failed");
                self.refuse(error)
            }
        }
    }

    async fn sasl_exchange(
        &mut self,
        mechanism: Mechanism,
        initial_response: Option<String>,
    ) -> Result<Result<Credentials, SmtpError>, End> {
        match mechanism {
            Mechanism::Plain => {
                let response = match initial_response {
                    Some(response) => Ok(response),
                    None => self.challenge("").await?,
                };
                Ok(response
                    .and_then(|r| sasl::decode_response(&r))
                    .and_then(|r| sasl::decode_plain(&r)))
            }
            Mechanism::Login => {
                let username = match initial_response {
                    Some(response) => Ok(response),
                    None => self.challenge(sasl::LOGIN_USERNAME_PROMPT).await?,
                };
                let username = match username
                    .and_then(|r| sasl::decode_response(&r))
                    .and_then(|r| sasl::decode_text(&r))
                {
                    Ok(username) => username,
                    Err(error) => return Ok(Err(error)),
                };
                let password = self
                    .challenge(sasl::LOGIN_PASSWORD_PROMPT)
                    .await?
                    .and_then(|r| sasl::decode_response(&r))
                    .and_then(|r| sasl::decode_text(&r));
                Ok(password.map(|password| Credentials { username, password }))
            }
            Mechanism::Unsupported(name) => Ok(Err(SmtpError::UnsupportedMechanism(name))),
        }
    }

    /// Sends a `334` challenge and reads the client's response line.
    async fn challenge(&mut self, text: &'static str) -> Result<Result<String, SmtpError>, End> {
        self.push(Reply::new(334, "", text));
        Ok(match self.next_line(true).await? {
            Line::TooLong => Err(SmtpError::AuthMalformed),
            Line::Complete(bytes) => String::from_utf8(bytes).map_err(|_| SmtpError::AuthMalformed),
        })
    }
}
