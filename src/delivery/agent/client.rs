//! The outbound SMTP client: one connection to the upstream (Exchange Online), STARTTLS or
//! implicit TLS with certificate verification, EHLO, AUTH XOAUTH2, and a timeout on every
//! exchange. A bearer token is never sent before TLS is up.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::delivery::meaning::Explain;
use crate::oauth::Secret;
use crate::queue::UpstreamReply;

/// How long QUIT waits for its reply, whatever `command_timeout` says.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reply accepted from the upstream, so a broken server cannot exhaust memory.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {host}:{port}: {error}")]
    Connect {
        host: String,
        port: u16,
        error: io::Error,
    },
    #[error("timed out waiting for the upstream ({0})")]
    Timeout(&'static str),
    #[error("connection to the upstream failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS with the upstream failed: {0}")]
    Tls(String),
    #[error("the upstream does not offer STARTTLS; refusing to send credentials in plaintext")]
    NoStartTls,
    #[error("the upstream does not offer AUTH XOAUTH2 (it offers: {0})")]
    NoXoauth2(String),
    #[error("the upstream sent a malformed reply: {0:?}")]
    Malformed(String),
    #[error("upstream replied {0}")]
    Rejected(UpstreamReply),
}

impl ClientError {
    /// The upstream's reply, when it refused something.
    pub fn reply(&self) -> Option<&UpstreamReply> {
        match self {
            ClientError::Rejected(reply) => Some(reply),
            _ => None,
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

impl Io {
    fn stream(&mut self) -> Result<&mut (dyn Stream + '_), ClientError> {
        match self {
            Io::Plain(tcp) => Ok(tcp),
            Io::Tls(tls) => Ok(tls.as_mut()),
            Io::Closed => Err(ClientError::Io(io::ErrorKind::NotConnected.into())),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct UpstreamConnection {
    io: Io,
    buffer: Vec<u8>,
    timeout: Duration,
    /// EHLO keywords (upper case) with their parameters.
    extensions: Vec<String>,
    pub greeting: UpstreamReply,
}

impl UpstreamConnection {
    /// Connects, reads the greeting, says EHLO and brings TLS up (STARTTLS or implicit).
    pub async fn connect(
        upstream: &UpstreamConfig,
        tls: Arc<ClientConfig>,
        helo_name: &str,
    ) -> Result<UpstreamConnection, ClientError> {
        let address = (upstream.host.as_str(), upstream.port);
        let tcp = tokio::time::timeout(upstream.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(|error| ClientError::Connect {
                host: upstream.host.clone(),
                port: upstream.port,
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(upstream.host.clone())
            .map_err(|e| ClientError::Tls(format!("{}: {e}", upstream.host)))?;
        let connector = TlsConnector::from(tls);
        let timeout = upstream.command_timeout;
        let io = match upstream.tls {
            UpstreamTls::Implicit => {
                let tls =
                    tokio::time::timeout(timeout, connector.connect(server_name.clone(), tcp))
                        .await
                        .map_err(|_| ClientError::Timeout("TLS handshake"))?
                        .map_err(|e| ClientError::Tls(tls_error(&e)))?;
                Io::Tls(Box::new(tls))
            }
            UpstreamTls::StartTls => Io::Plain(tcp),
        };
        let mut connection = UpstreamConnection {
            io,
            buffer: Vec::new(),
            timeout,
            extensions: Vec::new(),
            greeting: UpstreamReply::default(),
        };
        connection.greeting = connection.read_reply().await?;
        if connection.greeting.code != 220 {
            return Err(ClientError::Rejected(connection.greeting.clone()));
        }
        connection.ehlo(helo_name).await?;
        if upstream.tls == UpstreamTls::StartTls {
            if !connection.has_extension("STARTTLS") {
                return Err(ClientError::NoStartTls);
            }
            connection.command("STARTTLS", 220).await?;
            let Io::Plain(tcp) = std::mem::replace(&mut connection.io, Io::Closed) else {
                unreachable!("STARTTLS is only sent on a plaintext connection");
            };
            // Anything the server pipelined before the handshake must not be trusted.
            connection.buffer.clear();
            let tls = tokio::time::timeout(timeout, connector.connect(server_name, tcp))
                .await
                .map_err(|_| ClientError::Timeout("TLS handshake"))?
                .map_err(|e| ClientError::Tls(tls_error(&e)))?;
            connection.io = Io::Tls(Box::new(tls));
            connection.ehlo(helo_name).await?;
        }
        Ok(connection)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    /// The TLS version in use, as Postfix logs it ("TLSv1.3"); "none" for plain text.
    pub fn tls_version(&self) -> &'static str {
        let Io::Tls(tls) = &self.io else {
            return "none";
        };
        match tls.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        }
    }

    pub fn has_extension(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split(' ').next() == Some(keyword))
    }

    /// The AUTH mechanisms the server offers.
    pub fn auth_mechanisms(&self) -> BTreeSet<String> {
        self.extensions
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH "))
            .flat_map(|m| m.split(' ').map(str::to_owned))
            .collect()
    }

    async fn ehlo(&mut self, helo_name: &str) -> Result<(), ClientError> {
        let reply = self.command(&format!("EHLO {helo_name}"), 250).await?;
        self.extensions = reply
            .lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect();
        Ok(())
    }

    /// AUTH XOAUTH2 with `user=mailbox`. A `334` challenge (Google's JSON error) is answered
    /// with an empty line, as the protocol asks, to get the final reply.
    pub async fn auth_xoauth2(&mut self, mailbox: &str, token: &Secret) -> Result<(), ClientError> {
        if !self.is_tls() {
            return Err(ClientError::NoStartTls);
        }
        if !self.auth_mechanisms().contains("XOAUTH2") {
            let offered = self
                .auth_mechanisms()
                .into_iter()
                .collect::<Vec<_>>()
                .join(" ");
            return Err(ClientError::NoXoauth2(if offered.is_empty() {
                "no AUTH at all".into()
            } else {
                offered
            }));
        }
        let initial = STANDARD.encode(format!(
            "user={mailbox}\x01auth=Bearer {}\x01\x01",
            token.expose()
        ));
        self.send(&format!("AUTH XOAUTH2 {initial}")).await?;
        let mut reply = self.read_reply().await?;
        if reply.code == 334 {
            let detail = STANDARD
                .decode(reply.text().trim())
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default();
            tracing::info!(target: "tokens", %detail, "XOAUTH2 challenge from the upstream");
            self.send("").await?;
            reply = self.read_reply().await?;
            if !detail.is_empty() {
                reply.lines.push(detail);
            }
        }
        match reply.code {
            235 => Ok(()),
            _ => Err(ClientError::Rejected(reply)),
        }
    }

    /// Sends a command and expects `code`.
    pub async fn command(&mut self, line: &str, code: u16) -> Result<UpstreamReply, ClientError> {
        self.send(line).await?;
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(ClientError::Rejected(reply))
        }
    }

    pub async fn send(&mut self, line: &str) -> Result<(), ClientError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_all(&bytes).await
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let timeout = self.timeout;
        let stream = self.io.stream()?;
        tokio::time::timeout(timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<UpstreamReply, ClientError> {
        let mut reply = UpstreamReply::default();
        loop {
            let line = self.read_line().await?;
            let malformed = || ClientError::Malformed(line.clone());
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(malformed)?;
            let separator = line.as_bytes().get(3).copied().unwrap_or(b' ');
            if reply.lines.is_empty() {
                reply.code = code;
            } else if code != reply.code {
                return Err(malformed());
            }
            reply.lines.push(line.get(4..).unwrap_or("").to_owned());
            match separator {
                b' ' => break,
                b'-' => continue,
                _ => return Err(malformed()),
            }
        }
        reply.parse_enhanced();
        Ok(reply)
    }

    async fn read_line(&mut self) -> Result<String, ClientError> {
        let timeout = self.timeout;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > MAX_REPLY {
                return Err(ClientError::Malformed("reply too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let stream = self.io.stream()?;
            let n = tokio::time::timeout(timeout, stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout("reply"))??;
            if n == 0 {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// QUIT, best effort.
    pub async fn quit(mut self) {
        // QUIT is a courtesy; a silent server must not hold up shutdown for a full
        // command timeout.
        self.timeout = self.timeout.min(QUIT_TIMEOUT);
        if self.send("QUIT").await.is_ok() {
            let _ = self.read_reply().await;
        }
        if let Ok(stream) = self.io.stream() {
            let _ = stream.shutdown().await;
        }
    }
}

fn tls_error(error: &io::Error) -> String {
    match error.get_ref() {
        Some(inner) => inner.to_string(),
        None => error.to_string(),
    }
}

/// A client error in words an admin can act on: the diagnosis of the upstream's reply first.
pub fn explain_client_error(error: &ClientError) -> String {
    match error.reply().and_then(|r| r.diagnosis().map(|d| (r, d))) {
        Some((reply, diagnosis)) => format!("{diagnosis} (upstream said: {reply})"),
        None => error.to_string(),
    }
}
