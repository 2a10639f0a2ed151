//! `smtprelay token …`: log in, inspect, refresh, clear, back up and restore tokens, make the
//! store key, and test a token against the upstream. Works with or without the daemon
//! running, on the store the daemon uses (the file, or Redis with `[cluster]`): writes are
//! compare-and-set on each account's revision, and the daemon picks up what is written here.
//! Backups are always files in the file store's format, so `backup` and `restore` also move
//! tokens between the file and Redis.

use super::output::{errln, outln};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::token_test::token_test;
use crate::clock::unix_secs as unix_now;
use crate::config::{Config, Flow};
use crate::oauth::http::TokenClient;
use crate::oauth::manager::{AccountStatus, TokenManager};
use crate::oauth::{FileStore, TokenKey, TokenStore, Write};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Log in for an account (device code or browser, as its flow says).
    Login(AccountArg),
    /// Show every account's token state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Get a new access token now.
    Refresh(AccountArg),
    /// Forget an account's tokens (the file store keeps its previous version as a backup).
    Clear(AccountArg),
    /// Copy the tokens, encrypted, to a file in the file store's format (it needs the same
    /// key to be restored). With [cluster], this copies them out of Redis.
    Backup {
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Replace the stored tokens with a backup's (default: the file store's newest rotated
    /// copy). With [cluster], this puts them into Redis: name a node's token file to move
    /// its tokens there.
    Restore { file: Option<PathBuf> },
    /// Write a new store key to [tokens] key_file (or --to).
    Keygen {
        /// Where to write the key (never over an existing file); default: [tokens] key_file.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Get a token, check its claims, and log in to the upstream with it.
    Test {
        #[command(flatten)]
        account: AccountArg,
        /// Mailbox for XOAUTH2 when the account's mailbox is "{sender}".
        #[arg(long)]
        mailbox: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct AccountArg {
    /// The [[account]] name; may be left out when there is only one.
    #[arg(long)]
    account: Option<String>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    errln!("error: {message}");
    ExitCode::FAILURE
}

pub fn run(config: Config, command: TokenCommand) -> Result<ExitCode, ExitCode> {
    crate::logging::init_cli();
    if let TokenCommand::Keygen { to } = &command {
        return keygen(&config, to.as_deref());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    runtime.block_on(run_async(config, command))
}

/// The store the daemon uses: Redis with `[cluster]`, the file otherwise.
struct Store {
    tokens: Arc<dyn TokenStore>,
    key: TokenKey,
    /// The file store, when that is the store.
    file: Option<FileStore>,
}

fn open_store(config: &Config) -> Result<Store, ExitCode> {
    let key = TokenKey::load(config.tokens.key_file.as_deref()).map_err(fail)?;
    if let Some(cluster) = &config.cluster {
        let cluster = crate::cluster::Cluster::connect(cluster).map_err(fail)?;
        return Ok(Store {
            tokens: Arc::new(cluster.token_store(key.clone())),
            key,
            file: None,
        });
    }
    crate::private_files::private_dir(&config.server.state_dir)
        .map_err(|e| fail(format!("{}: {e}", config.server.state_dir.display())))?;
    let file = FileStore::new(
        config.server.state_dir.join(&config.tokens.file),
        key.clone(),
        config.tokens.backups,
    );
    Ok(Store {
        tokens: Arc::new(file.clone()),
        key,
        file: Some(file),
    })
}

fn choose_account(config: &Config, arg: &AccountArg) -> Result<String, ExitCode> {
    // Graph twins (`<name>/graph`) are named explicitly; the default is among the accounts.
    let known: Vec<&str> = config.token_accounts().map(|a| a.name.as_str()).collect();
    let names: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
    match (&arg.account, names.as_slice()) {
        (Some(name), _) if known.contains(&name.as_str()) => Ok(name.clone()),
        (Some(name), _) => Err(fail(format!(
            "no account {name:?}; configured: {}",
            known.join(", ")
        ))),
        (None, [only]) => Ok((*only).to_owned()),
        (None, []) => Err(fail("no [[account]] is configured")),
        (None, _) => Err(fail(format!(
            "several accounts are configured; choose one with --account ({})",
            names.join(", ")
        ))),
    }
}

async fn run_async(config: Config, command: TokenCommand) -> Result<ExitCode, ExitCode> {
    let store = open_store(&config)?;
    let place = store.tokens.describe();
    match command {
        TokenCommand::Backup { to } => {
            let to = to.unwrap_or_else(|| {
                let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
                let store_path = config.server.state_dir.join(&config.tokens.file);
                PathBuf::from(format!("{}.backup-{stamp}", store_path.display()))
            });
            let entries = store.tokens.load_all().await.map_err(fail)?;
            FileStore::write_backup(store.key.clone(), &to, &entries).map_err(fail)?;
            let count = entries.values().filter(|e| e.tokens.is_some()).count();
            outln!(
                "Backed up {count} account(s) from {place} to {} (encrypted; keep the key with it).",
                to.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        TokenCommand::Restore { file } => {
            let from = match (file, &store.file) {
                (Some(file), _) => file,
                (None, Some(file_store)) => file_store.backup_path(1),
                (None, None) => {
                    return Err(fail(
                        "name the backup to restore: smtprelay token restore FILE (a node's token file moves its tokens into Redis)",
                    ));
                }
            };
            let accounts = FileStore::read_backup(store.key.clone(), &from).map_err(fail)?;
            let count = accounts.len();
            store.tokens.replace_all(accounts).await.map_err(fail)?;
            let replaced = match &store.file {
                Some(file_store) => format!(
                    "; the replaced store is {}",
                    file_store.backup_path(1).display()
                ),
                None => String::new(),
            };
            outln!(
                "Restored {count} account(s) from {} into {place}{replaced}. Running relays pick them up within seconds.",
                from.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let manager = TokenManager::new(
        &config,
        Arc::clone(&store.tokens),
        TokenClient::new().map_err(fail)?,
    )
    .await;
    match command {
        TokenCommand::Login(arg) => login(&manager, &place, &choose_account(&config, &arg)?).await,
        TokenCommand::Status { json } => {
            let statuses = manager.statuses();
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&statuses).expect("serialises")
                );
            } else {
                print_status(&statuses);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Refresh(arg) => {
            let account = choose_account(&config, &arg)?;
            let token = manager.refresh_now(&account).await.map_err(fail)?;
            outln!(
                "{account}: new access token, valid for {}.",
                duration(token.expires_at.saturating_sub(unix_now()))
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Clear(arg) => {
            let account = choose_account(&config, &arg)?;
            let stored = store.tokens.load(&account).await.map_err(fail)?;
            if stored.is_some_and(|entry| entry.tokens.is_some()) {
                store
                    .tokens
                    .save(&account, None, Write::Replace)
                    .await
                    .map_err(fail)?;
                match &store.file {
                    Some(file_store) => outln!(
                        "{account}: tokens removed (the previous store is {}).",
                        file_store.backup_path(1).display()
                    ),
                    None => outln!("{account}: tokens removed from {place}."),
                }
            } else {
                outln!("{account}: no tokens were stored.");
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Test { account, mailbox } => {
            let account = choose_account(&config, &account)?;
            let steps = token_test(
                &manager,
                &account,
                mailbox.as_deref(),
                &config.server.hostname,
            )
            .await;
            let mut ok = true;
            for step in &steps {
                outln!(
                    "{} {:<8} {}",
                    match (step.ok, step.warning) {
                        (false, _) => "FAIL",
                        (true, true) => "WARN",
                        (true, false) => "ok  ",
                    },
                    step.title,
                    step.detail
                );
                ok &= step.ok;
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        TokenCommand::Backup { .. }
        | TokenCommand::Restore { .. }
        | TokenCommand::Keygen { .. } => {
            unreachable!("handled above")
        }
    }
}

async fn login(manager: &TokenManager, place: &str, account: &str) -> Result<ExitCode, ExitCode> {
    let oauth = manager.oauth_account(account).map_err(fail)?;
    let client = manager.client();
    let response = match oauth.config.flow {
        Flow::ClientCredentials => {
            outln!(
                "{account} uses client credentials: no login is needed. Checking that a token can be had…"
            );
            let token = manager.refresh_now(account).await.map_err(fail)?;
            outln!(
                "ok: token valid for {}. The relay renews it by itself.",
                duration(token.expires_at.saturating_sub(unix_now()))
            );
            return Ok(ExitCode::SUCCESS);
        }
        Flow::DeviceCode => oauth
            .device_code(client, |authorization| {
                outln!();
                match &authorization.message {
                    Some(message) => outln!("{message}"),
                    None => outln!(
                        "To sign in, open {} in a browser and enter the code {}",
                        authorization.verification_uri,
                        authorization.user_code
                    ),
                }
                outln!(
                    "Sign in as the mailbox this account sends as ({}). Waiting…",
                    oauth.config.mailbox
                );
            })
            .await
            .map_err(fail)?,
        Flow::AuthorizationCode => {
            let (lines, pasted) = tokio::sync::mpsc::channel(4);
            if std::io::stdin().is_terminal() {
                std::thread::spawn(move || {
                    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                        if lines.blocking_send(line).is_err() {
                            return;
                        }
                    }
                });
            }
            oauth
                .authorization_code(
                    client,
                    |url| {
                        outln!("\nOpen this address in a browser and sign in as {}:\n\n  {url}\n", oauth.config.mailbox);
                        outln!(
                            "The browser returns to http://localhost:{}/. If it runs on another machine, paste the address it ends on here and press Enter.",
                            oauth.config.redirect_port
                        );
                    },
                    pasted,
                )
                .await
                .map_err(fail)?
        }
    };
    let token = manager
        .store_response(account, response, true)
        .await
        .map_err(fail)?;
    outln!(
        "\nLogged in. Access token valid for {}; the refresh token is stored encrypted in {place}.",
        duration(token.expires_at.saturating_sub(unix_now())),
    );
    outln!("A running relay picks it up within seconds; held mail then goes out.");
    Ok(ExitCode::SUCCESS)
}

fn keygen(config: &Config, to: Option<&Path>) -> Result<ExitCode, ExitCode> {
    let path = to
        .map(Path::to_owned)
        .or_else(|| config.tokens.key_file.clone())
        .ok_or_else(|| fail("no [tokens] key_file is configured; name a file with --to"))?;
    write_key(&path)
}

/// `token keygen --to FILE` needs no configuration, so package scripts can make the key
/// even when an admin's edited file does not load.
pub fn write_key(path: &Path) -> Result<ExitCode, ExitCode> {
    TokenKey::write_new(path).map_err(fail)?;
    outln!("Wrote a new token key to {} (mode 0600).", path.display());
    outln!("Keep a copy somewhere safe: the token store cannot be read without it.");
    Ok(ExitCode::SUCCESS)
}

fn duration(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}

fn ago(at: Option<u64>) -> String {
    at.map_or("never".into(), |t| {
        format!("{} ago", duration(unix_now().saturating_sub(t)))
    })
}

fn print_status(statuses: &[AccountStatus]) {
    if statuses.is_empty() {
        outln!("No [[account]] is configured.");
    }
    for status in statuses {
        outln!("{} ({})", status.account, status.flow);
        outln!("  state:          {}", status.health.name());
        if let Some(reason) = status.health.reason() {
            outln!("  reason:         {reason}");
        }
        let access = match status.access_token_expires_in_secs {
            None => "none".to_owned(),
            Some(left) if left > 0 => format!("valid, expires in {}", duration(left as u64)),
            Some(left) => format!(
                "expired {} ago (renewed on next use)",
                duration(left.unsigned_abs())
            ),
        };
        outln!("  access token:   {access}");
        let refresh = match (
            status.has_refresh_token,
            status.refresh_token_age_secs,
            status.refresh_token_expires_at,
        ) {
            (false, _, _) if status.flow == Flow::ClientCredentials => {
                "not used (client credentials)".to_owned()
            }
            (false, _, _) => "none: run `smtprelay token login`".to_owned(),
            (true, Some(age), Some(expires)) => format!(
                "issued {} ago; lapses in about {} if never used (renewed with every refresh)",
                duration(age),
                duration(expires.saturating_sub(unix_now()))
            ),
            (true, _, _) => "present".to_owned(),
        };
        outln!("  refresh token:  {refresh}");
        let login = match status.flow {
            Flow::ClientCredentials => "not needed (client credentials)".to_owned(),
            _ => ago(status.login_at),
        };
        outln!("  logged in:      {login}");
        outln!("  last refresh:   {}", ago(status.last_refresh_at));
        outln!(
            "  requests:       at most one every {} (and one at once after the upstream refuses a token, once a minute)",
            duration(status.min_request_interval_secs)
        );
        outln!(
            "  auto-refresh:   {}",
            if status.auto_refresh {
                "on"
            } else {
                "off (needs a login)"
            }
        );
    }
}
