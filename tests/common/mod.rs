//! Test harness: an in-process relay on 127.0.0.1:0 with its own spool, a raw SMTP client
//! that can switch to TLS, and an rcgen certificate authority.
#![allow(dead_code)]

pub mod entra;
pub mod exchange;
pub mod graph;
pub mod installed;
pub mod oidc;
pub mod redis;
pub mod tokens;
pub mod webdriver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use smtprelay::config::Config;
use smtprelay::queue::{MessageFile, Spool};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A certificate authority and a server certificate for `localhost` / 127.0.0.1, as PEM files.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        TestPki::with_leaf_key(rcgen::KeyPair::generate().unwrap())
    }

    /// A server certificate with an RSA key: what old devices, which speak RSA key exchange
    /// or ECDHE with RSA signatures only, need.
    pub fn new_rsa() -> TestPki {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = openssl::pkey::PKey::from_rsa(rsa)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        let key = rcgen::KeyPair::from_pem_and_sign_algo(
            std::str::from_utf8(&pem).unwrap(),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        TestPki::with_leaf_key(key)
    }

    fn with_leaf_key(leaf_key: rcgen::KeyPair) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smtprelay test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            dir,
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// The CA certificate as a PEM file, for clients outside this process.
    pub fn ca_path(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    pub fn tls_table(&self) -> String {
        format!(
            "[tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
            self.cert_path(),
            self.key_path()
        )
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A relay running in this process, built by the library code `serve` uses.
pub struct TestRelay {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    pub spool: Arc<Spool>,
    pub shutdown: CancellationToken,
    /// With [[account]] tables: the token manager, and delivery runs.
    pub tokens: Option<Arc<smtprelay::oauth::manager::TokenManager>>,
    pub metrics: Arc<smtprelay::metrics::Metrics>,
    pub delivery_status: Arc<smtprelay::delivery::DeliveryStatus>,
    pub config: Arc<Config>,
    admin_address: Option<SocketAddr>,
    generation: Option<smtprelay::relay::Generation>,
    process: smtprelay::relay::Process,
    /// Handed from generation to generation, as `serve` hands them on a reload; closed at
    /// the shutdown, as `serve` closes them, so the ports refuse connections from then on.
    sockets: Arc<std::sync::Mutex<Option<smtprelay::relay::Sockets>>>,
}

/// Adds `line` to the `[table]` of `extra`, or the table with it when `extra` has none.
fn with_table_line(extra: &str, table: &str, line: &str) -> String {
    let header = format!("[{table}]\n");
    if extra.contains(&header) {
        extra.replacen(&header, &format!("{header}{line}\n"), 1)
    } else {
        format!("{extra}\n{header}{line}\n")
    }
}

/// The sections every test config needs; `extra` adds or overrides tables. The admin endpoint
/// listens on a port of its own, and the token store's key is `token.key` beside the state
/// directory (written by [`TestRelay::start_with`]).
pub fn config_text(state_dir: &Path, listen: &str, extra: &str) -> String {
    let key_file = state_dir.parent().unwrap().join("token.key");
    let extra = with_table_line(extra, "admin", "listen = \"127.0.0.1:0\"");
    let extra = with_table_line(&extra, "tokens", &format!("key_file = {key_file:?}"));
    // The floor between token requests at its least: tests whose upstream refuses tokens
    // on purpose would otherwise wait its default 15 s for each.
    let extra = with_table_line(&extra, "tokens", "min_request_interval = \"1s\"");
    format!(
        r#"
[server]
hostname = "relay.test"
state_dir = {state_dir:?}
max_message_size = "1MiB"
max_recipients = 5
command_timeout = "10s"
data_timeout = "10s"
{listen}
{extra}
"#
    )
}

pub const PLAIN_LISTENER: &str =
    "[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"none\"\nauth = \"none\"\n";

/// Writes `dir/smtprelay.toml` from `text` (given `dir/state`) and loads it.
fn write_config(dir: &Path, text: impl Fn(&Path) -> String) -> Config {
    let config_path = dir.join("smtprelay.toml");
    std::fs::write(&config_path, text(&dir.join("state"))).unwrap();
    match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

/// `sockets`, kept until `shutdown`.
fn closed_at(
    shutdown: CancellationToken,
    sockets: smtprelay::relay::Sockets,
) -> Arc<std::sync::Mutex<Option<smtprelay::relay::Sockets>>> {
    let kept = Arc::new(std::sync::Mutex::new(Some(sockets)));
    let closing = Arc::clone(&kept);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        closing.lock().unwrap().take();
    });
    kept
}

impl TestRelay {
    /// Starts a relay from a full config text (with `{state_dir}` replaced).
    pub async fn start_with(text: impl Fn(&Path) -> String) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.key"), token_key_hex()).unwrap();
        let config = write_config(dir.path(), text);
        let process = smtprelay::relay::Process::open(&config).await.unwrap();
        let mut sockets = smtprelay::relay::Sockets::default();
        let prepared = smtprelay::relay::prepare(&process, Arc::new(config), &mut sockets)
            .await
            .unwrap();
        let generation = prepared.start(&process).await;
        let shutdown = process.shutdown.clone();
        TestRelay {
            dir,
            addrs: generation.smtp_addresses.clone(),
            spool: Arc::clone(&process.spool),
            shutdown: process.shutdown.clone(),
            tokens: generation.tokens.clone(),
            metrics: Arc::clone(&process.metrics),
            delivery_status: Arc::clone(&process.delivery_status),
            config: Arc::clone(&generation.config),
            admin_address: generation.admin_address,
            generation: Some(generation),
            process,
            sockets: closed_at(shutdown, sockets),
        }
    }

    /// Reloads from a new config text (with `{state_dir}` replaced), as SIGHUP does in
    /// `serve`: the next generation is prepared on the same sockets, then the running one
    /// retires.
    pub async fn reload_with(&mut self, text: impl Fn(&Path) -> String) {
        let config = write_config(self.dir.path(), text);
        let mut sockets = self
            .sockets
            .lock()
            .unwrap()
            .take()
            .expect("reloaded before the shutdown");
        let prepared = smtprelay::relay::prepare(&self.process, Arc::new(config), &mut sockets)
            .await
            .unwrap();
        *self.sockets.lock().unwrap() = Some(sockets);
        if let Some(old) = self.generation.take() {
            drop(old.retire().await);
        }
        let generation = prepared.start(&self.process).await;
        self.addrs = generation.smtp_addresses.clone();
        self.tokens = generation.tokens.clone();
        self.config = Arc::clone(&generation.config);
        self.admin_address = generation.admin_address;
        self.generation = Some(generation);
    }

    /// A relay with one plaintext listener, trusted loopback, and `extra` config.
    pub async fn start(extra: &str) -> TestRelay {
        let extra = extra.to_owned();
        TestRelay::start_with(move |state| config_text(state, PLAIN_LISTENER, &extra)).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr()).await
    }

    /// Sends one message in a session of its own; returns its queue ID.
    pub async fn send(&self, from: &str, to: &[&str], data: &[u8]) -> String {
        let mut client = self.connect().await;
        client.expect("EHLO app", 250).await;
        let (code, text) = client.send_message(from, to, data).await;
        assert_eq!(code, 250, "{text}");
        client.expect("QUIT", 221).await;
        text.rsplit(' ').next().unwrap().to_owned()
    }

    /// The queued messages with their content, oldest first.
    pub fn queued(&self) -> Vec<(MessageFile, Vec<u8>)> {
        self.spool
            .messages()
            .into_iter()
            .map(|file| {
                let path = self.spool.paths().message(file.envelope.id);
                let content = file.read_content(&path).unwrap();
                (file, content)
            })
            .collect()
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(generation) = self.generation.take() {
            tokio::time::timeout(TIMEOUT, generation.finish(&self.process))
                .await
                .unwrap();
        }
    }

    /// Waits until the queue is empty (everything delivered or bounced).
    pub async fn drained(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !self.spool.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue not drained: {} left",
                self.spool.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Strips the Received header the relay adds, leaving the bytes the client sent.
pub fn without_received(content: &[u8]) -> &[u8] {
    assert!(
        content.starts_with(b"Received: "),
        "no Received header first"
    );
    let mut i = 0;
    loop {
        let end = i + content[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        // Header continuation lines start with white space.
        if !matches!(content.get(end), Some(b' ' | b'\t')) {
            return &content[end..];
        }
        i = end;
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum ClientStream {
    Plain(TcpStream),
    Tls(Box<dyn Io>),
}

/// A raw SMTP client: sends exactly the bytes a test gives it.
pub struct Client {
    stream: Option<ClientStream>,
    buffer: Vec<u8>,
    pub greeting: (u16, String),
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Connects to `addr` from `from` (any loopback address: 127.0.0.2 is a different client).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        Client::over(socket.connect(addr).await.unwrap()).await
    }

    /// A client on a connection already made; reads the greeting.
    pub async fn over(tcp: TcpStream) -> Client {
        let mut client = Client {
            stream: Some(ClientStream::Plain(tcp)),
            buffer: Vec::new(),
            greeting: (0, String::new()),
        };
        client.greeting = client.reply().await;
        client
    }

    /// Connects with implicit TLS.
    pub async fn connect_tls(addr: SocketAddr, pki: &TestPki) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = pki.connector().connect(name, tcp).await.unwrap();
        let mut client = Client {
            stream: Some(ClientStream::Tls(Box::new(tls))),
            buffer: Vec::new(),
            greeting: (0, String::new()),
        };
        client.greeting = client.reply().await;
        client
    }

    fn io(&mut self) -> &mut (dyn Io + '_) {
        match self.stream.as_mut().unwrap() {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.as_mut(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io().write_all(bytes).await.unwrap();
    }

    /// Like `send_raw`, for a test that expects the server may have closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io().write_all(bytes).await
    }

    /// Whether the server has said something (or closed) that no reply has read yet; waits
    /// a moment for it.
    pub async fn has_input(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return true;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(10), self.io().read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }

    pub async fn send(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await;
    }

    /// Reads one reply (all its lines); returns the code and the text lines joined by '\n'.
    pub async fn reply(&mut self) -> (u16, String) {
        tokio::time::timeout(TIMEOUT, self.read_reply())
            .await
            .expect("timed out waiting for a reply")
    }

    async fn read_reply(&mut self) -> (u16, String) {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await;
            assert!(line.len() >= 4, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].to_string());
            if last {
                return (code, lines.join("\n"));
            }
        }
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return String::from_utf8(line[..end].to_vec()).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.io().read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(line).await;
        self.reply().await
    }

    /// Sends a command and asserts the reply code; returns the text.
    pub async fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.cmd(line).await;
        assert_eq!(got, code, "{line:?} got {got} {text}");
        text
    }

    /// True when the server closes the connection (after any replies still buffered).
    pub async fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(TIMEOUT, self.io().read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }

    pub async fn starttls(&mut self, pki: &TestPki) {
        self.expect("STARTTLS", 220).await;
        self.upgrade(pki).await;
    }

    /// The TLS handshake after a 220 to STARTTLS.
    pub async fn upgrade(&mut self, pki: &TestPki) {
        let Some(ClientStream::Plain(tcp)) = self.stream.take() else {
            panic!("already TLS");
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = pki.connector().connect(name, tcp).await.unwrap();
        self.stream = Some(ClientStream::Tls(Box::new(tls)));
    }

    /// MAIL, RCPTs and DATA with `raw_data`: the exact bytes between 354 and the final dot,
    /// ending in CRLF. Returns the final reply.
    pub async fn send_message(
        &mut self,
        from: &str,
        to: &[&str],
        raw_data: &[u8],
    ) -> (u16, String) {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        self.send_raw(raw_data).await;
        self.send_raw(b".\r\n").await;
        self.reply().await
    }
}

/// Logs to the test's output with `RUST_LOG` set (off otherwise), for debugging a test.
pub fn trace() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Starts the `smtprelay serve` binary with `config` (whose `[log]` must say
/// `format = "json"`) and returns it with the address its first listener got.
pub fn start_binary(config: &Path, env: &[(&str, &str)]) -> (std::process::Child, SocketAddr) {
    let (child, address, _logs) = start_binary_with_logs(config, env);
    (child, address)
}

/// Like [`start_binary`], and the log lines that follow the first "listening" one.
pub fn start_binary_with_logs(
    config: &Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let (child, address, _admin, logs) = start_binary_with_admin(config, env);
    (child, address, logs)
}

/// Like [`start_binary_with_logs`], and the admin endpoint's address when it listens (its
/// configuration says port 0, like every listener in the tests: the log line tells the port).
pub fn start_binary_with_admin(
    config: &Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    SocketAddr,
    Option<SocketAddr>,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    use std::io::BufRead;
    occupy_default_admin_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The JSON log line {"message":"listening","address":"127.0.0.1:NNNN",…} gives the port.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut admin = None;
    let address = loop {
        let line = lines
            .next()
            .expect("relay exited before listening")
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the relay wrote a line that is not JSON: {line}"));
        if event["message"] == "admin HTTP listening" {
            admin = event["address"].as_str().and_then(|a| a.parse().ok());
        }
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the relay never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                let _ = tx.send(event);
            }
        }
    });
    (child, address, admin, rx)
}

/// An HTTP server on 127.0.0.1 that answers every request with `status` (e.g. "502 Bad
/// Gateway") and `body` as an HTML page, as a proxy or a broken gateway does.
pub async fn http_answering(status: &'static str, body: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let _ = stream.read(&mut request).await;
                let page = format!("<html><body>{body}</body></html>");
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

/// CI machines may run another relay on the default admin address, 127.0.0.1:8025: the port
/// is kept taken for every binary a test starts (by this process, or by whoever has it), so a
/// test configuration that forgets `[admin] listen` fails here as it would there.
pub fn occupy_default_admin_port() {
    static HELD: std::sync::OnceLock<Option<std::net::TcpListener>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:8025").ok());
}

/// Waits for a log event whose message is `message`; returns it.
pub fn wait_for_log(
    logs: &std::sync::mpsc::Receiver<serde_json::Value>,
    message: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if event["message"] == message {
            return event;
        }
    }
}

impl TestRelay {
    /// Serves the admin HTTP endpoint for this relay on 127.0.0.1:0; returns its base URL.
    /// The admin endpoint's URL.
    pub async fn admin(&self) -> String {
        format!("http://{}", self.admin_address.unwrap())
    }

    /// Makes every console session look unused for `by` more (its timeout, without waiting).
    pub fn age_console_sessions(&self, by: Duration) {
        self.process.console_sessions.age(by);
    }
}

/// The page's DOM after its scripts ran, as headless Chromium sees it.
pub fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium is installed (.ci/run installs it)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// GET `url`; returns the status and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// How many messages wait in the spool of the relay whose `state_dir` this is.
pub fn queued_messages(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir.join("spool/queue"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "msg")
        })
        .count()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh token store key as `SMTPRELAY_TOKEN_KEY` takes it (hex).
pub fn token_key_hex() -> String {
    let key = smtprelay::oauth::TokenKey::generate();
    key.bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a webhook received: its JSON bodies, in order.
pub type Hooked = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on 127.0.0.1:0; returns its URL and what it receives.
pub async fn webhook() -> (String, Hooked) {
    let received: Hooked = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// Log output captured in memory: installs the global subscriber (text, no colours) at
/// `filter`, so a test binary that uses it must not install another.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// The first call in a test binary installs it with `filter`; later ones share it.
    pub fn install(filter: &str) -> CapturedLogs {
        static INSTALLED: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let captured = CapturedLogs::default();
                let writer = captured.clone();
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .init();
                captured
            })
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A tmpfs of `size` (`"8m"`) mounted at `at` (created) for as long as it is kept, or `None`
/// where this process may not mount one (it takes root, as CI runs; CI must be able to). The
/// caller's test then says it did not run.
pub fn mount_tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs"
        );
        eprintln!("\n*** NOT RUN: mounting a tmpfs needs root ***\n");
        return None;
    }
    Some(Mounted(at.to_owned()))
}

/// Unmounts a test's tmpfs however the test ends.
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
