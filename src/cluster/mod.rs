//! Several relay nodes sending as the same mailboxes: they count the mailboxes' budgets and
//! connections together in Redis (`[cluster]`), so Exchange sees one sender's limits kept.
//!
//! [`Cluster`] is the node's side of it: the Redis connection, this node's heartbeat and its
//! view of the others, and (in `budget.rs`) the [`crate::delivery::Budget`] that counts in
//! Redis. Redis unreachable costs no mail: each node then sends within its share of every
//! budget (`[cluster] nodes`), or waits when no share is set, and says so on `/health`; what
//! it sent meanwhile goes into Redis when Redis answers again, before it counts there.

pub mod budget;
pub mod ledger;
pub mod scripts;
pub mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::ClusterConfig;
use crate::delivery::budget::Connections;
use ledger::Ledger;
use scripts::Scripts;

pub const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;
/// Longer than this, and a Redis call counts as failed: Redis is unreachable for now.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone from the list.
const NODE_TTL_MS: u64 = 5_000;
/// A dead node's connection leases run out after this.
const LEASE_TTL_MS: u64 = 6_000;
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Back from an outage, a node counts on its share this long, so that every node has put
/// its outage's sends into Redis (each does at its next heartbeat) before any counts there.
const SETTLE: Duration = Duration::from_secs(3);
/// A node not heard from for this long may be cut off from Redis and sending within its
/// share: the nodes counting in Redis leave that share free. Beats come every second, and
/// each node reads the list at its own beat, so a live node is at most about 2 s behind.
const LIVE_MS: u64 = 2_500;
/// Cut off from Redis, a node waits this long before sending within its share: by then
/// every node still counting in Redis has seen it fall silent (`LIVE_MS`).
const HANDOVER: Duration = Duration::from_secs(3);
/// The longest a send may be in flight; until it finishes it counts as finishing then.
const IN_FLIGHT_MS: u64 = 600_000;
/// How long a worker keeps an idle connection, which another node may be waiting for.
const KEEP_IDLE: Duration = Duration::from_secs(2);
/// How soon a mailbox held back only by sends in flight (elsewhere) looks again.
const POLL_MS: u64 = 100;
/// While the budgets cannot be shared and there is no share, how soon to look again.
const UNSHARED_WAIT: Duration = Duration::from_secs(1);
/// How often the ledger is written to `state_dir` when it changed (sends from this node's
/// share are written before they start).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The ledger's file in `state_dir`.
pub const LEDGER_FILE: &str = "cluster-ledger.json";
/// This installation's identity in the cluster, in `state_dir`: made once, kept across
/// restarts, so a node restarted within its heartbeat's TTL is not taken for another one
/// using its name.
pub const INSTANCE_FILE: &str = "cluster-instance";

/// Another instance beats with this node's `node_name`: two nodes under one name would be
/// one in the heartbeat list and in each node's count of the live ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "[cluster] node_name {name:?} is in use by another live node ({other}; its last heartbeat \
     {age_ms} ms ago): every node needs its own node_name (the default is the host name, so \
     nodes sharing a host must set one each)"
)]
pub struct NameTaken {
    pub name: String,
    /// The other node as its heartbeat describes it.
    pub other: String,
    pub age_ms: u64,
}

/// Why a node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration: the password or CA file, the URL, the instance file.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    NameTaken(#[from] NameTaken),
}

/// What one heartbeat found.
enum Beat {
    /// Redis did not answer: nothing known.
    Unanswered,
    /// At start: the name is another live node's; nothing was recorded.
    Taken(NameTaken),
    Recorded,
}

pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    /// `redis_url` without its password, for logs and reports.
    redis_display: String,
    redis: ConnectionManager,
    scripts: Scripts,
    state: Mutex<State>,
    /// This node's connections per mailbox (in Redis too while it answers).
    connections: Arc<Connections>,
    /// Held while a send is checked against this node's share and counted, so two workers
    /// cannot both take its last place.
    share_check: tokio::sync::Mutex<()>,
    calls: AtomicU64,
    failures: AtomicU64,
    next_number: AtomicU64,
    started_at: u64,
    /// This installation (see [`INSTANCE_FILE`]): tells another node under the same name
    /// from this one restarted.
    instance: String,
    /// New for every run, in every id this node puts into Redis: ids never meet another
    /// node's, whatever the names (two runs in one second under one name did).
    run: String,
    /// Where the ledger is kept between runs (none for the admin's commands).
    ledger_file: Option<PathBuf>,
    /// The ledger's change count last written; held while writing, one write at a time.
    ledger_saved: tokio::sync::Mutex<u64>,
}

/// The ledger file: the ledger and the data set its standing in Redis refers to.
#[derive(Serialize)]
struct LedgerOut<'a> {
    epoch: &'a str,
    ledger: &'a Ledger,
}

#[derive(serde::Deserialize)]
struct LedgerIn {
    epoch: String,
    ledger: Ledger,
}

struct State {
    reach: Reach,
    /// The data set this node has counted in (see `scripts`); "" before the first contact.
    epoch: String,
    /// Redis's clock minus this node's, in ms, as of the last answer.
    offset_ms: i64,
    ledger: Ledger,
    /// Live nodes as of the last heartbeat.
    nodes: Vec<Node>,
    /// Another live node beats under this node's name: what a heartbeat last found, and
    /// when. A beat finds the clash only when the other node's beat came last, so it is
    /// kept until no beat has found it for `NODE_TTL_MS` (the other node is then gone).
    name_clash: Option<(NameTaken, Instant)>,
    /// This node's leases: id → lease set key.
    leases: HashMap<String, String>,
}

#[derive(Debug, Clone)]
enum Reach {
    Down { since_ms: u64, error: String },
    Up { since: Instant },
}

/// A node as its heartbeat shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    /// When it last beat (Unix ms, Redis's clock).
    pub last_seen_ms: u64,
    pub version: String,
    pub started_at: u64,
}

/// How the budgets are counted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// In Redis, for all nodes together.
    Shared,
    /// Redis is back after an outage: in Redis and within this node's share both, until
    /// every node has put what it sent meanwhile into Redis.
    Settling,
    /// Redis is unreachable (or just back): within this node's share.
    OwnShare,
    /// Redis is unreachable and there is no share: sending waits.
    Paused,
}

/// The cluster as `/health`, `/metrics` and the status page show it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub node: String,
    pub redis: String,
    pub reachable: bool,
    /// Since when Redis has been unreachable (Unix ms), and the last error.
    pub unreachable_since_ms: Option<u64>,
    pub error: Option<String>,
    pub mode: Mode,
    /// `[cluster] nodes`: the share each node has while Redis is unreachable is 1/this.
    pub share_of: Option<u32>,
    pub nodes: Vec<Node>,
    /// Of `share_of` nodes, how many have not been heard from: their shares are kept free
    /// of what the others count in Redis (they may be sending on their own).
    pub silent_nodes: u32,
    /// Another live node uses this node's name (found after the start, which refuses it).
    pub name_clash: Option<String>,
    pub redis_calls: u64,
    pub redis_failures: u64,
}

impl ClusterReport {
    /// How the budgets are counted, in words.
    pub fn mode_words(&self) -> String {
        match self.mode {
            Mode::Shared => "shared by all nodes".to_owned(),
            Mode::Settling => format!(
                "shared, and within this node's share (1/{}) until all nodes are back",
                self.share_of.unwrap_or(1)
            ),
            Mode::OwnShare => format!("at this node's share (1/{})", self.share_of.unwrap_or(1)),
            Mode::Paused => "paused until Redis answers".to_owned(),
        }
    }

    /// Why `/health` is degraded, if it is.
    pub fn problem(&self) -> Option<String> {
        let since = self
            .unreachable_since_ms
            .map(|ms| crate::clock::rfc3339(ms / 1000))
            .unwrap_or_default();
        let error = self.error.as_deref().unwrap_or("");
        if let Some(clash) = &self.name_clash {
            return Some(format!("cluster: {clash}"));
        }
        match self.mode {
            Mode::Shared if self.silent_nodes > 0 => Some(format!(
                "cluster: {} of {} nodes not heard from: the others keep {} of every budget free for them",
                self.silent_nodes,
                self.share_of.unwrap_or(1),
                if self.silent_nodes == 1 {
                    format!("a share (1/{})", self.share_of.unwrap_or(1))
                } else {
                    format!("{} shares", self.silent_nodes)
                }
            )),
            Mode::Shared => None,
            Mode::Settling => Some(format!(
                "cluster: Redis at {} answers again; budgets stay within this node's share too for a moment",
                self.redis
            )),
            Mode::OwnShare => Some(format!(
                "cluster: Redis at {} unreachable since {since} ({error}): this node sends within its share (1/{}) of every budget",
                self.redis,
                self.share_of.unwrap_or(1)
            )),
            Mode::Paused => Some(format!(
                "cluster: Redis at {} unreachable since {since} ({error}): sending waits for it ([cluster] nodes is not set, so there is no share to send within)",
                self.redis
            )),
        }
    }
}

impl Cluster {
    /// Connects lazily (an unreachable Redis does not stop the relay), refuses a `node_name`
    /// another live node uses, and starts the heartbeat. With Redis unreachable the name
    /// cannot be checked now; every later heartbeat looks (and `/health` says so if it turns
    /// out taken). With `state_dir`, this node's ledger is kept there between runs: a node
    /// restarted while Redis is away still counts what it sent before, and Redis hears of
    /// it later.
    pub async fn start(
        config: &ClusterConfig,
        state_dir: Option<&Path>,
    ) -> Result<Cluster, StartError> {
        let ledger_file = state_dir.map(|dir| dir.join(LEDGER_FILE));
        let (epoch, ledger) = ledger_file.as_deref().map(read_ledger).unwrap_or_default();
        let instance = match state_dir {
            Some(dir) => instance_of(&dir.join(INSTANCE_FILE)).map_err(StartError::Config)?,
            None => new_epoch(),
        };
        let cluster = Cluster::build(config, ledger_file, epoch, ledger, instance)
            .map_err(StartError::Config)?;
        let inner = &cluster.inner;
        // Before the heartbeat runs: a beat recorded first would hide the other node.
        match inner.beat(true).await {
            Beat::Taken(taken) => return Err(taken.into()),
            Beat::Unanswered => {
                tracing::warn!(node = %config.node_name,
                    "cluster: Redis does not answer, so whether another node uses this node_name is checked when it does");
            }
            Beat::Recorded => {}
        }
        tokio::spawn(every(
            SAVE_EVERY,
            Arc::downgrade(inner),
            |inner| async move { inner.save_ledger().await },
        ));
        tokio::spawn(every(
            HEARTBEAT_EVERY,
            Arc::downgrade(inner),
            |inner| async move { inner.beat_once().await },
        ));
        tokio::spawn(every(
            RENEW_EVERY,
            Arc::downgrade(inner),
            |inner| async move { inner.renew().await },
        ));
        Ok(cluster)
    }

    /// Redis without a node's heartbeat: for the admin's commands (`smtprelay token …`),
    /// which use the cluster's store but are not a node of it.
    pub fn connect(config: &ClusterConfig) -> Result<Cluster, String> {
        Cluster::build(config, None, String::new(), Ledger::default(), new_epoch())
    }

    fn build(
        config: &ClusterConfig,
        ledger_file: Option<PathBuf>,
        epoch: String,
        ledger: Ledger,
        instance: String,
    ) -> Result<Cluster, String> {
        let client = client(config)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("[cluster] redis_url: {e}"))?;
        let mut redis_display = config.redis_url.clone();
        let _ = redis_display.set_password(None);
        let inner = Arc::new(Inner {
            config: config.clone(),
            redis_display: redis_display.to_string(),
            redis,
            scripts: Scripts::default(),
            state: Mutex::new(State {
                reach: Reach::Down {
                    since_ms: crate::clock::unix_ms(),
                    error: "not reached yet".into(),
                },
                epoch,
                offset_ms: 0,
                ledger,
                nodes: Vec::new(),
                name_clash: None,
                leases: HashMap::new(),
            }),
            connections: Arc::default(),
            share_check: tokio::sync::Mutex::new(()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            next_number: AtomicU64::new(0),
            started_at: crate::clock::unix_ms() / 1000,
            instance,
            run: new_epoch(),
            ledger_file,
            ledger_saved: tokio::sync::Mutex::new(0),
        });
        Ok(Cluster { inner })
    }

    pub fn report(&self) -> ClusterReport {
        self.inner.report()
    }

    /// Writes the ledger now (at shutdown).
    pub async fn flush(&self) {
        self.inner.save_ledger().await;
    }
}

/// This installation's identity: read from `path`, or made and written there the first
/// time. A file that cannot be written is a start error: without it, a restart would look
/// like another node under this one's name.
fn instance_of(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let instance = new_epoch();
    crate::private_files::atomic_write(path, format!("{instance}\n").as_bytes(), true)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(instance)
}

/// Another node as its heartbeat's details describe it, for the admin.
fn describe_node(details: &str) -> String {
    let details: serde_json::Value = serde_json::from_str(details).unwrap_or_default();
    let text = |key: &str| details[key].as_str().unwrap_or("?").to_owned();
    format!(
        "host {}, pid {}, state_dir {}, started {}",
        text("host"),
        details["pid"].as_u64().unwrap_or(0),
        text("state_dir"),
        crate::clock::rfc3339(details["started_at"].as_u64().unwrap_or(0))
    )
}

/// The ledger a previous run left; an unreadable file is moved aside, loudly.
fn read_ledger(path: &Path) -> (String, Ledger) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Default::default(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cluster: cannot read this node's ledger; its earlier sends are not counted");
            return Default::default();
        }
    };
    match serde_json::from_slice::<LedgerIn>(&bytes) {
        Ok(saved) => (saved.epoch, saved.ledger.resumed()),
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".unreadable");
            let _ = std::fs::rename(path, &aside);
            tracing::error!(file = %path.display(), error = %e, "cluster: this node's ledger is unreadable (moved aside); its earlier sends are not counted");
            Default::default()
        }
    }
}

fn client(config: &ClusterConfig) -> Result<redis::Client, String> {
    let mut url = config.redis_url.clone();
    if let Some(path) = &config.password_file {
        let password = std::fs::read_to_string(path)
            .map_err(|e| format!("[cluster] password_file {}: {e}", path.display()))?;
        url.set_password(Some(password.trim_end_matches(['\r', '\n'])))
            .map_err(|()| "[cluster] redis_url cannot carry a password".to_owned())?;
    }
    let client = if url.scheme() == "rediss" {
        let root_cert = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("[cluster] ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert,
        };
        redis::Client::build_with_tls(url.as_str(), certificates)
    } else {
        redis::Client::open(url.as_str())
    };
    client.map_err(|e| format!("[cluster] redis_url: {e}"))
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a script; a failure or a late answer marks Redis unreachable.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.redis.clone();
        self.timed(invocation.invoke_async(&mut connection)).await
    }

    /// Runs a command, as [`Inner::call`] runs a script.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, String> {
        let mut connection = self.redis.clone();
        self.timed(command.query_async(&mut connection)).await
    }

    /// Sends a request and waits at most `CALL_TIMEOUT` for its answer, counting the call.
    async fn within_timeout<T>(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(CALL_TIMEOUT, request)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer within 1 s",
                )))
            })
    }

    /// As [`Inner::within_timeout`]; what happens tells whether Redis is reachable.
    async fn timed<T>(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match self.within_timeout(request).await {
            Ok(value) => {
                self.reached();
                Ok(value)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let error = e.to_string();
                self.unreachable(&error);
                Err(error)
            }
        }
    }

    /// Writes the ledger if it changed since the last write.
    async fn save_ledger(&self) {
        let Some(path) = &self.ledger_file else {
            return;
        };
        let mut saved = self.ledger_saved.lock().await;
        let (changes, bytes) = {
            let state = self.state();
            let changes = state.ledger.changes();
            if changes == *saved {
                return;
            }
            let out = LedgerOut {
                epoch: &state.epoch,
                ledger: &state.ledger,
            };
            (changes, serde_json::to_vec(&out).expect("serialises"))
        };
        match crate::private_files::atomic_write_off_thread(path.clone(), bytes, false).await {
            Ok(()) => *saved = changes,
            Err(e) => tracing::warn!(error = %e, "cluster: cannot write this node's ledger"),
        }
    }

    fn reached(&self) {
        let mut state = self.state();
        if let Reach::Down { since_ms, .. } = &state.reach {
            let down_for = crate::clock::unix_ms().saturating_sub(*since_ms);
            tracing::info!(redis = %self.redis_display, down_ms = down_for,
                "cluster: Redis answers; budgets are shared again once every node has put back what it sent meanwhile");
            state.reach = Reach::Up {
                since: Instant::now(),
            };
        }
    }

    fn unreachable(&self, error: &str) {
        let mut state = self.state();
        match &mut state.reach {
            Reach::Up { .. } => {
                let share = match self.config.nodes {
                    Some(n) => format!("each node sends within 1/{n} of every budget"),
                    None => "sending waits ([cluster] nodes is not set)".to_owned(),
                };
                tracing::warn!(redis = %self.redis_display, error, "cluster: Redis unreachable: {share}");
                state.reach = Reach::Down {
                    since_ms: crate::clock::unix_ms(),
                    error: error.to_owned(),
                };
            }
            Reach::Down { error: last, .. } => *last = error.to_owned(),
        }
    }

    fn reachable(&self) -> bool {
        matches!(self.state().reach, Reach::Up { .. })
    }

    /// Of `[cluster] nodes`, how many have not been heard from lately (this one counts as
    /// heard): they may be cut off from Redis and sending within their shares.
    fn silent_nodes(&self) -> u32 {
        let Some(nodes) = self.config.nodes else {
            return 0;
        };
        let now = self.cluster_now();
        let state = self.state();
        let live = state
            .nodes
            .iter()
            .filter(|n| n.name != self.config.node_name && n.last_seen_ms + LIVE_MS > now)
            .count() as u32;
        nodes.saturating_sub(live + 1)
    }

    /// Until when a node just cut off from Redis waits before sending within its share.
    fn handover_until(&self) -> Option<Instant> {
        let Reach::Down { since_ms, .. } = self.state().reach else {
            return None;
        };
        let waited = Duration::from_millis(crate::clock::unix_ms().saturating_sub(since_ms));
        (waited < HANDOVER).then(|| Instant::now() + (HANDOVER - waited))
    }

    /// Whether the budgets are counted in Redis now.
    fn mode(&self) -> Mode {
        match (&self.state().reach, self.config.nodes) {
            // Without a share nothing was sent meanwhile: nothing to wait for.
            (Reach::Up { since }, Some(_)) if since.elapsed() < SETTLE => Mode::Settling,
            (Reach::Up { .. }, _) => Mode::Shared,
            (Reach::Down { .. }, Some(_)) => Mode::OwnShare,
            (Reach::Down { .. }, None) => Mode::Paused,
        }
    }

    /// Now in Redis's clock (ms), as well as this node knows it.
    fn cluster_now(&self) -> u64 {
        let offset = self.state().offset_ms;
        crate::clock::unix_ms().saturating_add_signed(offset)
    }

    fn note_redis_time(&self, redis_now: u64) {
        self.state().offset_ms = redis_now as i64 - crate::clock::unix_ms() as i64;
    }

    /// The latest Redis's clock may show when it runs a call sent now, for the call to
    /// count: after it, this node has stopped waiting and counted elsewhere.
    fn deadline(&self) -> u64 {
        self.cluster_now() + CALL_TIMEOUT.as_millis() as u64
    }

    /// A time in Redis's clock as an instant of this process.
    fn instant_at(&self, cluster_ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(cluster_ms.saturating_sub(self.cluster_now()))
    }

    /// A mailbox's key for `what` (rate, daily, minutes, conn:…).
    fn key(&self, what: &str, mailbox: &str) -> String {
        format!("{}{what}:{mailbox}", self.config.key_prefix)
    }

    /// A key of the whole cluster (epoch, nodes, node-details).
    fn shared_key(&self, name: &str) -> String {
        format!("{}{name}", self.config.key_prefix)
    }

    fn fresh_id(&self) -> String {
        let n = self.next_number.fetch_add(1, Ordering::Relaxed);
        format!("{}:{}:{n}", self.config.node_name, self.run)
    }

    /// A data set other than the one this node counted in: Redis lost its data (or another
    /// node found it lost first). Everything of the last day is owed to it again.
    fn adopt_epoch(&self, epoch: &str) {
        let mut state = self.state();
        if state.epoch == epoch {
            return;
        }
        if !state.epoch.is_empty() {
            tracing::warn!(redis = %self.redis_display,
                "cluster: Redis lost its data (restarted empty?): this node puts back its sends of the last day");
        }
        state.epoch = epoch.to_owned();
        state.ledger.forget_redis();
        // Counting there waits until the other nodes have put theirs back too.
        state.reach = Reach::Up {
            since: Instant::now(),
        };
    }

    fn report(&self) -> ClusterReport {
        let mode = self.mode();
        // Only worth saying while the others count in Redis.
        let silent_nodes = match self.reachable() {
            true => self.silent_nodes(),
            false => 0,
        };
        let state = self.state();
        let (reachable, unreachable_since_ms, error) = match &state.reach {
            Reach::Up { .. } => (true, None, None),
            Reach::Down { since_ms, error } => (false, Some(*since_ms), Some(error.clone())),
        };
        ClusterReport {
            node: self.config.node_name.clone(),
            redis: self.redis_display.clone(),
            reachable,
            unreachable_since_ms,
            error,
            mode,
            share_of: self.config.nodes,
            nodes: state.nodes.clone(),
            silent_nodes,
            name_clash: state
                .name_clash
                .as_ref()
                .map(|(clash, _)| clash.to_string()),
            redis_calls: self.calls.load(Ordering::Relaxed),
            redis_failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// One heartbeat: says this node lives, learns the others and the epoch, and puts back
    /// into Redis what it owes.
    async fn beat_once(&self) {
        self.beat(false).await;
    }

    /// A heartbeat; with `claim` (the first, at start) one that records nothing when the
    /// name is another live node's.
    async fn beat(&self, claim: bool) -> Beat {
        // What it sent while cut off goes into Redis before its beat says it is back: until
        // then the others keep its share free.
        if !claim && !self.state().epoch.is_empty() {
            self.pay_back().await;
        }
        let details = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at,
            "instance": self.instance,
            "host": crate::config::machine_hostname(),
            "pid": std::process::id(),
            "state_dir": self.ledger_file.as_deref().and_then(Path::parent).map(|d| d.display().to_string()),
        })
        .to_string();
        let mut invocation = self.scripts.heartbeat.prepare_invoke();
        invocation
            .key(self.shared_key("nodes"))
            .key(self.shared_key("epoch"))
            .key(self.shared_key("node-details"))
            .arg(&self.config.node_name)
            .arg(NODE_TTL_MS)
            .arg(details)
            .arg(new_epoch())
            .arg(&self.instance)
            .arg(if claim { "claim" } else { "beat" });
        let Ok(reply) = self.call::<Vec<String>>(&invocation).await else {
            return Beat::Unanswered;
        };
        let mut reply = reply.into_iter();
        let status = reply.next().unwrap_or_default();
        let now: u64 = reply.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        self.note_redis_time(now);
        let clash = reply.next().unwrap_or_default();
        let taken = |details: &str, age_ms: u64| NameTaken {
            name: self.config.node_name.clone(),
            other: describe_node(details),
            age_ms,
        };
        if status == "taken" {
            let age_ms = reply.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            return Beat::Taken(taken(&clash, age_ms));
        }
        let epoch = reply.next().unwrap_or_default();
        let mut nodes = Vec::new();
        let rest: Vec<String> = reply.collect();
        for chunk in rest.chunks(3) {
            if let [name, seen, details] = chunk {
                let details: serde_json::Value = serde_json::from_str(details).unwrap_or_default();
                nodes.push(Node {
                    name: name.clone(),
                    last_seen_ms: seen.parse().unwrap_or(0),
                    version: details["version"].as_str().unwrap_or("").to_owned(),
                    started_at: details["started_at"].as_u64().unwrap_or(0),
                });
            }
        }
        let clash = (!clash.is_empty()).then(|| taken(&clash, 0));
        {
            let mut state = self.state();
            match clash {
                Some(clash) => {
                    if state.name_clash.is_none() {
                        // Redis was unreachable at this node's start, or the other started then.
                        tracing::error!(error = %clash, "cluster: another node uses this node's name");
                    }
                    state.name_clash = Some((clash, Instant::now()));
                }
                None => {
                    let ttl = Duration::from_millis(NODE_TTL_MS);
                    if state
                        .name_clash
                        .as_ref()
                        .is_some_and(|(_, found)| found.elapsed() >= ttl)
                    {
                        state.name_clash = None;
                    }
                }
            }
            state.nodes = nodes;
        }
        self.adopt_epoch(&epoch);
        self.pay_back().await;
        Beat::Recorded
    }
}

/// A name for a new data set in Redis.
fn new_epoch() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

/// Runs `job` every `period` for as long as the cluster lives.
async fn every<F: std::future::Future<Output = ()>>(
    period: Duration,
    inner: Weak<Inner>,
    job: impl Fn(Arc<Inner>) -> F,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        job(inner).await;
    }
}
