//! A test double of Exchange Online's SMTP submission endpoint: STARTTLS with an rcgen
//! certificate, AUTH XOAUTH2 checked against tokens the Entra double issued (audience, expiry,
//! mailbox rights), Exchange's replies for each failure, and messages recorded as received.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestPki;
use super::entra::Entra;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub mailbox: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Content after dot-unstuffing, as the upstream would store it.
    pub data: Vec<u8>,
}

#[derive(Default)]
pub struct ExchangeState {
    /// Mailboxes app-only tokens may send as (Add-MailboxPermission / SendAs).
    pub app_mailboxes: HashSet<String>,
    /// Mailboxes with SMTP AUTH disabled (Set-CASMailbox -SmtpClientAuthenticationDisabled).
    pub auth_disabled: HashSet<String>,
    pub received: Vec<Received>,
    /// Replies to use instead of the normal one for the next AUTH attempts.
    pub auth_faults: VecDeque<&'static str>,
    pub auth_attempts: usize,
    pub connections: usize,
    /// A fixed reply to RCPT for these addresses (a mailbox that does not exist, say).
    pub rcpt_replies: std::collections::HashMap<String, String>,
    /// One-off replies, consumed in order, for the stage they name.
    pub faults: VecDeque<(Stage, String)>,
    /// While set, every connection gets this greeting instead of 220 (e.g. a 421).
    pub down: Option<String>,
    /// Added before every reply to the final dot.
    pub slow: Option<std::time::Duration>,
    /// When each message was accepted.
    pub accepted_at: Vec<std::time::Instant>,
    /// Close the connection (without a word) after this many messages on it, as servers do.
    pub messages_per_connection: Option<usize>,
    /// Sessions logged in per mailbox now, and the most there ever were at once.
    pub open_sessions: std::collections::HashMap<String, usize>,
    pub peak_sessions: std::collections::HashMap<String, usize>,
}

/// Counts a logged-in session as open until the session ends, however it ends.
struct OpenSession {
    state: Arc<Mutex<ExchangeState>>,
    mailbox: String,
}

impl OpenSession {
    fn open(state: &Arc<Mutex<ExchangeState>>, mailbox: &str) -> OpenSession {
        let mut s = state.lock().unwrap();
        let open = s.open_sessions.entry(mailbox.to_owned()).or_default();
        *open += 1;
        let now = *open;
        let peak = s.peak_sessions.entry(mailbox.to_owned()).or_default();
        *peak = (*peak).max(now);
        OpenSession {
            state: Arc::clone(state),
            mailbox: mailbox.to_owned(),
        }
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock()
            && let Some(open) = s.open_sessions.get_mut(&self.mailbox)
        {
            *open -= 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Mail,
    /// A RCPT after at least one was accepted in the transaction.
    Rcpt,
    Data,
    /// The reply after the final dot; "drop" closes the connection without one.
    Dot,
    /// "silent": no reply to QUIT; the connection stays open until the client closes it.
    Quit,
}

impl ExchangeState {
    fn fault(&mut self, stage: Stage) -> Option<String> {
        let i = self.faults.iter().position(|(s, _)| *s == stage)?;
        self.faults.remove(i).map(|(_, reply)| reply)
    }
}

#[derive(Clone)]
pub struct Exchange {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ExchangeState>>,
    pub pki: Arc<TestPki>,
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Exchange {
    pub async fn start(entra: Entra) -> Exchange {
        let pki = Arc::new(TestPki::new());
        let state = Arc::new(Mutex::new(ExchangeState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = smtprelay::smtp::tls::acceptor(&smtprelay::config::TlsConfig {
            certificate: pki.cert_path(),
            private_key: pki.key_path(),
        })
        .unwrap();
        let server = Exchange {
            addr,
            state: Arc::clone(&state),
            pki,
        };
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                state.lock().unwrap().connections += 1;
                let session = Session {
                    entra: entra.clone(),
                    state: Arc::clone(&state),
                    acceptor: acceptor.clone(),
                };
                tokio::spawn(session.run(socket));
            }
        });
        server
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap()
    }

    /// Writes the CA certificate for `[account.upstream] ca_file`.
    pub fn ca_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("upstream-ca.pem");
        std::fs::write(&path, &self.pki.ca_pem).unwrap();
        path
    }

    /// An `[account.upstream]` table for this server.
    pub fn upstream_table(&self, dir: &std::path::Path) -> String {
        format!(
            "[account.upstream]\nhost = \"localhost\"\nport = {}\nca_file = {:?}\ncommand_timeout = \"10s\"\n",
            self.addr.port(),
            self.ca_file(dir)
        )
    }
}

struct Session {
    entra: Entra,
    state: Arc<Mutex<ExchangeState>>,
    acceptor: tokio_rustls::TlsAcceptor,
}

struct Conn {
    io: Box<dyn Io>,
    buffer: Vec<u8>,
}

impl Conn {
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 8192];
            let n = self.io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn reply(&mut self, text: &str) -> Option<()> {
        // One write per reply: split writes meet Nagle and delayed ACKs (40 ms a round trip).
        let wire = format!("{text}\r\n");
        self.io.write_all(wire.as_bytes()).await.ok()?;
        self.io.flush().await.ok()
    }
}

impl Session {
    async fn run(self, socket: TcpStream) -> Option<()> {
        let _ = socket.set_nodelay(true);
        let mut conn = Conn {
            io: Box::new(socket),
            buffer: Vec::new(),
        };
        let mut tls = false;
        let mut authenticated: Option<String> = None;
        let mut _logged_in: Option<OpenSession> = None;
        let mut sender: Option<String> = None;
        let mut recipients = Vec::new();
        let mut messages = 0;
        let down = self.state.lock().unwrap().down.clone();
        if let Some(greeting) = down {
            conn.reply(&greeting).await?;
            return None;
        }
        conn.reply("220 test.outlook.office365.com Microsoft ESMTP MAIL Service ready")
            .await?;
        loop {
            let line = conn.line().await?;
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_owned();
            match verb.as_str() {
                "EHLO" => {
                    let mut lines = vec![
                        "250-test.outlook.office365.com Hello [127.0.0.1]".to_string(),
                        "250-SIZE 157286400".into(),
                        "250-PIPELINING".into(),
                        "250-DSN".into(),
                        "250-ENHANCEDSTATUSCODES".into(),
                    ];
                    if tls {
                        lines.push("250-AUTH LOGIN XOAUTH2".into());
                    } else {
                        lines.push("250-STARTTLS".into());
                    }
                    lines.extend([
                        "250-8BITMIME".into(),
                        "250-BINARYMIME".into(),
                        "250-CHUNKING".into(),
                        "250 SMTPUTF8".into(),
                    ]);
                    conn.reply(&lines.join("\r\n")).await?;
                }
                "STARTTLS" if !tls => {
                    conn.reply("220 2.0.0 SMTP server ready").await?;
                    let io = std::mem::replace(&mut conn.io, Box::new(tokio::io::duplex(1).0));
                    conn.io = Box::new(self.acceptor.accept(io).await.ok()?);
                    conn.buffer.clear();
                    tls = true;
                    authenticated = None;
                }
                "AUTH" if !tls => {
                    conn.reply("504 5.7.4 Unrecognized authentication type")
                        .await?
                }
                "AUTH" => {
                    let reply = self.auth(&line, &mut authenticated);
                    if let Some(mailbox) = &authenticated {
                        _logged_in = Some(OpenSession::open(&self.state, mailbox));
                    }
                    conn.reply(&reply).await?;
                }
                "MAIL" if authenticated.is_none() => {
                    conn.reply("530 5.7.57 Client not authenticated to send mail. [test]")
                        .await?
                }
                "MAIL" => {
                    let fault = self.state.lock().unwrap().fault(Stage::Mail);
                    if let Some(reply) = fault {
                        conn.reply(&reply).await?;
                        continue;
                    }
                    sender = Some(path(&line));
                    recipients.clear();
                    conn.reply("250 2.1.0 Sender OK").await?;
                }
                "RCPT" if sender.is_none() => conn.reply("503 5.5.2 Need mail command").await?,
                "RCPT" => {
                    let address = path(&line);
                    let fixed = {
                        let mut state = self.state.lock().unwrap();
                        let fixed = state.rcpt_replies.get(&address).cloned();
                        if fixed.is_none() && !recipients.is_empty() {
                            state.fault(Stage::Rcpt)
                        } else {
                            fixed
                        }
                    };
                    if let Some(reply) = fixed {
                        conn.reply(&reply).await?;
                        continue;
                    }
                    recipients.push(address);
                    conn.reply("250 2.1.5 Recipient OK").await?;
                }
                "DATA" if recipients.is_empty() => {
                    conn.reply("503 5.5.2 Need rcpt command").await?
                }
                "DATA" => {
                    let fault = self.state.lock().unwrap().fault(Stage::Data);
                    if let Some(reply) = fault {
                        conn.reply(&reply).await?;
                        continue;
                    }
                    conn.reply("354 Start mail input; end with <CRLF>.<CRLF>")
                        .await?;
                    let mut data = Vec::new();
                    loop {
                        let line = conn.line().await?;
                        if line == "." {
                            break;
                        }
                        let line = line.strip_prefix('.').unwrap_or(&line);
                        data.extend_from_slice(line.as_bytes());
                        data.extend_from_slice(b"\r\n");
                    }
                    let slow = self.state.lock().unwrap().slow;
                    if let Some(delay) = slow {
                        tokio::time::sleep(delay).await;
                    }
                    let fault = self.state.lock().unwrap().fault(Stage::Dot);
                    match fault.as_deref() {
                        Some("drop") => return None,
                        Some(reply) => {
                            conn.reply(reply).await?;
                            sender = None;
                            recipients.clear();
                            continue;
                        }
                        None => {}
                    }
                    {
                        let mut state = self.state.lock().unwrap();
                        state.received.push(Received {
                            mailbox: authenticated.clone().unwrap_or_default(),
                            sender: sender.take().unwrap_or_default(),
                            recipients: std::mem::take(&mut recipients),
                            data,
                        });
                        state.accepted_at.push(std::time::Instant::now());
                    }
                    conn.reply("250 2.6.0 <x@test> [InternalId=1] Queued mail for delivery")
                        .await?;
                    messages += 1;
                    let limit = self.state.lock().unwrap().messages_per_connection;
                    if limit.is_some_and(|limit| messages >= limit) {
                        return None;
                    }
                }
                "RSET" => {
                    sender = None;
                    recipients.clear();
                    conn.reply("250 2.0.0 Resetting").await?;
                }
                "NOOP" => conn.reply("250 2.0.0 OK").await?,
                "QUIT" => {
                    if self.state.lock().unwrap().fault(Stage::Quit).is_some() {
                        while conn.line().await.is_some() {}
                        return None;
                    }
                    conn.reply("221 2.0.0 Service closing transmission channel")
                        .await?;
                    return Some(());
                }
                _ => conn.reply("500 5.3.3 Unrecognized command").await?,
            }
        }
    }

    fn auth(&self, line: &str, authenticated: &mut Option<String>) -> String {
        let mut state = self.state.lock().unwrap();
        state.auth_attempts += 1;
        if let Some(fault) = state.auth_faults.pop_front() {
            return fault.to_string();
        }
        let unsuccessful = "535 5.7.3 Authentication unsuccessful [test]".to_string();
        let mut words = line.split(' ');
        words.next();
        if !words
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("XOAUTH2"))
        {
            return "504 5.7.4 Unrecognized authentication type [test]".into();
        }
        let Some(Ok(decoded)) = words.next().map(|w| STANDARD.decode(w)) else {
            return unsuccessful;
        };
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        // Strictly "user=<mailbox>\x01auth=Bearer <token>\x01\x01".
        let Some(rest) = decoded.strip_prefix("user=") else {
            return unsuccessful;
        };
        let Some((mailbox, rest)) = rest.split_once('\x01') else {
            return unsuccessful;
        };
        let Some(rest) = rest.strip_prefix("auth=Bearer ") else {
            return unsuccessful;
        };
        let Some(token) = rest.strip_suffix("\x01\x01") else {
            return unsuccessful;
        };
        let Some(issued) = self.entra.validate(token) else {
            return unsuccessful;
        };
        let mailbox = mailbox.to_ascii_lowercase();
        let allowed = match &issued.user {
            // Delegated: the token's user must be the mailbox, and the audience Outlook's.
            Some(user) => {
                issued.audience == "https://outlook.office.com"
                    && user.eq_ignore_ascii_case(&mailbox)
            }
            // App-only: the service principal needs rights on the mailbox.
            None => {
                issued.audience == "https://outlook.office365.com"
                    && state.app_mailboxes.contains(&mailbox)
            }
        };
        if !allowed {
            return unsuccessful;
        }
        if state.auth_disabled.contains(&mailbox) {
            return "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. [test]".into();
        }
        *authenticated = Some(mailbox);
        "235 2.7.0 Authentication successful".into()
    }
}

fn path(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end.max(start)].to_owned()
}
