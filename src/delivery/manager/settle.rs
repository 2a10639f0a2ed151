//! Recording what an attempt came to: the scheduler's writes. Each ended attempt is settled in
//! a task of the scheduler's: the results and why the message waits go into its delivery
//! state, or the finished message leaves the queue (with a DSN for failed recipients, or to
//! `failed/`). Only the scheduler runs these, and only for a message it counts as in flight,
//! so nothing else writes the same state meanwhile.

use crate::delivery::meaning::Explain;
use std::time::Duration;

use tokio::time::Instant;

use super::Context;
use super::disposition::{self, Disposition};
use super::lane::Lane;
use super::schedule::{Block, Report};
use crate::config::{Config, OnFailure};
use crate::delivery::agent::transport::{AccountEffect, SendError};
use crate::delivery::agent::worker::{End, Ran, Stopped};
use crate::metrics::{DeliveryResult, Outcome, ResultKind};
use crate::queue::{DeliveryState, MessageFile, QueueId, RecipientStatus};

/// How soon a message waiting for a token is looked at again (a token event wakes it sooner).
pub const TOKEN_WAIT: Duration = Duration::from_secs(60);
/// Pauses after account-wide replies (throttling pauses for the first retry interval).
const QUOTA_PAUSE: Duration = Duration::from_secs(3600);
const HOLD_PAUSE: Duration = Duration::from_secs(900);

/// Records an ended attempt and says what the schedule does with the message next.
pub async fn settle(context: &Context, lane: &Lane, id: QueueId, end: End) -> Report {
    let (file, mut state, stopped) = match end {
        End::Gone => return Report::Done,
        End::Unreadable => return retry_soon(&context.config),
        End::Ran(ran) => {
            let Ran {
                file,
                state,
                stopped,
            } = *ran;
            (file, state, stopped)
        }
    };
    if let Some(stopped) = stopped {
        let error = match stopped {
            Stopped::Budget(exhausted) => {
                return Report::Blocked(exhausted.until, Block::Budget(exhausted.window));
            }
            Stopped::Send(SendError::Interrupted) => return Report::Interrupted,
            Stopped::Send(SendError::NoToken(reason)) => {
                tracing::info!(queue_id = %id, account = lane.name(), %reason, "held until the account has a token");
                note_error(context, id, &mut state, reason).await;
                return Report::NoToken(Instant::now() + TOKEN_WAIT);
            }
            Stopped::Send(SendError::TokenRefused(reason)) => {
                note_error(context, id, &mut state, reason.clone()).await;
                return Report::Blocked(Instant::now() + TOKEN_WAIT, Block::Paused(reason));
            }
            Stopped::Send(SendError::Account(effect)) | Stopped::Effect(effect) => {
                let report = match pause_for(&context.config, effect) {
                    Ok((until, block)) => {
                        // `queue list` and `queue show` say why the message waits.
                        state.last_error = Some(block.reason());
                        Report::Blocked(until, block)
                    }
                    // Refused mid-session after an accepted login: the next one logs in afresh.
                    Err(reason) => {
                        state.last_error = Some(reason);
                        Report::NoToken(Instant::now() + TOKEN_WAIT)
                    }
                };
                // With the results of the transaction that brought this, if there was one.
                save_progress(context, id, &state).await;
                return report;
            }
            Stopped::Send(SendError::Failed(reason) | SendError::NotSent(reason)) => {
                tracing::info!(queue_id = %id, account = lane.name(), %reason, "delivery attempt failed");
                reason
            }
            Stopped::Send(SendError::Refused(reply)) => {
                let pending: Vec<String> = state.pending().map(|r| r.address.clone()).collect();
                for address in pending {
                    state.set(&address, RecipientStatus::Failed, Some(reply.clone()));
                }
                reply.described()
            }
        };
        state.last_error = Some(error);
    }
    match disposition::after_attempt(
        &mut state,
        &context.config.queue,
        file.envelope.received_at,
        crate::clock::unix_ms(),
    ) {
        Disposition::Finished => finish(context, lane, &file, &mut state).await,
        Disposition::GaveUp => {
            save_progress(context, id, &state).await;
            finish(context, lane, &file, &mut state).await
        }
        Disposition::RetryIn(delay) => {
            save_progress(context, id, &state).await;
            let age = crate::clock::unix_ms().saturating_sub(file.envelope.received_at);
            let error = state.last_error.as_deref().unwrap_or("");
            // A deferral that has gone on for long is worth an admin's look.
            if age >= context.config.alerts.queue_age_warning.as_millis() as u64 {
                tracing::warn!(queue_id = %id, account = lane.name(), attempts = state.attempts,
                    age_secs = age / 1000, retry_in_secs = delay.as_secs(), error, "deferred");
            } else {
                tracing::info!(queue_id = %id, account = lane.name(), attempts = state.attempts,
                    retry_in_secs = delay.as_secs(), error, "deferred");
            }
            context.metrics.delivery(
                Outcome::Deferred,
                result_of(lane, &file, state.last_error.clone()),
            );
            Report::RetryAt(Instant::now() + delay)
        }
    }
}

/// Makes results durable (also a transaction's, while its attempt goes on).
pub async fn save_progress(context: &Context, id: QueueId, state: &DeliveryState) {
    if let Err(e) = context.spool.save_state(id, state).await {
        tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
    }
}

async fn note_error(context: &Context, id: QueueId, state: &mut DeliveryState, reason: String) {
    if state.last_error.as_deref() != Some(reason.as_str()) {
        state.last_error = Some(reason);
        if let Err(e) = context.spool.save_state(id, state).await {
            tracing::error!(queue_id = %id, error = %e, "cannot record why the message waits");
        }
    }
}

/// A failure that is not the message's (the spool, the disk): look again after the first
/// retry interval.
fn retry_soon(config: &Config) -> Report {
    Report::RetryAt(Instant::now() + disposition::retry_delay(&config.queue, 1))
}

/// How long the mailbox waits after an account-wide reply, and why; `Err` for a token
/// refused mid-session (the account waits for a fresh token instead).
fn pause_for(config: &Config, effect: AccountEffect) -> Result<(Instant, Block), String> {
    let (pause, block) = match effect {
        AccountEffect::TokenRejected(reply) => return Err(reply.described()),
        AccountEffect::Throttled(reply, asked) => (
            asked.unwrap_or_else(|| disposition::retry_delay(&config.queue, 1)),
            Block::Paused(reply.described()),
        ),
        AccountEffect::QuotaExceeded(reply) => (QUOTA_PAUSE, Block::Paused(reply.described())),
        AccountEffect::Hold(reply) => (HOLD_PAUSE, Block::Held(reply.described())),
    };
    tracing::warn!(pause_secs = pause.as_secs(), reason = %block.reason(), "mailbox paused");
    Ok((Instant::now() + pause, block))
}

/// Every recipient has a final result: report failures, then leave the queue. Removing the
/// message is the record of its last results, one fsync cheaper than writing them first; the
/// crash window is the same.
async fn finish(
    context: &Context,
    lane: &Lane,
    file: &MessageFile,
    state: &mut DeliveryState,
) -> Report {
    let id = file.envelope.id;
    let failed = state.failed().count();
    let envelope = &file.envelope;
    if failed > 0
        && let Err(e) = context.spool.save_state(id, state).await
    {
        tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        return retry_soon(&context.config);
    }
    if failed > 0 && context.config.queue.on_failure == OnFailure::Keep {
        match context.spool.keep_failed(id).await {
            Ok(()) => tracing::warn!(queue_id = %id, failed, "moved to failed/"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot move to failed/"),
        }
        return Report::Done;
    }
    if failed > 0 && !state.bounced && !envelope.is_dsn && !envelope.sender.is_empty() {
        let head = read_head(context, file).await;
        let bounce = super::dsn::Bounce {
            original: file,
            original_content_head: &head,
            state,
            hostname: &context.config.server.hostname,
            from: &lane.account.auth_mailbox(envelope),
            upstream_host: &lane.config().upstream.host,
        };
        match super::dsn::queue(&context.spool, &bounce).await {
            Ok(dsn) => {
                tracing::info!(queue_id = %id, dsn_id = %dsn, failed, "delivery status notification queued");
                state.bounced = true;
                // Without this record a crash before the removal below sends a second report.
                if let Err(e) = context.spool.save_state(id, state).await {
                    tracing::error!(queue_id = %id, error = %e,
                        "cannot record that the bounce is queued; a restart now would send it twice");
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot queue the bounce; will retry");
                return retry_soon(&context.config);
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
    let last_reply = state.recipients.iter().rev().find_map(|r| r.reply.as_ref());
    context.metrics.delivery(
        outcome,
        result_of(lane, file, last_reply.map(|r| r.to_string())),
    );
    match context.spool.complete(id).await {
        Ok(()) => {
            tracing::info!(queue_id = %id, delivered = state.recipients.len() - failed, failed, "done");
            Report::Done
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot remove the finished message");
            retry_soon(&context.config)
        }
    }
}

/// The message's line on the status page (its result is the outcome's).
fn result_of(lane: &Lane, file: &MessageFile, reply: Option<String>) -> DeliveryResult {
    let envelope = &file.envelope;
    DeliveryResult {
        at: crate::clock::unix_secs(),
        queue_id: envelope.id.to_string(),
        account: lane.name().to_owned(),
        mailbox: lane.account.auth_mailbox(envelope),
        sender: envelope.sender.clone(),
        recipients: envelope.recipients.len(),
        result: ResultKind::Deferred,
        reply,
    }
}

/// The start of the content, for the headers quoted in a DSN (empty if it cannot be read).
async fn read_head(context: &Context, file: &MessageFile) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let path = context.spool.paths().message(file.envelope.id);
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
