//! The scheduler: owns the delivery schedule ([`Schedule`]) and is the only writer of delivery
//! state. It hands due messages to their account's workers, takes back what each attempt came
//! to, and records it in a task of its own ([`settle`]); the message counts as in flight
//! until that record is written, and the typed [`Report`] it ends with puts it back in the
//! schedule. New mail is handed over the moment the spool commits it; a token event lets the
//! account's waiting mail go. It never waits for anything but its next event, so a stop or a
//! reload ends it at once: waiting messages simply stay queued.
//!
//! Admin commands run here too, so they never race an attempt: one that meets a message in
//! flight (hold, delete) is carried out when the message comes back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::budget::Budget;
use super::disposition;
use super::lane::{Lane, route};
use super::schedule::{Applied, Deferred, Report, Schedule, Standing, Upstream};
use super::settle::{save_progress, settle};
use super::status::{DeliveryStatus, FallbackInUse, HeldMailbox};
use crate::config::Config;
use crate::delivery::agent::probe;
use crate::delivery::agent::transport::fallback::{RETRY_SMTP, Switch};
use crate::delivery::agent::worker::{self, Crew, FromWorker};
use crate::oauth::manager::{TokenEventKind, TokenManager};
use crate::queue::message_file::SpoolFileError;
use crate::queue::{Envelope, MessageFile, QueueId, Spool};

/// The longest the scheduler sleeps without looking around.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How often the held mailboxes in the status are brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What delivery keeps for the life of the process: a reload builds new lanes and workers
/// around the same spool, budgets and status.
#[derive(Clone)]
pub struct Outbound {
    pub spool: Arc<Spool>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub budget: Arc<dyn Budget>,
    pub status: Arc<DeliveryStatus>,
}

pub struct Delivery {
    context: Arc<Context>,
    /// What the delivery agents work with.
    agents: Arc<worker::Context>,
    /// Each lane's workers, with the queue they take messages from.
    crews: Vec<Arc<Crew>>,
    status: Arc<DeliveryStatus>,
    lanes: Vec<Arc<Lane>>,
    queues: Vec<mpsc::UnboundedSender<QueueId>>,
    control: mpsc::UnboundedSender<ControlRequest>,
    requests: mpsc::UnboundedReceiver<ControlRequest>,
}

/// What an admin can ask of the running queue (`smtprelay queue …`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", content = "id", rename_all = "snake_case")]
pub enum Control {
    /// Every deferred message is due now.
    Flush,
    Retry(QueueId),
    /// Failed messages (`on_failure = "keep"`) come back into the queue.
    RetryFailed,
    Hold(QueueId),
    Release(QueueId),
    Delete(QueueId),
    /// What each queued message waits for (`queue list`), as JSON: `[[id, Standing]…]`.
    Standings,
}

/// The scheduler's record tasks; an ended attempt's yields the message's report.
type Settling = JoinSet<Option<(QueueId, Report, Upstream)>>;

pub type ControlRequest = (
    Control,
    tokio::sync::oneshot::Sender<Result<String, String>>,
);

impl Delivery {
    pub fn new(outbound: &Outbound, tokens: Arc<TokenManager>, config: Arc<Config>) -> Delivery {
        let lanes: Vec<Arc<Lane>> = config
            .accounts
            .iter()
            .enumerate()
            .map(|(i, account)| Arc::new(Lane::new(i, account)))
            .collect();
        let (crews, queues) = lanes
            .iter()
            .map(|lane| {
                let (queue, jobs) = mpsc::unbounded_channel();
                let crew = Crew {
                    lane: lane.index,
                    account: Arc::clone(&lane.account),
                    jobs: tokio::sync::Mutex::new(jobs),
                    permits: Arc::new(lane.permits(Arc::clone(&outbound.budget))),
                    graph_until: lane.fallback.subscribe(),
                };
                (Arc::new(crew), queue)
            })
            .unzip();
        let (control, requests) = mpsc::unbounded_channel();
        Delivery {
            control,
            requests,
            queues,
            status: Arc::clone(&outbound.status),
            agents: Arc::new(worker::Context {
                spool: Arc::clone(&outbound.spool),
                tokens: Arc::clone(&tokens),
                hostname: config.server.hostname.clone(),
            }),
            context: Arc::new(Context {
                spool: Arc::clone(&outbound.spool),
                tokens,
                config,
                metrics: Arc::clone(&outbound.metrics),
                budget: Arc::clone(&outbound.budget),
            }),
            crews,
            lanes,
        }
    }

    /// Where queue commands go while delivery runs.
    pub fn control(&self) -> mpsc::UnboundedSender<ControlRequest> {
        self.control.clone()
    }

    /// Delivers until `shutdown`. Then waiting ends at once; a transaction under way finishes
    /// within `[server] shutdown_timeout` (after that it is cut, and the message stays queued).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let spool = Arc::clone(&self.context.spool);
        let mut arrivals = spool.arrivals();
        let mut token_events = self.context.tokens.subscribe();
        let (done_tx, mut done) = mpsc::unbounded_channel::<FromWorker>();
        let mut settling = Settling::new();
        let mut workers = JoinSet::new();
        for crew in &self.crews {
            for _ in 0..crew.account.config.upstream.max_connections {
                // Workers stop waiting (for a token, a connection) when delivery stops.
                workers.spawn(worker::run(
                    Arc::clone(&self.agents),
                    Arc::clone(crew),
                    done_tx.clone(),
                    shutdown.clone(),
                ));
            }
        }
        drop(done_tx);

        let mut schedule = Schedule::new(
            self.lanes
                .iter()
                .map(|l| l.config().upstream.max_connections),
        );
        // The queue is read in the background, oldest first, a batch at a time: delivery
        // starts with the first batch, however long the queue.
        let mut loading = Some(load_queue(Arc::clone(&spool), self.lanes.clone()));
        let mut status_at = Instant::now();
        // Probes of upstreams that could not be reached; dropped (cancelled) at the stop.
        let mut probes: JoinSet<(usize, bool)> = JoinSet::new();
        while !shutdown.is_cancelled() {
            // Before anything else: intake holds new mail against these counts.
            self.status.set_backlog(&self.lanes, schedule.backlog());
            let now = Instant::now();
            schedule.advance(now);
            for lane in schedule.take_probes() {
                probes.spawn(self.probe(lane));
            }
            while let Some((lane, id)) = schedule.next_dispatch() {
                let _ = self.queues[lane].send(id);
            }
            if now >= status_at {
                self.publish(&schedule);
                status_at = now + STATUS_EVERY;
            }
            let wake = schedule
                .next_wake()
                .unwrap_or(now + MAX_SLEEP)
                .min(now + MAX_SLEEP)
                .min(status_at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
                batch = next_batch(&mut loading) => match batch {
                    Some(batch) => self.schedule_loaded(&mut schedule, batch).await,
                    None => {
                        loading = None;
                        give_back_freed_memory();
                    }
                },
                Some(file) = arrivals.recv() => {
                    // New mail: nobody has tried it, so it is due now.
                    self.add(&mut schedule, &file, now, now);
                }
                Some((command, reply)) = self.requests.recv() => {
                    let result = self.command(command, &mut schedule).await;
                    let _ = reply.send(result);
                }
                Some(from_worker) = done.recv() => self.settle(from_worker, &mut settling),
                Some(settled) = settling.join_next() => {
                    if let Ok(Some((id, report, upstream))) = settled {
                        self.returned(&mut schedule, id, report, upstream).await;
                    }
                }
                Some(Ok((lane, answered))) = probes.join_next() => {
                    schedule.probed(lane, answered, Instant::now());
                }
                Ok(event) = token_events.recv() => {
                    if matches!(event.kind, TokenEventKind::Refreshed { .. } | TokenEventKind::Loaded)
                        && let Some(lane) = self.lanes.iter().position(|l| l.name() == event.account)
                    {
                        schedule.token_ready(lane);
                    }
                }
            }
        }
        // Closing the lanes' queues ends the workers once they finish what they hold; what
        // they bring back is still recorded.
        self.queues.clear();
        let limit = self.context.config.server.shutdown_timeout;
        let deadline = Instant::now() + limit;
        while !workers.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        timeout_secs = limit.as_secs(),
                        "delivery attempts still under way at the shutdown timeout were cut; their messages stay queued"
                    );
                    workers.abort_all();
                    while workers.join_next().await.is_some() {}
                }
                _ = workers.join_next() => {}
                Some(from_worker) = done.recv() => self.settle(from_worker, &mut settling),
                Some(settled) = settling.join_next() => {
                    if let Ok(Some((id, report, upstream))) = settled {
                        self.returned(&mut schedule, id, report, upstream).await;
                    }
                }
            }
        }
        while let Ok(from_worker) = done.try_recv() {
            self.settle(from_worker, &mut settling);
        }
        // Records are local writes and always finish: an attempt's results are never dropped.
        while let Some(settled) = settling.join_next().await {
            if let Ok(Some((id, report, upstream))) = settled {
                self.returned(&mut schedule, id, report, upstream).await;
            }
        }
        self.status.set_held(Vec::new());
        self.status.set_fallbacks(Vec::new());
    }

    /// Records what a worker brought back, in a task of its own.
    fn settle(&self, from_worker: FromWorker, settling: &mut Settling) {
        let context = Arc::clone(&self.context);
        match from_worker {
            FromWorker::Progress {
                id,
                state,
                recorded,
            } => {
                settling.spawn(async move {
                    save_progress(&context, id, &state).await;
                    let _ = recorded.send(());
                    None
                });
            }
            FromWorker::Ended(attempted) => {
                let lane = Arc::clone(&self.lanes[attempted.lane]);
                settling.spawn(async move {
                    let report = settle(&context, &lane, attempted.id, attempted.end).await;
                    Some((attempted.id, report, attempted.upstream))
                });
            }
            FromWorker::Switched { lane, switch } => self.record_switch(&self.lanes[lane], switch),
        }
    }

    /// Records that an account went to its Graph fallback, or back to SMTP; its workers see
    /// it from their next message on.
    fn record_switch(&self, lane: &Lane, switch: Switch) {
        match switch {
            Switch::ToGraph(reason) => {
                tracing::warn!(account = lane.name(), %reason,
                    retry_smtp_in_secs = RETRY_SMTP.as_secs(),
                    "SMTP AUTH is disabled: sending through Microsoft Graph instead");
                lane.fallback.switch(reason, Instant::now());
            }
            Switch::BackToSmtp => {
                if lane.fallback.back() {
                    tracing::info!(account = lane.name(), "SMTP AUTH works again: back to SMTP");
                }
            }
        }
    }

    /// Asks `lane`'s upstream whether it answers (see `agent/probe.rs`).
    fn probe(&self, lane: usize) -> impl std::future::Future<Output = (usize, bool)> + use<> {
        let lane = Arc::clone(&self.lanes[lane]);
        let helo = self.context.config.server.hostname.clone();
        async move {
            let on_fallback = lane.fallback.current(Instant::now()).is_some();
            let answered = match probe::upstream_answers(&lane.account, on_fallback, &helo).await {
                Ok(()) => {
                    tracing::info!(
                        account = lane.name(),
                        "the upstream answers again: its mail is due"
                    );
                    true
                }
                Err(error) => {
                    tracing::debug!(account = lane.name(), %error, "the upstream still does not answer");
                    false
                }
            };
            (lane.index, answered)
        }
    }

    /// A message is back from its attempt, recorded.
    async fn returned(
        &self,
        schedule: &mut Schedule,
        id: QueueId,
        report: Report,
        upstream: Upstream,
    ) {
        if let Some(deferred) = schedule.returned(id, report, upstream) {
            self.carry_out(id, deferred).await;
        }
    }

    fn add(&self, schedule: &mut Schedule, file: &MessageFile, due: Instant, now: Instant) {
        let (lane, mailbox) = destination(&self.lanes, &file.envelope);
        schedule.add(file.envelope.id, lane, &mailbox, due, now);
    }

    /// Schedules a batch of the queue read at start-up.
    async fn schedule_loaded(&self, schedule: &mut Schedule, batch: Loaded) {
        let now = Instant::now();
        for (id, lane) in batch.held {
            schedule.note_held(id, lane);
        }
        for queued in batch.scheduled {
            let due = crate::clock::instant_at_unix_ms(queued.next_attempt_ms);
            schedule.add(
                queued.id,
                usize::from(queued.lane),
                &queued.mailbox,
                due,
                now,
            );
        }
        for (id, problem) in batch.damaged {
            if let Err(e) = self.context.spool.set_aside(id, &problem).await {
                tracing::error!(queue_id = %id, error = %e, "cannot move a damaged spool file aside");
            }
        }
    }

    /// Brings the status's list of held mailboxes up to date.
    fn publish(&self, schedule: &Schedule) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let held = schedule
            .blocked()
            .into_iter()
            .map(|b| {
                let until = wall + b.until.saturating_duration_since(now);
                HeldMailbox::new(
                    self.lanes[b.lane].name(),
                    &b.mailbox,
                    &b.why,
                    until,
                    b.ready,
                )
            })
            .collect();
        self.status.set_held(held);
        let unix = |at: SystemTime| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let fallbacks = self
            .lanes
            .iter()
            .filter_map(|lane| {
                let switched = lane.fallback.current(now)?;
                Some(FallbackInUse {
                    account: lane.name().to_owned(),
                    reason: switched.reason,
                    since: unix(switched.since),
                    retry_smtp_at: unix(wall + switched.until.saturating_duration_since(now)),
                })
            })
            .collect();
        self.status.set_fallbacks(fallbacks);
        self.status.set_queue(schedule.census());
    }

    /// An admin's hold or delete, postponed while the message was in flight.
    async fn carry_out(&self, id: QueueId, deferred: Deferred) {
        let Some(file) = self.context.spool.get(id).await else {
            return;
        };
        let result = match deferred {
            Deferred::Hold => set_held(&self.context.spool, &file, Hold::On)
                .await
                .map(drop),
            Deferred::Delete => self.delete(id).await,
        };
        if let Err(e) = result {
            tracing::error!(queue_id = %id, error = %e, command = ?deferred, "cannot carry out the admin's command");
        }
    }

    async fn delete(&self, id: QueueId) -> Result<(), String> {
        self.context
            .spool
            .complete(id)
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(queue_id = %id, "deleted by an admin");
        Ok(())
    }

    async fn command(&self, command: Control, schedule: &mut Schedule) -> Result<String, String> {
        let spool = &self.context.spool;
        let missing = |id: QueueId| format!("no message {id} in the queue");
        let queued = |id: QueueId| spool.contains(id).then_some(()).ok_or_else(|| missing(id));
        // Hold and release need the envelope (for a state file not written yet).
        let known = async |id: QueueId| spool.get(id).await.ok_or_else(|| missing(id));
        match command {
            Control::Flush => Ok(format!("{} message(s) due now", schedule.flush())),
            Control::Standings => {
                let standings: Vec<(QueueId, Standing)> = schedule.standings().collect();
                Ok(serde_json::to_string(&standings).expect("standings serialise"))
            }
            Control::Retry(id) => {
                queued(id)?;
                if schedule.due_now(id) {
                    Ok(format!("{id} due now"))
                } else if schedule.is_in_flight(id) {
                    Ok(format!("{id} is being delivered now"))
                } else if schedule.contains(id) {
                    Ok(format!("{id} is due already"))
                } else {
                    Err(format!("{id} is held; release it instead"))
                }
            }
            Control::RetryFailed => {
                let ids = spool.restore_failed().await.map_err(|e| e.to_string())?;
                let now = Instant::now();
                for id in &ids {
                    if let Some(file) = spool.get(*id).await {
                        self.add(schedule, &file, now, now);
                    }
                }
                Ok(format!("{} failed message(s) back in the queue", ids.len()))
            }
            Control::Hold(id) => {
                let file = known(id).await?;
                match schedule.take_out(id, Deferred::Hold) {
                    Some(Applied::Later) => Ok(format!(
                        "{id} is being delivered now; held when this attempt ends"
                    )),
                    Some(Applied::Now) | None => {
                        set_held(spool, &file, Hold::On).await?;
                        schedule.note_held(id, destination(&self.lanes, &file.envelope).0);
                        Ok(format!("{id} held"))
                    }
                }
            }
            Control::Release(id) => {
                let file = known(id).await?;
                if schedule.cancel_deferred(id) {
                    return Ok(format!("{id} released"));
                }
                // Tried against an upstream known to be away, the release would cost an
                // attempt and push the next one out: the message waits for the upstream
                // instead, which is probed now, and goes the moment it answers (or at the
                // first retry interval, as any deferred message).
                let lane = destination(&self.lanes, &file.envelope).0;
                let wait = schedule
                    .upstream_down(lane)
                    .then(|| disposition::retry_delay(&self.context.config.queue, 1));
                let next_attempt_ms =
                    wait.map_or(0, |wait| crate::clock::unix_ms() + wait.as_millis() as u64);
                if schedule.contains(id)
                    || !set_held(spool, &file, Hold::Off { next_attempt_ms }).await?
                {
                    return Err(format!("{id} is not held"));
                }
                schedule.forget_held(id);
                let now = Instant::now();
                self.add(schedule, &file, now + wait.unwrap_or_default(), now);
                if wait.is_none() {
                    return Ok(format!("{id} released"));
                }
                schedule.probe_now(lane);
                Ok(format!(
                    "{id} released; its upstream cannot be reached now, so it goes when the upstream answers"
                ))
            }
            Control::Delete(id) => {
                queued(id)?;
                match schedule.take_out(id, Deferred::Delete) {
                    Some(Applied::Later) => Ok(format!(
                        "{id} is being delivered now; deleted when this attempt ends"
                    )),
                    Some(Applied::Now) | None => {
                        self.delete(id).await?;
                        schedule.forget_held(id);
                        Ok(format!("{id} deleted"))
                    }
                }
            }
        }
    }
}

/// The account (lane) and upstream mailbox a message goes through.
fn destination(lanes: &[Arc<Lane>], envelope: &Envelope) -> (usize, String) {
    let lane = &lanes[route(lanes, envelope)];
    (
        lane.index,
        super::budget::key(&lane.account.auth_mailbox(envelope)),
    )
}

/// Returns the memory the start-up load freed (its lists, the envelopes it read) to the
/// system: glibc keeps freed memory for reuse, and after reading a large queue that is as
/// much again as the schedule itself, held for good.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A queued message as the schedule needs it at start-up.
struct Queued {
    id: QueueId,
    next_attempt_ms: u64,
    /// Shared by the messages of one mailbox (a million queued messages are a few mailboxes).
    mailbox: Arc<str>,
    lane: u16,
}

/// A batch of the queue read at start-up, oldest first.
#[derive(Default)]
struct Loaded {
    scheduled: Vec<Queued>,
    /// With their lane.
    held: Vec<(QueueId, usize)>,
    /// Files found damaged: they leave the queue.
    damaged: Vec<(QueueId, SpoolFileError)>,
}

/// Messages read per batch at start-up.
const LOAD_BATCH: usize = 4096;

/// What the start-up load found of one message.
enum Read {
    Scheduled {
        id: QueueId,
        next_attempt_ms: u64,
        lane: usize,
        mailbox: String,
    },
    Held(QueueId, usize),
    Damaged(QueueId, SpoolFileError),
    /// Finished or deleted since, or unreadable for now (logged).
    Gone,
}

/// Reads one queued message's file (checking it) and, if it has one, its delivery state.
fn read_queued(
    paths: &crate::queue::SpoolPaths,
    lanes: &[Arc<Lane>],
    with_state: &std::collections::HashSet<QueueId>,
    id: QueueId,
) -> Read {
    let envelope = match paths.load(id) {
        Ok(Some(file)) => file.envelope,
        Ok(None) => return Read::Gone,
        Err(e) if e.is_damage() => return Read::Damaged(id, e),
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read a queued message");
            return Read::Gone;
        }
    };
    // A message without a state file is new: due now, not held.
    let next_attempt_ms = match with_state
        .contains(&id)
        .then(|| paths.read_state(&envelope))
    {
        None => 0,
        Some(Ok(state)) if state.held => return Read::Held(id, destination(lanes, &envelope).0),
        Some(Ok(state)) => state.next_attempt_ms,
        Some(Err(e)) => {
            tracing::error!(queue_id = %id, error = %e,
                "unreadable delivery state; retrying later");
            crate::clock::unix_ms() + MAX_SLEEP.as_millis() as u64
        }
    };
    let (lane, mailbox) = destination(lanes, &envelope);
    Read::Scheduled {
        id,
        next_attempt_ms,
        lane,
        mailbox,
    }
}

/// Reads the queue as it was when delivery started, off the runtime's threads, and hands it
/// over a batch at a time (a large queue is never held whole). Each batch's files are read
/// by as many threads as there are cores, and checked: this is their first read since the
/// spool opened. Mail that arrives meanwhile comes through the spool's arrivals instead.
fn load_queue(spool: Arc<Spool>, lanes: Vec<Arc<Lane>>) -> mpsc::Receiver<Loaded> {
    let (batches, receiver) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let Some(last) = spool.last_id() else {
            return;
        };
        let paths = spool.paths();
        let with_state = paths.with_state().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list the delivery states; reading each");
            spool.ids().into_iter().collect()
        });
        let readers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let mut mailboxes: std::collections::HashMap<String, Arc<str>> = Default::default();
        let mut after = None;
        loop {
            let mut ids = spool.ids_after(after, LOAD_BATCH);
            let done = ids.len() < LOAD_BATCH || ids.last().is_none_or(|id| *id >= last);
            after = ids.last().copied();
            ids.retain(|id| *id <= last);
            let chunk = ids.len().div_ceil(readers).max(1);
            let read: Vec<Vec<Read>> = std::thread::scope(|scope| {
                let readers: Vec<_> = ids
                    .chunks(chunk)
                    .map(|chunk| {
                        let (lanes, with_state) = (&lanes, &with_state);
                        scope.spawn(move || {
                            chunk
                                .iter()
                                .map(|id| read_queued(paths, lanes, with_state, *id))
                                .collect()
                        })
                    })
                    .collect();
                readers
                    .into_iter()
                    .map(|reader| reader.join().unwrap_or_default())
                    .collect()
            });
            let mut batch = Loaded::default();
            for read in read.into_iter().flatten() {
                match read {
                    Read::Scheduled {
                        id,
                        next_attempt_ms,
                        lane,
                        mailbox,
                    } => {
                        let mailbox = Arc::clone(
                            mailboxes
                                .entry(mailbox)
                                .or_insert_with_key(|name| Arc::from(name.as_str())),
                        );
                        batch.scheduled.push(Queued {
                            id,
                            next_attempt_ms,
                            mailbox,
                            lane: u16::try_from(lane).expect("fewer than 2^16 accounts"),
                        });
                    }
                    Read::Held(id, lane) => batch.held.push((id, lane)),
                    Read::Damaged(id, problem) => batch.damaged.push((id, problem)),
                    Read::Gone => {}
                }
            }
            // The scheduler stopped: nothing more to read.
            if batches.blocking_send(batch).is_err() || done {
                return;
            }
        }
    });
    receiver
}

/// The next batch of the start-up load; `None` once it is all read (never while not loading).
async fn next_batch(loading: &mut Option<mpsc::Receiver<Loaded>>) -> Option<Loaded> {
    match loading {
        Some(batches) => batches.recv().await,
        None => std::future::pending().await,
    }
}

/// A hold placed, or released with the next attempt's time (Unix ms; 0: now).
enum Hold {
    On,
    Off { next_attempt_ms: u64 },
}

/// Records a hold or its release. Returns whether the message was held before; nothing is
/// written when that does not change.
async fn set_held(spool: &Spool, file: &MessageFile, hold: Hold) -> Result<bool, String> {
    let mut state = spool
        .load_state(&file.envelope)
        .await
        .map_err(|e| e.to_string())?;
    let was_held = state.held;
    let held = matches!(hold, Hold::On);
    if was_held == held {
        return Ok(was_held);
    }
    state.held = held;
    if let Hold::Off { next_attempt_ms } = hold {
        state.next_attempt_ms = next_attempt_ms;
    }
    spool
        .save_state(file.envelope.id, &state)
        .await
        .map_err(|e| e.to_string())?;
    Ok(was_held)
}
