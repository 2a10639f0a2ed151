//! The scheduler: knows when each queued message is due, hands due messages to their
//! account's lane, and takes them back with the worker's verdict. New mail is handed over
//! the moment the spool commits it; a token event makes the account's waiting mail due.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lane::{Lane, route};
use super::worker::{self, Next, Shared};
use crate::config::Config;
use crate::oauth::manager::{TokenEventKind, TokenManager};
use crate::queue::{QueueId, Spool};

/// The longest the scheduler sleeps without looking around.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub struct Delivery {
    shared: Arc<Shared>,
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
}

pub type ControlRequest = (
    Control,
    tokio::sync::oneshot::Sender<Result<String, String>>,
);

#[derive(Clone, Copy)]
struct Waiting {
    due: Instant,
    lane: usize,
    for_token: bool,
}

impl Delivery {
    pub fn new(
        spool: Arc<Spool>,
        tokens: Arc<TokenManager>,
        config: Arc<Config>,
        metrics: Arc<crate::admin::Metrics>,
    ) -> Delivery {
        let (lanes, queues) = config
            .accounts
            .iter()
            .enumerate()
            .map(|(i, account)| {
                let (lane, queue) = Lane::new(i, account);
                (Arc::new(lane), queue)
            })
            .unzip();
        let (control, requests) = mpsc::unbounded_channel();
        Delivery {
            control,
            requests,
            queues,
            shared: Arc::new(Shared {
                spool,
                tokens,
                config,
                metrics,
            }),
            lanes,
        }
    }

    /// Where queue commands go while delivery runs.
    pub fn control(&self) -> mpsc::UnboundedSender<ControlRequest> {
        self.control.clone()
    }

    /// Delivers until `shutdown`; then lets workers finish the message in hand.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let spool = Arc::clone(&self.shared.spool);
        let mut arrivals = spool.arrivals();
        let mut token_events = self.shared.tokens.subscribe();
        let (done_tx, mut done) = mpsc::unbounded_channel::<(QueueId, Next)>();
        let workers = TaskTracker::new();
        for lane in &self.lanes {
            for _ in 0..lane.config.upstream.max_connections {
                workers.spawn(worker::run(
                    Arc::clone(&self.shared),
                    Arc::clone(lane),
                    done_tx.clone(),
                ));
            }
        }
        drop(done_tx);

        let mut waiting: BTreeMap<QueueId, Waiting> = BTreeMap::new();
        let mut in_flight: HashSet<QueueId> = HashSet::new();
        // Held while in flight: not rescheduled when the worker hands it back.
        let mut held: HashSet<QueueId> = HashSet::new();
        for file in spool.messages() {
            self.enqueue(&mut waiting, file.envelope.id);
        }
        loop {
            let now = Instant::now();
            let due: Vec<(QueueId, usize)> = waiting
                .iter()
                .filter(|(_, w)| w.due <= now)
                .map(|(id, w)| (*id, w.lane))
                .collect();
            for (id, lane) in due {
                waiting.remove(&id);
                if in_flight.insert(id) {
                    let _ = self.queues[lane].send(id);
                }
            }
            let wake = waiting
                .values()
                .map(|w| w.due)
                .min()
                .unwrap_or(now + MAX_SLEEP)
                .min(now + MAX_SLEEP);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
                Some(id) = arrivals.recv() => {
                    if !in_flight.contains(&id) {
                        self.enqueue(&mut waiting, id);
                    }
                }
                Some((command, reply)) = self.requests.recv() => {
                    let result = self.command(command, &mut waiting, &in_flight, &mut held).await;
                    let _ = reply.send(result);
                }
                Some((id, next)) = done.recv() => {
                    in_flight.remove(&id);
                    if held.remove(&id) {
                        continue;
                    }
                    let lane = waiting_lane(&self.lanes, &spool, id);
                    match next {
                        Next::Done => {}
                        Next::RetryAt(due) => {
                            waiting.insert(id, Waiting { due, lane, for_token: false });
                        }
                        Next::WaitForToken(due) => {
                            waiting.insert(id, Waiting { due, lane, for_token: true });
                        }
                    }
                }
                Ok(event) = token_events.recv() => {
                    if matches!(event.kind, TokenEventKind::Refreshed { .. } | TokenEventKind::Loaded) {
                        let lane = self.lanes.iter().position(|l| l.name() == event.account);
                        for w in waiting.values_mut() {
                            if w.for_token && Some(w.lane) == lane {
                                w.due = Instant::now();
                            }
                        }
                    }
                }
            }
        }
        // Closing the lanes' queues ends the workers once they finish what they hold.
        drop(self.queues);
        workers.close();
        workers.wait().await;
    }

    async fn command(
        &self,
        command: Control,
        waiting: &mut BTreeMap<QueueId, Waiting>,
        in_flight: &HashSet<QueueId>,
        held: &mut HashSet<QueueId>,
    ) -> Result<String, String> {
        let spool = &self.shared.spool;
        let now = Instant::now();
        let known = |id: QueueId| {
            spool
                .get(id)
                .ok_or_else(|| format!("no message {id} in the queue"))
        };
        match command {
            Control::Flush => {
                for w in waiting.values_mut() {
                    w.due = now;
                }
                Ok(format!("{} message(s) due now", waiting.len()))
            }
            Control::Retry(id) => {
                known(id)?;
                if in_flight.contains(&id) {
                    return Ok(format!("{id} is being delivered now"));
                }
                match waiting.get_mut(&id) {
                    Some(w) => {
                        w.due = now;
                        Ok(format!("{id} due now"))
                    }
                    None => Err(format!("{id} is held; release it instead")),
                }
            }
            Control::RetryFailed => {
                let ids = spool.restore_failed().await.map_err(|e| e.to_string())?;
                for id in &ids {
                    self.enqueue(waiting, *id);
                }
                Ok(format!("{} failed message(s) back in the queue", ids.len()))
            }
            Control::Hold(id) | Control::Release(id) => {
                let file = known(id)?;
                let hold = matches!(command, Control::Hold(_));
                let mut state = spool
                    .paths()
                    .read_state(&file.envelope)
                    .map_err(|e| e.to_string())?;
                state.held = hold;
                if !hold {
                    state.next_attempt_ms = 0;
                }
                spool
                    .save_state(id, &state)
                    .await
                    .map_err(|e| e.to_string())?;
                if hold {
                    waiting.remove(&id);
                    if in_flight.contains(&id) {
                        held.insert(id);
                    }
                    Ok(format!("{id} held"))
                } else {
                    held.remove(&id);
                    if !in_flight.contains(&id) {
                        self.enqueue(waiting, id);
                    }
                    Ok(format!("{id} released"))
                }
            }
            Control::Delete(id) => {
                known(id)?;
                if in_flight.contains(&id) {
                    return Err(format!(
                        "{id} is being delivered right now; try again in a moment"
                    ));
                }
                waiting.remove(&id);
                spool.complete(id).await.map_err(|e| e.to_string())?;
                tracing::warn!(queue_id = %id, "deleted by an admin");
                Ok(format!("{id} deleted"))
            }
        }
    }

    fn enqueue(&self, waiting: &mut BTreeMap<QueueId, Waiting>, id: QueueId) {
        let Some(file) = self.shared.spool.get(id) else {
            return;
        };
        let state = match self.shared.spool.paths().read_state(&file.envelope) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "unreadable delivery state; retrying later");
                waiting.insert(
                    id,
                    Waiting {
                        due: Instant::now() + MAX_SLEEP,
                        lane: 0,
                        for_token: false,
                    },
                );
                return;
            }
        };
        if state.held {
            return;
        }
        waiting.insert(
            id,
            Waiting {
                due: instant_of_ms(state.next_attempt_ms),
                lane: route(&self.lanes, &file.envelope),
                for_token: false,
            },
        );
    }
}

fn waiting_lane(lanes: &[Arc<Lane>], spool: &Spool, id: QueueId) -> usize {
    spool.get(id).map_or(0, |file| route(lanes, &file.envelope))
}

fn instant_of_ms(unix_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(unix_ms.saturating_sub(now_ms))
}
