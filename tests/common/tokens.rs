//! Token manager fixtures: configs pointing at the Entra double, stores, certificates.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use smtprelay::config::Config;
use smtprelay::oauth::http::TokenClient;
use smtprelay::oauth::manager::TokenManager;
use smtprelay::oauth::{FileStore, TokenKey};

use super::entra::{App, Entra, TENANT};

pub const SECRET: &str = "Xq8Q~client-secret-value-0123456789";

pub struct TokenFixture {
    pub dir: tempfile::TempDir,
    pub entra: Entra,
    pub key: TokenKey,
    pub config: Config,
}

/// An `[[account]]` table for the Entra double.
pub fn account(entra: &Entra, name: &str, client_id: &str, flow: &str, extra: &str) -> String {
    format!(
        "[[account]]\nname = {name:?}\ntenant = {TENANT:?}\nclient_id = {client_id:?}\nflow = {flow:?}\n\
         authority = {:?}\nmailbox = \"relay@contoso.com\"\n{extra}\n",
        entra.authority()
    )
}

/// The app-only `[[account]]` "contoso" with the confidential app's secret in `secret` (a file
/// beside the config).
pub fn secret_account(entra: &Entra) -> String {
    account(
        entra,
        "contoso",
        "app-secret",
        "client_credentials",
        "client_secret_file = \"secret\"",
    )
}

/// Reads what `smtprelay token login` prints and approves its device code at `entra`, as the
/// user would; returns the text printed.
pub async fn approve_device_login(entra: &Entra, stdout: tokio::process::ChildStdout) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut printed = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        printed.push_str(&line);
        printed.push('\n');
        if let Some(code) = line.split("enter the code ").nth(1) {
            let code = code.split_whitespace().next().unwrap().to_owned();
            entra.device_login(&code, super::entra::DeviceStatus::Approved);
        }
    }
    printed
}

impl TokenFixture {
    /// A config with the given `[[account]]` tables; files named in them are relative to
    /// the fixture's directory.
    pub async fn new(entra: Entra, accounts: impl Fn(&Entra) -> String) -> TokenFixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        let text = format!(
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [tokens]\nretry_attempts = 3\nretry_delay = \"20ms\"\nrefresh_before = \"5m\"\n\
             min_request_interval = \"1s\"\n{}",
            accounts(&entra)
        );
        let path = dir.path().join("smtprelay.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&config.server.state_dir).unwrap();
        TokenFixture {
            dir,
            entra,
            key: TokenKey::generate(),
            config,
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.config.server.state_dir.join("tokens.json.enc")
    }

    pub fn store(&self) -> FileStore {
        FileStore::new(self.store_path(), self.key.clone(), 5)
    }

    /// The account's tokens in the store, if it has any.
    pub async fn stored(&self, account: &str) -> Option<smtprelay::oauth::StoredTokens> {
        use smtprelay::oauth::TokenStore;
        self.store()
            .load(account)
            .await
            .unwrap()
            .and_then(|e| e.tokens)
    }

    pub async fn manager(&self) -> Arc<TokenManager> {
        Arc::new(
            TokenManager::new(
                &self.config,
                Arc::new(self.store()),
                TokenClient::new().unwrap(),
            )
            .await,
        )
    }
}

/// A self-signed certificate for `key_pem`, written next to the key; returns (cert path,
/// key path, certificate DER).
pub fn certificate(dir: &Path, key_pem: &str, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["smtprelay-app".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pem).unwrap();
    (cert_path, key_path, cert.der().to_vec())
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

pub fn app(client_id: &str) -> App {
    App {
        client_id: client_id.into(),
        user: "relay@contoso.com".into(),
        ..Default::default()
    }
}

/// Decodes a JWT's claims without checking its signature (as `token test` does).
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A tenant with two app registrations (`app-secret`: confidential, client secret
/// [`SECRET`]; `app-public`: public client for delegated logins) and an Exchange double where
/// app-only tokens may send as relay@contoso.com.
pub async fn tenant() -> (Entra, super::exchange::Exchange) {
    let entra = Entra::start().await;
    entra.register(App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    });
    entra.register(App {
        public_client: true,
        ..app("app-public")
    });
    let exchange = super::exchange::Exchange::start(entra.clone()).await;
    exchange
        .state()
        .app_mailboxes
        .insert("relay@contoso.com".into());
    (entra, exchange)
}

/// A relay whose one account ("contoso") sends through an Exchange double with tokens from
/// an Entra double (see [`tenant`]).
pub struct World {
    pub relay: super::TestRelay,
    pub entra: Entra,
    pub exchange: super::exchange::Exchange,
    _dir: tempfile::TempDir,
}

/// How to set up a [`World`].
pub struct WorldOptions<'a> {
    /// `client_credentials` uses the confidential app, the others the public one.
    pub flow: &'a str,
    /// What the relay's client secret file holds (client credentials only).
    pub secret: &'a str,
    pub mailbox: &'a str,
    /// More keys for the `[[account]]` table.
    pub account: &'a str,
    /// Text after the `[account.upstream]` table: keys for it first, then other tables.
    pub extra: &'a str,
    /// `[server] max_message_size`.
    pub max_message_size: &'a str,
    /// `[account.upstream] command_timeout`.
    pub upstream_timeout: &'a str,
    /// More trust roots for `ca_file` (PEM), e.g. the Graph double's CA.
    pub extra_ca: &'a str,
    /// How long the Entra double's access tokens live, when not its default (an hour).
    pub token_lifetime: Option<u64>,
}

impl Default for WorldOptions<'_> {
    fn default() -> Self {
        WorldOptions {
            flow: "client_credentials",
            secret: SECRET,
            mailbox: "relay@contoso.com",
            account: "",
            extra: "",
            max_message_size: "1MiB",
            upstream_timeout: "10s",
            extra_ca: "",
            token_lifetime: None,
        }
    }
}

/// `table` unchanged, once `extra_ca` is added to the CA file it names.
fn with_extra_ca(table: String, dir: &std::path::Path, extra_ca: &str) -> String {
    if !extra_ca.is_empty() {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("upstream-ca.pem"))
            .unwrap();
        file.write_all(extra_ca.as_bytes()).unwrap();
    }
    table
}

impl World {
    pub async fn start(options: WorldOptions<'_>) -> World {
        super::trace();
        let (entra, exchange) = tenant().await;
        if let Some(lifetime) = options.token_lifetime {
            entra.state().access_token_lifetime = lifetime;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, options.secret).unwrap();
        let table = if options.flow == "client_credentials" {
            let keys = format!("client_secret_file = {secret:?}\n{}", options.account);
            account(&entra, "contoso", "app-secret", options.flow, &keys)
        } else {
            account(
                &entra,
                "contoso",
                "app-public",
                options.flow,
                options.account,
            )
        };
        let text = format!(
            "{}{}{}",
            table.replace(
                "mailbox = \"relay@contoso.com\"",
                &format!("mailbox = {:?}", options.mailbox)
            ),
            with_extra_ca(
                exchange.upstream_table(dir.path()),
                dir.path(),
                options.extra_ca
            )
            .replace(
                "command_timeout = \"10s\"",
                &format!("command_timeout = {:?}", options.upstream_timeout)
            ),
            options.extra
        );
        let size = format!("max_message_size = {:?}", options.max_message_size);
        let relay = super::TestRelay::start_with(move |state| {
            super::config_text(state, super::PLAIN_LISTENER, &text)
                .replace("max_message_size = \"1MiB\"", &size)
        })
        .await;
        World {
            relay,
            entra,
            exchange,
            _dir: dir,
        }
    }
}
