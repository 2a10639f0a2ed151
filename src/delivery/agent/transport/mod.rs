//! How a message goes upstream. A [`Transport`] is one worker's way to its account's upstream
//! (an SMTP connection, or Microsoft Graph requests): it sends one transaction's worth of
//! recipients and says what became of each. Budgets, retries, durable results and reports
//! are the worker's and the scheduler's, the same whatever the transport.

pub mod fallback;
pub mod graph;
pub mod graph_draft;
pub mod headers;
pub mod smtp;

use std::path::Path;

use crate::BoxFuture;
use crate::queue::MessageFile;
use crate::queue::UpstreamReply;

pub use fallback::FallbackTransport;
pub use graph::GraphTransport;
pub use smtp::SmtpTransport;

/// A message on its way upstream.
pub struct Outgoing<'a> {
    pub file: &'a MessageFile,
    /// The spool file with the content.
    pub path: &'a Path,
    /// The upstream mailbox the transport authenticates as.
    pub mailbox: &'a str,
    /// The envelope sender used upstream (after rewriting).
    pub sender: &'a str,
    /// The recipients still pending, for this transaction.
    pub recipients: &'a [String],
    /// `rewrite_from`: the From header becomes this mailbox.
    pub rewrite_from: Option<&'a str>,
    /// Where a transport makes a note about the message durable before it goes on.
    pub notes: &'a dyn Notes,
}

/// What a transport may need to remember about a message across attempts (Graph's draft id,
/// recorded before `/send`). Recording goes through the scheduler, the only writer of
/// delivery state.
pub trait Notes: Sync {
    /// The draft an earlier attempt made and recorded, if any.
    fn graph_draft(&self) -> Option<String>;

    /// Records the draft durably; false if it could not be (then nothing may be sent).
    fn record_graph_draft<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered(UpstreamReply),
    Failed(UpstreamReply),
    Deferred(UpstreamReply),
    /// Not tried in this transaction (452 4.5.3 came first): send in the next one at once.
    Split,
}

/// A reply that concerns the whole account, not this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEffect {
    TokenRejected(UpstreamReply),
    /// Throttled; the upstream may say for how long (Graph's `Retry-After`).
    Throttled(UpstreamReply, Option<std::time::Duration>),
    QuotaExceeded(UpstreamReply),
    Hold(UpstreamReply),
}

/// One transaction's results: a result per recipient, and what the upstream said about the
/// account, if anything.
#[derive(Debug, Default)]
pub struct Outcome {
    pub results: Vec<(String, RecipientResult)>,
    pub effect: Option<AccountEffect>,
    /// What the delivery lines log: the message's Message-ID, when the content was read.
    pub message_id: Option<String>,
    /// How the content travelled: the TLS version, "none", or "https" (Graph).
    pub tls: &'static str,
}

/// Why nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The account has no usable token: wait for one, counting no attempt.
    NoToken(String),
    /// A fresh token was refused too: wait a while, counting no attempt.
    TokenRefused(String),
    /// The upstream spoke for the whole account before any transaction (at login).
    Account(AccountEffect),
    /// This message can never go (a `{sender}` mailbox the app may not send as): fail it.
    Refused(UpstreamReply),
    /// Nothing of this attempt reached the upstream (connection, TLS or login trouble, a
    /// request never answered, a spool file that cannot be sent): retry on schedule, and the
    /// mailbox's budgets count nothing for it.
    NotSent(String),
    /// The transaction reached the upstream and failed on the way (a connection lost in
    /// the middle, an error status): retry on schedule.
    Failed(String),
    /// Delivery is stopping.
    Interrupted,
}

impl SendError {
    /// No token to send with: a wait the delivery's stop ended is the stop, not a token
    /// problem.
    pub fn no_token(error: crate::oauth::error::TokenError) -> SendError {
        match error {
            crate::oauth::error::TokenError::Stopped => SendError::Interrupted,
            error => SendError::NoToken(error.to_string()),
        }
    }

    /// Whether the upstream may have counted this attempt against the mailbox's limits.
    pub fn reached_upstream(&self) -> bool {
        match self {
            SendError::Failed(_) => true,
            // Refused at login, or no login at all: no transaction was started.
            SendError::NoToken(_)
            | SendError::TokenRefused(_)
            | SendError::Account(_)
            | SendError::Refused(_)
            | SendError::NotSent(_)
            | SendError::Interrupted => false,
        }
    }
}

pub trait Transport: Send {
    /// Sends the message to `message.recipients` in one transaction.
    fn send<'a>(
        &'a mut self,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Outcome, SendError>>;

    /// Whether it holds a connection open (a worker closes an idle one).
    fn is_open(&self) -> bool;

    /// Closes what it holds open.
    fn close(&mut self) -> BoxFuture<'_, ()>;
}
