//! `smtprelay serve`: start-up, signals, reload and graceful shutdown.
//!
//! Everything built from the configuration is a [`Generation`]: the intake (listeners,
//! policy, TLS), the admin endpoint, and the outbound side (token manager, delivery,
//! control socket, alerts). SIGHUP loads the file again; if it is valid, a new generation
//! takes over the listening sockets whose address is unchanged, the old one stops accepting
//! (its sessions finish with the settings they started with), its outbound side stops after
//! the message in hand, and the new outbound side starts on the same spool. An invalid file
//! is reported and the running generation stays. SIGTERM/SIGINT drain everything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::notify::{State, notify};
use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryStatus, LocalBudget, Outbound};
use crate::metrics::Metrics;
use crate::oauth::http::TokenClient;
use crate::oauth::manager::TokenManager;
use crate::oauth::{FileStore, TokenKey};
use crate::queue::Spool;
use crate::smtp::listener::Server;
use crate::smtp::policy::Policy;
use crate::smtp::session::Intake;

pub fn run(config: Config) -> Result<ExitCode, ExitCode> {
    crate::logging::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| {
        tracing::error!(error = %e, "cannot start the runtime");
        ExitCode::FAILURE
    })?;
    runtime.block_on(serve(config))
}

/// The SMTP addresses, for `systemctl status`.
fn listening(sockets: &Sockets) -> String {
    let mut addresses: Vec<String> = sockets
        .smtp
        .values()
        .filter_map(|listener| listener.local_addr().ok())
        .map(|address| address.to_string())
        .collect();
    addresses.sort();
    addresses.join(", ")
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
    let now = listening(sockets);
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

/// What lives for the whole process.
struct Process {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    budget: Arc<LocalBudget>,
    delivery_status: Arc<DeliveryStatus>,
    alerts: crate::admin::alerts::AlertMemory,
    shutdown: CancellationToken,
}

impl Process {
    fn outbound(&self) -> Outbound {
        Outbound {
            spool: Arc::clone(&self.spool),
            metrics: Arc::clone(&self.metrics),
            budget: Arc::clone(&self.budget) as Arc<dyn crate::delivery::Budget>,
            status: Arc::clone(&self.delivery_status),
        }
    }
}

/// The sending budgets saved under `state_dir`. A file that cannot be read is moved aside
/// (the relay starts with empty budgets rather than not at all) and said loudly.
fn open_budget(state_dir: &std::path::Path) -> Arc<LocalBudget> {
    let path = state_dir.join("budgets.json");
    match LocalBudget::open(&path) {
        Ok(budget) => Arc::new(budget),
        Err(e) => {
            let aside = state_dir.join("budgets.json.unreadable");
            let moved = std::fs::rename(&path, &aside);
            tracing::error!(error = %e, moved_to = %aside.display(), moved = moved.is_ok(),
                "the sending budgets cannot be read: starting with empty ones, so recent sends are not counted");
            Arc::new(LocalBudget::open(&path).unwrap_or_else(|_| LocalBudget::in_memory()))
        }
    }
}

/// Sockets handed from one generation to the next.
#[derive(Default)]
struct Sockets {
    smtp: HashMap<SocketAddr, std::net::TcpListener>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
}

struct Generation {
    accepting: CancellationToken,
    server: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    outbound: CancellationToken,
    outbound_tasks: Vec<JoinHandle<()>>,
    /// Handed to the next generation's manager, which takes over its counters and tokens.
    tokens: Option<Arc<TokenManager>>,
}

async fn serve(config: Config) -> Result<ExitCode, ExitCode> {
    let fail = |message: String| {
        tracing::error!("{message}");
        ExitCode::FAILURE
    };
    let state_dir = &config.server.state_dir;
    crate::private_files::private_dir(state_dir)
        .map_err(|e| fail(format!("{}: {e}", state_dir.display())))?;
    let (spool, recovery) =
        Spool::open(&config.spool_dir(), config.queue.fsync).map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        spool = %config.spool_dir().display(),
        queued = recovery.queued,
        removed_incomplete = recovery.removed_incomplete,
        moved_to_corrupt = recovery.moved_to_corrupt,
        "spool opened"
    );
    let process = Process {
        spool,
        metrics: Arc::new(Metrics::default()),
        budget: open_budget(&config.server.state_dir),
        delivery_status: Arc::default(),
        alerts: Arc::default(),
        shutdown: CancellationToken::new(),
    };
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
    let mut current = prepared.start(&process, None);
    let addresses = Arc::new(std::sync::Mutex::new(String::new()));
    ready(&addresses, &sockets, &process);
    let reporter = tokio::spawn(report_status(
        Arc::clone(&addresses),
        Arc::clone(&process.spool),
        Arc::clone(&process.metrics),
    ));
    let mut retired: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => 'reload: {
                notify(State::Reloading);
                tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
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
                let next = match prepare(&process, Arc::new(config), &mut sockets).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!("reload refused: {e}; the running configuration stays");
                        break 'reload;
                    }
                };
                // The old generation stops accepting and sending; its sessions go on.
                current.accepting.cancel();
                current.outbound.cancel();
                for task in current.outbound_tasks.drain(..) {
                    let _ = task.await;
                }
                if let Some(admin) = current.admin.take() {
                    let _ = admin.await;
                }
                retired.push(current.server);
                let previous = current.tokens.take();
                current = next.start(&process, previous.as_deref());
                // Before the line that says so: whoever reads it sees the new level at work.
                crate::logging::apply_level(&log);
                tracing::info!("configuration reloaded");
                if log.format != log_format {
                    tracing::warn!("[log] format changes take effect at the next restart");
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
    let _ = current.server.await;
    for server in retired {
        let _ = server.await;
    }
    for task in current.outbound_tasks {
        let _ = task.await;
    }
    if let Some(admin) = current.admin {
        let _ = admin.await;
    }
    process.budget.flush().await;
    tracing::info!(queued = process.spool.len(), "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Loads the file and checks what `check-config` checks.
fn load_checked(path: &std::path::Path) -> Result<Config, Vec<String>> {
    let config = Config::load(path)
        .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    if let Some(tls) = &config.tls
        && let Err(e) = crate::smtp::tls::acceptor(tls)
    {
        return Err(vec![format!("{}: [tls]: {e}", path.display())]);
    }
    Ok(config)
}

/// A generation whose sockets are bound, not yet started.
struct Prepared {
    config: Arc<Config>,
    server: Server,
    intake: Arc<Intake>,
    admin_listener: Option<tokio::net::TcpListener>,
    admin_token: Option<crate::oauth::Secret>,
}

/// Binds what the configuration asks for (reusing `sockets` where addresses are unchanged).
/// Nothing runs yet, so a failure leaves the running generation untouched.
async fn prepare(
    process: &Process,
    config: Arc<Config>,
    sockets: &mut Sockets,
) -> Result<Prepared, String> {
    let tls = match &config.tls {
        Some(tls) => Some(crate::smtp::tls::acceptor(tls).map_err(|e| e.to_string())?),
        None => None,
    };
    if !config.queue.fsync {
        tracing::warn!("queue.fsync = false: accepted mail can be lost in a power failure");
    }
    let intake = Arc::new(Intake {
        policy: Policy::new(&config),
        config: Arc::clone(&config),
        spool: Arc::clone(&process.spool),
        tls,
        shutdown: process.shutdown.clone(),
        accepting: process.shutdown.child_token(),
        metrics: Arc::clone(&process.metrics),
    });
    // Work on duplicates: if anything below fails, `sockets` still serves the next reload.
    let mut reuse: HashMap<SocketAddr, std::net::TcpListener> = sockets
        .smtp
        .iter()
        .filter_map(|(address, socket)| socket.try_clone().ok().map(|s| (*address, s)))
        .collect();
    let mut server = Server::bind(Arc::clone(&intake), &mut reuse)
        .await
        .map_err(|e| e.to_string())?;
    let admin_token = crate::admin::bearer_token(&config)
        .map_err(|e| format!("[admin] bearer_token_file: {e}"))?;
    let admin_listener = match config.admin.listen {
        None => None,
        Some(address) => {
            let reused = sockets
                .admin
                .as_ref()
                .filter(|(old, _)| *old == address)
                .and_then(|(_, socket)| socket.try_clone().ok());
            let socket = match reused {
                Some(socket) => socket,
                _ => {
                    let socket = std::net::TcpListener::bind(address)
                        .map_err(|e| format!("[admin] cannot listen on {address}: {e}"))?;
                    socket
                        .set_nonblocking(true)
                        .map_err(|e| format!("[admin] {address}: {e}"))?;
                    socket
                }
            };
            Some(socket)
        }
    };
    let admin_handoff = match (&admin_listener, config.admin.listen) {
        (Some(socket), Some(address)) => Some((
            address,
            socket
                .try_clone()
                .map_err(|e| format!("[admin] {address}: {e}"))?,
        )),
        _ => None,
    };
    let admin_listener = match admin_listener {
        Some(socket) => {
            Some(tokio::net::TcpListener::from_std(socket).map_err(|e| format!("[admin]: {e}"))?)
        }
        None => None,
    };
    // Everything is bound: from here the new sockets are the ones to hand on.
    sockets.smtp = server.handoff();
    sockets.admin = admin_handoff;
    Ok(Prepared {
        config,
        server,
        intake,
        admin_listener,
        admin_token,
    })
}

impl Prepared {
    fn start(self, process: &Process, previous: Option<&TokenManager>) -> Generation {
        let config = self.config;
        let outbound = process.shutdown.child_token();
        let mut outbound_tasks = Vec::new();
        let tokens = start_token_manager(&config, &outbound, previous);
        let manager = tokens.map(|(manager, refresher)| {
            outbound_tasks.push(refresher);
            manager
        });
        let admin = self.admin_listener.map(|listener| {
            let admin = Arc::new(Admin {
                bearer_token: self.admin_token,
                config: Arc::clone(&config),
                spool: Arc::clone(&process.spool),
                tokens: manager.clone(),
                metrics: Arc::clone(&process.metrics),
                delivery: Arc::clone(&process.delivery_status),
            });
            tokio::spawn(crate::admin::serve(listener, admin, outbound.clone()))
        });
        if config.alerts.webhook.is_some() || config.alerts.email.is_some() {
            let alerter = crate::admin::alerts::Alerter::new(
                Arc::clone(&config),
                Arc::clone(&process.spool),
                manager.clone(),
                Arc::clone(&process.alerts),
            );
            outbound_tasks.push(tokio::spawn(alerter.run(outbound.clone())));
        }
        if let Some(manager) = manager.clone() {
            let delivery = Delivery::new(&process.outbound(), manager, Arc::clone(&config));
            let socket = crate::admin::control::socket_path(&config.server.state_dir);
            let control = delivery.control();
            let stop = outbound.clone();
            outbound_tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::admin::control::serve(socket, control, stop).await {
                    tracing::error!(error = %e, "control socket failed");
                }
            }));
            // Workers finish the message in hand; every exchange has its own timeout.
            outbound_tasks.push(tokio::spawn(delivery.run(outbound.clone())));
        }
        Generation {
            accepting: self.intake.accepting.clone(),
            server: tokio::spawn(self.server.run()),
            admin,
            outbound,
            outbound_tasks,
            tokens: manager,
        }
    }
}

/// Keeps every account's token fresh in the background. Without a usable store key the relay
/// still accepts mail, which waits in the queue until the key is fixed.
fn start_token_manager(
    config: &Config,
    shutdown: &CancellationToken,
    previous: Option<&TokenManager>,
) -> Option<(Arc<TokenManager>, JoinHandle<()>)> {
    if config.accounts.is_empty() {
        tracing::warn!("no [[account]] is configured: mail is queued but has nowhere to go");
        return None;
    }
    let key = match TokenKey::load(config.tokens.key_file.as_deref()) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(target: "tokens", error = %e, "tokens unavailable: mail is held until this is fixed");
            return None;
        }
    };
    let client = match TokenClient::new() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(target: "tokens", error = %e, "tokens unavailable");
            return None;
        }
    };
    let store = FileStore::new(
        config.server.state_dir.join(&config.tokens.file),
        key,
        config.tokens.backups,
    );
    let manager = Arc::new(TokenManager::new(config, Arc::new(store), client));
    if let Some(previous) = previous {
        manager.take_over(previous);
    }
    for status in manager.statuses() {
        tracing::info!(target: "tokens", account = %status.account, state = status.health.name(),
            reason = status.health.reason().unwrap_or(""), "account");
    }
    let refresher = tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
    Some((manager, refresher))
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
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
