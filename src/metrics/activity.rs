//! What the relay did lately, for the admin's eyes (`/health`, the status page): the last
//! delivery results, per-minute counts for the last hour, and each account's run of
//! deferrals since its last success. Bounded: a fixed number of results and minutes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// How many delivery results are kept.
pub const RECENT: usize = 50;
/// How many minutes the chart covers.
pub const MINUTES: usize = 60;

/// One message's delivery attempt as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryResult {
    /// Unix seconds.
    pub at: u64,
    pub queue_id: String,
    pub account: String,
    /// The mailbox it was sent as.
    pub mailbox: String,
    pub sender: String,
    pub recipients: usize,
    pub result: ResultKind,
    /// The upstream's reply, or why the attempt went wrong.
    pub reply: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    Delivered,
    Deferred,
    /// Finished with failed recipients (reported to the sender, or kept in `failed/`).
    Bounced,
}

impl ResultKind {
    pub fn name(self) -> &'static str {
        match self {
            ResultKind::Delivered => "delivered",
            ResultKind::Deferred => "deferred",
            ResultKind::Bounced => "bounced",
        }
    }
}

/// Counts for one minute of the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// Unix seconds at the start of the minute.
    pub start: u64,
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

/// An account's deliveries defer and none has gone through since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferring {
    pub account: String,
    /// The first deferral after the last success (Unix seconds).
    pub since: u64,
    pub deferrals: u64,
    pub last_reply: Option<String>,
}

impl Deferring {
    /// One line for `/health`.
    pub fn describe(&self) -> String {
        format!(
            "account {}: deliveries defer since {} ({} deferral(s), none delivered since; last: {})",
            self.account,
            crate::clock::rfc3339(self.since),
            self.deferrals,
            self.last_reply.as_deref().unwrap_or("no reply")
        )
    }
}

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<DeliveryResult>,
    minutes: VecDeque<Minute>,
    deferring: BTreeMap<String, Deferring>,
}

impl Inner {
    /// The minute `now` falls in, started if need be; minutes older than the hour are dropped.
    fn minute(&mut self, now: u64) -> &mut Minute {
        let start = now - now % 60;
        if self.minutes.back().is_none_or(|m| m.start < start) {
            self.minutes.push_back(Minute {
                start,
                ..Minute::default()
            });
        }
        let horizon = start.saturating_sub(60 * (MINUTES as u64 - 1));
        while self.minutes.front().is_some_and(|m| m.start < horizon) {
            self.minutes.pop_front();
        }
        // A clock set back lands in the latest minute rather than reordering the hour.
        self.minutes.back_mut().expect("pushed above")
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn received(&self, now: u64) {
        self.lock().minute(now).received += 1;
    }

    pub fn delivery(&self, result: DeliveryResult) {
        let mut inner = self.lock();
        let minute = inner.minute(result.at);
        match result.result {
            ResultKind::Delivered => minute.delivered += 1,
            ResultKind::Bounced => minute.bounced += 1,
            ResultKind::Deferred => minute.deferred += 1,
        }
        if result.result == ResultKind::Deferred {
            let streak = inner
                .deferring
                .entry(result.account.clone())
                .or_insert_with(|| Deferring {
                    account: result.account.clone(),
                    since: result.at,
                    deferrals: 0,
                    last_reply: None,
                });
            streak.deferrals += 1;
            streak.last_reply.clone_from(&result.reply);
        } else {
            // A bounce is an answer too: the upstream works, the message did not.
            inner.deferring.remove(&result.account);
        }
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(result);
    }

    /// The last [`RECENT`] results, newest first.
    pub fn recent(&self) -> Vec<DeliveryResult> {
        self.lock().recent.iter().rev().cloned().collect()
    }

    /// The last [`MINUTES`] minutes up to `now`, oldest first, quiet minutes included.
    pub fn last_hour(&self, now: u64) -> Vec<Minute> {
        let inner = self.lock();
        let current = now - now % 60;
        (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let start = current.saturating_sub(60 * back);
                inner
                    .minutes
                    .iter()
                    .find(|m| m.start == start)
                    .copied()
                    .unwrap_or(Minute {
                        start,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// Accounts whose deliveries defer, with none delivered since.
    pub fn deferring(&self) -> Vec<Deferring> {
        self.lock().deferring.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(at: u64, account: &str, result: ResultKind) -> DeliveryResult {
        DeliveryResult {
            at,
            queue_id: format!("q{at}"),
            account: account.into(),
            mailbox: "m@x".into(),
            sender: "s@x".into(),
            recipients: 1,
            result,
            reply: Some(format!("reply {at}")),
        }
    }

    #[test]
    fn a_run_of_deferrals_lasts_until_a_success() {
        let activity = Activity::default();
        activity.delivery(result(100, "a", ResultKind::Deferred));
        activity.delivery(result(130, "a", ResultKind::Deferred));
        activity.delivery(result(140, "b", ResultKind::Delivered));
        let deferring = activity.deferring();
        assert_eq!(deferring.len(), 1);
        assert_eq!(deferring[0].since, 100);
        assert_eq!(deferring[0].deferrals, 2);
        assert_eq!(deferring[0].last_reply.as_deref(), Some("reply 130"));
        activity.delivery(result(150, "a", ResultKind::Bounced));
        assert!(activity.deferring().is_empty());
    }

    #[test]
    fn the_hour_has_sixty_minutes_and_forgets_older_ones() {
        let activity = Activity::default();
        activity.received(0);
        activity.received(59);
        activity.delivery(result(61, "a", ResultKind::Delivered));
        activity.delivery(result(3700, "a", ResultKind::Deferred));
        let hour = activity.last_hour(3700);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour.last().unwrap().start, 3660);
        assert_eq!(hour.last().unwrap().deferred, 1);
        // Minute 0 is more than an hour before 3660; minute 60 is the first kept.
        assert_eq!(hour[0].start, 120);
        assert_eq!(
            hour.iter().map(|m| m.received + m.delivered).sum::<u64>(),
            0
        );
        let earlier = activity.last_hour(61);
        assert_eq!(
            earlier.last().unwrap().delivered,
            0,
            "dropped with the hour"
        );
    }

    #[test]
    fn only_the_last_fifty_results_are_kept_newest_first() {
        let activity = Activity::default();
        for at in 0..(RECENT as u64 + 5) {
            activity.delivery(result(at, "a", ResultKind::Delivered));
        }
        let recent = activity.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].at, RECENT as u64 + 4);
        assert_eq!(recent[RECENT - 1].at, 5);
    }
}
