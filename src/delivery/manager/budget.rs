//! Exchange's per-mailbox sending limits (`rate` messages per period, `daily_recipients` per
//! rolling day) as state that outlives a reload and a restart.
//!
//! The limits belong to the upstream *mailbox*: two accounts that send as the same mailbox
//! share one budget. [`Budget`] is the interface delivery uses; [`LocalBudget`] keeps the
//! windows for this process and writes them under `state_dir` before a send starts (a crash
//! forgets nothing that was sent), and a cluster-wide implementation can take its place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::pacing::SlidingWindow;
pub use crate::BoxFuture;
use crate::config::values::Rate;
pub use crate::delivery::grant::{CONNECTION_POLL, Exhausted, Grant, Window, key};

pub const DAY: Duration = Duration::from_secs(86_400);

/// One mailbox's limits, from its account's `[account.upstream]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub rate: Rate,
    pub daily_recipients: u32,
}

impl Limits {
    pub fn of(upstream: &crate::config::UpstreamConfig) -> Limits {
        Limits {
            rate: upstream.rate,
            daily_recipients: upstream.daily_recipients,
        }
    }
}

/// What a connection to a mailbox is, for its limit: Exchange counts SMTP sessions and
/// Graph requests separately (3 and 4 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Smtp,
    Graph,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Smtp => "smtp",
            Channel::Graph => "graph",
        }
    }
}

/// What a mailbox has used of its limits, and when it may send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Messages in the current rate window (in flight included).
    pub sent: u64,
    /// Recipients in the last 24 hours (in flight included).
    pub recipients_today: u64,
    /// When a one-recipient message may start; `None`: now.
    pub next_send: Option<Instant>,
}

/// Where delivery counts its sends. Answers at once (it never waits for room: the scheduler
/// does, in its timer queue, where a stop or reload can end the wait).
pub trait Budget: Send + Sync {
    /// Counts one message to `recipients` recipients as `mailbox`, if both limits have room.
    fn take<'a>(
        &'a self,
        mailbox: &'a str,
        limits: Limits,
        recipients: u64,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>>;

    /// What `mailbox` has used of `limits` (for the admin's eyes; counts nothing).
    fn usage<'a>(&'a self, mailbox: &'a str, limits: Limits) -> BoxFuture<'a, Usage>;

    /// How long a worker keeps an idle connection open. It counts against the mailbox's
    /// connection limit meanwhile: where other nodes share the limit, it goes back sooner.
    fn keep_idle(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Takes one of the `limit` connections `mailbox` may have open over `channel` at once,
    /// held until the grant is dropped.
    fn connect<'a>(
        &'a self,
        mailbox: &'a str,
        channel: Channel,
        limit: u32,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>>;
}

/// The connections of this process, per mailbox and channel.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<(Channel, String), u32>>,
}

impl Connections {
    /// How many this process has open to `mailbox` over `channel`.
    pub fn open(&self, mailbox: &str, channel: Channel) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&(channel, key(mailbox))).copied().unwrap_or(0)
    }

    /// Takes one if fewer than `limit` are open.
    pub fn take(
        self: &Arc<Self>,
        mailbox: &str,
        channel: Channel,
        limit: u32,
    ) -> Result<Grant, Exhausted> {
        let key = (channel, key(mailbox));
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(key.clone()).or_default();
            if *count >= limit.max(1) {
                return Err(Exhausted {
                    window: Window::Connections,
                    until: Instant::now() + CONNECTION_POLL,
                });
            }
            *count += 1;
        }
        let connections = Arc::clone(self);
        Ok(Grant::new(move || {
            let mut open = connections.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }))
    }
}

/// The budgets of this process, saved to a file.
pub struct LocalBudget {
    inner: Arc<Inner>,
    connections: Arc<Connections>,
}

struct Inner {
    mailboxes: Mutex<HashMap<String, Windows>>,
    /// Bumped by every change; the writer saves up to the number it read.
    changes: watch::Sender<u64>,
    saved: watch::Sender<u64>,
    file: Option<PathBuf>,
}

struct Windows {
    rate: SlidingWindow,
    rate_period: Duration,
    daily: SlidingWindow,
}

impl Windows {
    fn new(rate_period: Duration) -> Windows {
        Windows {
            rate: SlidingWindow::default(),
            rate_period,
            daily: SlidingWindow::default(),
        }
    }
}

/// The file: per mailbox, each window's period and its sends as (Unix ms, weight).
#[derive(Serialize, Deserialize, Default)]
struct Saved {
    version: u32,
    mailboxes: HashMap<String, SavedWindows>,
}

#[derive(Serialize, Deserialize)]
struct SavedWindows {
    rate_period_ms: u64,
    rate: Vec<(u64, u64)>,
    daily: Vec<(u64, u64)>,
}

const FORMAT_VERSION: u32 = 1;

impl LocalBudget {
    /// Budgets kept in memory only (tests, and the fallback when the file cannot be read).
    pub fn in_memory() -> LocalBudget {
        LocalBudget::with(HashMap::new(), None)
    }

    /// Loads the budgets saved at `path` (none yet is an empty budget) and saves every change
    /// there from now on. Must be called inside a Tokio runtime.
    pub fn open(path: &Path) -> Result<LocalBudget, String> {
        let saved: Saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a budget file: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if saved.version > FORMAT_VERSION {
            return Err(format!(
                "{}: written by a newer smtprelay (format {})",
                path.display(),
                saved.version
            ));
        }
        // Saved times are wall-clock; the windows count in monotonic time. A time in the
        // future (the clock was set back) counts from now.
        let instant = |ms: u64| crate::clock::instant_at_unix_ms(ms).min(Instant::now());
        let restore = |entries: Vec<(u64, u64)>| {
            SlidingWindow::with_finished(
                entries
                    .into_iter()
                    .map(|(ms, w)| (instant(ms), w))
                    .collect(),
            )
        };
        let mailboxes = saved
            .mailboxes
            .into_iter()
            .map(|(mailbox, w)| {
                let windows = Windows {
                    rate: restore(w.rate),
                    rate_period: Duration::from_millis(w.rate_period_ms),
                    daily: restore(w.daily),
                };
                (mailbox, windows)
            })
            .collect();
        Ok(LocalBudget::with(mailboxes, Some(path.to_owned())))
    }

    fn with(mailboxes: HashMap<String, Windows>, file: Option<PathBuf>) -> LocalBudget {
        let inner = Arc::new(Inner {
            mailboxes: Mutex::new(mailboxes),
            changes: watch::channel(0).0,
            saved: watch::channel(0).0,
            file,
        });
        if inner.file.is_some() {
            tokio::spawn(write_changes(Arc::clone(&inner)));
        }
        LocalBudget {
            inner,
            connections: Arc::default(),
        }
    }

    /// Waits until every change so far is in the file (at shutdown).
    pub async fn flush(&self) {
        self.inner.saved_through(*self.inner.changes.borrow()).await;
    }

    /// What a mailbox has used: (messages in the rate window, recipients in the day).
    pub fn used(&self, mailbox: &str) -> Option<(u64, u64)> {
        let now = Instant::now();
        let mut mailboxes = self.inner.lock();
        mailboxes.get_mut(&key(mailbox)).map(|w| {
            let period = w.rate_period;
            (w.rate.used(period, now), w.daily.used(DAY, now))
        })
    }

    fn usage_now(&self, mailbox: &str, limits: Limits) -> Usage {
        let now = Instant::now();
        let mut mailboxes = self.inner.lock();
        let Some(w) = mailboxes.get_mut(&key(mailbox)) else {
            return Usage {
                sent: 0,
                recipients_today: 0,
                next_send: None,
            };
        };
        let period = limits.rate.period;
        let rate_room = w.rate.room_at(limits.rate.count.into(), period, 1, now);
        let daily_room = w.daily.room_at(limits.daily_recipients.into(), DAY, 1, now);
        Usage {
            sent: w.rate.used(period, now),
            recipients_today: w.daily.used(DAY, now),
            next_send: rate_room.max(daily_room),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Windows>> {
        self.mailboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) -> u64 {
        let mut number = 0;
        self.changes.send_modify(|n| {
            *n += 1;
            number = *n;
        });
        number
    }

    async fn saved_through(&self, change: u64) {
        if self.file.is_none() {
            return;
        }
        let mut saved = self.saved.subscribe();
        // The writer never stops while the budget lives; an error here means it is gone.
        let _ = saved.wait_for(|n| *n >= change).await;
    }

    fn finish(&self, mailbox: &str, rate: u64, daily: u64) {
        let now = Instant::now();
        if let Some(w) = self.lock().get_mut(mailbox) {
            let period = w.rate_period;
            w.rate.finish(rate, period, now);
            w.daily.finish(daily, DAY, now);
        }
        self.changed();
    }

    /// Takes back a send that never reached the upstream.
    fn give_back(&self, mailbox: &str, rate: u64, daily: u64) {
        if let Some(w) = self.lock().get_mut(mailbox) {
            w.rate.cancel(rate);
            w.daily.cancel(daily);
        }
        self.changed();
    }

    /// The file's contents now; idle mailboxes are dropped on the way.
    fn snapshot(&self) -> Saved {
        let now = Instant::now();
        let wall = crate::clock::unix_ms_at;
        let mut mailboxes = self.lock();
        mailboxes.retain(|_, w| {
            let period = w.rate_period;
            !(w.rate.is_idle(period, now) && w.daily.is_idle(DAY, now))
        });
        let saved = mailboxes
            .iter_mut()
            .map(|(mailbox, w)| {
                let period = w.rate_period;
                let list = |entries: Vec<(Instant, u64)>| {
                    entries.into_iter().map(|(at, n)| (wall(at), n)).collect()
                };
                let windows = SavedWindows {
                    rate_period_ms: period.as_millis() as u64,
                    rate: list(w.rate.snapshot(period, now)),
                    daily: list(w.daily.snapshot(DAY, now)),
                };
                (mailbox.clone(), windows)
            })
            .collect();
        Saved {
            version: FORMAT_VERSION,
            mailboxes: saved,
        }
    }
}

/// Saves the budgets whenever they change, one write for every change made while the last
/// was under way (a send waits for the write that includes it, as a message waits for the
/// spool's group commit).
async fn write_changes(inner: Arc<Inner>) {
    let path = inner.file.clone().expect("only started with a file");
    let mut changes = inner.changes.subscribe();
    let mut failing = false;
    loop {
        let through = *changes.borrow_and_update();
        if through > *inner.saved.borrow() {
            let bytes = serde_json::to_vec(&inner.snapshot()).expect("budgets serialise");
            let written =
                crate::private_files::atomic_write_off_thread(path.clone(), bytes, false).await;
            match written {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(file = %path.display(), "sending budgets are saved again");
                }
                Ok(()) => {}
                // Sending goes on with the budgets in memory; only a restart would forget.
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(file = %path.display(), error = %e,
                        "cannot save the sending budgets: a restart now would forget recent sends");
                }
                Err(_) => {}
            }
            inner.saved.send_replace(through);
        }
        // The sender lives as long as the budget, which lives as long as the process.
        if changes.changed().await.is_err() {
            return;
        }
    }
}

impl Budget for LocalBudget {
    fn take<'a>(
        &'a self,
        mailbox: &'a str,
        limits: Limits,
        recipients: u64,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        Box::pin(async move {
            let key = key(mailbox);
            let now = Instant::now();
            let (rate, daily) = {
                let mut mailboxes = self.inner.lock();
                let w = mailboxes
                    .entry(key.clone())
                    .or_insert_with(|| Windows::new(limits.rate.period));
                // The latest configuration decides how long the rate window is.
                w.rate_period = limits.rate.period;
                let rate = w
                    .rate
                    .try_reserve(limits.rate.count.into(), limits.rate.period, 1, now)
                    .map_err(|until| Exhausted {
                        window: Window::Rate,
                        until,
                    })?;
                match w
                    .daily
                    .try_reserve(limits.daily_recipients.into(), DAY, recipients, now)
                {
                    Ok(daily) => (rate, daily),
                    Err(until) => {
                        w.rate.cancel(rate);
                        return Err(Exhausted {
                            window: Window::Daily,
                            until,
                        });
                    }
                }
            };
            let change = self.inner.changed();
            let (inner, undo) = (Arc::clone(&self.inner), Arc::clone(&self.inner));
            let key_to_undo = key.clone();
            let grant = Grant::undoable(
                move || inner.finish(&key, rate, daily),
                move || undo.give_back(&key_to_undo, rate, daily),
            );
            // Written ahead: a crash during the send still finds it counted after a restart.
            self.inner.saved_through(change).await;
            Ok(grant)
        })
    }

    fn usage<'a>(&'a self, mailbox: &'a str, limits: Limits) -> BoxFuture<'a, Usage> {
        Box::pin(async move { self.usage_now(mailbox, limits) })
    }

    fn connect<'a>(
        &'a self,
        mailbox: &'a str,
        channel: Channel,
        limit: u32,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        Box::pin(async move { self.connections.take(mailbox, channel, limit) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: &str, daily: u32) -> Limits {
        Limits {
            rate: rate.parse().unwrap(),
            daily_recipients: daily,
        }
    }

    #[tokio::test]
    async fn the_daily_budget_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let budget = LocalBudget::open(&path).unwrap();
        let l = limits("1000/min", 10);
        drop(budget.take("Relay@contoso.com", l, 6).await.unwrap());
        // In flight when the process dies: counted all the same.
        let in_flight = budget.take("relay@contoso.com", l, 3).await.unwrap();
        std::mem::forget(in_flight);
        drop(budget);

        let budget = LocalBudget::open(&path).unwrap();
        assert_eq!(budget.used("relay@contoso.com"), Some((2, 9)));
        let refused = budget.take("RELAY@contoso.com", l, 2).await.err().unwrap();
        assert_eq!(refused.window, Window::Daily);
        assert!(refused.until > Instant::now() + DAY - Duration::from_secs(60));
        // Another mailbox has its own budget.
        assert!(budget.take("other@contoso.com", l, 10).await.is_ok());
    }

    #[tokio::test]
    async fn the_rate_window_counts_from_the_finish() {
        let budget = LocalBudget::in_memory();
        let l = limits("2/1h", 100);
        let a = budget.take("m@x", l, 1).await.unwrap();
        let _b = budget.take("m@x", l, 1).await.unwrap();
        let refused = budget.take("m@x", l, 1).await.err().unwrap();
        assert_eq!(refused.window, Window::Rate);
        drop(a);
        let refused = budget.take("m@x", l, 1).await.err().unwrap();
        assert!(refused.until > Instant::now() + Duration::from_secs(3590));
        // A refusal by one window takes nothing from the other.
        assert_eq!(budget.used("m@x"), Some((2, 2)));
    }

    #[tokio::test]
    async fn a_send_given_back_counts_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.json");
        let budget = LocalBudget::open(&path).unwrap();
        let l = limits("1/1h", 5);
        budget.take("m@x", l, 5).await.unwrap().give_back();
        assert_eq!(budget.used("m@x"), Some((0, 0)));
        let usage = budget.usage("m@x", l).await;
        assert_eq!((usage.sent, usage.recipients_today), (0, 0));
        assert_eq!(usage.next_send, None);
        // Both windows have their whole room; a send that went counts as ever.
        drop(budget.take("m@x", l, 5).await.unwrap());
        assert!(budget.take("m@x", l, 1).await.is_err());
        budget.flush().await;
        drop(budget);
        assert_eq!(LocalBudget::open(&path).unwrap().used("m@x"), Some((1, 5)));
    }
}
