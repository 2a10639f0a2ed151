//! The `smtprelay` command line.

mod check_config;
mod hash_password;
mod notify;
mod queue;
mod serve;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

pub const DEFAULT_CONFIG: &str = "/etc/smtprelay/smtprelay.toml";

/// Exit status for a configuration problem (sysexits EX_CONFIG), so systemd and scripts can
/// tell it from a runtime failure.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "smtprelay",
    version,
    about = "SMTP relay for devices and apps, sending through Exchange Online with OAuth2"
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
    /// Check the configuration file and print every problem found.
    CheckConfig,
    /// Inspect the queue.
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
    /// Try one message now, or bring back every failed one with --failed.
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        failed: bool,
    },
    /// Keep a message from being delivered until released.
    Hold { id: String },
    /// Let a held message go.
    Release { id: String },
    /// Remove a message from the queue (no bounce).
    Delete { id: String },
    /// Show one message: envelope, each recipient's state and last reply, attempts.
    Show {
        id: String,
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
        eprintln!("error: {problem}");
    }
    ExitCode::from(EXIT_CONFIG)
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.as_path();
    let result = match cli.command {
        Command::Serve => load(path).and_then(serve::run),
        Command::CheckConfig => check_config::run(path),
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
        Command::GenerateDocs { dir } => generate_docs(&dir),
    };
    result.unwrap_or_else(|code| code)
}

/// Man pages (one per command, as `smtprelay-token-login.1` and so on) and completions for
/// bash, zsh and fish, generated from the same definitions as the parser.
fn generate_docs(dir: &std::path::Path) -> Result<ExitCode, ExitCode> {
    use clap::CommandFactory;
    let fail = |e: std::io::Error| {
        eprintln!("error: {}: {e}", dir.display());
        ExitCode::FAILURE
    };
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man).map_err(fail)?;
    std::fs::create_dir_all(&completions).map_err(fail)?;
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man).map_err(fail)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command.clone(), "smtprelay", &completions)
            .map_err(fail)?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(ExitCode::SUCCESS)
}
