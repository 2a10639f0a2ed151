//! One inbound SMTP connection: reads command lines, dispatches them to the verb handlers
//! (`verbs.rs`, `auth.rs`, `data.rs`), and writes replies.
//!
//! Replies are buffered and flushed only when no further complete command is waiting, which
//! is what PIPELINING (RFC 2920) asks for. Every read has a timeout; a shutdown interrupts a
//! session only between commands, never inside DATA.

mod auth;
mod data;
mod verbs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{self, Command, MailParams};
use super::error::SmtpError;
use super::line::{InputBuffer, Line};
use super::policy::Policy;
use super::reply::Reply;
use super::tls::{Acceptors, HandshakeError, Negotiated, Stream};
use crate::config::{Config, ListenConfig, TlsProfile};
use crate::delivery::account_for_sender;
use crate::queue::Spool;
use crate::queue::admission::Admission;

/// Longest command line accepted. RFC 5321 asks for at least 512; AUTH responses and
/// extension parameters need more.
const MAX_COMMAND_LINE: usize = 4096;
/// Read sizes: small between commands, so idle sessions stay cheap; larger inside DATA.
const COMMAND_READ: usize = 4 * 1024;
const DATA_READ: usize = 32 * 1024;

/// What every session shares: configuration, policy, the spool and the shutdown signal.
pub struct Intake {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub spool: Arc<Spool>,
    pub tls: Option<Acceptors>,
    pub shutdown: CancellationToken,
    /// Cancelled when this intake's listeners stop accepting: at shutdown, or when a reload
    /// hands them to a new intake (its sessions then finish with these settings).
    pub accepting: CancellationToken,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The process's open sessions, which new ones are admitted against.
    pub sessions: Arc<crate::smtp::sessions::Sessions>,
    /// What delivery counts: each account's backlog, which admission control reads.
    pub delivery: Arc<crate::delivery::DeliveryStatus>,
}

impl Intake {
    /// Whether a message from `sender` whose first recipient is `first_recipient` may be
    /// taken now: the queue's limits, then those of the account it would go through.
    fn admit(&self, sender: &str, first_recipient: &str) -> Result<(), SmtpError> {
        let admission = Admission::new(&self.config, &self.spool, &*self.delivery);
        let accounts = &self.config.accounts;
        let account = account_for_sender(accounts, sender, Some(first_recipient));
        admission
            .check_queue()
            .and_then(|()| admission.check_account(account))
            .map_err(|limit| SmtpError::from_limit(&limit))
    }
}

/// Why a session ended early; each maps to a last reply (or none when the client is gone).
#[derive(Debug)]
enum End {
    ClientGone,
    Io(std::io::Error),
    Reply(SmtpError),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Helo {
    name: String,
    extended: bool,
}

struct Transaction {
    sender: String,
    params: MailParams,
    recipients: Vec<String>,
    /// RCPTs refused for being over `max_recipients`.
    overshoot: usize,
}

pub struct Session<IO> {
    intake: Arc<Intake>,
    listener: Arc<ListenConfig>,
    /// The listener's bound address (the port resolved), which the TLS counts are kept by.
    local: SocketAddr,
    peer: SocketAddr,
    stream: Stream<IO>,
    /// What the TLS handshake agreed on, once there was one.
    tls: Option<Negotiated>,
    input: InputBuffer,
    output: Vec<u8>,
    helo: Option<Helo>,
    user: Option<String>,
    trusted: bool,
    transaction: Option<Transaction>,
    errors: u32,
    /// The recipient of the RCPT being refused (for the refusal's log line).
    refused_recipient: Option<String>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub fn new(
        intake: Arc<Intake>,
        listener: Arc<ListenConfig>,
        local: SocketAddr,
        peer: SocketAddr,
        stream: Stream<IO>,
    ) -> Self {
        let trusted = intake.policy.is_trusted(peer.ip());
        let mut session = Session {
            intake,
            listener,
            local,
            peer,
            stream,
            tls: None,
            input: InputBuffer::new(MAX_COMMAND_LINE),
            output: Vec::with_capacity(512),
            helo: None,
            user: None,
            trusted,
            transaction: None,
            errors: 0,
            refused_recipient: None,
        };
        // Implicit TLS: the listener made the handshake before the session began.
        if let Stream::Tls(tls) = &session.stream {
            session.tls = Some(session.tls_established(tls.negotiated(), None));
        }
        session
    }

    /// Counts a completed handshake (and the client, when its TLS is outdated).
    fn tls_established(&self, negotiated: Negotiated, helo: Option<&str>) -> Negotiated {
        self.intake.metrics.tls.established(
            self.local,
            self.peer.ip().to_canonical(),
            helo,
            &negotiated,
            crate::clock::unix_secs(),
        );
        negotiated
    }

    /// Whether this session runs on TLS older than 1.2.
    fn on_outdated_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.version.is_outdated())
    }

    /// Runs the session to its end. Errors are logged, never propagated: one bad client
    /// must not affect the others.
    pub async fn run(mut self) {
        let end = self.serve().await;
        match end {
            Ok(()) | Err(End::ClientGone) => {}
            Err(End::Io(e)) => tracing::debug!(peer = %self.peer, error = %e, "session I/O error"),
            Err(End::Reply(error)) => {
                // A shutdown is not the client's doing; timeouts and error limits are.
                if error != SmtpError::ShuttingDown {
                    self.log_refusal(&error, None);
                }
                self.push(Reply::from(&error));
            }
        }
        // Best effort: the client may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.flush().await.is_ok() {
                let _ = self.stream.shutdown().await;
            }
        })
        .await;
    }

    async fn serve(&mut self) -> Result<(), End> {
        let greeting = format!("{} ESMTP smtprelay", self.config().server.hostname);
        self.push(Reply::new(220, "", greeting));
        loop {
            let flow = match self.next_line(true).await? {
                Line::TooLong => self.refuse(SmtpError::LineTooLong)?,
                Line::Complete(bytes) => match command::parse(&bytes) {
                    Ok(command) => self.handle(command).await?,
                    Err(error) => self.refuse(error)?,
                },
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, command: Command) -> Result<Flow, End> {
        let result = match command {
            Command::Ehlo(name) => Ok(self.ehlo(name, true)),
            Command::Helo(name) => Ok(self.ehlo(name, false)),
            Command::Mail { sender, params } => self.mail(sender, params),
            Command::Rcpt { recipient } => self.rcpt(recipient),
            Command::Data => return self.data().await,
            Command::Rset => {
                self.transaction = None;
                Ok(Reply::ok("Ok"))
            }
            Command::Noop => Ok(Reply::ok("Ok")),
            Command::Vrfy => Ok(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => Ok(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            Command::Quit => {
                let text = format!("{} closing connection", self.config().server.hostname);
                self.push(Reply::new(221, "2.0.0", text));
                return Ok(Flow::Close);
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
        };
        match result {
            Ok(reply) => {
                self.push(reply);
                Ok(Flow::Continue)
            }
            Err(error) => self.refuse(error),
        }
    }

    /// One line per refused command, as Postfix writes (peer, user, sender, recipient and
    /// the reply), and the count by reason. A failed AUTH has its own line, with the user
    /// name tried; recipients over the limit are not worth a line each.
    fn log_refusal(&self, error: &SmtpError, recipient: Option<&str>) {
        self.intake.metrics.refused(error.reason());
        if matches!(
            error,
            SmtpError::AuthFailed | SmtpError::TooManyRecipients { .. }
        ) {
            return;
        }
        let reply = Reply::from(error);
        let sender = self.transaction.as_ref().map(|t| t.sender.as_str());
        tracing::info!(
            peer = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            from = %crate::logging::Untrusted(sender.unwrap_or("")),
            to = %crate::logging::Untrusted(recipient.unwrap_or("")),
            reply = %reply.first_line(),
            reason = error.reason(),
            "refused"
        );
    }

    fn config(&self) -> &Config {
        &self.intake.config
    }

    fn push(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    /// Sends an error reply and counts it; too many end the session (a client that is lost
    /// or probing gets no unlimited tries).
    fn refuse(&mut self, error: SmtpError) -> Result<Flow, End> {
        let recipient = self.refused_recipient.take();
        self.log_refusal(&error, recipient.as_deref());
        self.push(Reply::from(&error));
        if !error.counts_as_error() {
            return Ok(Flow::Continue);
        }
        self.errors += 1;
        if self.errors >= self.config().server.max_errors {
            return Err(End::Reply(SmtpError::TooManyErrors));
        }
        Ok(Flow::Continue)
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.output.is_empty() {
            return Ok(());
        }
        let timeout = self.config().server.command_timeout;
        match tokio::time::timeout(timeout, self.stream.write_all(&self.output)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(End::Io(e)),
            Err(_) => return Err(End::ClientGone),
        }
        self.output.clear();
        self.stream.flush().await?;
        Ok(())
    }

    /// The next command line, flushing replies first when none is buffered.
    /// The next command line. The whole line must arrive within `command_timeout` of when
    /// the relay starts waiting for it: a client that sends a byte now and then cannot hold
    /// its connection slot for longer.
    async fn next_line(&mut self, interruptible: bool) -> Result<Line, End> {
        let deadline = Instant::now() + self.config().server.command_timeout;
        loop {
            if let Some(line) = self.input.next_line() {
                return Ok(line);
            }
            self.flush().await?;
            self.read_more(deadline, interruptible, COMMAND_READ)
                .await?;
        }
    }

    /// Reads more input, until `deadline` at the latest. With `interruptible`, a shutdown ends
    /// the wait with 421.
    async fn read_more(
        &mut self,
        deadline: Instant,
        interruptible: bool,
        chunk: usize,
    ) -> Result<(), End> {
        let shutdown = self.intake.shutdown.clone();
        if interruptible && shutdown.is_cancelled() {
            return Err(End::Reply(SmtpError::ShuttingDown));
        }
        let spare = self.input.spare(chunk);
        let result = tokio::select! {
            read = tokio::time::timeout_at(deadline, self.stream.read(spare)) => match read {
                Ok(Ok(0)) => Err(End::ClientGone),
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(End::Io(e)),
                Err(_) => Err(End::Reply(SmtpError::Timeout)),
            },
            _ = shutdown.cancelled(), if interruptible => Err(End::Reply(SmtpError::ShuttingDown)),
        };
        self.input.filled(chunk, *result.as_ref().unwrap_or(&0));
        result.map(|_| ())
    }

    async fn starttls(&mut self) -> Result<Flow, End> {
        if self.stream.is_tls() {
            return self.refuse(SmtpError::BadSequence("TLS is already active"));
        }
        let acceptors = match (&self.intake.tls, self.listener.tls) {
            (Some(acceptors), crate::config::ListenTls::StartTls) => acceptors.clone(),
            _ => return self.refuse(SmtpError::NotImplemented("STARTTLS")),
        };
        self.push(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.flush().await?;
        // Anything pipelined after STARTTLS was sent in plaintext and must not be trusted
        // as coming through TLS (CVE-2011-0411).
        self.input.clear();
        let Stream::Plain(io) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(End::ClientGone);
        };
        let timeout = self.config().server.command_timeout;
        let handshake = acceptors.accept(self.listener.tls_profile, io);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => {
                let helo = self.helo.as_ref().map(|h| h.name.as_str());
                self.tls = Some(self.tls_established(tls.negotiated(), helo));
                self.stream = Stream::Tls(Box::new(tls));
            }
            Ok(Err(e)) => {
                let (intake, listener) = (&self.intake, &self.listener);
                handshake_failed(intake, listener, self.local, self.peer, &e);
                return Err(End::ClientGone);
            }
            Err(_) => return Err(End::ClientGone),
        }
        // RFC 3207 4.2: forget everything learnt before the handshake.
        self.helo = None;
        self.user = None;
        self.transaction = None;
        Ok(Flow::Continue)
    }
}

/// One line and a count for a handshake that failed; for a client that speaks only what
/// the modern profile refuses, the line says what would let it in.
pub(in crate::smtp) fn handshake_failed(
    intake: &Intake,
    listen: &ListenConfig,
    local: SocketAddr,
    peer: SocketAddr,
    error: &HandshakeError,
) {
    intake.metrics.tls.handshake_failed(local);
    match error {
        HandshakeError::Incompatible(e) if listen.tls_profile == TlsProfile::Modern => {
            tracing::info!(%peer, error = %e,
                "TLS handshake failed: the client speaks only an old TLS version or cipher; an old device may need a listener with tls_profile = \"legacy\"");
        }
        HandshakeError::Incompatible(e) | HandshakeError::Failed(e) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
        }
    }
}
