//! A delivery worker: one upstream connection for one account, reused for message after
//! message. It takes a message, counts it against its mailbox's budget, sends what is still
//! pending, records each recipient's result durably, and reports to the scheduler what became
//! of it. It never waits for room in a budget or for a pause to end (the scheduler does); its
//! waits for a token or a connection end when delivery stops.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Exhausted};
use super::client::{ClientError, UpstreamConnection};
use super::lane::Lane;
use super::reply::UpstreamReply;
use super::schedule::{Block, Report};
use super::transaction::{self, AccountEffect, Message, RecipientResult, TransactionError};
use crate::admin::metrics::Outcome;
use crate::config::{Config, OnFailure};
use crate::oauth::error::TokenError;
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
    pub metrics: Arc<crate::admin::Metrics>,
    pub budget: Arc<dyn Budget>,
}

struct Connected {
    connection: UpstreamConnection,
    mailbox: String,
    used: bool,
}

/// Takes messages for `lane` until the lane's queue closes.
pub async fn run(
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    done: mpsc::UnboundedSender<(QueueId, Report)>,
    stop: CancellationToken,
) {
    let mut connected: Option<Connected> = None;
    loop {
        let next = {
            let mut receiver = lane.receiver.lock().await;
            if connected.is_some() {
                match tokio::time::timeout(IDLE_CLOSE, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        drop(receiver);
                        if let Some(c) = connected.take() {
                            c.connection.quit().await;
                        }
                        continue;
                    }
                }
            } else {
                receiver.recv().await
            }
        };
        let Some(id) = next else { break };
        let next = process(&shared, &lane, &mut connected, id, &stop).await;
        if done.send((id, next)).is_err() {
            break;
        }
    }
    if let Some(c) = connected {
        c.connection.quit().await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a message could not be sent on this attempt.
enum Blocked {
    /// The account has no usable token: wait, count no attempt.
    Token(String),
    /// A fresh token was refused too: the account waits a while, counting no attempt.
    TokenRefused(String),
    /// Exchange asked the mailbox to wait: count no attempt.
    Paused(Instant, String),
    /// The mailbox's budget is spent: count no attempt.
    Budget(Exhausted),
    /// Delivery is stopping.
    Interrupted,
    /// The attempt failed (connection, TLS, upstream trouble): retry on schedule.
    Failed(String),
    /// This message can never go (a `{sender}` mailbox the app may not send as): fail it.
    Refused(UpstreamReply),
}

async fn process(
    shared: &Shared,
    lane: &Lane,
    connected: &mut Option<Connected>,
    id: QueueId,
    stop: &CancellationToken,
) -> Report {
    let Some(file) = shared.spool.get(id) else {
        return Report::Done;
    };
    let mut state = match shared.spool.paths().read_state(&file.envelope) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read the delivery state");
            return Report::RetryAt(Instant::now() + retry_delay(&shared.config, 1));
        }
    };
    if state.is_finished() {
        return finish(shared, lane, &file, &mut state).await;
    }
    match attempt(shared, lane, connected, &file, &mut state, stop).await {
        Ok(()) => {}
        Err(Blocked::Token(reason)) => {
            tracing::info!(queue_id = %id, account = lane.name(), %reason, "held until the account has a token");
            note_error(shared, id, &mut state, reason).await;
            return Report::NoToken(Instant::now() + TOKEN_WAIT);
        }
        Err(Blocked::TokenRefused(reason)) => {
            note_error(shared, id, &mut state, reason.clone()).await;
            return Report::Blocked(Instant::now() + TOKEN_WAIT, Block::Paused(reason));
        }
        Err(Blocked::Paused(until, why)) => return Report::Blocked(until, Block::Paused(why)),
        Err(Blocked::Budget(exhausted)) => {
            return Report::Blocked(exhausted.until, Block::Budget(exhausted.window));
        }
        Err(Blocked::Interrupted) => return Report::Interrupted,
        Err(Blocked::Failed(reason)) => {
            tracing::info!(queue_id = %id, account = lane.name(), %reason, "delivery attempt failed");
            state.last_error = Some(reason);
        }
        Err(Blocked::Refused(reply)) => {
            let pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
            for address in pending {
                state.set(&address, RecipientStatus::Failed, Some(reply.to_string()));
            }
            state.last_error = Some(describe(&reply));
        }
    }
    if state.is_finished() {
        return finish(shared, lane, &file, &mut state).await;
    }
    // Some recipients are still pending: schedule the next attempt, or give up after max_age.
    state.attempts += 1;
    let age = Duration::from_millis(now_ms().saturating_sub(file.envelope.received_at));
    if age >= shared.config.queue.max_age {
        let reason = format!(
            "gave up after {} in the queue: {}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            state.last_error.clone().unwrap_or_default()
        );
        let pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
        for address in pending {
            let reply = state
                .recipients
                .iter()
                .find(|r| r.address == address)
                .and_then(|r| r.reply.clone())
                .unwrap_or_else(|| format!("451 4.4.7 {reason}"));
            state.set(&address, RecipientStatus::Failed, Some(reply));
        }
        state.last_error = Some(reason);
        if let Err(e) = shared.spool.save_state(id, &state).await {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        }
        return finish(shared, lane, &file, &mut state).await;
    }
    let delay = retry_delay(&shared.config, state.attempts);
    state.next_attempt_ms = now_ms() + delay.as_millis() as u64;
    if let Err(e) = shared.spool.save_state(id, &state).await {
        tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
    }
    tracing::info!(queue_id = %id, account = lane.name(), attempts = state.attempts,
        retry_in_secs = delay.as_secs(), error = state.last_error.as_deref().unwrap_or(""), "deferred");
    shared
        .metrics
        .delivery(lane.name(), Outcome::Deferred, state.last_error.clone());
    Report::RetryAt(Instant::now() + delay)
}

async fn note_error(shared: &Shared, id: QueueId, state: &mut DeliveryState, reason: String) {
    if state.last_error.as_deref() != Some(reason.as_str()) {
        state.last_error = Some(reason);
        if let Err(e) = shared.spool.save_state(id, state).await {
            tracing::error!(queue_id = %id, error = %e, "cannot record why the message waits");
        }
    }
}

/// The retry schedule: `retry[n-1]` after the n-th failed attempt, then the last interval.
pub fn retry_delay(config: &Config, attempts: u32) -> Duration {
    let retry = &config.queue.retry;
    let index = (attempts.max(1) as usize - 1).min(retry.len().saturating_sub(1));
    retry
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(3600))
}

/// One attempt: connect (or reuse), authenticate, and run transactions until every pending
/// recipient has a result from this attempt.
async fn attempt(
    shared: &Shared,
    lane: &Lane,
    connected: &mut Option<Connected>,
    file: &MessageFile,
    state: &mut DeliveryState,
    stop: &CancellationToken,
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
    let mut stale_retry = true;
    while !pending.is_empty() {
        if connected.as_ref().is_some_and(|c| c.mailbox != mailbox)
            && let Some(c) = connected.take()
        {
            c.connection.quit().await;
        }
        if connected.is_none() {
            // Waiting for a token or a connection ends when delivery stops.
            *connected = Some(tokio::select! {
                connection = connect(shared, lane, &mailbox) => connection?,
                _ = stop.cancelled() => return Err(Blocked::Interrupted),
            });
        }
        let connection = connected.as_mut().expect("just connected");
        let reused = connection.used;
        connection.used = true;
        let message = Message {
            file,
            path: &path,
            sender: &sender,
            recipients: &pending,
        };
        let outcome = match transaction::send(&mut connection.connection, &message).await {
            Ok(outcome) => outcome,
            Err(TransactionError::Connection(e)) => {
                *connected = None;
                // A pooled connection the upstream closed meanwhile: once more on a new one.
                if reused && stale_retry {
                    stale_retry = false;
                    tracing::debug!(queue_id = %id, error = %e, "stale upstream connection; reconnecting");
                    continue;
                }
                return Err(Blocked::Failed(e.to_string()));
            }
            Err(e @ TransactionError::Corrupt(_)) | Err(e @ TransactionError::Read(_)) => {
                *connected = None;
                tracing::error!(queue_id = %id, error = %e, "cannot send the spooled message");
                return Err(Blocked::Failed(e.to_string()));
            }
        };
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
                    state.last_error = Some(describe(&reply));
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
        if (!split.is_empty() || outcome.effect.is_some() || !state.is_finished())
            && let Err(e) = shared.spool.save_state(id, state).await
        {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        }
        if let Some(effect) = outcome.effect {
            *connected = None;
            return Err(account_effect(&shared.config, effect));
        }
        pending = split;
    }
    Ok(())
}

fn describe(reply: &UpstreamReply) -> String {
    match reply.diagnosis() {
        Some(diagnosis) => format!("{reply} ({diagnosis})"),
        None => reply.to_string(),
    }
}

/// Pauses the mailbox as the reply asks; the message waits without counting an attempt.
fn account_effect(config: &Config, effect: AccountEffect) -> Blocked {
    let (pause, reply) = match effect {
        // Refused mid-session after an accepted AUTH: the next connection logs in afresh.
        AccountEffect::TokenRejected(reply) => return Blocked::Token(describe(&reply)),
        AccountEffect::Throttled(reply) => (retry_delay(config, 1), reply),
        AccountEffect::QuotaExceeded(reply) => (QUOTA_PAUSE, reply),
        AccountEffect::Hold(reply) => (HOLD_PAUSE, reply),
    };
    let why = describe(&reply);
    tracing::warn!(pause_secs = pause.as_secs(), reason = %why, "mailbox paused");
    Blocked::Paused(Instant::now() + pause, why)
}

/// Connects and logs in as `mailbox`. A token refused with 535 5.7.3 is invalidated and a
/// fresh one tried once; a second refusal holds the account's mail.
async fn connect(shared: &Shared, lane: &Lane, mailbox: &str) -> Result<Connected, Blocked> {
    let tls = lane.tls.clone().map_err(Blocked::Failed)?;
    for try_number in 0..2 {
        let token = shared
            .tokens
            .access_token(lane.name())
            .await
            .map_err(|e: TokenError| Blocked::Token(e.to_string()))?;
        let hostname = &shared.config.server.hostname;
        let mut connection =
            UpstreamConnection::connect(&lane.config.upstream, Arc::clone(&tls), hostname)
                .await
                .map_err(|e| Blocked::Failed(crate::oauth::check::explain_client_error(&e)))?;
        match connection.auth_xoauth2(mailbox, &token.token).await {
            Ok(()) => {
                return Ok(Connected {
                    connection,
                    mailbox: mailbox.to_owned(),
                    used: false,
                });
            }
            Err(ClientError::Rejected(reply)) if reply.is_status(535, "5.7.3") => {
                shared.tokens.invalidate(lane.name(), &token.token);
                connection.quit().await;
                // With a fresh token refused too, a per-sender mailbox is the problem, not the
                // token: that message cannot go, the others can.
                if try_number == 1 && lane.config.mailbox == "{sender}" {
                    return Err(Blocked::Refused(reply));
                }
                if try_number == 1 {
                    return Err(Blocked::TokenRefused(describe(&reply)));
                }
            }
            Err(ClientError::Rejected(reply)) => {
                connection.quit().await;
                return Err(account_effect(
                    &shared.config,
                    match super::classify::classify(&reply) {
                        super::classify::Verdict::Throttled => AccountEffect::Throttled(reply),
                        super::classify::Verdict::QuotaExceeded => {
                            AccountEffect::QuotaExceeded(reply)
                        }
                        _ => AccountEffect::Hold(reply),
                    },
                ));
            }
            Err(e) => {
                return Err(Blocked::Failed(crate::oauth::check::explain_client_error(
                    &e,
                )));
            }
        }
    }
    unreachable!("the loop returns on its second pass")
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
        return Report::RetryAt(Instant::now() + retry_delay(&shared.config, 1));
    }
    if failed > 0 && shared.config.queue.on_failure == OnFailure::Keep {
        match shared.spool.keep_failed(id).await {
            Ok(()) => tracing::warn!(queue_id = %id, failed, "moved to failed/"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot move to failed/"),
        }
        return Report::Done;
    }
    if failed > 0 && !state.bounced && !envelope.is_dsn && !envelope.sender.is_empty() {
        let head = read_head(shared, file);
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
                return Report::RetryAt(Instant::now() + retry_delay(&shared.config, 1));
            }
        }
    }
    let outcome = if failed > 0 {
        Outcome::Bounced
    } else {
        let age = now_ms().saturating_sub(envelope.received_at);
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
            Report::RetryAt(Instant::now() + retry_delay(&shared.config, 1))
        }
    }
}

/// The start of the content, for the headers quoted in a DSN.
fn read_head(shared: &Shared, file: &MessageFile) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let path = shared.spool.paths().message(file.envelope.id);
    let mut head = vec![0u8; (file.content_len as usize).min(64 * 1024)];
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(file.content_offset))?;
        f.read_exact(&mut head)
    });
    if read.is_err() {
        head.clear();
    }
    head
}
