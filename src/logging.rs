//! Log output: text or JSON lines on stderr (journald picks them up under systemd).
//! `RUST_LOG` overrides `[log].level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// For CLI commands: warnings and errors only (token events, retries), unless `RUST_LOG` says
/// otherwise; the command's own output goes to stdout.
pub fn init_cli() {
    init(&LogConfig {
        level: "warn".into(),
        format: LogFormat::Text,
    });
}
