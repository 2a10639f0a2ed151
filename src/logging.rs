//! Log output: text or JSON lines on stderr (journald picks them up under systemd).
//! `RUST_LOG` overrides `[log].level`. A reload (SIGHUP) applies a new `[log].level`; a new
//! `[log].format` takes a restart.
//!
//! When stderr is the journal (`$JOURNAL_STREAM`), each line starts with its syslog priority
//! (`<3>` … `<7>`, sd-daemon(3)) so that `journalctl -p warning` works, and text lines leave
//! the time to journald instead of printing it twice.

use std::fmt;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
    let filter = from_env.unwrap_or_else(|| config_filter(&config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let journal = stderr_is_journal();
    let text = (config.format == LogFormat::Text).then(|| {
        let format = tracing_subscriber::fmt::format().with_ansi(ansi);
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .event_format(match journal {
                true => Prioritised::Journal(format.without_time()),
                false => Prioritised::Plain(format),
            })
    });
    let json = (config.format == LogFormat::Json).then(|| {
        let format = tracing_subscriber::fmt::format().json().flatten_event(true);
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .event_format(match journal {
                true => Prioritised::Journal(format),
                false => Prioritised::Plain(format),
            })
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

/// An event format, with the syslog priority in front when the output is the journal.
enum Prioritised<J, P> {
    Journal(J),
    Plain(P),
}

impl<S, N, J, P> FormatEvent<S, N> for Prioritised<J, P>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    J: FormatEvent<S, N>,
    P: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match self {
            Prioritised::Journal(format) => {
                let priority = match *event.metadata().level() {
                    Level::ERROR => 3,
                    Level::WARN => 4,
                    Level::INFO => 6,
                    Level::DEBUG | Level::TRACE => 7,
                };
                write!(writer, "<{priority}>")?;
                format.format_event(context, writer, event)
            }
            Prioritised::Plain(format) => format.format_event(context, writer, event),
        }
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` holds
/// its device and inode, and is inherited by children whose stderr may be something else.
fn stderr_is_journal() -> bool {
    let Some((device, inode)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (device, inode) = v.split_once(':')?;
        Some((device.parse::<u64>().ok()?, inode.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: fstat on descriptor 2 writes only the stat buffer we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut stat) } != 0 {
        return false;
    }
    stat.st_dev == device && stat.st_ino == inode
}

/// The filter for `[log] level`. rustls warns about every client that sends an IP address as
/// its TLS server name (printers do), which says nothing an admin can act on: its warnings are
/// left out unless the level names rustls itself.
fn config_filter(level: &str) -> EnvFilter {
    let filter = EnvFilter::new(level);
    if level.contains("rustls") {
        return filter;
    }
    match "rustls=error".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    }
}

/// Applies `[log].level` from a reloaded configuration (unless `RUST_LOG` rules).
pub fn apply_level(config: &LogConfig) {
    let Some(handle) = LEVEL.get() else { return };
    // The level was validated with the rest of the file.
    if let Ok(filter) = EnvFilter::try_new(&config.level).map(|_| config_filter(&config.level))
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

/// The most characters of client-supplied text a log line or reply shows.
pub const UNTRUSTED_MAX_CHARS: usize = 256;

/// Text a client sent (user names, HELO names, addresses, parameters), for a log line or a
/// reply: control characters, line separators and bidirectional overrides are escaped (so a
/// newline cannot forge a log line and an escape sequence cannot recolour a terminal), a
/// backslash is doubled (so an escape cannot be faked), and the rest is cut after
/// [`UNTRUSTED_MAX_CHARS`] characters.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (count, c) in self.0.chars().enumerate() {
            if count == UNTRUSTED_MAX_CHARS {
                return write!(f, "…[{} more characters]", self.0.chars().count() - count);
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() || is_invisible_format(c) => {
                    write!(f, "\\u{{{:x}}}", c as u32)?
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Characters that move or hide text without being control characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_warnings_are_left_out_unless_asked_for() {
        assert_eq!(config_filter("info").to_string(), "rustls=error,info");
        assert_eq!(
            config_filter("debug,rustls=debug").to_string(),
            "rustls=debug,debug"
        );
    }

    #[test]
    fn client_text_cannot_forge_lines_or_colours() {
        let shown =
            Untrusted("app\n2026-11-28T00:00:00Z  WARN forged\r\x1b[31mred\\n\u{202E}").to_string();
        assert_eq!(
            shown,
            "app\\n2026-11-28T00:00:00Z  WARN forged\\r\\u{1b}[31mred\\\\n\\u{202e}"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            Untrusted(&long).to_string(),
            format!("{}…[744 more characters]", "x".repeat(256))
        );
        assert_eq!(
            Untrusted("printer@contoso.com").to_string(),
            "printer@contoso.com"
        );
    }
}
