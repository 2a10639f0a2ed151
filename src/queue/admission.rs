//! Admission control: whether intake may take more mail, before the queue runs away. Three
//! limits, like Postfix's `queue_minfree` and more:
//!
//! - `[queue] max_messages`: the queue's size, all accounts and held mail together;
//! - `[queue] min_free_space`: the free space of the spool's file system;
//! - `[[account]] max_backlog`: one account's queued messages, so a sender in a loop fills
//!   its own account's share and not the relay.
//!
//! Intake asks at RCPT and at DATA; a reached limit is refused with `452 4.3.1` (the mapping
//! is `SmtpError::from(&Limit)`), which devices take as "try again later". The counts are
//! read from their owners, never by scanning the spool: the spool's index for its size, one
//! `fstatvfs` for the free space, and the delivery scheduler's per-account counts (which it
//! keeps as messages come and go). Messages being received when a limit is reached are
//! still taken, so a limit may be passed by what the open sessions were sending.

use super::Spool;
use crate::config::Config;

/// Each account's queued messages, as counted by their owner (the delivery scheduler, which
/// sees messages come and go).
pub trait Backlogs {
    /// `None` while nobody has counted the account yet.
    fn backlog_of(&self, account: &str) -> Option<usize>;
}

/// A limit that is reached: why new mail is refused now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// `max_messages` messages are queued.
    QueueFull { queued: usize, max: usize },
    /// The spool's file system has less than `min_free_space` free.
    LowFreeSpace { free: u64, min: u64 },
    /// The account has `max_backlog` messages queued.
    AccountBacklog {
        account: String,
        queued: usize,
        max: u64,
    },
}

impl Limit {
    /// The alert condition's key: one alert when the limit is reached, one when it clears.
    pub fn alert_key(&self) -> String {
        match self {
            Limit::QueueFull { .. } => "queue:full".to_owned(),
            Limit::LowFreeSpace { .. } => "queue:low_free_space".to_owned(),
            Limit::AccountBacklog { account, .. } => format!("account:{account}:backlog_full"),
        }
    }

    /// In words, for `/health`, alerts and the status page.
    pub fn describe(&self) -> String {
        match self {
            Limit::QueueFull { queued, max } => format!(
                "the queue is full ({queued} messages, [queue] max_messages = {max}): new mail is refused with 452 4.3.1"
            ),
            Limit::LowFreeSpace { free, min } => format!(
                "the spool's file system has {} free, less than [queue] min_free_space = {}: new mail is refused with 452 4.3.1",
                mib(*free),
                mib(*min)
            ),
            Limit::AccountBacklog {
                account,
                queued,
                max,
            } => format!(
                "account {account}: {queued} messages queued, at its max_backlog of {max}: its new mail is refused with 452 4.3.1"
            ),
        }
    }
}

/// "212.4 MiB".
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The limits of one configuration, over the counts of the running relay.
pub struct Admission<'a> {
    config: &'a Config,
    spool: &'a Spool,
    delivery: &'a dyn Backlogs,
}

impl<'a> Admission<'a> {
    pub fn new(config: &'a Config, spool: &'a Spool, delivery: &'a dyn Backlogs) -> Self {
        Admission {
            config,
            spool,
            delivery,
        }
    }

    /// The limits every message is held to: the queue's size and the free space.
    pub fn check_queue(&self) -> Result<(), Limit> {
        self.check_size()?;
        self.check_free_space()
    }

    fn check_size(&self) -> Result<(), Limit> {
        let (queued, max) = (self.spool.len(), self.config.queue.max_messages);
        if queued >= max {
            return Err(Limit::QueueFull { queued, max });
        }
        Ok(())
    }

    fn check_free_space(&self) -> Result<(), Limit> {
        let min = self.config.queue.min_free_space;
        if min == 0 {
            return Ok(());
        }
        match self.spool.free_space() {
            Ok(free) if free < min => Err(Limit::LowFreeSpace { free, min }),
            Ok(_) => Ok(()),
            // Not known: the write itself says when the disk is full.
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the spool's free space");
                Ok(())
            }
        }
    }

    /// The backlog limit of the account at `index` in the configuration. An account no
    /// scheduler has counted yet (delivery is reading the queue, or cannot run for want of a
    /// token store key) is held to the queue's limits only.
    pub fn check_account(&self, index: usize) -> Result<(), Limit> {
        let Some(account) = self.config.accounts.get(index) else {
            return Ok(());
        };
        match self.delivery.backlog_of(&account.name) {
            Some(queued) if queued as u64 >= account.max_backlog => Err(Limit::AccountBacklog {
                account: account.name.clone(),
                queued,
                max: account.max_backlog,
            }),
            _ => Ok(()),
        }
    }

    /// Every limit reached now, the queue's first.
    pub fn reached(&self) -> Vec<Limit> {
        let accounts = (0..self.config.accounts.len()).map(|index| self.check_account(index));
        [self.check_size(), self.check_free_space()]
            .into_iter()
            .chain(accounts)
            .filter_map(Result::err)
            .collect()
    }
}
