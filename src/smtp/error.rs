//! Everything that makes intake refuse a command or a message. `Reply::from(&SmtpError)` in
//! `reply.rs` is the only mapping from these to codes on the wire; the `Display` text here is
//! the reply text, so it is written for the person reading a device's error log.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpError {
    #[error("Command unrecognized")]
    UnknownCommand,
    #[error("Line too long")]
    LineTooLong,
    #[error("{0} is not implemented")]
    NotImplemented(&'static str),
    #[error("Syntax error: {0}")]
    Syntax(&'static str),
    #[error("Bad sender address syntax: {0}")]
    BadSenderSyntax(&'static str),
    #[error("Bad recipient address syntax: {0}")]
    BadRecipientSyntax(&'static str),
    #[error("Non-ASCII address needs the SMTPUTF8 parameter")]
    NonAsciiAddress,
    #[error("Unsupported parameter {}", crate::logging::Untrusted(.0))]
    UnsupportedParameter(String),
    #[error("Bad sequence of commands: {0}")]
    BadSequence(&'static str),
    #[error("Must issue a STARTTLS command first")]
    TlsRequired,
    #[error("TLS not available")]
    TlsUnavailable,
    #[error("Authentication required")]
    AuthRequired,
    #[error("AUTH not available")]
    AuthUnavailable,
    #[error("Already authenticated")]
    AlreadyAuthenticated,
    #[error("Unsupported authentication mechanism {}", crate::logging::Untrusted(.0))]
    UnsupportedMechanism(String),
    #[error("Authentication cancelled")]
    AuthCancelled,
    #[error("Cannot decode the authentication response")]
    AuthMalformed,
    #[error("Authentication credentials invalid")]
    AuthFailed,
    #[error("Too many failed authentications from your address, try again later")]
    AuthLockedOut,
    #[error("Temporary authentication failure")]
    AuthTemporaryFailure,
    #[error("Relay access denied: authenticate or connect from a trusted network")]
    RelayDenied,
    #[error("Sender address {} is not allowed", crate::logging::Untrusted(.0))]
    SenderNotAllowed(String),
    #[error("Recipient address {} is not allowed", crate::logging::Untrusted(.0))]
    RecipientNotAllowed(String),
    #[error("No valid recipients")]
    NoValidRecipients,
    /// Over `max_recipients`: the client sends the rest in its next transaction. Only past
    /// the overshoot allowance does each one count as an error, as in Postfix.
    #[error("Too many recipients")]
    TooManyRecipients { beyond_overshoot: bool },
    #[error("Message size exceeds the fixed maximum message size")]
    MessageTooLarge,
    #[error("Too many messages from your address, try again later")]
    RateLimited,
    #[error("Message contains a bare CR or LF; send CRLF line endings")]
    BareNewline,
    #[error("Local error in processing, message not accepted; try again later")]
    StorageFailed,
    #[error("Insufficient system storage, message not accepted; try again later")]
    InsufficientStorage,
    /// Admission control: `[queue] max_messages` are queued.
    #[error("Queue full: try again later")]
    QueueFull,
    /// Admission control: the spool's file system is below `[queue] min_free_space`.
    #[error("Insufficient system storage: the queue's disk is nearly full, try again later")]
    LowFreeSpace,
    /// Admission control: the account the message would go through has `max_backlog` queued.
    #[error("Queue full for account {0}: its backlog is at its cap, try again later")]
    AccountBacklogFull(String),
    #[error("Service shutting down, try again later")]
    ShuttingDown,
    #[error("Too many errors, closing connection")]
    TooManyErrors,
    #[error("Timeout, closing connection")]
    Timeout,
    #[error("Too many connections, try again later")]
    TooManyConnections,
    #[error("Too many connections from your address, try again later")]
    TooManyConnectionsFromClient,
    /// A `proxy_protocol` listener takes connections from its load balancers only.
    #[error("Connect through the load balancer")]
    NotFromProxy,
    /// A `proxy_protocol` connection that did not start with a valid header.
    #[error("Bad PROXY protocol header")]
    BadProxyHeader,
}

impl SmtpError {
    /// A stable name for the refusal: the `reason` label of `smtprelay_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SmtpError::UnknownCommand => "unknown_command",
            SmtpError::LineTooLong => "line_too_long",
            SmtpError::NotImplemented(_) => "not_implemented",
            SmtpError::Syntax(_) => "syntax",
            SmtpError::BadSenderSyntax(_) => "bad_sender_syntax",
            SmtpError::BadRecipientSyntax(_) => "bad_recipient_syntax",
            SmtpError::NonAsciiAddress => "non_ascii_address",
            SmtpError::UnsupportedParameter(_) => "unsupported_parameter",
            SmtpError::BadSequence(_) => "bad_sequence",
            SmtpError::TlsRequired => "tls_required",
            SmtpError::TlsUnavailable => "tls_unavailable",
            SmtpError::AuthRequired => "auth_required",
            SmtpError::AuthUnavailable => "auth_unavailable",
            SmtpError::AlreadyAuthenticated => "already_authenticated",
            SmtpError::UnsupportedMechanism(_) => "unsupported_mechanism",
            SmtpError::AuthCancelled => "auth_cancelled",
            SmtpError::AuthMalformed => "auth_malformed",
            SmtpError::AuthFailed => "auth_failed",
            SmtpError::AuthLockedOut => "auth_locked_out",
            SmtpError::AuthTemporaryFailure => "auth_temporary_failure",
            SmtpError::RelayDenied => "relay_denied",
            SmtpError::SenderNotAllowed(_) => "sender_not_allowed",
            SmtpError::RecipientNotAllowed(_) => "recipient_not_allowed",
            SmtpError::NoValidRecipients => "no_valid_recipients",
            SmtpError::TooManyRecipients { .. } => "too_many_recipients",
            SmtpError::MessageTooLarge => "message_too_large",
            SmtpError::RateLimited => "rate_limited",
            SmtpError::BareNewline => "bare_newline",
            SmtpError::StorageFailed => "storage_failed",
            SmtpError::InsufficientStorage => "insufficient_storage",
            SmtpError::QueueFull => "queue_full",
            SmtpError::LowFreeSpace => "low_free_space",
            SmtpError::AccountBacklogFull(_) => "account_backlog",
            SmtpError::ShuttingDown => "shutting_down",
            SmtpError::TooManyErrors => "too_many_errors",
            SmtpError::Timeout => "timeout",
            SmtpError::TooManyConnections => "too_many_connections",
            SmtpError::TooManyConnectionsFromClient => "too_many_connections_from_client",
            SmtpError::NotFromProxy => "not_from_proxy",
            SmtpError::BadProxyHeader => "bad_proxy_header",
        }
    }

    /// The refusal for a message the spool could not take: a full disk or quota is the
    /// `452 4.3.1` that clients and monitoring recognise; anything else a local error.
    pub fn from_storage(error: &std::io::Error) -> SmtpError {
        match error.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                SmtpError::InsufficientStorage
            }
            _ => SmtpError::StorageFailed,
        }
    }

    /// The refusal for a message when an admission limit is reached.
    pub fn from_limit(limit: &crate::queue::admission::Limit) -> SmtpError {
        use crate::queue::admission::Limit;
        match limit {
            Limit::QueueFull { .. } => SmtpError::QueueFull,
            Limit::LowFreeSpace { .. } => SmtpError::LowFreeSpace,
            Limit::AccountBacklog { account, .. } => SmtpError::AccountBacklogFull(account.clone()),
        }
    }

    /// Whether the refusal counts towards `max_errors`: a client that is lost or probing gets
    /// no unlimited tries, but one that sends more recipients than we take is doing nothing
    /// wrong (RFC 5321 4.5.3.1.10) until it overshoots by a lot.
    pub fn counts_as_error(&self) -> bool {
        !matches!(
            self,
            SmtpError::TooManyRecipients {
                beyond_overshoot: false
            }
        )
    }
}
