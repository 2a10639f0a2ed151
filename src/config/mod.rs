//! The configuration admins edit: one TOML file, read once at start-up (and on reload).
//!
//! Loading never stops at the first mistake: every unknown key, wrong type, bad value and
//! impossible combination is collected as a [`Problem`] naming file, line and key. Defaults
//! sit next to the code that reads each key.

mod reader;
pub mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use reader::Problem;
pub use reader::{InputFile, InputKind};
use reader::{Section, Source};
use values::{AddressGlob, Rate, parse_duration, parse_network, parse_size};

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
    /// The files the text names for reading, as far as it could be read (`check-config`
    /// checks them in the same pass).
    pub input_files: Vec<InputFile>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The files it names for the relay to read, with where (for `check-config`).
    pub input_files: Vec<InputFile>,
    pub server: ServerConfig,
    pub listen: Vec<ListenConfig>,
    pub tls: Option<TlsConfig>,
    pub access: AccessConfig,
    pub users: Vec<UserConfig>,
    pub accounts: Vec<AccountConfig>,
    pub queue: QueueConfig,
    pub tokens: TokensConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub alerts: AlertsConfig,
    /// `[cluster]`: several nodes share budgets and connection limits through Redis.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://`, with an ACL user and password if the server wants them.
    pub redis_url: url::Url,
    /// Extra CA for a `rediss://` server whose certificate the system does not trust.
    pub ca_file: Option<PathBuf>,
    /// A file holding the password (instead of putting it in the URL).
    pub password_file: Option<PathBuf>,
    /// Put before every key, so several relay clusters can share one Redis.
    pub key_prefix: String,
    /// This node's name in heartbeats and leases (default: the host name).
    pub node_name: String,
    /// How many nodes share the budgets: while Redis is unreachable each node sends within
    /// this share of them. Without it, sending pauses until Redis answers again.
    pub nodes: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    pub state_dir: PathBuf,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// Sessions one client address may have open at once (outside `connection_limit_exempt`).
    pub max_connections_per_client: usize,
    /// The longest one command line may take to arrive, counted from when the relay waits
    /// for it (not from each byte: a client that trickles cannot keep a slot).
    pub command_timeout: Duration,
    /// The longest DATA may wait for more bytes; the whole of DATA must also keep up
    /// `min_data_rate`.
    pub data_timeout: Duration,
    /// Bytes per second DATA must average (Postfix's smtpd_min_data_rate).
    pub min_data_rate: u64,
    pub bare_newline: BareNewline,
    /// How long a shutdown waits for sessions in DATA to finish before cutting them off.
    pub shutdown_timeout: Duration,
    /// Protocol errors tolerated in one session before it is closed with 421.
    pub max_errors: u32,
}

/// A string-valued setting with a fixed set of spellings.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            fn parse(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => {
                        let known = [$($text),+];
                        Err(match reader::did_you_mean(other, known.into_iter()) {
                            Some(meant) => format!("unknown value {other:?}; did you mean {meant:?}?"),
                            None => format!(
                                "unknown value {other:?}; expected one of: {}",
                                [$(concat!("\"", $text, "\"")),+].join(", ")
                            ),
                        })
                    }
                }
            }

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Written as it is spelt in the configuration.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

choice!(
    /// What to do with a bare CR or LF in message content.
    BareNewline {
        /// Rewrite it to CRLF for every client.
        Normalize = "normalize",
        /// Reject the message from clients outside `trusted_networks`; normalise for the rest
        /// (printers on the LAN are the usual senders of bare LF).
        Reject = "reject",
        /// Reject the message from every client.
        RejectAll = "reject-all",
    }
);

choice!(ListenTls { None = "none", StartTls = "starttls", Implicit = "implicit" });
choice!(
    /// Which TLS a listener speaks (`smtp::tls`).
    TlsProfile {
        /// rustls: TLS 1.2 and 1.3, forward-secret AEAD suites only.
        Modern = "modern",
        /// OpenSSL: TLS 1.0 to 1.3 with RSA key exchange and CBC suites too, for old devices.
        Legacy = "legacy",
    }
);
choice!(AuthMode { None = "none", Optional = "optional", Required = "required" });
choice!(Provider { Microsoft = "microsoft", Generic = "generic" });
choice!(Flow {
    ClientCredentials = "client_credentials",
    DeviceCode = "device_code",
    AuthorizationCode = "authorization_code",
});
choice!(Transport { Smtp = "smtp", Graph = "graph" });
choice!(
    /// Signature algorithm of the client assertion for certificate credentials.
    AssertionAlgorithm {
        /// RSASSA-PSS with SHA-256 and the `x5t#S256` thumbprint: Microsoft's current advice.
        Ps256 = "PS256",
        /// RSASSA-PKCS1-v1_5 with SHA-256 and the SHA-1 `x5t` thumbprint: older, widely used.
        Rs256 = "RS256",
    }
);
choice!(UpstreamTls { StartTls = "starttls", Implicit = "implicit" });
choice!(OnFailure { Bounce = "bounce", Keep = "keep" });
choice!(TokenStoreKind { File = "file", Redis = "redis" });
choice!(LogFormat { Text = "text", Json = "json" });

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub tls: ListenTls,
    pub tls_profile: TlsProfile,
    pub auth: AuthMode,
    pub allow_plaintext_auth: bool,
    pub require_tls: bool,
    /// Connections start with a PROXY protocol header (v1 or v2) naming the client: the
    /// listener sits behind a TCP load balancer.
    pub proxy_protocol: bool,
    /// The load balancers: only they may connect to a `proxy_protocol` listener.
    pub proxy_from: Vec<IpNet>,
}

impl ListenConfig {
    /// TLS on the legacy profile (OpenSSL, TLS 1.0/1.1, RSA key exchange).
    pub fn speaks_legacy_tls(&self) -> bool {
        self.tls != ListenTls::None && self.tls_profile == TlsProfile::Legacy
    }
}

/// What the relay warns about at every start, worded once for its log and `check-config`.
pub const WARN_FSYNC_OFF: &str =
    "queue.fsync = false: accepted mail can be lost in a power failure";
pub const WARN_NO_ACCOUNT: &str =
    "no [[account]] is configured: mail is queued but has nowhere to go";

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub trusted_networks: Vec<IpNet>,
    pub allowed_senders: Vec<AddressGlob>,
    pub allowed_recipients: Vec<AddressGlob>,
    pub client_rate: Rate,
    pub auth_failure_limit: Rate,
    /// Client networks `max_connections_per_client` does not apply to (a NAT gateway that
    /// all the office's printers come through, say).
    pub connection_limit_exempt: Vec<IpNet>,
}

#[derive(Clone)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
    pub allowed_senders: Vec<AddressGlob>,
}

impl fmt::Debug for UserConfig {
    // The hash is not a secret in the strict sense, but it has no business in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("allowed_senders", &self.allowed_senders)
            .finish_non_exhaustive()
    }
}

/// The upstream mailbox an account sends as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mailbox {
    /// Always this mailbox.
    Fixed(String),
    /// `"{sender}"`: each message's envelope sender (delegated tokens, one per user).
    Sender,
}

impl Mailbox {
    fn parse(text: String) -> Mailbox {
        match text.trim() {
            "{sender}" => Mailbox::Sender,
            _ => Mailbox::Fixed(text),
        }
    }

    /// The mailbox, when it is fixed.
    pub fn fixed(&self) -> Option<&str> {
        match self {
            Mailbox::Fixed(mailbox) => Some(mailbox),
            Mailbox::Sender => None,
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fixed().unwrap_or("{sender}"))
    }
}

#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub name: String,
    pub provider: Provider,
    pub tenant: Option<String>,
    pub client_id: String,
    pub flow: Flow,
    pub client_secret_file: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_private_key: Option<PathBuf>,
    pub client_assertion_algorithm: AssertionAlgorithm,
    pub mailbox: Mailbox,
    pub senders: Vec<AddressGlob>,
    pub rewrite_sender: bool,
    /// The From header becomes `mailbox` (the original goes to Reply-To).
    pub rewrite_from: bool,
    pub transport: Transport,
    pub authority: String,
    pub token_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub scope: Option<String>,
    pub redirect_port: u16,
    /// Microsoft Graph's base URL, for `transport = "graph"`.
    pub graph_endpoint: String,
    pub upstream: UpstreamConfig,
    /// Queued messages this account may have at most: past it, new mail for it is refused
    /// with 452 4.3.1 while other accounts' mail flows. Default: three days of the
    /// mailbox's `daily_recipients`.
    pub max_backlog: u64,
    /// `fallback_transport = "graph"` on an SMTP account: the account as Graph sees it (same
    /// app and mailbox, its own Graph token under the name `<name>/graph`), used while
    /// Exchange answers `535 5.7.139` (SMTP AUTH disabled).
    pub fallback: Option<Box<AccountConfig>>,
}

impl AccountConfig {
    /// The Graph twin of an SMTP account: same credentials and mailbox, a Graph token.
    fn graph_twin(&self) -> AccountConfig {
        AccountConfig {
            name: format!("{}/graph", self.name),
            transport: Transport::Graph,
            // A scope set for SMTP names Exchange's resource; Graph needs its own default.
            scope: None,
            fallback: None,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub max_connections: usize,
    pub rate: Rate,
    pub daily_recipients: u32,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    pub on_failure: OnFailure,
    pub fsync: bool,
    /// Messages the queue holds at most: past it, new mail is refused with 452 4.3.1.
    pub max_messages: usize,
    /// Bytes the spool's file system must keep free: below it, new mail is refused with
    /// 452 4.3.1 (Postfix's `queue_minfree`), so the disk never fills under a message.
    pub min_free_space: u64,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub store: TokenStoreKind,
    pub file: PathBuf,
    pub key_file: Option<PathBuf>,
    /// No key_file was configured (and no [cluster]): the key is `state_dir/token.key`,
    /// which the relay makes at its first start.
    pub key_made_by_relay: bool,
    pub refresh_before: Duration,
    pub retry_attempts: u32,
    pub retry_delay: Duration,
    /// The least time between two token requests for one account, whatever asks (a refresh
    /// that comes due, a retry, a caller without a token): the one exception is the single
    /// fresh request after the upstream refuses a token. Keeps a relay from hammering its
    /// identity provider (Entra answers loops with AADSTS50196 and throttling).
    pub min_request_interval: Duration,
    pub backups: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// A file holding the token that requests must present as `Authorization: Bearer`.
    pub bearer_token_file: Option<PathBuf>,
    /// `tls = true`: the endpoint speaks HTTPS only, with this certificate and key (its own
    /// `certificate` and `private_key`, or `[tls]`'s), read again by every generation.
    pub tls: Option<TlsConfig>,
    /// `[admin.sign_in]`: browsers sign in with OpenID Connect (Entra ID).
    pub sign_in: Option<SignInConfig>,
}

/// `[admin.sign_in]`: who may see and act on the status page, as the issuer says.
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Its `/.well-known/openid-configuration` names the endpoints and the keys.
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_private_key: Option<PathBuf>,
    /// How the assertion signed with `client_private_key` is signed, as for accounts.
    pub client_assertion_algorithm: AssertionAlgorithm,
    /// Where the issuer sends the browser back: this endpoint's `/signin/callback`.
    pub redirect_url: String,
    /// May see the page.
    pub viewers: Vec<Principal>,
    /// May see the page and act on the queue and tokens.
    pub operators: Vec<Principal>,
    /// A session unused for this long must sign in again.
    pub session_timeout: Duration,
}

/// One item of `viewers` / `operators`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `role:<app role>`: the ID token's `roles` claim holds it.
    Role(String),
    /// `group:<object id>`: the ID token's `groups` claim holds it.
    Group(String),
    /// A user's UPN or e-mail address (`preferred_username`, `upn` or `email`), any case.
    User(String),
}

impl Principal {
    pub fn parse(text: &str) -> Result<Principal, String> {
        let non_empty = |rest: &str, what: &str| {
            if rest.trim().is_empty() {
                Err(format!("{text:?} names no {what}"))
            } else {
                Ok(rest.trim().to_owned())
            }
        };
        if let Some(rest) = text.strip_prefix("role:") {
            non_empty(rest, "app role").map(Principal::Role)
        } else if let Some(rest) = text.strip_prefix("group:") {
            non_empty(rest, "group object id").map(Principal::Group)
        } else if text.contains('@') && !text.contains(char::is_whitespace) {
            Ok(Principal::User(text.to_lowercase()))
        } else {
            Err(format!(
                "expected \"role:<app role>\", \"group:<object id>\" or a user's UPN or e-mail, got {text:?}"
            ))
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub token_expiry_warning: Duration,
    /// Alert when the oldest queued message is older than this.
    pub queue_age_warning: Duration,
    pub refresh_failure_threshold: u32,
    pub webhook: Option<String>,
    pub email: Option<String>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: path.to_owned(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
            input_files: Vec::new(),
        })?;
        Config::parse(path, text)
    }

    /// Checks `text` as if it were the content of `path`.
    pub fn parse(path: &Path, text: String) -> Result<Config, ConfigError> {
        let source = Source::new(path, text);
        let config = parse_document(&source);
        match config {
            Some(config) if !source.has_problems() => Ok(config),
            _ => Err(ConfigError {
                input_files: source.inputs(),
                problems: source.into_problems(),
            }),
        }
    }

    /// The keys the reader asks for when it reads `text` (as `table.key`, without list
    /// positions), whatever else is wrong with it: a table absent from `text` is not read,
    /// so `text` should have every table (the reference does).
    pub fn accepted_keys(text: &str) -> std::collections::BTreeSet<String> {
        let source = Source::new(Path::new("keys.toml"), text.to_owned());
        parse_document(&source);
        source.asked()
    }

    /// Whether a TLS listener asks for the legacy profile (and so OpenSSL is set up).
    pub fn wants_legacy_tls(&self) -> bool {
        self.listen.iter().any(ListenConfig::speaks_legacy_tls)
    }

    /// Every account whose tokens the relay keeps: the configured ones and their Graph
    /// twins (`fallback_transport`).
    pub fn token_accounts(&self) -> impl Iterator<Item = &AccountConfig> {
        self.accounts
            .iter()
            .flat_map(|account| std::iter::once(account).chain(account.fallback.as_deref()))
    }

    /// The `[[account]]` named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|account| account.name == name)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.server.state_dir.join("spool")
    }
}

fn parse_document(source: &Source) -> Option<Config> {
    let document = match toml_edit::ImDocument::parse(source.text()) {
        Ok(document) => document,
        Err(e) => {
            source.report(e.span(), "", format!("not valid TOML: {}", e.message()));
            return None;
        }
    };
    let root = Section::new(source, document.as_table(), None, String::new());

    let server = read_server(root.table("server"));
    let listen: Vec<ListenConfig> = root
        .tables("listen")
        .into_iter()
        .filter_map(read_listen)
        .collect();
    let tls = root.table("tls").and_then(read_tls);
    let access = read_access(root.table("access"));
    let users: Vec<UserConfig> = root
        .tables("user")
        .into_iter()
        .filter_map(read_user)
        .collect();
    let accounts: Vec<AccountConfig> = root
        .tables("account")
        .into_iter()
        .filter_map(read_account)
        .collect();
    let queue = read_queue(root.table("queue"));
    let mut tokens = read_tokens(root.table("tokens"));
    let admin = read_admin(root.table("admin"), tls.as_ref());
    let log = read_log(root.table("log"));
    let alerts = read_alerts(root.table("alerts"));
    let cluster = root.table("cluster").and_then(read_cluster);
    // A single relay without a key of its own gets one beside its state; the nodes of a
    // cluster must share one, so they are told to name it.
    if tokens.key_file.is_none() && root.table("cluster").is_none() {
        tokens.key_file = Some(server.state_dir.join(KEY_IN_STATE_DIR));
        tokens.key_made_by_relay = true;
    }

    check_combinations(&root, &listen, tls.is_some(), &users, &tokens);
    if listen.is_empty() && !source.has_problems() {
        root.report("listen", "at least one [[listen]] table is needed");
    }
    root.finish();

    Some(Config {
        path: source.path.clone(),
        input_files: source.inputs(),
        server,
        listen,
        tls,
        access,
        users,
        accounts,
        queue,
        tokens,
        admin,
        log,
        alerts,
        cluster,
    })
}

fn read_server(section: Option<Section>) -> ServerConfig {
    let s = section.as_ref();
    let duration = |key: &str, default: &str| {
        s.and_then(|s| s.parse(key, parse_duration))
            .unwrap_or_else(|| parse_duration(default).expect("valid default"))
    };
    let server = ServerConfig {
        hostname: s
            .and_then(|s| s.get::<String>("hostname"))
            .unwrap_or_else(machine_hostname),
        state_dir: s
            .and_then(|s| s.path("state_dir"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/smtprelay")),
        max_message_size: s
            .and_then(|s| s.parse("max_message_size", parse_size))
            .unwrap_or(35 << 20),
        max_recipients: s.and_then(|s| s.get("max_recipients")).unwrap_or(500),
        max_connections: s.and_then(|s| s.get("max_connections")).unwrap_or(1000),
        max_connections_per_client: s
            .and_then(|s| s.get("max_connections_per_client"))
            .unwrap_or(50),
        min_data_rate: s.and_then(|s| s.get("min_data_rate")).unwrap_or(500),
        command_timeout: duration("command_timeout", "5m"),
        data_timeout: duration("data_timeout", "10m"),
        bare_newline: s
            .and_then(|s| s.parse("bare_newline", BareNewline::parse))
            .unwrap_or(BareNewline::Normalize),
        shutdown_timeout: duration("shutdown_timeout", "30s"),
        max_errors: s.and_then(|s| s.get("max_errors")).unwrap_or(20),
    };
    if let Some(s) = section {
        if server.hostname.trim().is_empty() || server.hostname.contains(char::is_whitespace) {
            s.report("hostname", "must be a host name without spaces");
        }
        if server.max_recipients == 0 {
            s.report("max_recipients", "must be at least 1");
        }
        if server.max_connections == 0 {
            s.report("max_connections", "must be at least 1");
        }
        if server.max_connections_per_client == 0 {
            s.report("max_connections_per_client", "must be at least 1");
        }
        if server.min_data_rate == 0 {
            s.report("min_data_rate", "must be at least 1 (bytes per second)");
        }
        if server.max_message_size < 1024 {
            s.report("max_message_size", "must be at least 1KiB");
        }
        s.finish();
    }
    server
}

fn read_listen(s: Section) -> Option<ListenConfig> {
    let address = s.require::<String>("address").and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|_| {
                s.report(
                    "address",
                    format!("expected an address and port such as \"0.0.0.0:25\" or \"[::]:587\", got {text:?}"),
                )
            })
            .ok()
    });
    let tls = s.parse("tls", ListenTls::parse).unwrap_or(ListenTls::None);
    let tls_profile = s.parse("tls_profile", TlsProfile::parse);
    let listen = ListenConfig {
        address: address?,
        tls,
        tls_profile: tls_profile.unwrap_or(TlsProfile::Modern),
        auth: s
            .parse("auth", AuthMode::parse)
            .unwrap_or(AuthMode::Optional),
        allow_plaintext_auth: s.get("allow_plaintext_auth").unwrap_or(false),
        require_tls: s.get("require_tls").unwrap_or(false),
        proxy_protocol: s.get("proxy_protocol").unwrap_or(false),
        proxy_from: s
            .parse_list("proxy_from", parse_network)
            .unwrap_or_default(),
    };
    if s.intact(&["proxy_protocol", "proxy_from"]) {
        match (listen.proxy_protocol, listen.proxy_from.is_empty()) {
            (true, true) => s.report(
                "proxy_from",
                "proxy_protocol needs proxy_from: the addresses of the load balancers that may send the header",
            ),
            (false, false) => s.report(
                "proxy_from",
                "only used with proxy_protocol = true",
            ),
            _ => {}
        }
    }
    // Checks that combine keys need each of them read: one typo, one error.
    let intact = s.intact(&["tls", "auth", "allow_plaintext_auth", "require_tls"]);
    if intact && tls_profile.is_some() && listen.tls == ListenTls::None {
        s.report(
            "tls_profile",
            "only for a listener with TLS: set tls = \"starttls\" or \"implicit\", or remove tls_profile",
        );
    }
    if intact && listen.require_tls && listen.tls != ListenTls::StartTls {
        s.report(
            "require_tls",
            "only makes sense with tls = \"starttls\" (implicit TLS is always encrypted)",
        );
    }
    if intact
        && listen.auth == AuthMode::Required
        && listen.tls == ListenTls::None
        && !listen.allow_plaintext_auth
    {
        s.report(
            "auth",
            "AUTH is required but can never be offered: the listener has no TLS and allow_plaintext_auth is false",
        );
    }
    s.finish();
    Some(listen)
}

fn read_tls(s: Section) -> Option<TlsConfig> {
    let tls = TlsConfig {
        certificate: s.require_input_file("certificate")?,
        private_key: s.require_input_file("private_key")?,
    };
    s.finish();
    Some(tls)
}

fn read_access(section: Option<Section>) -> AccessConfig {
    let s = section.as_ref();
    let globs = |key: &str| {
        s.and_then(|s| s.parse_list(key, AddressGlob::new))
            .unwrap_or_default()
    };
    let rate = |key: &str, default: &str| {
        s.and_then(|s| s.parse(key, str::parse::<Rate>))
            .unwrap_or_else(|| default.parse().expect("valid default"))
    };
    let access = AccessConfig {
        trusted_networks: s
            .and_then(|s| s.parse_list("trusted_networks", parse_network))
            .unwrap_or_else(|| {
                vec![
                    parse_network("127.0.0.0/8").expect("valid default"),
                    parse_network("::1/128").expect("valid default"),
                ]
            }),
        allowed_senders: globs("allowed_senders"),
        allowed_recipients: globs("allowed_recipients"),
        client_rate: rate("client_rate", "120/min"),
        auth_failure_limit: rate("auth_failure_limit", "10/15min"),
        connection_limit_exempt: s
            .and_then(|s| s.parse_list("connection_limit_exempt", parse_network))
            .unwrap_or_default(),
    };
    if let Some(s) = section {
        s.finish();
    }
    access
}

fn read_user(s: Section) -> Option<UserConfig> {
    let name = s.require::<String>("name");
    let password_hash = s.require::<String>("password_hash");
    if let Some(hash) = &password_hash
        && argon2::PasswordHash::new(hash).is_err()
    {
        s.report(
            "password_hash",
            "not a password hash in PHC format; create one with `smtprelay hash-password`",
        );
    }
    let allowed_senders = s
        .parse_list("allowed_senders", AddressGlob::new)
        .unwrap_or_default();
    s.finish();
    Some(UserConfig {
        name: name?,
        password_hash: password_hash?,
        allowed_senders,
    })
}

fn read_account(s: Section) -> Option<AccountConfig> {
    let name = s.require::<String>("name");
    let provider = s
        .parse("provider", Provider::parse)
        .unwrap_or(Provider::Microsoft);
    let flow = s
        .parse("flow", Flow::parse)
        .unwrap_or(Flow::ClientCredentials);
    let endpoint = |key: &str| s.parse(key, check_endpoint);
    let transport = s
        .parse("transport", Transport::parse)
        .unwrap_or(Transport::Smtp);
    let mut account = AccountConfig {
        name: name?,
        provider,
        tenant: s.get("tenant"),
        client_id: s.require("client_id")?,
        flow,
        client_secret_file: s.input_file_of("client_secret_file", InputKind::Secret),
        client_certificate: s.input_file("client_certificate"),
        client_private_key: s.input_file_of("client_private_key", InputKind::Secret),
        client_assertion_algorithm: s
            .parse("client_assertion_algorithm", AssertionAlgorithm::parse)
            .unwrap_or(AssertionAlgorithm::Ps256),
        mailbox: s.require("mailbox").map(Mailbox::parse)?,
        senders: s
            .parse_list("senders", AddressGlob::new)
            .unwrap_or_default(),
        rewrite_sender: s.get("rewrite_sender").unwrap_or(false),
        rewrite_from: s.get("rewrite_from").unwrap_or(false),
        transport,
        authority: endpoint("authority")
            .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
        token_endpoint: endpoint("token_endpoint"),
        device_authorization_endpoint: endpoint("device_authorization_endpoint"),
        authorization_endpoint: endpoint("authorization_endpoint"),
        scope: s.get("scope"),
        redirect_port: s.get("redirect_port").unwrap_or(8400),
        graph_endpoint: endpoint("graph_endpoint")
            .unwrap_or_else(|| "https://graph.microsoft.com/v1.0".into()),
        upstream: read_upstream(s.table("upstream"), transport),
        max_backlog: 0,
        fallback: None,
    };
    account.max_backlog = s
        .get("max_backlog")
        .unwrap_or(u64::from(account.upstream.daily_recipients) * BACKLOG_DAYS);
    if account.max_backlog == 0 {
        s.report("max_backlog", "must be at least 1");
    }
    let fallback = s.parse("fallback_transport", Transport::parse);
    match fallback.filter(|_| s.intact(&["transport"])) {
        Some(Transport::Graph) if transport == Transport::Smtp => {
            account.fallback = Some(Box::new(account.graph_twin()));
        }
        Some(Transport::Graph) => s.report(
            "fallback_transport",
            "only an account with transport = \"smtp\" can fall back to Graph",
        ),
        Some(Transport::Smtp) => s.report(
            "fallback_transport",
            "the fallback is \"graph\" (for when Exchange turns SMTP AUTH off)",
        ),
        None => {}
    }
    match account.provider {
        _ if !s.intact(&["provider", "tenant", "token_endpoint"]) => {}
        Provider::Microsoft if account.tenant.is_none() => s.report(
            "tenant",
            "the microsoft provider needs a tenant (GUID or domain)",
        ),
        Provider::Generic if account.token_endpoint.is_none() => s.report(
            "token_endpoint",
            "the generic provider needs a token_endpoint",
        ),
        _ => {}
    }
    let credentials = [
        "flow",
        "client_secret_file",
        "client_certificate",
        "client_private_key",
    ];
    if account.flow == Flow::ClientCredentials && s.intact(&credentials) {
        let has_secret = account.client_secret_file.is_some();
        let has_certificate =
            account.client_certificate.is_some() || account.client_private_key.is_some();
        if has_secret == has_certificate {
            s.report(
                "flow",
                "client_credentials needs either client_secret_file or client_certificate with client_private_key",
            );
        } else if has_certificate
            && (account.client_certificate.is_none() || account.client_private_key.is_none())
        {
            s.report(
                "client_certificate",
                "client_certificate and client_private_key go together",
            );
        }
    }
    if account.mailbox.fixed().is_some_and(|m| m.trim().is_empty()) {
        s.report("mailbox", "may not be empty");
    }
    s.finish();
    Some(account)
}

/// Endpoints must be https, except on loopback where tests and local proxies live.
fn check_endpoint(text: &str) -> Result<String, String> {
    let rest = if let Some(rest) = text.strip_prefix("https://") {
        rest
    } else if let Some(rest) = text.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or("");
        let host_v6 = rest
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .unwrap_or("");
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || host_v6
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err("plain http is accepted only for loopback addresses; use https".into());
        }
        rest
    } else {
        return Err(format!("expected an https:// URL, got {text:?}"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("the URL {text:?} has no host"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn read_upstream(section: Option<Section>, transport: Transport) -> UpstreamConfig {
    // Graph allows an app 4 concurrent requests per mailbox.
    let default_connections = match transport {
        Transport::Smtp => 2,
        Transport::Graph => 4,
    };
    let s = section.as_ref();
    let duration = |key: &str, default: &str| {
        s.and_then(|s| s.parse(key, parse_duration))
            .unwrap_or_else(|| parse_duration(default).expect("valid default"))
    };
    let upstream = UpstreamConfig {
        host: s
            .and_then(|s| s.get("host"))
            .unwrap_or_else(|| "smtp.office365.com".into()),
        port: s.and_then(|s| s.get("port")).unwrap_or(587),
        tls: s
            .and_then(|s| s.parse("tls", UpstreamTls::parse))
            .unwrap_or(UpstreamTls::StartTls),
        // An empty string is how the reference spells "no extra root".
        ca_file: s.and_then(|s| s.optional_input_file("ca_file")),
        max_connections: s
            .and_then(|s| s.get("max_connections"))
            .unwrap_or(default_connections),
        rate: s
            .and_then(|s| s.parse("rate", str::parse::<Rate>))
            .unwrap_or_else(|| "30/min".parse().expect("valid default")),
        daily_recipients: s.and_then(|s| s.get("daily_recipients")).unwrap_or(10_000),
        connect_timeout: duration("connect_timeout", "30s"),
        command_timeout: duration("command_timeout", "2m"),
    };
    if let Some(s) = section {
        if upstream.max_connections == 0 {
            s.report("max_connections", "must be at least 1");
        }
        s.finish();
    }
    upstream
}

fn read_queue(section: Option<Section>) -> QueueConfig {
    let s = section.as_ref();
    let queue = QueueConfig {
        retry: s
            .and_then(|s| s.parse_list("retry", parse_duration))
            .unwrap_or_else(|| {
                ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
                    .iter()
                    .map(|d| parse_duration(d).expect("valid default"))
                    .collect()
            }),
        max_age: s
            .and_then(|s| s.parse("max_age", parse_duration))
            .unwrap_or(Duration::from_secs(5 * 86400)),
        on_failure: s
            .and_then(|s| s.parse("on_failure", OnFailure::parse))
            .unwrap_or(OnFailure::Bounce),
        fsync: s.and_then(|s| s.get("fsync")).unwrap_or(true),
        max_messages: s.and_then(|s| s.get("max_messages")).unwrap_or(100_000),
        min_free_space: s
            .and_then(|s| s.parse("min_free_space", parse_size))
            .unwrap_or(256 << 20),
    };
    if let Some(s) = section {
        if queue.retry.is_empty() {
            s.report("retry", "needs at least one interval");
        }
        if queue.max_messages == 0 {
            s.report("max_messages", "must be at least 1");
        }
        s.finish();
    }
    queue
}

/// An account's default `max_backlog`, in days of its mailbox's `daily_recipients`: a
/// weekend's mail for a mailbox that cannot send, and no more.
pub const BACKLOG_DAYS: u64 = 3;

/// The token store key's file when the configuration names none (a single relay).
pub const KEY_IN_STATE_DIR: &str = "token.key";

/// Bounds of `[tokens] min_request_interval`: below a second the floor would not keep a
/// loop from an identity provider's throttling; above five minutes a refused token could
/// hold mail that long.
const MIN_REQUEST_INTERVAL_LEAST: Duration = Duration::from_secs(1);
const MIN_REQUEST_INTERVAL_MOST: Duration = Duration::from_secs(300);

fn read_tokens(section: Option<Section>) -> TokensConfig {
    let s = section.as_ref();
    let tokens = TokensConfig {
        store: s
            .and_then(|s| s.parse("store", TokenStoreKind::parse))
            .unwrap_or(TokenStoreKind::File),
        // Relative to state_dir, not to the config file: resolved by the token store.
        file: s
            .and_then(|s| s.get::<String>("file"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("tokens.json.enc")),
        key_file: s.and_then(|s| s.input_file_of("key_file", InputKind::TokenKey)),
        key_made_by_relay: false,
        refresh_before: s
            .and_then(|s| s.parse("refresh_before", parse_duration))
            .unwrap_or(Duration::from_secs(300)),
        retry_attempts: s.and_then(|s| s.get("retry_attempts")).unwrap_or(3),
        retry_delay: s
            .and_then(|s| s.parse("retry_delay", parse_duration))
            .unwrap_or(Duration::from_secs(1)),
        min_request_interval: s
            .and_then(|s| {
                s.parse("min_request_interval", |text| {
                    let interval = parse_duration(text)?;
                    if (MIN_REQUEST_INTERVAL_LEAST..=MIN_REQUEST_INTERVAL_MOST).contains(&interval)
                    {
                        Ok(interval)
                    } else {
                        Err(
                            "must be between 1s and 5m: a few token requests a minute at most"
                                .into(),
                        )
                    }
                })
            })
            .unwrap_or(Duration::from_secs(15)),
        backups: s.and_then(|s| s.get("backups")).unwrap_or(5),
    };
    if let Some(s) = section {
        // These keys of early drafts became [cluster]; say so rather than "unknown key".
        let moved = "several nodes now share through [cluster]: remove this key and set \
             [cluster] redis_url (see config-reference.toml)";
        if s.get::<String>("redis_url").is_some() {
            s.report("redis_url", moved);
        }
        if tokens.store == TokenStoreKind::Redis {
            s.report("store", format!("store = \"redis\" is gone: {moved}"));
        }
        s.finish();
    }
    tokens
}

fn read_cluster(s: Section) -> Option<ClusterConfig> {
    let redis_url = s.require::<String>("redis_url").and_then(|text| {
        let parsed = url::Url::parse(&text)
            .map_err(|e| format!("not a URL ({e}): expected redis://host:6379/0"))
            .and_then(|url| match url.scheme() {
                "redis" | "rediss" if url.host_str().is_some() => Ok(url),
                "redis" | "rediss" => Err("the URL names no host".to_owned()),
                other => Err(format!(
                    "the scheme is {other:?}: expected redis:// or rediss:// (TLS)"
                )),
            });
        parsed.map_err(|e| s.report("redis_url", e)).ok()
    });
    let ca_file = s.optional_input_file("ca_file");
    let password_file = s.optional_input_file("password_file");
    let key_prefix = s
        .get::<String>("key_prefix")
        .unwrap_or_else(|| "smtprelay:".into());
    let node_name = s
        .get::<String>("node_name")
        .unwrap_or_else(machine_hostname);
    let nodes = s.get("nodes");
    if nodes == Some(0) {
        s.report("nodes", "must be at least 1");
    }
    if node_name.is_empty() || node_name.contains(char::is_whitespace) {
        s.report("node_name", "must be a word without spaces");
    }
    if let Some(url) = &redis_url {
        if ca_file.is_some() && url.scheme() != "rediss" {
            s.report(
                "ca_file",
                "is for a rediss:// (TLS) server; redis_url is plain redis://",
            );
        }
        if password_file.is_some() && url.password().is_some() {
            s.report(
                "password_file",
                "redis_url already has a password; keep one of them",
            );
        }
    }
    s.finish();
    Some(ClusterConfig {
        redis_url: redis_url?,
        ca_file,
        password_file,
        key_prefix,
        node_name,
        nodes,
    })
}

fn read_admin(section: Option<Section>, relay_tls: Option<&TlsConfig>) -> AdminConfig {
    let s = section.as_ref();
    let listen = match s.and_then(|s| s.get::<String>("listen")) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
        Some(text) if text.is_empty() => None,
        Some(text) => {
            match text.parse() {
                Ok(address) => Some(address),
                Err(_) => {
                    if let Some(s) = s {
                        s.report(
                        "listen",
                        format!("expected an address and port such as \"127.0.0.1:8025\", got {text:?}"),
                    );
                    }
                    None
                }
            }
        }
    };
    let bearer_token_file = s.and_then(|s| s.input_file("bearer_token_file"));
    if let Some(s) = &section
        && let Some(address) = listen
        && !address.ip().is_loopback()
        && bearer_token_file.is_none()
    {
        s.report(
            "listen",
            format!("{address} is not a loopback address: set bearer_token_file so that only holders of the token can read health and metrics"),
        );
    }
    let tls = section.as_ref().and_then(|s| read_admin_tls(s, relay_tls));
    let sign_in = section
        .as_ref()
        .and_then(|s| s.table("sign_in"))
        .and_then(read_sign_in);
    if let Some(s) = &section
        && sign_in.is_some()
        && tls.is_none()
        && listen.is_some_and(|address| !address.ip().is_loopback())
    {
        // The session cookie is Secure: a browser sends it over plain HTTP to loopback only.
        s.report(
            "sign_in",
            "signing in off loopback needs HTTPS: set tls = true in [admin]",
        );
    }
    if let Some(s) = section {
        s.finish();
    }
    AdminConfig {
        listen,
        bearer_token_file,
        tls,
        sign_in,
    }
}

fn read_sign_in(s: Section) -> Option<SignInConfig> {
    let issuer = s.require::<String>("issuer");
    if let Some(issuer) = &issuer
        && let Err(e) = check_endpoint(issuer)
    {
        s.report("issuer", e);
    }
    let redirect_url = s.require::<String>("redirect_url");
    if let Some(url) = &redirect_url
        && let Err(e) = check_endpoint(url)
    {
        s.report("redirect_url", e);
    }
    let client_id = s.require::<String>("client_id");
    let client_secret_file = s.input_file_of("client_secret_file", InputKind::Secret);
    let client_certificate = s.input_file("client_certificate");
    let client_private_key = s.input_file_of("client_private_key", InputKind::Secret);
    let has_certificate = client_certificate.is_some() || client_private_key.is_some();
    if s.intact(&[
        "client_secret_file",
        "client_certificate",
        "client_private_key",
    ]) {
        if client_secret_file.is_some() == has_certificate {
            s.report(
                "client_secret_file",
                "the console signs in with either client_secret_file or client_certificate with client_private_key",
            );
        } else if has_certificate && (client_certificate.is_none() || client_private_key.is_none())
        {
            s.report(
                "client_certificate",
                "client_certificate and client_private_key go together",
            );
        }
    }
    let viewers = s
        .parse_list("viewers", Principal::parse)
        .unwrap_or_default();
    let operators = s
        .parse_list("operators", Principal::parse)
        .unwrap_or_default();
    if viewers.is_empty() && operators.is_empty() && s.intact(&["viewers", "operators"]) {
        s.report(
            "operators",
            "nobody may sign in: list who may in viewers or operators",
        );
    }
    let session_timeout = s
        .parse("session_timeout", parse_duration)
        .unwrap_or(Duration::from_secs(3600));
    let client_assertion_algorithm = s
        .parse("client_assertion_algorithm", AssertionAlgorithm::parse)
        .unwrap_or(AssertionAlgorithm::Ps256);
    s.finish();
    Some(SignInConfig {
        issuer: issuer?.trim_end_matches('/').to_owned(),
        client_id: client_id?,
        client_secret_file,
        client_certificate,
        client_private_key,
        client_assertion_algorithm,
        redirect_url: redirect_url?,
        viewers,
        operators,
        session_timeout,
    })
}

/// `[admin] tls`, `certificate`, `private_key`: the two files default to `[tls]`'s, and go
/// together when given.
fn read_admin_tls(s: &Section, relay_tls: Option<&TlsConfig>) -> Option<TlsConfig> {
    let certificate = s.input_file("certificate");
    let private_key = s.input_file_of("private_key", InputKind::Secret);
    let enabled = s.get::<bool>("tls").unwrap_or(false);
    if !enabled {
        for (key, given) in [
            ("certificate", certificate.is_some()),
            ("private_key", private_key.is_some()),
        ] {
            if given {
                s.report(key, "only used with tls = true");
            }
        }
        return None;
    }
    match (certificate, private_key) {
        (Some(certificate), Some(private_key)) => Some(TlsConfig {
            certificate,
            private_key,
        }),
        (None, None) => match relay_tls {
            Some(tls) => Some(tls.clone()),
            None => {
                s.report(
                    "tls",
                    "HTTPS needs a certificate: set certificate and private_key here, or add a [tls] table",
                );
                None
            }
        },
        (Some(_), None) => {
            s.report("certificate", "certificate and private_key go together");
            None
        }
        (None, Some(_)) => {
            s.report("private_key", "certificate and private_key go together");
            None
        }
    }
}

fn read_log(section: Option<Section>) -> LogConfig {
    let s = section.as_ref();
    let log = LogConfig {
        level: s
            .and_then(|s| s.get("level"))
            .unwrap_or_else(|| "info".into()),
        format: s
            .and_then(|s| s.parse("format", LogFormat::parse))
            .unwrap_or(LogFormat::Text),
    };
    if let Some(s) = section {
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            s.report(
                "level",
                "expected a level (error, warn, info, debug, trace) or a filter such as \"info,tokens=debug\"",
            );
        }
        s.finish();
    }
    log
}

fn read_alerts(section: Option<Section>) -> AlertsConfig {
    let s = section.as_ref();
    let non_empty = |key: &str| {
        s.and_then(|s| s.get::<String>(key))
            .filter(|v| !v.is_empty())
    };
    let alerts = AlertsConfig {
        token_expiry_warning: s
            .and_then(|s| s.parse("token_expiry_warning", parse_duration))
            .unwrap_or(Duration::from_secs(3600)),
        queue_age_warning: s
            .and_then(|s| s.parse("queue_age_warning", parse_duration))
            .unwrap_or(Duration::from_secs(3600)),
        refresh_failure_threshold: s
            .and_then(|s| s.get("refresh_failure_threshold"))
            .unwrap_or(3),
        webhook: non_empty("webhook"),
        email: non_empty("email"),
    };
    if let Some(s) = section {
        if let Some(url) = &alerts.webhook
            && let Err(e) = check_endpoint(url)
        {
            s.report("webhook", e);
        }
        s.finish();
    }
    alerts
}

fn check_combinations(
    root: &Section,
    listen: &[ListenConfig],
    have_tls: bool,
    users: &[UserConfig],
    tokens: &TokensConfig,
) {
    let source = root.source();
    // Problems about one [[listen]] table are reported at that table's position.
    let document = toml_edit::ImDocument::parse(source.text()).ok();
    let listen_span = |i: usize| {
        document
            .as_ref()
            .and_then(|d| d.get("listen"))
            .and_then(|item| item.as_array_of_tables())
            .and_then(|a| a.get(i))
            .and_then(|t| t.span())
    };
    for (i, l) in listen.iter().enumerate() {
        let key = format!("listen[{}]", i + 1);
        if l.tls != ListenTls::None && !have_tls {
            source.report(
                listen_span(i),
                &format!("{key}.tls"),
                "this listener uses TLS but there is no [tls] table with a certificate",
            );
        }
        if l.auth != AuthMode::None && users.is_empty() {
            source.report(
                listen_span(i),
                &format!("{key}.auth"),
                "AUTH is offered but no [[user]] is configured (set auth = \"none\" or add users)",
            );
        }
        // Port 0 asks for any free port: several listeners may.
        if l.address.port() != 0 && listen[..i].iter().any(|other| other.address == l.address) {
            source.report(
                listen_span(i),
                &format!("{key}.address"),
                format!("{} is already used by another listener", l.address),
            );
        }
    }
    // A name given twice is reported where it is given the second time: that table is the
    // one to rename or remove.
    for kind in ["user", "account"] {
        let tables = document
            .as_ref()
            .and_then(|d| d.get(kind))
            .and_then(|item| item.as_array_of_tables());
        let mut names = std::collections::HashSet::new();
        for table in tables.into_iter().flat_map(|a| a.iter()) {
            let Some((key, value)) = table.get_key_value("name") else {
                continue;
            };
            let Some(name) = value.as_str() else {
                continue;
            };
            if !names.insert(name) {
                source.report(
                    key.span().or_else(|| table.span()),
                    &format!("{kind}[{name}].name"),
                    format!("{kind} {name:?} is defined twice"),
                );
            }
        }
    }
    if tokens.file.is_absolute() || tokens.file.components().count() != 1 {
        root.report(
            "tokens",
            "tokens.file must be a plain file name: the store lives in state_dir",
        );
    }
}

pub fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates within it
    // (or truncates, in which case we take the bytes up to the buffer's end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        assert!(check_endpoint("https://login.microsoftonline.us").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080/t").is_ok());
        assert!(check_endpoint("http://localhost/t").is_ok());
        assert!(check_endpoint("http://[::1]:9/t").is_ok());
        let error = check_endpoint("http://login.example.com/token").unwrap_err();
        assert!(error.contains("only for loopback"), "{error}");
        assert!(check_endpoint("http://127.0.0.1.evil.example/t").is_err());
        assert!(check_endpoint("ftp://x").is_err());
        assert!(check_endpoint("https:///path").is_err());
    }

    fn with_tables(tables: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nhostname = \"r\"\nstate_dir = \"/tmp/x\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nauth = \"none\"\n{tables}"
        );
        Config::parse(Path::new("/etc/smtprelay.toml"), text)
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
        let error = result.expect_err("problems");
        error.problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_cluster_table_and_where_the_old_redis_keys_went() {
        let config = with_tables(
            "[cluster]\nredis_url = \"redis://:pw@redis.internal:6379/2\"\nnodes = 3\n",
        )
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.key_prefix, "smtprelay:");
        assert_eq!(cluster.nodes, Some(3));
        assert!(!cluster.node_name.is_empty());
        assert!(with_tables("").unwrap().cluster.is_none());

        // Early drafts kept tokens in Redis under [tokens]: the error says where to go.
        let found = problems(with_tables(
            "[tokens]\nstore = \"redis\"\nredis_url = \"redis://r:6379\"\n",
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|p| p.contains("[cluster] redis_url")),
            "{found:?}"
        );
        assert!(found[0].contains(":8:1: tokens.store"), "{found:?}");
        assert!(found[1].contains(":9:1: tokens.redis_url"), "{found:?}");

        let found = problems(with_tables(
            "[cluster]\nredis_url = \"http://r:6379\"\nnodes = 0\nnode_name = \"a b\"\n",
        ));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("cluster.redis_url") && found[0].contains("rediss://"));
        assert!(
            found[1].contains("cluster.nodes: must be at least 1"),
            "{found:?}"
        );
        assert!(found[2].contains("cluster.node_name"), "{found:?}");
        let found = problems(with_tables(
            "[cluster]\nredis_url = \"redis://:pw@r:6379\"\nca_file = \"ca.pem\"\n\
             password_file = \"pw\"\nredis_urll = \"x\"\n",
        ));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found
                .iter()
                .any(|p| p.contains("ca_file") && p.contains("rediss://"))
        );
        assert!(found.iter().any(|p| p.contains("password_file")));
        assert!(
            found.iter().any(|p| p.contains("did you mean")),
            "{found:?}"
        );
        let found = problems(with_tables("[cluster]\nnodes = 2\n"));
        assert!(
            found[0].contains("cluster.redis_url: this key is required"),
            "{found:?}"
        );
    }

    fn graph_account(keys: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nhostname = \"r\"\nstate_dir = \"/tmp/x\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nauth = \"none\"\n\
             [[account]]\nname = \"g\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_file = \"s\"\n\
             mailbox = \"m@x\"\ntransport = \"graph\"\n{keys}"
        );
        Config::parse(Path::new("/etc/smtprelay.toml"), text)
    }

    #[test]
    fn graph_accounts_get_graph_defaults_and_endpoints_are_checked() {
        let config = graph_account("").unwrap();
        let account = &config.accounts[0];
        assert_eq!(account.transport, Transport::Graph);
        assert_eq!(account.graph_endpoint, "https://graph.microsoft.com/v1.0");
        assert_eq!(account.upstream.max_connections, 4);
        assert_eq!(
            crate::oauth::provider::scope(account),
            "https://graph.microsoft.com/.default"
        );
        let us = graph_account("graph_endpoint = \"https://graph.microsoft.us/v1.0\"\n").unwrap();
        assert_eq!(
            us.accounts[0].graph_endpoint,
            "https://graph.microsoft.us/v1.0"
        );
        let error = graph_account("graph_endpoint = \"http://graph.example/v1.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("graph_endpoint"), "{error}");
    }

    #[test]
    fn an_smtp_account_may_fall_back_to_graph_with_a_twin_of_its_own() {
        let text = |keys: &str| {
            format!(
                "[server]\nhostname = \"r\"\nstate_dir = \"/tmp/x\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nauth = \"none\"\n\
                 [[account]]\nname = \"c\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_file = \"s\"\n\
                 mailbox = \"m@x\"\nscope = \"https://outlook.office365.com/.default\"\n{keys}"
            )
        };
        let parse = |keys: &str| Config::parse(Path::new("/etc/s.toml"), text(keys));
        let config = parse("fallback_transport = \"graph\"\n").unwrap();
        let names: Vec<&str> = config.token_accounts().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["c", "c/graph"]);
        let twin = config.accounts[0].fallback.as_deref().unwrap();
        assert_eq!(twin.transport, Transport::Graph);
        assert_eq!(
            crate::oauth::provider::scope(twin),
            "https://graph.microsoft.com/.default",
            "the SMTP scope is not the twin's"
        );
        let error = parse("transport = \"graph\"\nfallback_transport = \"graph\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("fallback_transport: only an account with transport = \"smtp\""),
            "{error}"
        );
        assert!(parse("fallback_transport = \"smtp\"\n").is_err());
    }
}
