//! A delivery worker: one [`Transport`] for one account, reused for message after message. It
//! takes a message, holds the grants its mailbox's budgets give it ([`Permits`]), sends what
//! is still pending, and hands back what the upstream said ([`Attempted`]). It writes
//! nothing: the queue manager records results, so an admin's command and an attempt never
//! write the same state. It never waits for room in a budget or for a pause to end (the
//! manager does); its transport's waits for a token or a connection end when delivery stops.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::account::Account;
use super::permits::Permits;
use super::transport::fallback::Switch;
use super::transport::{
    AccountEffect, FallbackTransport, GraphTransport, Notes, Outgoing, RecipientResult, SendError,
    SmtpTransport, Transport,
};
use crate::BoxFuture;
use crate::delivery::grant::{CONNECTION_POLL, Exhausted, Grant, Window};
use crate::delivery::meaning::Explain;
use crate::oauth::manager::TokenManager;
use crate::queue::{DeliveryState, MessageFile, QueueId, RecipientStatus, Spool};

/// What every worker works with.
pub struct Context {
    pub spool: Arc<Spool>,
    pub tokens: Arc<TokenManager>,
    /// The name the relay gives itself upstream (EHLO).
    pub hostname: String,
}

/// What the workers of one account (the manager's lane) share.
pub struct Crew {
    /// The lane, as the manager numbers it: named in what the workers report.
    pub lane: usize,
    pub account: Arc<Account>,
    /// Messages the manager hands this account's workers; closed when delivery stops.
    pub jobs: Mutex<mpsc::UnboundedReceiver<QueueId>>,
    /// The mailbox's budgets, as the manager gives them.
    pub permits: Arc<dyn Permits>,
    /// With `fallback_transport`: until when the account sends through Graph, as the manager
    /// recorded it.
    pub graph_until: watch::Receiver<Option<Instant>>,
}

/// Whether an attempt reached the account's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// It answered (whatever it said).
    Reached,
    /// It could not be reached, or the connection failed.
    Unreachable,
    /// Nothing was tried (budget, token, nothing pending).
    Untried,
}

/// What a worker tells the scheduler.
pub enum FromWorker {
    /// A transaction's results, to be made durable before the attempt goes on with the
    /// recipients it left (452 4.5.3): a restart must not resend to these. `recorded` answers
    /// once they are.
    Progress {
        id: QueueId,
        state: DeliveryState,
        recorded: oneshot::Sender<()>,
    },
    /// The attempt is over.
    Ended(Attempted),
    /// The account's way upstream changed (its Graph fallback): the manager records it.
    Switched { lane: usize, switch: Switch },
}

/// One attempt, as the worker hands it back: nothing of it written yet.
pub struct Attempted {
    pub id: QueueId,
    pub lane: usize,
    pub upstream: Upstream,
    pub end: End,
}

pub enum End {
    /// The message left the spool meanwhile.
    Gone,
    /// Its delivery state cannot be read (logged): look again later.
    Unreadable,
    /// The attempt ran.
    Ran(Box<Ran>),
}

pub struct Ran {
    pub file: MessageFile,
    /// With this attempt's results.
    pub state: DeliveryState,
    /// Why recipients are still pending, if they are.
    pub stopped: Option<Stopped>,
}

/// Why an attempt ended before every pending recipient had a result from it.
pub enum Stopped {
    /// Nothing was sent (see [`SendError`]).
    Send(SendError),
    /// The upstream spoke for the whole account after a transaction.
    Effect(AccountEffect),
    /// The mailbox's budget is spent: count no attempt.
    Budget(Exhausted),
}

/// Takes messages for the crew's account until its queue closes.
pub async fn run(
    context: Arc<Context>,
    crew: Arc<Crew>,
    done: mpsc::UnboundedSender<FromWorker>,
    stop: CancellationToken,
) {
    let mut transport = transport_for(&context, &crew, &done, stop.clone());
    let mut connection = None;
    loop {
        // The idle time counts while waiting for the queue's lock too: another worker may
        // hold it for as long as no message comes, and an idle connection must not.
        let take = async { crew.jobs.lock().await.recv().await };
        let next = if transport.is_open() {
            match tokio::time::timeout(crew.permits.keep_idle(), take).await {
                Ok(next) => next,
                Err(_) => {
                    transport.close().await;
                    connection = None;
                    continue;
                }
            }
        } else {
            take.await
        };
        let Some(id) = next else { break };
        let mut way = Way {
            transport: transport.as_mut(),
            connection: &mut connection,
        };
        let attempted = attempt(&context, &crew, &mut way, id, &done).await;
        // A connection counts against the mailbox's limit while it is open, and a Graph
        // request while it runs.
        if !transport.is_open() {
            connection = None;
        }
        let refused_a_connection = matches!(&attempted.end, End::Ran(ran)
            if matches!(&ran.stopped, Some(Stopped::Budget(e)) if e.window == Window::Connections));
        if done.send(FromWorker::Ended(attempted)).is_err() {
            break;
        }
        // Without a connection of its own, this worker lets the ones that have one take the
        // next messages for a moment.
        if refused_a_connection {
            tokio::select! {
                _ = tokio::time::sleep(CONNECTION_POLL) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    transport.close().await;
}

/// A worker's way upstream and the connection it holds for a mailbox.
struct Way<'a> {
    transport: &'a mut dyn Transport,
    /// The mailbox the transport's connection counts against (its budget key), and its grant.
    connection: &'a mut Option<(String, Grant)>,
}

impl Way<'_> {
    /// Makes sure the transport may connect as `mailbox`: keeps the connection it has for
    /// that mailbox, or closes one for another and takes one of `mailbox`'s.
    async fn connect_as(&mut self, permits: &dyn Permits, mailbox: &str) -> Result<(), Exhausted> {
        let key = crate::delivery::grant::key(mailbox);
        if self
            .connection
            .as_ref()
            .is_some_and(|(held, _)| *held == key)
        {
            return Ok(());
        }
        if self.connection.take().is_some() {
            self.transport.close().await;
        }
        let grant = permits.connection(mailbox).await?;
        *self.connection = Some((key, grant));
        Ok(())
    }
}

/// The account's way upstream: SMTP, Graph, or SMTP that falls back to Graph.
fn transport_for(
    context: &Context,
    crew: &Crew,
    done: &mpsc::UnboundedSender<FromWorker>,
    stop: CancellationToken,
) -> Box<dyn Transport> {
    let config = &crew.account.config;
    let graph = |account: &crate::config::AccountConfig| {
        GraphTransport::new(account.clone(), Arc::clone(&context.tokens), stop.clone())
    };
    if config.transport == crate::config::Transport::Graph {
        return Box::new(graph(config));
    }
    let smtp = SmtpTransport::new(
        config.clone(),
        crew.account.tls.clone(),
        Arc::clone(&context.tokens),
        context.hostname.clone(),
        stop.clone(),
    );
    match &config.fallback {
        None => Box::new(smtp),
        Some(twin) => {
            let (done, lane) = (done.clone(), crew.lane);
            Box::new(FallbackTransport {
                smtp,
                graph: graph(twin),
                graph_until: crew.graph_until.clone(),
                report: Box::new(move |switch| {
                    let _ = done.send(FromWorker::Switched { lane, switch });
                }),
                switched_until: None,
            })
        }
    }
}

async fn attempt(
    context: &Context,
    crew: &Crew,
    way: &mut Way<'_>,
    id: QueueId,
    done: &mpsc::UnboundedSender<FromWorker>,
) -> Attempted {
    let ended = |reached, end| Attempted {
        id,
        lane: crew.lane,
        upstream: reached,
        end,
    };
    let Some(file) = context.spool.get(id).await else {
        return ended(Upstream::Untried, End::Gone);
    };
    let mut state = match context.spool.load_state(&file.envelope).await {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read the delivery state");
            return ended(Upstream::Untried, End::Unreadable);
        }
    };
    if state.is_finished() {
        // Finished by an earlier attempt (a crash came before the removal): nothing to send.
        let end = End::Ran(Box::new(Ran {
            file,
            state,
            stopped: None,
        }));
        return ended(Upstream::Untried, end);
    }
    let stopped = send(context, crew, way, &file, &mut state, done)
        .await
        .err();
    let reached = match &stopped {
        None | Some(Stopped::Effect(_)) => Upstream::Reached,
        Some(Stopped::Send(
            SendError::Account(_) | SendError::Refused(_) | SendError::TokenRefused(_),
        )) => Upstream::Reached,
        Some(Stopped::Send(SendError::Failed(_) | SendError::NotSent(_))) => Upstream::Unreachable,
        Some(_) => Upstream::Untried,
    };
    ended(
        reached,
        End::Ran(Box::new(Ran {
            file,
            state,
            stopped,
        })),
    )
}

/// A transport's notes, made durable by the scheduler before the transport goes on.
struct Recorder<'a> {
    id: QueueId,
    /// The state as the transaction started.
    state: &'a DeliveryState,
    /// A draft recorded during the transaction.
    recorded: std::sync::Mutex<Option<String>>,
    done: &'a mpsc::UnboundedSender<FromWorker>,
}

impl Notes for Recorder<'_> {
    fn graph_draft(&self) -> Option<String> {
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        recorded.clone().or_else(|| self.state.graph_draft.clone())
    }

    fn record_graph_draft<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            // Only now, and only for Graph's large messages, is the state copied.
            let mut state = self.state.clone();
            state.graph_draft = Some(id.to_owned());
            *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_owned());
            let (recorded, answer) = oneshot::channel();
            let progress = FromWorker::Progress {
                id: self.id,
                state,
                recorded,
            };
            self.done.send(progress).is_ok() && answer.await.is_ok()
        })
    }
}

/// Transactions through the transport until every pending recipient has a result from this
/// attempt; the results go into `state`.
async fn send(
    context: &Context,
    crew: &Crew,
    way: &mut Way<'_>,
    file: &MessageFile,
    state: &mut DeliveryState,
    done: &mpsc::UnboundedSender<FromWorker>,
) -> Result<(), Stopped> {
    let id = file.envelope.id;
    let account = &crew.account;
    let mailbox = account.auth_mailbox(&file.envelope);
    let sender = account.upstream_sender(&file.envelope);
    let path = context.spool.paths().message(id);
    let mut pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
    way.connect_as(crew.permits.as_ref(), &mailbox)
        .await
        .map_err(Stopped::Budget)?;
    // Held until the attempt ends, so the budgets count when the upstream got the message.
    let grant = crew
        .permits
        .send(&mailbox, pending.len() as u64)
        .await
        .map_err(Stopped::Budget)?;
    // Whether a transaction of this attempt reached the upstream.
    let mut reached = false;
    while !pending.is_empty() {
        let notes = Recorder {
            id,
            state,
            recorded: std::sync::Mutex::default(),
            done,
        };
        let message = Outgoing {
            file,
            path: &path,
            mailbox: &mailbox,
            sender: &sender,
            recipients: &pending,
            rewrite_from: account.config.rewrite_from.then_some(mailbox.as_str()),
            notes: &notes,
        };
        let sent = way.transport.send(&message).await;
        // What was recorded stays recorded when the attempt ends.
        if let Some(draft) = notes
            .recorded
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
        {
            state.graph_draft = Some(draft);
        }
        let outcome = match sent {
            Ok(outcome) => outcome,
            Err(error) => {
                // The budgets count what the upstream could count: an attempt that never
                // reached it (no token, connection, TLS, login) costs the mailbox nothing.
                if !reached && !error.reached_upstream() {
                    grant.give_back();
                }
                return Err(Stopped::Send(error));
            }
        };
        reached = true;
        let mut split = Vec::new();
        for (recipient, result) in outcome.results {
            let (status, reply) = match result {
                RecipientResult::Delivered(reply) => (RecipientStatus::Delivered, reply),
                RecipientResult::Failed(reply) => (RecipientStatus::Failed, reply),
                RecipientResult::Deferred(reply) => {
                    state.last_error = Some(reply.described());
                    state.set(&recipient, RecipientStatus::Pending, Some(reply));
                    continue;
                }
                RecipientResult::Split => {
                    split.push(recipient);
                    continue;
                }
            };
            // Postfix's fields: how long since it arrived, where it went, which attempt.
            let delay = crate::clock::unix_ms().saturating_sub(file.envelope.received_at);
            tracing::info!(queue_id = %id, account = account.name(), to = %recipient,
                result = if status == RecipientStatus::Delivered { "delivered" } else { "failed" },
                delay = format_args!("{:.2}", delay as f64 / 1000.0), relay = %account.relay(),
                tls = outcome.tls, attempt = state.attempts + 1,
                message_id = %crate::logging::Untrusted(outcome.message_id.as_deref().unwrap_or("")),
                reply = %reply, "recipient");
            state.set(&recipient, status, Some(reply));
        }
        if let Some(effect) = outcome.effect {
            return Err(Stopped::Effect(effect));
        }
        if !split.is_empty() {
            let (recorded, answer) = oneshot::channel();
            let progress = FromWorker::Progress {
                id,
                state: state.clone(),
                recorded,
            };
            // Without the scheduler nothing can be recorded: stop here, unsent.
            if done.send(progress).is_err() || answer.await.is_err() {
                return Err(Stopped::Send(SendError::Interrupted));
            }
        }
        pending = split;
    }
    Ok(())
}
