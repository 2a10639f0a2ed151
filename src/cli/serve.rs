//! `smtprelay serve`: start-up, signals, reload and graceful shutdown.
//!
//! Everything built from the configuration is a [`Generation`]: the intake (listeners,
//! policy, TLS), the admin endpoint, and the outbound side (token manager, delivery,
//! control socket, alerts). SIGHUP loads the file again; if it is valid, a new generation
//! takes over the listening sockets whose address is unchanged, the old one stops accepting
//! (its sessions finish with the settings they started with), its outbound side stops after
//! the message in hand, and the new outbound side starts on the same spool. An invalid file
//! is reported and the running generation stays. SIGTERM/SIGINT drain everything.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::notify::{State, notify};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Spool;
use crate::relay::{Process, Sockets, prepare};

pub fn run(config: Config) -> Result<ExitCode, ExitCode> {
    crate::logging::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| {
        tracing::error!(error = %e, "cannot start the runtime");
        ExitCode::FAILURE
    })?;
    runtime.block_on(serve(config))
}

/// The line `systemctl status` shows.
fn status(listening: &str, spool: &Spool, metrics: &Metrics) -> String {
    format!(
        "listening on {listening}; {} queued, {} sessions open",
        spool.len(),
        metrics
            .sessions_active
            .load(std::sync::atomic::Ordering::Relaxed)
    )
}

/// Tells systemd the relay serves (at start and after each reload), and keeps the addresses
/// for [`report_status`].
fn ready(addresses: &std::sync::Mutex<String>, sockets: &Sockets, process: &Process) {
    let now = sockets.listening();
    notify(State::Ready {
        status: &status(&now, &process.spool, &process.metrics),
    });
    *addresses.lock().unwrap_or_else(|e| e.into_inner()) = now;
}

/// How often `systemctl status` is brought up to date when no watchdog asks for more.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps `systemctl status` current and, with `WatchdogSec=`, tells systemd the relay is
/// alive: a runtime that stops running tasks stops these, and systemd restarts it.
async fn report_status(
    listening: Arc<std::sync::Mutex<String>>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
) {
    let watchdog = super::notify::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now, and READY=1 just said it all.
    tick.tick().await;
    loop {
        tick.tick().await;
        let addresses = listening.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let line = status(&addresses, &spool, &metrics);
        notify(State::Running {
            status: &line,
            watchdog: watchdog.is_some(),
        });
    }
}

async fn serve(config: Config) -> Result<ExitCode, ExitCode> {
    let fail = |message: String| {
        tracing::error!("{message}");
        ExitCode::FAILURE
    };
    let process = Process::open(&config).await.map_err(fail)?;
    process.keep_tls_clients();
    let mut sockets = Sockets::default();
    let mut path = config.path.clone();
    let log_format = config.log.format;
    let prepared = prepare(&process, Arc::new(config), &mut sockets)
        .await
        .map_err(fail)?;
    // Installed before the listeners announce themselves, so a SIGTERM that follows the
    // "listening" line is always a graceful stop.
    let mut signals =
        Signals::install().map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let mut current = prepared.start(&process).await;
    let addresses = Arc::new(std::sync::Mutex::new(String::new()));
    ready(&addresses, &sockets, &process);
    let reporter = tokio::spawn(report_status(
        Arc::clone(&addresses),
        Arc::clone(&process.spool),
        Arc::clone(&process.metrics),
    ));
    let mut retired: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            _ = process.reload.notified() => Signal::Reload,
        };
        match signal {
            Signal::Stop => break,
            Signal::Reload => 'reload: {
                notify(State::Reloading);
                tracing::info!(config = %path.display(), "reloading the configuration");
                let config = match load_checked(&path) {
                    Ok(config) => config,
                    Err(problems) => {
                        for problem in problems {
                            tracing::error!("{problem}");
                        }
                        tracing::error!("reload refused: the running configuration stays");
                        break 'reload;
                    }
                };
                path = config.path.clone();
                let log = config.log.clone();
                let cluster_changed = config.cluster != process.cluster_config;
                let next = match prepare(&process, Arc::new(config), &mut sockets).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!("reload refused: {e}; the running configuration stays");
                        break 'reload;
                    }
                };
                // The old generation stops accepting and sending; its sessions go on.
                retired.push(current.retire().await);
                current = next.start(&process).await;
                // Before the line that says so: whoever reads it sees the new level at work.
                crate::logging::apply_level(&log);
                tracing::info!("configuration reloaded");
                if log.format != log_format {
                    tracing::warn!("[log] format changes take effect at the next restart");
                }
                if cluster_changed {
                    tracing::warn!("[cluster] changes take effect at the next restart");
                }
            }
        }
        // After a reload, applied or refused: either way the relay runs.
        ready(&addresses, &sockets, &process);
    }
    reporter.abort();
    notify(State::Stopping);
    process.shutdown.cancel();
    // Close the duplicates too, so the ports refuse connections from now on.
    drop(sockets);
    current.finish(&process).await;
    for server in retired {
        let _ = server.await;
    }
    process.save_state().await;
    tracing::info!(queued = process.spool.len(), "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Loads the file and checks what `check-config` checks.
fn load_checked(path: &std::path::Path) -> Result<Config, Vec<String>> {
    let config = Config::load(path)
        .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    if let Some(tls) = &config.tls
        && let Err(e) = crate::smtp::tls::Acceptors::new(tls, config.wants_legacy_tls())
    {
        return Err(vec![format!("{}: [tls]: {e}", path.display())]);
    }
    Ok(config)
}

enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                Signal::Stop
            }
            _ = self.int.recv() => {
                tracing::info!("SIGINT: shutting down");
                Signal::Stop
            }
            _ = self.hup.recv() => {
                tracing::info!("SIGHUP");
                Signal::Reload
            }
        }
    }
}
