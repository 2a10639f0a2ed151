//! The `smtprelay` command line.

mod check_config;
mod hash_password;
mod queue;
mod serve;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Check the configuration file and print every problem found.
    CheckConfig(ConfigArg),
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Hash a password for a [[user]] table (reads it from the terminal or stdin).
    HashPassword,
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// List queued messages: ID, age, size, state, sender, recipients.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG, env = "SMTPRELAY_CONFIG")]
    config: PathBuf,
}

impl ConfigArg {
    /// Loads the configuration, printing every problem on failure.
    fn load(&self) -> Result<Config, ExitCode> {
        Config::load(&self.config).map_err(|e| report_config_error(&e))
    }
}

fn report_config_error(error: &ConfigError) -> ExitCode {
    for problem in &error.problems {
        eprintln!("error: {problem}");
    }
    ExitCode::from(EXIT_CONFIG)
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(arg) => arg.load().and_then(serve::run),
        Command::CheckConfig(arg) => check_config::run(&arg.config),
        Command::Queue {
            command: QueueCommand::List { config, json },
        } => config.load().and_then(|c| queue::list(&c, json)),
        Command::HashPassword => hash_password::run(),
    };
    result.unwrap_or_else(|code| code)
}
