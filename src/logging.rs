//! Log output: text or JSON lines on stderr (journald picks them up under systemd).
//! `RUST_LOG` overrides `[log].level`. A reload (SIGHUP) applies a new `[log].level`; a new
//! `[log].format` takes a restart.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// The running filter, while it comes from the configuration (not `RUST_LOG`).
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init(config: &LogConfig) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let from_config = from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (config.format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let json = (config.format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    if installed && from_config {
        let _ = LEVEL.set(handle);
    }
}

/// Applies `[log].level` from a reloaded configuration (unless `RUST_LOG` rules).
pub fn apply_level(config: &LogConfig) {
    let Some(handle) = LEVEL.get() else { return };
    // The level was validated with the rest of the file.
    if let Ok(filter) = EnvFilter::try_new(&config.level)
        && let Err(e) = handle.reload(filter)
    {
        tracing::error!(error = %e, "cannot change the log level");
    }
}

/// For CLI commands: warnings and errors only (token events, retries), unless `RUST_LOG` says
/// otherwise; the command's own output goes to stdout.
pub fn init_cli() {
    init(&LogConfig {
        level: "warn".into(),
        format: LogFormat::Text,
    });
}
