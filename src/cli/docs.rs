//! `smtprelay generate-docs DIR` (hidden; packaging/build.sh runs it): man pages (one per
//! command, as `smtprelay-token-login.1` and so on) and bash, zsh and fish completions from
//! the clap definitions, so they cannot drift from the real options. The main page gets the
//! sections an admin looks for that clap does not know about.

use super::output::{errln, outln};
use std::path::Path;
use std::process::ExitCode;

use clap_mangen::roff::{Roff, bold, roman};

/// FILES, SIGNALS, ENVIRONMENT, EXIT STATUS and SEE ALSO of smtprelay(1): (term, text).
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "FILES",
        &[
            (
                "/etc/smtprelay/smtprelay.toml",
                "The configuration. Every key is described in \
                 /usr/share/doc/smtprelay/config-reference.toml.",
            ),
            (
                "/etc/smtprelay/token.key",
                "The key of the token store ([tokens] key_file); the unit hands it to the \
                 relay as the systemd credential token-key. Keep a copy: tokens cannot be \
                 read without it.",
            ),
            (
                "/var/lib/smtprelay/spool/",
                "The queue: queue/ (waiting), failed/ (kept by on_failure = \"keep\"), \
                 corrupt/ (damaged files found at start-up), tmp/ (messages being received).",
            ),
            (
                "/var/lib/smtprelay/tokens.json.enc",
                "The tokens, AES-256-GCM encrypted, with rotated backups .1 to .N.",
            ),
            (
                "/var/lib/smtprelay/control.sock",
                "How queue flush, retry, hold, release and delete reach the running relay.",
            ),
        ],
    ),
    (
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Load the configuration again. New sessions get it, open sessions finish \
                 under the old one, nothing queued is touched; a file that does not load is \
                 logged and the running configuration stays.",
            ),
            (
                "SIGTERM, SIGINT",
                "Stop accepting, answer idle sessions with 421, let sessions in DATA finish \
                 within [server] shutdown_timeout, finish the deliveries in hand, exit.",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            ("SMTPRELAY_CONFIG", "The configuration file, as --config."),
            (
                "SMTPRELAY_TOKEN_KEY",
                "The token store key (32 bytes as 64 hex digits or base64); it comes \
                 before the systemd credential and [tokens] key_file.",
            ),
            (
                "CREDENTIALS_DIRECTORY",
                "Set by systemd: the key is read from its file token-key, before \
                 [tokens] key_file.",
            ),
            (
                "RUST_LOG",
                "A log filter (e.g. smtprelay=debug,tokens=trace) instead of [log] level.",
            ),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "Success."),
            ("1", "Failure (the message says why)."),
            (
                "78",
                "The configuration is invalid or unreadable (EX_CONFIG); every problem is \
                 printed with its file, line and key.",
            ),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "systemctl status smtprelay, journalctl -u smtprelay",
            "The service and its log. GET /health and /metrics on [admin] listen.",
        )],
    ),
];

pub fn generate(command: &clap::Command, dir: &Path) -> Result<ExitCode, ExitCode> {
    let fail = |e: std::io::Error| {
        errln!("error: {}: {e}", dir.display());
        ExitCode::FAILURE
    };
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man).map_err(fail)?;
    std::fs::create_dir_all(&completions).map_err(fail)?;
    clap_mangen::generate_to(command.clone(), &man).map_err(fail)?;
    let main_page = man.join("smtprelay.1");
    let mut page = std::fs::read(&main_page).map_err(fail)?;
    extra_sections().to_writer(&mut page).map_err(fail)?;
    std::fs::write(&main_page, page).map_err(fail)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command.clone(), "smtprelay", &completions)
            .map_err(fail)?;
    }
    outln!("wrote {} and {}", man.display(), completions.display());
    Ok(ExitCode::SUCCESS)
}

fn extra_sections() -> Roff {
    let mut roff = Roff::new();
    for (heading, entries) in SECTIONS {
        roff.control("SH", [*heading]);
        for (term, text) in *entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*text)]);
        }
    }
    roff
}
