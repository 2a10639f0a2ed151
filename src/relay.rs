//! The relay as `serve` runs it, built from a configuration: what lives for the whole
//! process ([`Process`]: spool, metrics, budgets, delivery status, alert memory, the
//! console's sessions and audit record, the token manager, which each generation
//! reconfigures) and a [`Generation`] of everything else the configuration decides (intake
//! listeners, admin endpoint, delivery, control socket, alerts). `serve` builds the first
//! generation at start and a new one on each reload; tests build theirs with the same code.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryStatus, LocalBudget, Outbound};
use crate::metrics::Metrics;
use crate::oauth::http::TokenClient;
use crate::oauth::manager::TokenManager;
use crate::oauth::{FileStore, TokenKey, TokenStore};
use crate::queue::Spool;
use crate::smtp::listener::Server;
use crate::smtp::policy::Policy;
use crate::smtp::session::Intake;

/// What lives for the whole process.
pub struct Process {
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    /// The open SMTP sessions, whichever generation accepted them.
    pub sessions: Arc<crate::smtp::sessions::Sessions>,
    /// Where `metrics.tls`'s list of clients on outdated TLS is kept between runs.
    tls_clients_file: std::path::PathBuf,
    /// Where sends and connections are counted: this process's saved budgets, or with
    /// `[cluster]` Redis for all nodes.
    pub budget: Arc<dyn crate::delivery::Budget>,
    /// The budgets saved under `state_dir` (without `[cluster]`), written out at shutdown.
    saved_budget: Option<Arc<LocalBudget>>,
    /// With `[cluster]`: this node's view of the cluster (heartbeats, Redis's health).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The `[cluster]` it started with: a change takes effect at the next restart.
    pub cluster_config: Option<crate::config::ClusterConfig>,
    pub delivery_status: Arc<DeliveryStatus>,
    pub alerts: crate::admin::alerts::AlertMemory,
    /// Who is signed in to the console: a reload signs nobody out (see its module).
    pub console_sessions: Arc<crate::admin::sign_in::sessions::Sessions>,
    /// The console's "Recent actions".
    pub console_actions: Arc<crate::admin::audit::Recent>,
    /// Cancelled to stop the relay: everything drains.
    pub shutdown: CancellationToken,
    /// Told when a generation wants to be replaced by a fresh one (a token store key that
    /// was missing has appeared); `serve` reloads as for SIGHUP.
    pub reload: Arc<tokio::sync::Notify>,
    /// The token manager, from the first generation that has accounts and a usable store
    /// key until the stop: each later generation's configuration is applied to it in place,
    /// so a reload never waits for a token request, nor restarts one.
    tokens: tokio::sync::Mutex<Option<Arc<TokenManager>>>,
    /// The token manager's background task: at the stop it ends once a request under way has
    /// finished (a rotated refresh token must reach the store).
    token_refresher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Process {
    /// Opens the state directory (made private), the spool (recovering what a crash left)
    /// and the saved budgets; with `[cluster]`, joins it (refused when another live node
    /// uses this one's `node_name`).
    pub async fn open(config: &Config) -> Result<Process, String> {
        let state_dir = &config.server.state_dir;
        crate::private_files::private_dir(state_dir)
            .map_err(|e| format!("{}: {e}", state_dir.display()))?;
        let (spool, recovery) =
            Spool::open(&config.spool_dir(), config.queue.fsync).map_err(|e| e.to_string())?;
        tracing::info!(
            spool = %config.spool_dir().display(),
            queued = recovery.queued,
            removed_incomplete = recovery.removed_incomplete,
            moved_to_corrupt = recovery.moved_to_corrupt,
            "spool opened"
        );
        let (budget, saved_budget, cluster): (Arc<dyn crate::delivery::Budget>, _, _) =
            match &config.cluster {
                Some(cluster) => {
                    let cluster = crate::cluster::Cluster::start(cluster, Some(state_dir))
                        .await
                        .map_err(|e| e.to_string())?;
                    let cluster = Arc::new(cluster);
                    let report = cluster.report();
                    tracing::info!(node = %report.node, redis = %report.redis,
                        "cluster: tokens, budgets and connection limits are shared through Redis");
                    (Arc::clone(&cluster) as _, None, Some(cluster))
                }
                None => {
                    let saved = open_budget(state_dir);
                    (Arc::clone(&saved) as _, Some(saved), None)
                }
            };
        make_token_key(config);
        let metrics = Arc::new(Metrics::default());
        restore_tls_clients(state_dir, &metrics);
        Ok(Process {
            spool,
            sessions: crate::smtp::sessions::Sessions::new(Arc::clone(&metrics)),
            metrics,
            tls_clients_file: state_dir.join(TLS_CLIENTS_FILE),
            budget,
            saved_budget,
            cluster,
            cluster_config: config.cluster.clone(),
            delivery_status: Arc::default(),
            alerts: Arc::default(),
            console_sessions: Arc::default(),
            console_actions: Arc::default(),
            shutdown: CancellationToken::new(),
            reload: Arc::default(),
            tokens: Default::default(),
            token_refresher: Default::default(),
        })
    }

    fn outbound(&self) -> Outbound {
        Outbound {
            spool: Arc::clone(&self.spool),
            metrics: Arc::clone(&self.metrics),
            budget: Arc::clone(&self.budget),
            status: Arc::clone(&self.delivery_status),
        }
    }

    /// Waits for the token manager to stop (after the shutdown was cancelled): for a token
    /// request under way, not for a back-off.
    pub async fn finish_token_requests(&self) {
        let refresher = self
            .token_refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(refresher) = refresher {
            let _ = refresher.await;
        }
    }

    /// At shutdown: waits until the saved budgets hold every send so far, and saves the
    /// list of clients on outdated TLS.
    pub async fn save_state(&self) {
        if let Some(saved) = &self.saved_budget {
            saved.flush().await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.flush().await;
        }
        save_tls_clients(&self.metrics, &self.tls_clients_file).await;
    }

    /// Saves the clients seen on TLS older than 1.2, when the list changed, every minute
    /// until the relay stops (a week's list should survive a restart or an upgrade).
    pub fn keep_tls_clients(&self) {
        let metrics = Arc::clone(&self.metrics);
        let path = self.tls_clients_file.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => save_tls_clients(&metrics, &path).await,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
}

async fn save_tls_clients(metrics: &Metrics, path: &std::path::Path) {
    let Some(clients) = metrics.tls.unsaved() else {
        return;
    };
    let bytes = serde_json::to_vec(&clients).unwrap_or_default();
    if let Err(e) =
        crate::private_files::atomic_write_off_thread(path.to_owned(), bytes, false).await
    {
        tracing::warn!(file = %path.display(), error = %e,
            "cannot save the list of clients on outdated TLS");
    }
}

/// A single relay whose configuration names no key file keeps its token store key in
/// `state_dir/token.key`: made here at the first start (0600), unless the key comes from
/// the environment or a systemd credential.
fn make_token_key(config: &Config) {
    let Some(path) = config.tokens.key_file.as_deref() else {
        return;
    };
    if !config.tokens.key_made_by_relay || TokenKey::supplied_elsewhere().is_some() || path.exists()
    {
        return;
    }
    match TokenKey::write_new(path) {
        Ok(_) => tracing::info!(target: "tokens", file = %path.display(),
            "made the token store key (no [tokens] key_file is configured): keep a copy with your backups, the stored tokens cannot be read without it"),
        // The relay runs on without tokens and says why where they are needed.
        Err(e) => tracing::warn!(target: "tokens", error = %e, "cannot make the token store key"),
    }
}

/// Where the clients seen on TLS older than 1.2 are kept between runs.
const TLS_CLIENTS_FILE: &str = "tls-clients.json";

/// Reads back the clients on outdated TLS an earlier run saved; a file that cannot be read
/// costs only the list (said once), never the start.
fn restore_tls_clients(state_dir: &std::path::Path, metrics: &Metrics) {
    let path = state_dir.join(TLS_CLIENTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the list of clients on outdated TLS");
            return;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(clients) => metrics.tls.restore(clients),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the list of clients on outdated TLS cannot be read; starting afresh")
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
pub struct Sockets {
    smtp: crate::smtp::listener::Handoff,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Sockets {
    /// The SMTP addresses, for `systemctl status`.
    pub fn listening(&self) -> String {
        let mut addresses: Vec<String> = self
            .smtp
            .values()
            .filter_map(|listener| listener.local_addr().ok())
            .map(|address| address.to_string())
            .collect();
        addresses.sort();
        addresses.join(", ")
    }
}

/// Everything one configuration runs.
pub struct Generation {
    pub config: Arc<Config>,
    /// The SMTP listeners' addresses, in the configuration's order.
    pub smtp_addresses: Vec<SocketAddr>,
    /// The admin endpoint's address, if it has one.
    pub admin_address: Option<SocketAddr>,
    /// The token manager, when accounts are configured and the store key is usable.
    pub tokens: Option<Arc<TokenManager>>,
    accepting: CancellationToken,
    server: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    outbound: CancellationToken,
    outbound_tasks: Vec<JoinHandle<()>>,
}

impl Generation {
    /// Stops accepting and sending (its sessions go on: they end with the process's
    /// shutdown, or by themselves); returns the server task, which ends with the last session.
    /// Delivery is stopped when this returns: its waits for tokens end with it, and the token
    /// manager, which is the process's, goes on.
    pub async fn retire(mut self) -> JoinHandle<()> {
        self.accepting.cancel();
        self.outbound.cancel();
        for task in self.outbound_tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.await;
        }
        self.server
    }

    /// Waits for everything to end (after the process's shutdown was cancelled).
    pub async fn finish(self, process: &Process) {
        let server = self.retire().await;
        let _ = server.await;
        process.finish_token_requests().await;
    }
}

/// A generation whose sockets are bound, not yet started.
pub struct Prepared {
    config: Arc<Config>,
    server: Server,
    intake: Arc<Intake>,
    admin_listener: Option<tokio::net::TcpListener>,
    admin_token: Option<crate::oauth::Secret>,
    /// `[admin] tls`: read by each generation, so a reload picks up a renewed certificate.
    admin_tls: Option<tokio_rustls::TlsAcceptor>,
    admin_sign_in: Option<Arc<crate::admin::sign_in::flow::SignIn>>,
}

/// Binds what the configuration asks for (reusing `sockets` where addresses are unchanged).
/// Nothing runs yet, so a failure leaves the running generation untouched.
pub async fn prepare(
    process: &Process,
    config: Arc<Config>,
    sockets: &mut Sockets,
) -> Result<Prepared, String> {
    let tls = match &config.tls {
        Some(tls) => Some(
            crate::smtp::tls::Acceptors::new(tls, config.wants_legacy_tls())
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    if tls.as_ref().and_then(|t| t.legacy_key_is_rsa()) == Some(false) {
        tracing::warn!("{}", crate::smtp::tls::NOT_RSA);
    }
    if !config.queue.fsync {
        tracing::warn!("{}", crate::config::WARN_FSYNC_OFF);
    }
    let intake = Arc::new(Intake {
        policy: Policy::new(&config),
        config: Arc::clone(&config),
        spool: Arc::clone(&process.spool),
        tls,
        shutdown: process.shutdown.clone(),
        accepting: process.shutdown.child_token(),
        metrics: Arc::clone(&process.metrics),
        sessions: Arc::clone(&process.sessions),
        delivery: Arc::clone(&process.delivery_status),
    });
    // Work on duplicates: if anything below fails, `sockets` still serves the next reload.
    let mut reuse: crate::smtp::listener::Handoff = sockets
        .smtp
        .iter()
        .filter_map(|(key, socket)| socket.try_clone().ok().map(|s| (*key, s)))
        .collect();
    let mut server = Server::bind(Arc::clone(&intake), &mut reuse)
        .await
        .map_err(|e| e.to_string())?;
    let admin_token = crate::admin::bearer_token(&config)
        .map_err(|e| format!("[admin] bearer_token_file: {e}"))?;
    let admin_tls = match &config.admin.tls {
        Some(tls) => Some(crate::smtp::tls::acceptor(tls).map_err(|e| format!("[admin] {e}"))?),
        None => None,
    };
    let admin_sign_in = match &config.admin.sign_in {
        Some(sign_in) => Some(Arc::new(crate::admin::sign_in::flow::SignIn::new(
            sign_in.clone(),
            Arc::clone(&process.console_sessions),
        )?)),
        None => None,
    };
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
        admin_tls,
        admin_sign_in,
    })
}

impl Prepared {
    /// Starts it, with the process's token manager set to its configuration.
    pub async fn start(self, process: &Process) -> Generation {
        let config = self.config;
        let smtp_addresses = self.server.local_addrs();
        let admin_address = self
            .admin_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        // Said before the SMTP listeners' lines (they come from the server's task): a
        // reader of the log knows both addresses once it sees "listening".
        if let Some(address) = admin_address {
            let scheme = if self.admin_tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(%address, scheme, "admin HTTP listening");
        }
        let outbound = process.shutdown.child_token();
        let mut outbound_tasks = Vec::new();
        let manager = token_manager(&config, process).await;
        if manager.is_none() && !config.accounts.is_empty() {
            outbound_tasks.push(tokio::spawn(await_token_key(
                Arc::clone(&config),
                Arc::clone(&process.reload),
                outbound.clone(),
            )));
        }
        let adopted = process
            .console_sessions
            .adopt(config.admin.sign_in.as_ref());
        if adopted != Default::default() {
            tracing::info!(
                kept = adopted.kept,
                role_changed = adopted.role_changed,
                signed_out = adopted.signed_out,
                "admin sessions under the new configuration"
            );
        }
        let admin = self.admin_listener.map(|listener| {
            let admin = Arc::new(Admin {
                bearer_token: self.admin_token,
                config: Arc::clone(&config),
                spool: Arc::clone(&process.spool),
                tokens: manager.clone(),
                metrics: Arc::clone(&process.metrics),
                delivery: Arc::clone(&process.delivery_status),
                budget: Arc::clone(&process.budget),
                cluster: process.cluster.clone(),
                sign_in: self.admin_sign_in,
                recent: Arc::clone(&process.console_actions),
            });
            tokio::spawn(crate::admin::serve(
                listener,
                self.admin_tls,
                admin,
                outbound.clone(),
            ))
        });
        if config.alerts.webhook.is_some() || config.alerts.email.is_some() {
            let alerter = crate::admin::alerts::Alerter::new(
                Arc::clone(&config),
                Arc::clone(&process.spool),
                manager.clone(),
                Arc::clone(&process.delivery_status),
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
            config,
            smtp_addresses,
            admin_address,
            tokens: manager,
            accepting: self.intake.accepting.clone(),
            server: tokio::spawn(self.server.run()),
            admin,
            outbound,
            outbound_tasks,
        }
    }
}

/// How often a relay without a usable token store key looks for one.
const KEY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for the token store key to become usable (`smtprelay token keygen` wrote it, an
/// admin fixed its permissions), then asks for a reload: the new generation starts the
/// token manager and delivery, with nothing for the admin to do.
async fn await_token_key(
    config: Arc<Config>,
    reload: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(KEY_POLL) => {}
        }
        let key_file = config.tokens.key_file.clone();
        let usable =
            tokio::task::spawn_blocking(move || TokenKey::load(key_file.as_deref()).is_ok())
                .await
                .unwrap_or(false);
        if usable {
            tracing::info!(target: "tokens", "the token store key is usable now: reloading to start delivery");
            reload.notify_one();
            return;
        }
    }
}

/// The process's token manager set to `config`: made at the first generation with accounts and
/// a usable store key (its background task keeps every account's token fresh until the stop),
/// reconfigured in place by the later ones. Without a usable store key the relay still
/// accepts mail, which waits in the queue until the key is fixed.
async fn token_manager(config: &Config, process: &Process) -> Option<Arc<TokenManager>> {
    let mut current = process.tokens.lock().await;
    if let Some(manager) = current.as_ref() {
        if !manager.same_store(config) {
            tracing::warn!(target: "tokens",
                "[tokens] store, file, key_file and backups changes take effect at the next restart");
        }
        manager.reconfigure(config);
    }
    if config.accounts.is_empty() {
        tracing::warn!("{}", crate::config::WARN_NO_ACCOUNT);
        return None;
    }
    if current.is_none() {
        let manager = Arc::new(new_token_manager(config, process.cluster.as_deref()).await?);
        let refresher = tokio::spawn(Arc::clone(&manager).run(process.shutdown.clone()));
        *process
            .token_refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(refresher);
        *current = Some(manager);
    }
    let manager = current.clone()?;
    for status in manager.statuses() {
        tracing::info!(target: "tokens", account = %status.account, state = status.health.name(),
            reason = status.health.reason().unwrap_or(""), "account");
    }
    Some(manager)
}

async fn new_token_manager(
    config: &Config,
    cluster: Option<&crate::cluster::Cluster>,
) -> Option<TokenManager> {
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
    let store: Arc<dyn TokenStore> = match cluster {
        Some(cluster) => Arc::new(cluster.token_store(key)),
        None => Arc::new(FileStore::new(
            config.server.state_dir.join(&config.tokens.file),
            key,
            config.tokens.backups,
        )),
    };
    Some(TokenManager::new(config, store, client).await)
}
