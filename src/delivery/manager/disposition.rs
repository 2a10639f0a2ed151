//! What follows an attempt that left recipients pending: the next attempt from `[queue] retry`,
//! or, past `max_age`, failing what is left. No I/O: the scheduler records what this decides.

use std::time::Duration;

use crate::config::QueueConfig;
use crate::queue::UpstreamReply;
use crate::queue::{DeliveryState, RecipientStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Every recipient has a final result: report failures and leave the queue.
    Finished,
    /// Try again after this long (`state.next_attempt_ms` is set).
    RetryIn(Duration),
    /// Too old to try again: what was pending has failed (`state.last_error` says why).
    GaveUp,
}

/// The retry schedule: `retry[n-1]` after the n-th failed attempt, then the last interval.
pub fn retry_delay(queue: &QueueConfig, attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(queue.retry.len().saturating_sub(1));
    queue
        .retry
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(3600))
}

/// Counts the attempt just made and decides what follows, updating `state` to match.
/// `received_at_ms` and `now_ms` are Unix milliseconds.
pub fn after_attempt(
    state: &mut DeliveryState,
    queue: &QueueConfig,
    received_at_ms: u64,
    now_ms: u64,
) -> Disposition {
    if state.is_finished() {
        return Disposition::Finished;
    }
    state.attempts += 1;
    let age = Duration::from_millis(now_ms.saturating_sub(received_at_ms));
    if age >= queue.max_age {
        let reason = format!(
            "gave up after {} in the queue: {}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            state.last_error.clone().unwrap_or_default()
        );
        let pending: Vec<(String, Option<UpstreamReply>)> = state
            .pending()
            .map(|r| (r.address.clone(), r.reply.clone()))
            .collect();
        for (address, last_reply) in pending {
            let reply =
                last_reply.unwrap_or_else(|| UpstreamReply::new(451, &format!("4.4.7 {reason}")));
            state.set(&address, RecipientStatus::Failed, Some(reply));
        }
        state.last_error = Some(reason);
        return Disposition::GaveUp;
    }
    let delay = retry_delay(queue, state.attempts);
    state.next_attempt_ms = now_ms + delay.as_millis() as u64;
    Disposition::RetryIn(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnFailure;
    use crate::queue::RecipientState;

    fn queue() -> QueueConfig {
        QueueConfig {
            retry: vec![Duration::from_secs(60), Duration::from_secs(600)],
            max_age: Duration::from_secs(3600),
            on_failure: OnFailure::Bounce,
            fsync: true,
            max_messages: 100,
            min_free_space: 0,
        }
    }

    fn state(replies: &[Option<&str>]) -> DeliveryState {
        DeliveryState {
            attempts: 0,
            next_attempt_ms: 0,
            recipients: replies
                .iter()
                .enumerate()
                .map(|(i, reply)| RecipientState {
                    address: format!("r{i}@x"),
                    status: RecipientStatus::Pending,
                    reply: reply.map(|r| UpstreamReply::new(r[..3].parse().unwrap(), &r[4..])),
                })
                .collect(),
            last_error: Some("421 4.4.2 dropped".into()),
            held: false,
            bounced: false,
            graph_draft: None,
        }
    }

    #[test]
    fn retries_follow_the_schedule_then_its_last_interval() {
        let mut s = state(&[None]);
        let q = queue();
        assert_eq!(
            after_attempt(&mut s, &q, 0, 1000),
            Disposition::RetryIn(Duration::from_secs(60))
        );
        assert_eq!(s.next_attempt_ms, 61_000);
        assert_eq!(
            after_attempt(&mut s, &q, 0, 2000),
            Disposition::RetryIn(Duration::from_secs(600))
        );
        assert_eq!(
            after_attempt(&mut s, &q, 0, 3000),
            Disposition::RetryIn(Duration::from_secs(600))
        );
        assert_eq!(s.attempts, 3);
    }

    #[test]
    fn past_max_age_what_is_pending_fails_with_its_last_reply() {
        let mut s = state(&[Some("450 4.2.1 mailbox busy"), None]);
        s.recipients.push(RecipientState {
            address: "done@x".into(),
            status: RecipientStatus::Delivered,
            reply: Some(UpstreamReply::new(250, "ok")),
        });
        assert_eq!(
            after_attempt(&mut s, &queue(), 0, 3_600_000),
            Disposition::GaveUp
        );
        let replies: Vec<(RecipientStatus, String)> = s
            .recipients
            .iter()
            .map(|r| (r.status, r.reply.as_ref().unwrap().to_string()))
            .collect();
        assert_eq!(
            replies[0],
            (RecipientStatus::Failed, "450 4.2.1 mailbox busy".into())
        );
        assert_eq!(replies[1].0, RecipientStatus::Failed);
        assert!(
            replies[1].1.starts_with("451 4.4.7 gave up after 1h"),
            "{}",
            replies[1].1
        );
        assert_eq!(replies[2], (RecipientStatus::Delivered, "250 ok".into()));
        assert_eq!(
            s.recipients[1].reply.as_ref().unwrap().enhanced.as_deref(),
            Some("4.4.7")
        );
        assert!(s.last_error.unwrap().ends_with("421 4.4.2 dropped"));
    }

    #[test]
    fn a_finished_message_counts_no_attempt() {
        let mut s = state(&[]);
        assert_eq!(after_attempt(&mut s, &queue(), 0, 0), Disposition::Finished);
        assert_eq!(s.attempts, 0);
    }
}
