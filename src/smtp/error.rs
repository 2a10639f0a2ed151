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
    #[error("Unsupported parameter {0}")]
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
    #[error("Unsupported authentication mechanism {0}")]
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
    #[error("Sender address {0} is not allowed")]
    SenderNotAllowed(String),
    #[error("Recipient address {0} is not allowed")]
    RecipientNotAllowed(String),
    #[error("No valid recipients")]
    NoValidRecipients,
    #[error("Too many recipients")]
    TooManyRecipients,
    #[error("Message size exceeds the fixed maximum message size")]
    MessageTooLarge,
    #[error("Too many messages from your address, try again later")]
    RateLimited,
    #[error("Message contains a bare CR or LF; send CRLF line endings")]
    BareNewline,
    #[error("Local error in processing, message not accepted; try again later")]
    StorageFailed,
    #[error("Service shutting down, try again later")]
    ShuttingDown,
    #[error("Too many errors, closing connection")]
    TooManyErrors,
    #[error("Timeout, closing connection")]
    Timeout,
    #[error("Too many connections, try again later")]
    TooManyConnections,
}
