//! The `smtprelay` command line.

mod admin_http;
mod check_config;
mod docs;
mod hash_password;
mod health;
mod notify;
mod output;
mod queue;
/// `queue list`'s rows, which the status page shows too.
pub(crate) use queue::{Row as QueueRow, rows as queue_rows, selected_commands};
mod serve;
mod status;
mod token;
pub mod token_test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use output::errln;

pub const DEFAULT_CONFIG: &str = "/etc/smtprelay/smtprelay.toml";

/// Exit status for a configuration problem (sysexits EX_CONFIG), so systemd and scripts can
/// tell it from a runtime failure.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "smtprelay",
    version,
    about = "SMTP relay for devices and apps, sending through Exchange Online with OAuth2",
    long_about = "SMTP relay for devices and apps, sending through Exchange Online with OAuth2.\n\n\
        `smtprelay serve` accepts SMTP from printers, scanners and applications (without AUTH \
        from [access] trusted_networks, with STARTTLS and AUTH from elsewhere), writes every \
        message to a durable queue before answering 250, and relays it to Exchange Online \
        with SMTP AUTH XOAUTH2. It obtains and refreshes the OAuth2 tokens itself (client \
        credentials, device code or authorization code with PKCE) and keeps them encrypted. \
        The other subcommands check the configuration, log in, and inspect or steer the queue."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG, env = "SMTPRELAY_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve,
    /// Check the configuration file and print every problem found, including files it
    /// names that are missing or that the service user cannot read.
    CheckConfig {
        /// The user the relay runs as (checked when run as root).
        #[arg(long, value_name = "USER", default_value = check_config::SERVICE_USER)]
        service_user: String,
        /// The service gets the token store key as the systemd credential `token-key` (as
        /// the packaged unit does): [tokens] key_file is not checked.
        #[arg(long)]
        token_key_from_credential: bool,
    },
    /// Summarise the running relay: health, accounts and tokens, budgets, queue, alerts,
    /// recent deliveries (what the status page at the admin endpoint shows). Exits with the
    /// verdict: 0 healthy, 1 degraded, 2 unhealthy or not answering.
    Status {
        /// The admin endpoint's base URL (default: from [admin] listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// Ask the running relay's /health: exit 0 while mail flows (healthy or degraded), 1
    /// when it cannot or the relay does not answer (a container's HEALTHCHECK, a probe).
    Health {
        /// The admin endpoint's base URL (default: from [admin] listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// Inspect and steer the queue: list, show, hold, release, delete, retry, flush.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Hash a password for a [[user]] table (reads it from the terminal or stdin).
    HashPassword,
    /// OAuth2 tokens: login, status, refresh, clear, backup, restore, keygen, test.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// List queued messages: ID, age, size, state, sender, recipients.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make every deferred message due now (the running daemon does it).
    Flush,
    /// Try messages now, or bring back every failed one with --failed.
    Retry {
        #[command(flatten)]
        select: queue::Selection,
        #[arg(long, conflicts_with_all = ["ids", "all", "from", "to", "older_than"])]
        failed: bool,
    },
    /// Keep messages from being delivered until released.
    Hold {
        #[command(flatten)]
        select: queue::Selection,
    },
    /// Let held messages go.
    Release {
        #[command(flatten)]
        select: queue::Selection,
    },
    /// Remove messages from the queue (no bounce).
    Delete {
        #[command(flatten)]
        select: queue::Selection,
    },
    /// Show one message: envelope, each recipient's state and last reply, attempts.
    Show {
        /// The queue ID, as `queue list` and the logs give it.
        id: String,
        /// The message's envelope and state as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Loads the configuration, printing every problem on failure.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| report_config_error(&e))
}

fn report_config_error(error: &ConfigError) -> ExitCode {
    for problem in &error.problems {
        errln!("error: {problem}");
    }
    ExitCode::from(EXIT_CONFIG)
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.as_path();
    let result = match cli.command {
        Command::Serve => load(path).and_then(serve::run),
        Command::CheckConfig {
            service_user,
            token_key_from_credential,
        } => check_config::run(path, &service_user, token_key_from_credential),
        Command::Status { url } => load(path).and_then(|c| status::run(&c, url)),
        Command::Health { url } => load(path).and_then(|c| health::run(&c, url)),
        Command::Queue {
            command: QueueCommand::List { json },
        } => load(path).and_then(|c| queue::list(&c, json)),
        Command::Queue {
            command: QueueCommand::Show { id, json },
        } => load(path).and_then(|c| queue::show(&c, &id, json)),
        Command::Queue { command } => load(path).and_then(|c| queue::control(&c, command)),
        Command::HashPassword => hash_password::run(),
        Command::Token {
            command: token::TokenCommand::Keygen { to: Some(to) },
        } => token::write_key(&to),
        Command::Token { command } => load(path).and_then(|c| token::run(c, command)),
        Command::GenerateDocs { dir } => docs::generate(&Cli::command(), &dir),
    };
    result.unwrap_or_else(|code| code)
}
