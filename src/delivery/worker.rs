//! A delivery worker: one [`Transport`] for one account, reused for message after message. It
//! takes a message, counts it against its mailbox's budget, sends what is still pending,
//! records each recipient's result durably, and reports to the scheduler what became of it.
//! It never waits for room in a budget or for a pause to end (the scheduler does); its
//! transport's waits for a token or a connection end when delivery stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Exhausted};
use super::disposition::{self, Disposition};
use super::lane::Lane;
use super::schedule::{Block, Report, Upstream};
use super::transport::{
    AccountEffect, Outgoing, RecipientResult, SendError, SmtpTransport, Transport,
};
use crate::config::{Config, OnFailure};
use crate::metrics::Outcome;
use crate::oauth::manager::TokenManager;
use crate::queue::{DeliveryState, MessageFile, QueueId, RecipientStatus, Spool};

/// A connection left idle this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// How soon a message waiting for a token is looked at again (a token event wakes it sooner).
pub const TOKEN_WAIT: Duration = Duration::from_secs(60);
/// Pauses after account-wide replies (throttling pauses for the first retry interval).
const QUOTA_PAUSE: Duration = Duration::from_secs(3600);
const HOLD_PAUSE: Duration = Duration::from_secs(900);

pub struct Shared {
    pub spool: Arc<Spool>,
    pub tokens: Arc<TokenManager>,
    pub config: Arc<Config>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub budget: Arc<dyn Budget>,
}

/// Takes messages for `lane` until the lane's queue closes.
pub async fn run(
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    done: mpsc::UnboundedSender<(QueueId, Report, Upstream)>,
    stop: CancellationToken,
) {
    let mut transport: Box<dyn Transport> = Box::new(SmtpTransport::new(
        lane.config.clone(),
        lane.tls.clone(),
        Arc::clone(&shared.tokens),
        shared.config.server.hostname.clone(),
        stop,
    ));
    loop {
        let next = {
            let mut receiver = lane.receiver.lock().await;
            if transport.is_open() {
                match tokio::time::timeout(IDLE_CLOSE, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        drop(receiver);
                        transport.close().await;
                        continue;
                    }
                }
            } else {
                receiver.recv().await
            }
        };
        let Some(id) = next else { break };
        let (report, upstream) = process(&shared, &lane, transport.as_mut(), id).await;
        if done.send((id, report, upstream)).is_err() {
            break;
        }
    }
    transport.close().await;
}

/// Why a message was not (fully) sent on this attempt.
enum Blocked {
    /// Nothing was sent (see [`SendError`]).
    Send(SendError),
    /// The upstream spoke for the whole account after a transaction.
    Effect(AccountEffect),
    /// The mailbox's budget is spent: count no attempt.
    Budget(Exhausted),
}

/// What became of the message, and whether the attempt reached the upstream.
async fn process(
    shared: &Shared,
    lane: &Lane,
    transport: &mut dyn Transport,
    id: QueueId,
) -> (Report, Upstream) {
    let mut upstream = Upstream::Untried;
    let report = attempt_and_record(shared, lane, transport, id, &mut upstream).await;
    (report, upstream)
}

async fn attempt_and_record(
    shared: &Shared,
    lane: &Lane,
    transport: &mut dyn Transport,
    id: QueueId,
    upstream: &mut Upstream,
) -> Report {
    let Some(file) = shared.spool.get(id) else {
        return Report::Done;
    };
    let mut state = match shared.spool.load_state(&file.envelope).await {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read the delivery state");
            return retry_soon(&shared.config);
        }
    };
    if state.is_finished() {
        return finish(shared, lane, &file, &mut state).await;
    }
    let result = attempt(shared, lane, transport, &file, &mut state).await;
    *upstream = match &result {
        Ok(()) | Err(Blocked::Effect(_)) => Upstream::Reached,
        Err(Blocked::Send(
            SendError::Account(_) | SendError::Refused(_) | SendError::TokenRefused(_),
        )) => Upstream::Reached,
        Err(Blocked::Send(SendError::Failed(_))) => Upstream::Unreachable,
        Err(_) => Upstream::Untried,
    };
    if let Err(blocked) = result {
        let error = match blocked {
            Blocked::Budget(exhausted) => {
                return Report::Blocked(exhausted.until, Block::Budget(exhausted.window));
            }
            Blocked::Send(SendError::Interrupted) => return Report::Interrupted,
            Blocked::Send(SendError::NoToken(reason)) => {
                tracing::info!(queue_id = %id, account = lane.name(), %reason, "held until the account has a token");
                note_error(shared, id, &mut state, reason).await;
                return Report::NoToken(Instant::now() + TOKEN_WAIT);
            }
            Blocked::Send(SendError::TokenRefused(reason)) => {
                note_error(shared, id, &mut state, reason.clone()).await;
                return Report::Blocked(Instant::now() + TOKEN_WAIT, Block::Paused(reason));
            }
            Blocked::Send(SendError::Account(effect)) | Blocked::Effect(effect) => {
                match pause_for(&shared.config, effect) {
                    Ok((until, why)) => return Report::Blocked(until, Block::Paused(why)),
                    // Refused mid-session after an accepted login: the next one logs in afresh.
                    Err(reason) => {
                        note_error(shared, id, &mut state, reason).await;
                        return Report::NoToken(Instant::now() + TOKEN_WAIT);
                    }
                }
            }
            Blocked::Send(SendError::Failed(reason)) => {
                tracing::info!(queue_id = %id, account = lane.name(), %reason, "delivery attempt failed");
                reason
            }
            Blocked::Send(SendError::Refused(reply)) => {
                let pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
                for address in pending {
                    state.set(&address, RecipientStatus::Failed, Some(reply.to_string()));
                }
                reply.described()
            }
        };
        state.last_error = Some(error);
    }
    match disposition::after_attempt(
        &mut state,
        &shared.config.queue,
        file.envelope.received_at,
        crate::clock::unix_ms(),
    ) {
        Disposition::Finished => finish(shared, lane, &file, &mut state).await,
        Disposition::GaveUp => {
            save_progress(shared, id, &state).await;
            finish(shared, lane, &file, &mut state).await
        }
        Disposition::RetryIn(delay) => {
            save_progress(shared, id, &state).await;
            tracing::info!(queue_id = %id, account = lane.name(), attempts = state.attempts,
                retry_in_secs = delay.as_secs(), error = state.last_error.as_deref().unwrap_or(""), "deferred");
            shared
                .metrics
                .delivery(lane.name(), Outcome::Deferred, state.last_error.clone());
            Report::RetryAt(Instant::now() + delay)
        }
    }
}

async fn save_progress(shared: &Shared, id: QueueId, state: &DeliveryState) {
    if let Err(e) = shared.spool.save_state(id, state).await {
        tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
    }
}

async fn note_error(shared: &Shared, id: QueueId, state: &mut DeliveryState, reason: String) {
    if state.last_error.as_deref() != Some(reason.as_str()) {
        state.last_error = Some(reason);
        if let Err(e) = shared.spool.save_state(id, state).await {
            tracing::error!(queue_id = %id, error = %e, "cannot record why the message waits");
        }
    }
}

/// A failure that is not the message's (the spool, the disk): look again after the first
/// retry interval.
fn retry_soon(config: &Config) -> Report {
    Report::RetryAt(Instant::now() + disposition::retry_delay(&config.queue, 1))
}

/// One attempt: transactions through the transport until every pending recipient has a
/// result from this attempt.
async fn attempt(
    shared: &Shared,
    lane: &Lane,
    transport: &mut dyn Transport,
    file: &MessageFile,
    state: &mut DeliveryState,
) -> Result<(), Blocked> {
    let id = file.envelope.id;
    let mailbox = lane.auth_mailbox(&file.envelope);
    let sender = lane.upstream_sender(&file.envelope);
    let path = shared.spool.paths().message(id);
    let mut pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
    // Held until the attempt ends, so the budgets count when the upstream got the message.
    let _grant = shared
        .budget
        .take(&mailbox, lane.limits(), pending.len() as u64)
        .await
        .map_err(Blocked::Budget)?;
    while !pending.is_empty() {
        let message = Outgoing {
            file,
            path: &path,
            mailbox: &mailbox,
            sender: &sender,
            recipients: &pending,
        };
        let outcome = transport.send(&message).await.map_err(Blocked::Send)?;
        let mut split = Vec::new();
        for (recipient, result) in outcome.results {
            let (status, reply) = match result {
                RecipientResult::Delivered(reply) => (RecipientStatus::Delivered, reply),
                RecipientResult::Failed(reply) => (RecipientStatus::Failed, reply),
                RecipientResult::Deferred(reply) => {
                    state.set(
                        &recipient,
                        RecipientStatus::Pending,
                        Some(reply.to_string()),
                    );
                    state.last_error = Some(reply.described());
                    continue;
                }
                RecipientResult::Split => {
                    split.push(recipient);
                    continue;
                }
            };
            tracing::info!(queue_id = %id, account = lane.name(), to = %recipient,
                result = if status == RecipientStatus::Delivered { "delivered" } else { "failed" },
                reply = %reply, "recipient");
            state.set(&recipient, status, Some(reply.to_string()));
        }
        // Durable before anything else happens: a restart must not resend to these. When this
        // transaction finished the message, removing it (in `finish`) is that record, one
        // fsync cheaper; the crash window is the same.
        if !split.is_empty() || outcome.effect.is_some() || !state.is_finished() {
            save_progress(shared, id, state).await;
        }
        if let Some(effect) = outcome.effect {
            return Err(Blocked::Effect(effect));
        }
        pending = split;
    }
    Ok(())
}

/// How long the mailbox pauses after an account-wide reply, and why; `Err` for a token
/// refused mid-session (the account waits for a fresh token instead).
fn pause_for(config: &Config, effect: AccountEffect) -> Result<(Instant, String), String> {
    let (pause, reply) = match effect {
        AccountEffect::TokenRejected(reply) => return Err(reply.described()),
        AccountEffect::Throttled(reply) => (disposition::retry_delay(&config.queue, 1), reply),
        AccountEffect::QuotaExceeded(reply) => (QUOTA_PAUSE, reply),
        AccountEffect::Hold(reply) => (HOLD_PAUSE, reply),
    };
    let why = reply.described();
    tracing::warn!(pause_secs = pause.as_secs(), reason = %why, "mailbox paused");
    Ok((Instant::now() + pause, why))
}

/// Every recipient has a final result: report failures, then leave the queue.
async fn finish(
    shared: &Shared,
    lane: &Lane,
    file: &MessageFile,
    state: &mut DeliveryState,
) -> Report {
    let id = file.envelope.id;
    let failed = state.failed().count();
    let envelope = &file.envelope;
    if failed > 0
        && let Err(e) = shared.spool.save_state(id, state).await
    {
        tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        return retry_soon(&shared.config);
    }
    if failed > 0 && shared.config.queue.on_failure == OnFailure::Keep {
        match shared.spool.keep_failed(id).await {
            Ok(()) => tracing::warn!(queue_id = %id, failed, "moved to failed/"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot move to failed/"),
        }
        return Report::Done;
    }
    if failed > 0 && !state.bounced && !envelope.is_dsn && !envelope.sender.is_empty() {
        let head = read_head(shared, file).await;
        let bounce = super::dsn::Bounce {
            original: file,
            original_content_head: &head,
            state,
            hostname: &shared.config.server.hostname,
            from: &lane.auth_mailbox(envelope),
            upstream_host: &lane.config.upstream.host,
        };
        match super::dsn::queue(&shared.spool, &bounce).await {
            Ok(dsn) => {
                tracing::info!(queue_id = %id, dsn_id = %dsn, failed, "delivery status notification queued");
                state.bounced = true;
                // Without this record a crash before the removal below sends a second report.
                if let Err(e) = shared.spool.save_state(id, state).await {
                    tracing::error!(queue_id = %id, error = %e,
                        "cannot record that the bounce is queued; a restart now would send it twice");
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot queue the bounce; will retry");
                return retry_soon(&shared.config);
            }
        }
    }
    let outcome = if failed > 0 {
        Outcome::Bounced
    } else {
        let age = crate::clock::unix_ms().saturating_sub(envelope.received_at);
        Outcome::Delivered {
            latency: Duration::from_millis(age),
        }
    };
    let last_reply = state.recipients.iter().rev().find_map(|r| r.reply.clone());
    shared.metrics.delivery(lane.name(), outcome, last_reply);
    match shared.spool.complete(id).await {
        Ok(()) => {
            tracing::info!(queue_id = %id, delivered = state.recipients.len() - failed, failed, "done");
            Report::Done
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot remove the finished message");
            retry_soon(&shared.config)
        }
    }
}

/// The start of the content, for the headers quoted in a DSN (empty if it cannot be read).
async fn read_head(shared: &Shared, file: &MessageFile) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let path = shared.spool.paths().message(file.envelope.id);
    let (offset, len) = (
        file.content_offset,
        (file.content_len as usize).min(64 * 1024),
    );
    tokio::task::spawn_blocking(move || {
        let mut head = vec![0u8; len];
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut head)
        });
        if read.is_err() {
            head.clear();
        }
        head
    })
    .await
    .unwrap_or_default()
}
