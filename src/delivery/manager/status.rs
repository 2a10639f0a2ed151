//! What delivery is waiting for, as the admin endpoint reports it. The scheduler writes it;
//! it lives for the process, so `/health` reads it across reloads.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::budget::Window;
use super::schedule::{Block, Census};

/// A mailbox whose mail waits: its budget is spent, or Exchange asked it to pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldMailbox {
    pub account: String,
    pub mailbox: String,
    /// `rate`, `daily`, `connections` or `unshared` for a limit that holds the mail; absent
    /// for a pause.
    pub budget: Option<Window>,
    /// In words: which budget, or what Exchange said.
    pub reason: String,
    /// It waits for an admin to act (not for time to pass): alerts say so.
    pub needs_admin: bool,
    /// When sending may resume (Unix seconds).
    pub until: u64,
    /// Messages due that wait for it.
    pub messages: usize,
}

impl HeldMailbox {
    pub fn new(
        account: &str,
        mailbox: &str,
        why: &Block,
        until: SystemTime,
        messages: usize,
    ) -> Self {
        let (budget, reason) = match why {
            Block::Budget(window) => (Some(*window), why.reason()),
            Block::Paused(reason) => (None, format!("paused: {reason}")),
            Block::Held(reason) => (None, format!("held: {reason}")),
        };
        HeldMailbox {
            account: account.to_owned(),
            mailbox: mailbox.to_owned(),
            budget,
            reason,
            needs_admin: matches!(why, Block::Held(_)),
            until: until
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            messages,
        }
    }

    /// One line for `/health`.
    pub fn describe(&self) -> String {
        format!(
            "account {}: mailbox {}: {}; sending resumes at {} ({} message(s) wait)",
            self.account,
            self.mailbox,
            self.reason,
            crate::clock::rfc3339(self.until),
            self.messages
        )
    }
}

/// An SMTP account sending through Microsoft Graph because Exchange turned SMTP AUTH off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FallbackInUse {
    pub account: String,
    /// Exchange's reply, with its diagnosis.
    pub reason: String,
    /// Since when (Unix seconds).
    pub since: u64,
    /// When SMTP is tried again (Unix seconds).
    pub retry_smtp_at: u64,
}

impl FallbackInUse {
    /// One line for `/health`.
    pub fn describe(&self) -> String {
        format!(
            "account {}: sending through Microsoft Graph since {} ({}); SMTP is tried again at {}",
            self.account,
            crate::clock::rfc3339(self.since),
            self.reason,
            crate::clock::rfc3339(self.retry_smtp_at),
        )
    }
}

/// How many messages an account has in the queue (scheduled, in flight or held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountBacklog {
    pub account: String,
    pub queued: usize,
}

#[derive(Default)]
pub struct DeliveryStatus {
    held: Mutex<Vec<HeldMailbox>>,
    /// Each account's backlog, kept up to date by the scheduler as messages come and go;
    /// empty until a scheduler has read the queue. By name, so a reload's new scheduler
    /// starts from what the old one counted.
    backlog: Mutex<Vec<AccountBacklog>>,
    /// The queue by what its messages wait for (as of the last second).
    queue: Mutex<Census>,
    fallbacks: Mutex<Vec<FallbackInUse>>,
    /// Told when a mailbox starts or stops waiting for an admin, or an account falls back
    /// (the alerter wakes for it).
    changed: tokio::sync::Notify,
}

impl crate::queue::admission::Backlogs for DeliveryStatus {
    fn backlog_of(&self, account: &str) -> Option<usize> {
        DeliveryStatus::backlog_of(self, account)
    }
}

impl DeliveryStatus {
    pub fn held(&self) -> Vec<HeldMailbox> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_held(&self, held: Vec<HeldMailbox>) {
        let needing_admin = |list: &[HeldMailbox]| -> Vec<(String, String)> {
            list.iter()
                .filter(|h| h.needs_admin)
                .map(|h| (h.account.clone(), h.mailbox.clone()))
                .collect()
        };
        let mut current = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let changed = needing_admin(&current) != needing_admin(&held);
        *current = held;
        drop(current);
        if changed {
            self.changed.notify_one();
        }
    }

    /// Waits until what alerts look at changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The backlog of `account`, if a scheduler has counted it.
    pub fn backlog_of(&self, account: &str) -> Option<usize> {
        let backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        backlog
            .iter()
            .find(|b| b.account == account)
            .map(|b| b.queued)
    }

    /// Every account's backlog, as last counted.
    pub fn backlogs(&self) -> Vec<AccountBacklog> {
        self.backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The scheduler's counts, `queued[i]` for `lanes[i]`: written in place (it is called
    /// for every event the scheduler handles, and the accounts seldom change).
    pub(super) fn set_backlog(
        &self,
        lanes: &[std::sync::Arc<super::lane::Lane>],
        queued: &[usize],
    ) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let same_accounts = backlog.len() == lanes.len()
            && backlog
                .iter()
                .zip(lanes)
                .all(|(b, l)| b.account == l.name());
        if !same_accounts {
            *backlog = lanes
                .iter()
                .map(|lane| AccountBacklog {
                    account: lane.name().to_owned(),
                    queued: 0,
                })
                .collect();
        }
        for (entry, count) in backlog.iter_mut().zip(queued) {
            entry.queued = *count;
        }
    }

    pub fn queue(&self) -> Census {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_queue(&self, census: Census) {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = census;
    }

    pub fn fallbacks(&self) -> Vec<FallbackInUse> {
        self.fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_fallbacks(&self, fallbacks: Vec<FallbackInUse>) {
        let accounts = |list: &[FallbackInUse]| -> Vec<String> {
            list.iter().map(|f| f.account.clone()).collect()
        };
        let mut current = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        let changed = accounts(&current) != accounts(&fallbacks);
        *current = fallbacks;
        drop(current);
        if changed {
            self.changed.notify_one();
        }
    }
}
