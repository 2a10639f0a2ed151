//! This node's own sends, per mailbox, in Redis's time (ms): what it counts against its share
//! of a budget while Redis is unreachable, and what it puts back into Redis when Redis comes
//! back without them (sent during the outage, or lost by a Redis restart). No I/O: the
//! node writes it to `state_dir` (see `Cluster::start`), so a node restarted while Redis is
//! away still knows what it sent.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::DAY_MS;
use crate::delivery::budget::Window;

/// Where a send stands in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InRedis {
    /// Redis has not counted it.
    No,
    /// Counted as in flight, in this daily bucket.
    Taken { bucket: String },
    /// Counted in flight, finished here while Redis was unreachable: its finish is owed.
    FinishOwed { bucket: String },
    /// Counted as finished.
    Finished,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Send {
    pub number: u64,
    /// Its member in the rate set: unique in the cluster.
    pub member: String,
    /// When it counts from: its finish, or (in flight) the latest it may finish.
    pub at: u64,
    pub recipients: u64,
    /// The rate window's length for its mailbox when it was sent.
    pub period_ms: u64,
    pub in_flight: bool,
    pub in_redis: InRedis,
}

/// This node's share of a mailbox's limits.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub rate: u64,
    pub period_ms: u64,
    pub daily: u64,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Ledger {
    mailboxes: HashMap<String, VecDeque<Send>>,
    /// Sends given back (they never reached the upstream) that Redis still counts: the
    /// give-back could not reach it.
    #[serde(default)]
    give_backs_owed: Vec<(String, Send)>,
    next: u64,
    /// Counts changes, so that an unchanged ledger is not written again.
    #[serde(skip)]
    changes: u64,
}

impl Ledger {
    /// A ledger written by a process that has stopped: its sends in flight ended with it,
    /// at the latest when they would have finished.
    pub fn resumed(mut self) -> Ledger {
        for send in self.mailboxes.values_mut().flatten() {
            send.in_flight = false;
        }
        self
    }

    /// Changes so far: equal counts mean an equal ledger.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Notes a send: `at` is when it counts from while in flight.
    pub fn record(
        &mut self,
        mailbox: &str,
        member: String,
        at: u64,
        (recipients, period_ms): (u64, u64),
        in_redis: InRedis,
    ) -> u64 {
        self.next += 1;
        self.changes += 1;
        let number = self.next;
        self.mailboxes
            .entry(mailbox.to_owned())
            .or_default()
            .push_back(Send {
                number,
                member,
                at,
                recipients,
                period_ms,
                in_flight: true,
                in_redis,
            });
        number
    }

    /// Whether a send to `recipients` fits this node's `share` at `now`; when not, which
    /// window holds it and until when (ms; a send in flight is looked at again after `poll`).
    pub fn room(
        &mut self,
        mailbox: &str,
        share: Share,
        recipients: u64,
        now: u64,
        poll: u64,
    ) -> Result<(), (Window, u64)> {
        self.forget_old(now);
        let sends = self.mailboxes.get(mailbox);
        let counted = |period: u64| -> Vec<(u64, u64, bool)> {
            let mut list: Vec<(u64, u64, bool)> = sends
                .into_iter()
                .flatten()
                .filter(|s| s.in_flight || s.at + period > now)
                .map(|s| (s.at, s.recipients, s.in_flight))
                .collect();
            // In-flight sends age out last (when they finish, not before).
            list.sort_by_key(|(at, _, in_flight)| (*in_flight, *at));
            list
        };
        let fits = |list: &[(u64, u64, bool)], limit: u64, weight: fn(u64) -> u64, period: u64| {
            let used: u64 = list.iter().map(|e| weight(e.1)).sum();
            if used + weight(recipients) <= limit {
                return None;
            }
            let mut freed = 0;
            for (at, n, in_flight) in list {
                freed += weight(*n);
                if used - freed + weight(recipients) <= limit {
                    return Some(if *in_flight { now + poll } else { at + period });
                }
            }
            Some(now + poll)
        };
        let rate = counted(share.period_ms);
        if let Some(until) = fits(&rate, share.rate, |_| 1, share.period_ms) {
            return Err((Window::Rate, until));
        }
        let daily = counted(DAY_MS);
        if let Some(until) = fits(&daily, share.daily, |n| n, DAY_MS) {
            return Err((Window::Daily, until));
        }
        Ok(())
    }

    /// The send finished at `now`; returns it as it stood.
    pub fn finish(&mut self, mailbox: &str, number: u64, now: u64) -> Option<Send> {
        self.changes += 1;
        let send = self.find(mailbox, number)?;
        let before = send.clone();
        send.in_flight = false;
        send.at = now;
        Some(before)
    }

    /// Forgets a send in flight that never reached the upstream; returns it as it stood.
    pub fn give_back(&mut self, mailbox: &str, number: u64) -> Option<Send> {
        let sends = self.mailboxes.get_mut(mailbox)?;
        let index = sends.iter().position(|s| s.number == number)?;
        self.changes += 1;
        sends.remove(index)
    }

    /// Redis could not hear that `send` was given back: it is told later (`pay_back`).
    pub fn owe_give_back(&mut self, mailbox: &str, send: Send) {
        self.changes += 1;
        self.give_backs_owed.push((mailbox.to_owned(), send));
    }

    /// The give-backs Redis has not heard, handed over to tell it.
    pub fn take_give_backs_owed(&mut self) -> Vec<(String, Send)> {
        if !self.give_backs_owed.is_empty() {
            self.changes += 1;
        }
        std::mem::take(&mut self.give_backs_owed)
    }

    /// Notes what Redis now has of a send, unless its standing changed meanwhile (Redis
    /// lost its data while the call ran: then it is owed in full).
    pub fn set_in_redis(&mut self, mailbox: &str, number: u64, was: &InRedis, now: InRedis) {
        self.changes += 1;
        if let Some(send) = self.find(mailbox, number)
            && send.in_redis == *was
        {
            send.in_redis = now;
        }
    }

    /// This node's messages in the rate window and recipients in the day.
    pub fn usage(&mut self, mailbox: &str, period_ms: u64, now: u64) -> (u64, u64) {
        self.forget_old(now);
        let sends = self.mailboxes.get(mailbox).into_iter().flatten();
        let mut sent = 0;
        let mut recipients = 0;
        for s in sends {
            if s.in_flight || s.at + period_ms > now {
                sent += 1;
            }
            recipients += s.recipients;
        }
        (sent, recipients)
    }

    /// The send as it stands now.
    pub fn get(&self, mailbox: &str, number: u64) -> Option<Send> {
        self.mailboxes
            .get(mailbox)?
            .iter()
            .find(|s| s.number == number)
            .cloned()
    }

    fn find(&mut self, mailbox: &str, number: u64) -> Option<&mut Send> {
        self.mailboxes
            .get_mut(mailbox)?
            .iter_mut()
            .find(|s| s.number == number)
    }

    /// Redis lost what it had (a new epoch): every send of the last day is owed to it again.
    pub fn forget_redis(&mut self) {
        self.changes += 1;
        for send in self.mailboxes.values_mut().flatten() {
            send.in_redis = InRedis::No;
        }
        // What it lost needs no taking back.
        self.give_backs_owed.clear();
    }

    /// The sends Redis does not have, per mailbox.
    pub fn owed(&self) -> Vec<(String, Vec<Send>)> {
        self.mailboxes
            .iter()
            .map(|(mailbox, sends)| {
                let owed = sends
                    .iter()
                    .filter(|s| s.in_redis == InRedis::No)
                    .cloned()
                    .collect::<Vec<_>>();
                (mailbox.clone(), owed)
            })
            .filter(|(_, owed)| !owed.is_empty())
            .collect()
    }

    /// Sends counted in flight whose finish Redis has not heard, per mailbox.
    pub fn finishes_owed(&self) -> Vec<(String, Send)> {
        let mut owed = Vec::new();
        for (mailbox, sends) in &self.mailboxes {
            for s in sends {
                if matches!(s.in_redis, InRedis::FinishOwed { .. }) {
                    owed.push((mailbox.clone(), s.clone()));
                }
            }
        }
        owed
    }

    fn forget_old(&mut self, now: u64) {
        for sends in self.mailboxes.values_mut() {
            let before = sends.len();
            sends.retain(|s| s.in_flight || s.at + DAY_MS > now);
            if sends.len() != before {
                self.changes += 1;
            }
        }
        self.mailboxes.retain(|_, sends| !sends.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARE: Share = Share {
        rate: 2,
        period_ms: 10_000,
        daily: 5,
    };

    #[test]
    fn the_share_counts_every_send_of_this_node_in_the_window() {
        let mut ledger = Ledger::default();
        // One counted through Redis before it became unreachable, one since.
        let a = ledger.record("m", "n:1".into(), 1_000, (1, 10_000), InRedis::Finished);
        ledger.finish("m", a, 1_000);
        assert_eq!(ledger.room("m", SHARE, 1, 2_000, 100), Ok(()));
        let b = ledger.record("m", "n:2".into(), 2_000, (1, 10_000), InRedis::No);
        // Full: room when the first ages out; with b in flight, that is all.
        assert_eq!(
            ledger.room("m", SHARE, 1, 3_000, 100),
            Err((Window::Rate, 11_000))
        );
        ledger.finish("m", b, 4_000);
        assert_eq!(ledger.room("m", SHARE, 1, 11_000, 100), Ok(()));
        // The daily share: 2 recipients so far, 4 more do not fit until the first ages out.
        assert_eq!(
            ledger.room("m", SHARE, 4, 20_000, 100),
            Err((Window::Daily, 1_000 + DAY_MS))
        );
        // Another mailbox has its own.
        assert_eq!(ledger.room("other", SHARE, 5, 20_000, 100), Ok(()));
    }

    #[test]
    fn in_flight_sends_never_age_out_until_they_finish() {
        let mut ledger = Ledger::default();
        let share = Share { rate: 1, ..SHARE };
        ledger.record("m", "n:1".into(), 0, (1, 10_000), InRedis::No);
        assert_eq!(
            ledger.room("m", share, 1, 50_000, 100),
            Err((Window::Rate, 50_100))
        );
    }

    #[test]
    fn what_redis_is_owed() {
        let mut ledger = Ledger::default();
        let a = ledger.record("m", "n:1".into(), 1_000, (3, 10_000), InRedis::No);
        let taken = InRedis::Taken { bucket: "7".into() };
        let b = ledger.record("m", "n:2".into(), 2_000, (1, 10_000), taken.clone());
        let owed = ledger.owed();
        assert_eq!(owed[0].1.len(), 1);
        assert_eq!((owed[0].1[0].number, owed[0].1[0].recipients), (a, 3));
        ledger.set_in_redis("m", a, &InRedis::No, InRedis::Finished);
        assert!(ledger.owed().is_empty());
        let was = ledger.finish("m", b, 3_000).unwrap();
        assert_eq!(was.in_redis, taken);
        let owed_finish = InRedis::FinishOwed { bucket: "7".into() };
        ledger.set_in_redis("m", b, &taken, owed_finish.clone());
        assert_eq!(ledger.finishes_owed().len(), 1);
        // A change that raced with a loss of Redis's data does not hide the loss.
        ledger.forget_redis();
        ledger.set_in_redis("m", b, &owed_finish, InRedis::Finished);
        // Redis restarted empty: everything is owed again.
        ledger.forget_redis();
        assert_eq!(ledger.owed()[0].1.len(), 2);
        assert!(ledger.finishes_owed().is_empty());
    }
}
