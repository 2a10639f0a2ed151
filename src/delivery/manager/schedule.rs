//! The scheduler's bookkeeping, without I/O: which message waits for what, and which may go
//! to a worker now.
//!
//! A message is *waiting* (in the timer queue until its next attempt), *ready* (due, in its
//! mailbox's queue), or *in flight* (a worker has it). A mailbox may be *blocked* until a time
//! (its budget is spent, or Exchange asked it to pause), and an account may wait for a token;
//! their ready messages then stay where they are, and nothing is handed out for them, so a
//! large backlog costs nothing while it waits. While an account's upstream cannot be
//! reached, the scheduler probes it on a short back-off (`agent/probe.rs`): the first answer makes
//! the account's deferred mail due, whatever its retry time. Every wait is a time in one ordered timer
//! queue, so finding what is due never scans the waiting messages.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Window;
pub use crate::delivery::agent::Upstream;
use crate::queue::QueueId;

/// The first probe after an attempt could not reach the upstream, doubled after each that
/// fails, up to [`PROBE_LONGEST`].
pub const PROBE_FIRST: Duration = Duration::from_secs(5);
pub const PROBE_LONGEST: Duration = Duration::from_secs(120);

/// Why a mailbox may not send for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Its sending budget is spent.
    Budget(Window),
    /// Exchange or Graph asked it to wait (throttling, quota, a refused token): why, in words.
    Paused(String),
    /// It cannot send until an admin acts (SMTP AUTH off, no permission, mailbox full or
    /// blocked); looked at again now and then. Why, in words.
    Held(String),
}

impl Block {
    /// Why, in words (a spent budget names its window).
    pub fn reason(&self) -> String {
        match self {
            Block::Budget(window) => window.reason().to_owned(),
            Block::Paused(why) | Block::Held(why) => why.clone(),
        }
    }
}

/// What became of a message a worker had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Gone from the queue: delivered, failed and reported, or moved to `failed/`.
    Done,
    /// Attempted; the next attempt is due then.
    RetryAt(Instant),
    /// Not attempted: the account has no usable token. Looked at again then, or at a token event.
    NoToken(Instant),
    /// Not attempted: the mailbox may not send until then.
    Blocked(Instant, Block),
    /// Not attempted: delivery is stopping.
    Interrupted,
}

/// An admin command that met the message in flight, applied when the worker gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    Hold,
    Delete,
}

/// One byte: when a waiting message is due is kept beside it, in [`Entry::due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Waiting,
    Ready,
    InFlight(Option<Deferred>),
}

/// One scheduled message: 16 bytes beside its ID, whatever its envelope (which stays on
/// disk). The mailbox is an index into [`Names`], not a name of its own.
struct Entry {
    /// While it waits: when it is due, as [`Due`] keeps it.
    due: Due,
    mailbox: u32,
    lane: u16,
    place: Place,
}

/// A time as milliseconds after the schedule began: 8 bytes where an `Instant` takes 16.
/// Waits are kept to the millisecond (rounded up), and the timer queue holds the same
/// rounded `Instant`, so an entry finds its timer again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Due(u64);

impl Due {
    fn at(epoch: Instant, when: Instant) -> Due {
        let after = when.saturating_duration_since(epoch);
        let ms = after.as_millis() + u128::from(!after.subsec_nanos().is_multiple_of(1_000_000));
        Due(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn instant(self, epoch: Instant) -> Instant {
        epoch + Duration::from_millis(self.0)
    }
}

/// The mailbox names the scheduled messages go out as, each kept once: a message holds its
/// mailbox's index. A name no message refers to any more is dropped and its index reused
/// (senders of `{sender}` accounts come and go), so the table stays the size of the queue's
/// distinct mailboxes. The lanes' own per-mailbox state holds names, not indexes.
#[derive(Default)]
struct Names {
    by_name: HashMap<Arc<str>, u32>,
    /// By index; `None` for a free one.
    names: Vec<Option<Arc<str>>>,
    /// Messages referring to each.
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl Names {
    /// The index of `name`, counted as one more reference.
    fn take(&mut self, name: &str) -> u32 {
        let index = match self.by_name.get(name) {
            Some(index) => *index,
            None => {
                let name: Arc<str> = name.into();
                let index = match self.free.pop() {
                    Some(index) => {
                        self.names[index as usize] = Some(Arc::clone(&name));
                        index
                    }
                    None => {
                        self.names.push(Some(Arc::clone(&name)));
                        self.refs.push(0);
                        u32::try_from(self.names.len() - 1).expect("fewer than 2^32 mailboxes")
                    }
                };
                self.by_name.insert(name, index);
                index
            }
        };
        self.refs[index as usize] += 1;
        index
    }

    /// One reference fewer to `index`; the last one frees it.
    fn give_back(&mut self, index: u32) {
        let refs = &mut self.refs[index as usize];
        *refs -= 1;
        if *refs == 0
            && let Some(name) = self.names[index as usize].take()
        {
            self.by_name.remove(&name);
            self.free.push(index);
        }
    }

    fn name(&self, index: u32) -> &Arc<str> {
        self.names[index as usize]
            .as_ref()
            .expect("a message's mailbox is kept while it refers to it")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Message(QueueId),
    Mailbox(usize, Arc<str>),
    Token(usize),
    Probe(usize),
}

#[derive(Default)]
struct MailboxQueue {
    /// Due messages in the order they became due (entries no longer ready are skipped).
    ready: VecDeque<QueueId>,
    blocked: Option<(Instant, Block)>,
    /// In its lane's `runnable` list.
    runnable: bool,
}

struct LaneQueue {
    max_in_flight: usize,
    in_flight: usize,
    token_wait: Option<Instant>,
    /// The last attempt that tried the upstream could not reach it: the wait before the
    /// next probe, doubled after each that fails.
    upstream_down: Option<Duration>,
    mailboxes: HashMap<Arc<str>, MailboxQueue>,
    /// Mailboxes with ready messages, served in turn.
    runnable: VecDeque<Arc<str>>,
}

/// The scheduled messages by what they wait for, as the status page shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Due now, waiting only for a free connection.
    pub due: usize,
    /// Waiting for their next attempt after a deferral.
    pub deferred: usize,
    /// Due, but their account has no usable token.
    pub waiting_for_token: usize,
    /// Due, but their mailbox's budget is spent.
    pub waiting_for_budget: usize,
    /// Due, but their mailbox is paused (Exchange throttled it, or it waits for an admin).
    pub paused: usize,
    /// Being delivered now.
    pub in_flight: usize,
    /// Held by an admin (`queue hold`): out of the schedule until released.
    pub held: usize,
}

impl Census {
    fn count(&mut self, standing: &Standing) {
        let count = match standing {
            Standing::Due => &mut self.due,
            Standing::Deferred => &mut self.deferred,
            Standing::WaitingForToken => &mut self.waiting_for_token,
            Standing::WaitingForBudget(_) => &mut self.waiting_for_budget,
            Standing::Paused(_) => &mut self.paused,
            Standing::InFlight => &mut self.in_flight,
            Standing::Held => &mut self.held,
        };
        *count += 1;
    }
}

/// What one scheduled message waits for: the census counts these, and `queue list` shows
/// each message's, so the two cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "standing", content = "why", rename_all = "snake_case")]
pub enum Standing {
    Due,
    Deferred,
    WaitingForToken,
    /// Why: the spent budget's window, in words.
    WaitingForBudget(String),
    /// Why the mailbox is paused, in words.
    Paused(String),
    InFlight,
    Held,
}

/// A blocked mailbox, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedMailbox {
    pub lane: usize,
    pub mailbox: Arc<str>,
    pub until: Instant,
    pub why: Block,
    pub ready: usize,
}

pub struct Schedule {
    /// What [`Due`] times count from.
    epoch: Instant,
    entries: HashMap<QueueId, Entry>,
    names: Names,
    timers: BTreeSet<(Instant, Timer)>,
    lanes: Vec<LaneQueue>,
    /// Messages an admin holds, with their lane: not scheduled, only counted.
    held: HashMap<QueueId, u16>,
    /// Each lane's messages, scheduled and held: its account's backlog, which intake holds
    /// against `max_backlog`. Kept as messages come and go, so reading it costs nothing.
    backlog: Vec<usize>,
    /// Lanes whose upstream is to be probed now (`take_probes`).
    probes_due: Vec<usize>,
}

/// What `hold` and `delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Now,
    /// The message is in flight: applied when it comes back.
    Later,
}

impl Schedule {
    /// One lane per account, each with at most `max_in_flight` messages at its workers.
    pub fn new(max_in_flight: impl IntoIterator<Item = usize>) -> Schedule {
        let lanes: Vec<LaneQueue> = max_in_flight
            .into_iter()
            .map(|max| LaneQueue {
                max_in_flight: max.max(1),
                in_flight: 0,
                token_wait: None,
                upstream_down: None,
                mailboxes: HashMap::new(),
                runnable: VecDeque::new(),
            })
            .collect();
        Schedule {
            epoch: Instant::now(),
            entries: HashMap::new(),
            names: Names::default(),
            timers: BTreeSet::new(),
            backlog: vec![0; lanes.len()],
            lanes,
            held: HashMap::new(),
            probes_due: Vec::new(),
        }
    }

    /// `id`, whose account is `lane`'s, is held by an admin (it is not, or no longer,
    /// scheduled).
    pub fn note_held(&mut self, id: QueueId, lane: usize) {
        // Released meanwhile (the start-up load read its state before an admin's release).
        if self.entries.contains_key(&id) {
            return;
        }
        let lane16 = u16::try_from(lane).expect("fewer than 2^16 accounts");
        if self.held.insert(id, lane16).is_none() {
            self.backlog[lane] += 1;
        }
    }

    /// `id` is no longer held (released or deleted); false if it was not.
    pub fn forget_held(&mut self, id: QueueId) -> bool {
        match self.held.remove(&id) {
            Some(lane) => {
                self.backlog[usize::from(lane)] -= 1;
                true
            }
            None => false,
        }
    }

    /// Each lane's queued messages (scheduled, in flight and held), by lane.
    pub fn backlog(&self) -> &[usize] {
        &self.backlog
    }

    /// Takes `id` out of the schedule's entries (not out of the timers or ready queues, where
    /// a missing entry is skipped).
    fn remove(&mut self, id: QueueId) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.backlog[usize::from(entry.lane)] -= 1;
        self.names.give_back(entry.mailbox);
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.entries.contains_key(&id)
    }

    pub fn is_in_flight(&self, id: QueueId) -> bool {
        matches!(
            self.entries.get(&id).map(|e| e.place),
            Some(Place::InFlight(_))
        )
    }

    /// A message to deliver at `due` (now or earlier: at once) as `mailbox` of `lane`.
    /// One the schedule already has is left where it is.
    pub fn add(&mut self, id: QueueId, lane: usize, mailbox: &str, due: Instant, now: Instant) {
        // Held meanwhile (the start-up load read its state before an admin's hold).
        if self.entries.contains_key(&id) || self.held.contains_key(&id) {
            return;
        }
        let mailbox = self.names.take(mailbox);
        self.entries.insert(
            id,
            Entry {
                lane: u16::try_from(lane).expect("fewer than 2^16 accounts"),
                mailbox,
                place: Place::Ready,
                due: Due::default(),
            },
        );
        self.backlog[lane] += 1;
        if due <= now {
            self.make_ready(id, false);
        } else {
            self.wait(id, due);
        }
    }

    fn wait(&mut self, id: QueueId, due: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.place = Place::Waiting;
            entry.due = Due::at(self.epoch, due);
            self.timers
                .insert((entry.due.instant(self.epoch), Timer::Message(id)));
        }
    }

    /// Into its mailbox's ready queue: at the back, or at the front for a message handed back
    /// unattempted (it keeps its turn).
    fn make_ready(&mut self, id: QueueId, front: bool) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.place == Place::Waiting {
            let at = entry.due.instant(self.epoch);
            self.timers.remove(&(at, Timer::Message(id)));
        }
        entry.place = Place::Ready;
        let lane = &mut self.lanes[usize::from(entry.lane)];
        let name = self.names.name(entry.mailbox);
        let mailbox = lane.mailboxes.entry(Arc::clone(name)).or_default();
        if front {
            mailbox.ready.push_front(id);
        } else {
            mailbox.ready.push_back(id);
        }
        if mailbox.blocked.is_none() && !mailbox.runnable {
            mailbox.runnable = true;
            lane.runnable.push_back(Arc::clone(name));
        }
    }

    /// Ends the waits that are over by `now`.
    pub fn advance(&mut self, now: Instant) {
        while let Some(first) = self.timers.first() {
            if first.0 > now {
                break;
            }
            let (_, timer) = self.timers.pop_first().expect("not empty");
            match timer {
                Timer::Message(id) => self.make_ready(id, false),
                Timer::Mailbox(lane, name) => {
                    let lane = &mut self.lanes[lane];
                    if let Some(mailbox) = lane.mailboxes.get_mut(&name)
                        && mailbox
                            .blocked
                            .as_ref()
                            .is_some_and(|(until, _)| *until <= now)
                    {
                        mailbox.blocked = None;
                        if !mailbox.ready.is_empty() && !mailbox.runnable {
                            mailbox.runnable = true;
                            lane.runnable.push_back(name);
                        }
                    }
                }
                Timer::Token(lane) => {
                    let lane = &mut self.lanes[lane];
                    if lane.token_wait.is_some_and(|until| until <= now) {
                        lane.token_wait = None;
                    }
                }
                Timer::Probe(lane) => {
                    if self.lanes[lane].upstream_down.is_some() {
                        self.probes_due.push(lane);
                    }
                }
            }
        }
    }

    /// When the next wait ends.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next message a worker may take: (lane, ID). Lanes are limited to their in-flight
    /// maximum; within a lane, mailboxes take turns.
    pub fn next_dispatch(&mut self) -> Option<(usize, QueueId)> {
        for index in 0..self.lanes.len() {
            if let Some(id) = self.dispatch_from(index) {
                return Some((index, id));
            }
        }
        None
    }

    fn dispatch_from(&mut self, index: usize) -> Option<QueueId> {
        let lane = &mut self.lanes[index];
        if lane.in_flight >= lane.max_in_flight || lane.token_wait.is_some() {
            return None;
        }
        while let Some(name) = lane.runnable.pop_front() {
            let Some(mailbox) = lane.mailboxes.get_mut(&name) else {
                continue;
            };
            mailbox.runnable = false;
            if mailbox.blocked.is_some() {
                continue;
            }
            while let Some(id) = mailbox.ready.pop_front() {
                let Some(entry) = self.entries.get_mut(&id) else {
                    continue;
                };
                if entry.place != Place::Ready {
                    continue;
                }
                entry.place = Place::InFlight(None);
                lane.in_flight += 1;
                if mailbox.ready.is_empty() {
                    lane.mailboxes.remove(&name);
                } else {
                    mailbox.runnable = true;
                    lane.runnable.push_back(name);
                }
                return Some(id);
            }
            lane.mailboxes.remove(&name);
        }
        None
    }

    /// A worker gave `id` back. Returns the admin command to carry out now, if one met it in
    /// flight (the message is then out of the schedule).
    ///
    /// An attempt that could not reach the account's upstream starts the probes; the first
    /// attempt or probe that reaches it makes the account's deferred mail due at once: recovery does not wait for each message's retry time (it still goes
    /// at the pace of the budgets and connections).
    pub fn returned(
        &mut self,
        id: QueueId,
        report: Report,
        upstream: Upstream,
    ) -> Option<Deferred> {
        let entry = self.entries.get_mut(&id)?;
        let Place::InFlight(deferred) = entry.place else {
            return None;
        };
        let lane = usize::from(entry.lane);
        let name = Arc::clone(self.names.name(entry.mailbox));
        self.lanes[lane].in_flight -= 1;
        match upstream {
            Upstream::Unreachable if self.lanes[lane].upstream_down.is_none() => {
                self.lanes[lane].upstream_down = Some(PROBE_FIRST);
                self.timers
                    .insert((Instant::now() + PROBE_FIRST, Timer::Probe(lane)));
            }
            Upstream::Reached => self.upstream_back(lane),
            _ => {}
        }
        if deferred.is_some() || report == Report::Done {
            self.remove(id);
            if deferred == Some(Deferred::Hold) {
                self.note_held(id, lane);
            }
            return deferred;
        }
        match report {
            Report::Done => unreachable!("handled above"),
            Report::RetryAt(at) => self.wait(id, at),
            Report::NoToken(until) => {
                let lane_queue = &mut self.lanes[lane];
                if lane_queue.token_wait.is_none_or(|t| t < until) {
                    lane_queue.token_wait = Some(until);
                    self.timers.insert((until, Timer::Token(lane)));
                }
                self.make_ready(id, true);
            }
            Report::Blocked(until, why) => {
                self.block(lane, &name, until, why);
                self.make_ready(id, true);
            }
            Report::Interrupted => self.make_ready(id, true),
        }
        None
    }

    fn block(&mut self, lane: usize, name: &Arc<str>, until: Instant, why: Block) {
        let mailbox = self.lanes[lane]
            .mailboxes
            .entry(Arc::clone(name))
            .or_default();
        // A longer block already running is kept.
        if mailbox.blocked.as_ref().is_none_or(|(at, _)| *at < until) {
            mailbox.blocked = Some((until, why));
            self.timers
                .insert((until, Timer::Mailbox(lane, Arc::clone(name))));
        }
    }

    /// The account of `lane` has a token again: its mail may go at once.
    pub fn token_ready(&mut self, lane: usize) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.token_wait = None;
        }
    }

    /// The lanes whose upstream is to be probed now; each is answered with `probed`.
    pub fn take_probes(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.probes_due)
    }

    /// What a probe of `lane`'s upstream found: back, its mail is due; still away, the next
    /// probe waits twice as long (up to `probe::LONGEST`).
    pub fn probed(&mut self, lane: usize, answered: bool, now: Instant) {
        if answered {
            return self.upstream_back(lane);
        }
        let Some(wait) = self.lanes[lane].upstream_down else {
            return;
        };
        let next = (wait * 2).min(PROBE_LONGEST);
        self.lanes[lane].upstream_down = Some(next);
        self.timers.insert((now + next, Timer::Probe(lane)));
    }

    /// Whether `lane`'s upstream could not be reached and is being probed.
    pub fn upstream_down(&self, lane: usize) -> bool {
        self.lanes
            .get(lane)
            .is_some_and(|l| l.upstream_down.is_some())
    }

    /// Probes `lane`'s upstream now if it is down (an admin released mail for it).
    pub fn probe_now(&mut self, lane: usize) {
        if self.upstream_down(lane) && !self.probes_due.contains(&lane) {
            self.probes_due.push(lane);
        }
    }

    /// `lane`'s upstream answered: its mail, deferred or held back, is due now.
    fn upstream_back(&mut self, lane: usize) {
        if self.lanes[lane].upstream_down.take().is_some() {
            self.flush_where(|e| usize::from(e.lane) == lane);
        }
    }

    /// Is the account of `lane` waiting for a token?
    pub fn waits_for_token(&self, lane: usize) -> bool {
        self.lanes.get(lane).is_some_and(|l| l.token_wait.is_some())
    }

    /// Makes a waiting message due now. False if it is not waiting (ready or in flight).
    pub fn due_now(&mut self, id: QueueId) -> bool {
        match self.entries.get(&id).map(|e| e.place) {
            Some(Place::Waiting) => {
                self.make_ready(id, false);
                true
            }
            _ => false,
        }
    }

    /// Every waiting message is due now, and every upstream that could not be reached is
    /// probed now; returns how many messages were waiting.
    pub fn flush(&mut self) -> usize {
        let down = (0..self.lanes.len()).filter(|l| self.lanes[*l].upstream_down.is_some());
        self.probes_due.extend(down);
        self.flush_where(|_| true)
    }

    /// Makes the waiting messages `which` picks due, oldest first (IDs sort by arrival).
    fn flush_where(&mut self, which: impl Fn(&Entry) -> bool) -> usize {
        let mut waiting: Vec<QueueId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Waiting && which(e))
            .map(|(id, _)| *id)
            .collect();
        waiting.sort_unstable();
        for id in &waiting {
            self.make_ready(*id, false);
        }
        waiting.len()
    }

    /// Takes a message out of the schedule (hold, delete); one in flight keeps going and the
    /// command is carried out when it comes back.
    pub fn take_out(&mut self, id: QueueId, command: Deferred) -> Option<Applied> {
        let entry = self.entries.get_mut(&id)?;
        match entry.place {
            Place::InFlight(_) => {
                entry.place = Place::InFlight(Some(command));
                Some(Applied::Later)
            }
            Place::Waiting => {
                let at = entry.due.instant(self.epoch);
                self.timers.remove(&(at, Timer::Message(id)));
                self.remove(id);
                Some(Applied::Now)
            }
            // Left in its mailbox's queue, where it is skipped.
            Place::Ready => {
                self.remove(id);
                Some(Applied::Now)
            }
        }
    }

    /// Cancels a hold or delete that waits for the message to come back (release).
    pub fn cancel_deferred(&mut self, id: QueueId) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) if matches!(entry.place, Place::InFlight(Some(_))) => {
                entry.place = Place::InFlight(None);
                true
            }
            _ => false,
        }
    }

    /// Counts every scheduled message by what it waits for.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for (_, standing) in self.standings() {
            census.count(&standing);
        }
        census
    }

    /// What each scheduled or held message waits for.
    pub fn standings(&self) -> impl Iterator<Item = (QueueId, Standing)> + '_ {
        let held = self.held.keys().map(|id| (*id, Standing::Held));
        let scheduled = self
            .entries
            .iter()
            .map(|(id, entry)| (*id, self.standing(entry)));
        held.chain(scheduled)
    }

    fn standing(&self, entry: &Entry) -> Standing {
        let lane = &self.lanes[usize::from(entry.lane)];
        match entry.place {
            Place::Waiting => Standing::Deferred,
            Place::InFlight(_) => Standing::InFlight,
            Place::Ready if lane.token_wait.is_some() => Standing::WaitingForToken,
            Place::Ready => match lane
                .mailboxes
                .get(self.names.name(entry.mailbox))
                .and_then(|m| m.blocked.as_ref())
            {
                Some((_, block @ Block::Budget(_))) => Standing::WaitingForBudget(block.reason()),
                Some((_, block)) => Standing::Paused(block.reason()),
                None => Standing::Due,
            },
        }
    }

    /// The mailboxes that may not send now.
    pub fn blocked(&self) -> Vec<BlockedMailbox> {
        let mut blocked: Vec<BlockedMailbox> = self
            .lanes
            .iter()
            .enumerate()
            .flat_map(|(lane, queue)| {
                queue.mailboxes.iter().filter_map(move |(name, m)| {
                    m.blocked.as_ref().map(|(until, why)| BlockedMailbox {
                        lane,
                        mailbox: Arc::clone(name),
                        until: *until,
                        why: why.clone(),
                        ready: m.ready.len(),
                    })
                })
            })
            .collect();
        blocked.sort_by(|a, b| (a.lane, &a.mailbox).cmp(&(b.lane, &b.mailbox)));
        blocked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ids(n: usize) -> Vec<QueueId> {
        (0..n).map(|_| QueueId::generate()).collect()
    }

    /// The next wake is `when`, to the millisecond a message's wait is kept to.
    fn wakes_at(schedule: &Schedule, when: Instant) -> bool {
        schedule
            .next_wake()
            .is_some_and(|wake| wake >= when && wake < when + Duration::from_millis(1))
    }

    fn drain(schedule: &mut Schedule) -> Vec<(usize, QueueId)> {
        std::iter::from_fn(|| schedule.next_dispatch()).collect()
    }

    #[test]
    fn an_entry_is_16_bytes_beside_its_id() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<(QueueId, Entry)>(), 32);
    }

    #[test]
    fn a_wait_ends_at_its_time_rounded_up_to_the_millisecond() {
        let now = Instant::now();
        let mut s = Schedule::new([1]);
        let [a] = ids(1).try_into().unwrap();
        let due = now + Duration::from_micros(10_500);
        s.add(a, 0, "m", due, now);
        s.advance(due);
        assert_eq!(s.next_dispatch(), None);
        let woken = s.next_wake().unwrap();
        assert!(woken >= due && woken < due + Duration::from_millis(1));
        assert!(s.take_out(a, Deferred::Delete).is_some());
        assert_eq!(s.next_wake(), None, "the timer went with the message");
    }

    #[test]
    fn the_census_counts_each_message_by_what_it_waits_for() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut s = Schedule::new([1, 1, 4]);
        let [budget, budget2, token, deferred, due, held, flying] = ids(7).try_into().unwrap();
        s.add(budget, 0, "a", now, now);
        s.add(budget2, 0, "a", now, now);
        s.add(token, 1, "b", now, now);
        s.add(deferred, 2, "c", later, now);
        s.add(flying, 2, "d", now, now);
        s.note_held(held, 1);
        let dispatched = drain(&mut s);
        assert_eq!(dispatched.len(), 3);
        s.returned(
            budget,
            Report::Blocked(later, Block::Budget(Window::Rate)),
            Upstream::Untried,
        );
        s.returned(token, Report::NoToken(later), Upstream::Untried);
        s.add(due, 0, "e", now, now);
        assert_eq!(
            s.census(),
            Census {
                due: 1,
                deferred: 1,
                waiting_for_token: 1,
                waiting_for_budget: 2,
                paused: 0,
                in_flight: 1,
                held: 1,
            }
        );
        assert_eq!(s.backlog(), [3, 2, 2]);
        assert!(s.forget_held(held));
        assert_eq!(s.census().held, 0);
        assert_eq!(s.backlog(), [3, 1, 2]);
    }

    #[test]
    fn a_lane_has_at_most_its_connections_in_flight() {
        let now = Instant::now();
        let mut s = Schedule::new([2]);
        let ids = ids(5);
        for id in &ids {
            s.add(*id, 0, "m", now, now);
        }
        assert_eq!(drain(&mut s), vec![(0, ids[0]), (0, ids[1])]);
        s.returned(ids[0], Report::Done, Upstream::Untried);
        assert_eq!(drain(&mut s), vec![(0, ids[2])]);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_blocked_mailbox_holds_its_messages_and_not_the_others() {
        let now = Instant::now();
        let mut s = Schedule::new([1]);
        let [a1, a2, b1] = ids(3).try_into().unwrap();
        s.add(a1, 0, "a", now, now);
        s.add(a2, 0, "a", now, now);
        s.add(b1, 0, "b", now, now);
        assert_eq!(s.next_dispatch(), Some((0, a1)));
        let until = now + Duration::from_secs(60);
        s.returned(
            a1,
            Report::Blocked(until, Block::Budget(Window::Daily)),
            Upstream::Untried,
        );
        // The blocked mailbox's messages wait; b goes.
        assert_eq!(drain(&mut s), vec![(0, b1)]);
        s.returned(b1, Report::Done, Upstream::Untried);
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.next_wake(), Some(until));
        let blocked = s.blocked();
        assert_eq!(blocked.len(), 1);
        assert_eq!((&*blocked[0].mailbox, blocked[0].ready), ("a", 2));
        s.advance(until);
        // Handed back unattempted, a1 keeps its turn.
        assert_eq!(s.next_dispatch(), Some((0, a1)));
    }

    #[test]
    fn retries_wait_in_the_timer_queue() {
        let now = Instant::now();
        let mut s = Schedule::new([4]);
        let [a, b] = ids(2).try_into().unwrap();
        s.add(a, 0, "m", now + Duration::from_secs(10), now);
        s.add(b, 0, "m", now, now);
        assert_eq!(drain(&mut s), vec![(0, b)]);
        s.returned(
            b,
            Report::RetryAt(now + Duration::from_secs(5)),
            Upstream::Untried,
        );
        assert!(wakes_at(&s, now + Duration::from_secs(5)));
        s.advance(now + Duration::from_secs(5) + Duration::from_millis(1));
        assert_eq!(drain(&mut s), vec![(0, b)]);
        assert!(s.due_now(a));
        assert_eq!(drain(&mut s), vec![(0, a)]);
        assert_eq!(s.next_wake(), None);
    }

    #[test]
    fn hold_and_delete_in_flight_wait_for_the_worker() {
        let now = Instant::now();
        let mut s = Schedule::new([2]);
        let [a, b] = ids(2).try_into().unwrap();
        s.add(a, 0, "m", now, now);
        s.add(b, 0, "m", now, now);
        drain(&mut s);
        assert_eq!(s.take_out(a, Deferred::Hold), Some(Applied::Later));
        assert_eq!(s.take_out(b, Deferred::Delete), Some(Applied::Later));
        assert!(s.cancel_deferred(b));
        // However the attempt ended, the hold is carried out when it is back.
        assert_eq!(
            s.returned(
                a,
                Report::RetryAt(now + Duration::from_secs(1)),
                Upstream::Untried
            ),
            Some(Deferred::Hold)
        );
        assert!(!s.contains(a));
        assert_eq!(s.returned(b, Report::RetryAt(now), Upstream::Untried), None);
        assert!(s.contains(b));
    }

    #[test]
    fn a_lane_without_a_token_sends_nothing_until_it_has_one() {
        let now = Instant::now();
        let mut s = Schedule::new([1, 1]);
        let [a, b, c] = ids(3).try_into().unwrap();
        s.add(a, 0, "m", now, now);
        s.add(b, 0, "m", now, now);
        s.add(c, 1, "n", now, now);
        assert_eq!(drain(&mut s), vec![(0, a), (1, c)]);
        s.returned(
            a,
            Report::NoToken(now + Duration::from_secs(60)),
            Upstream::Untried,
        );
        assert!(s.waits_for_token(0));
        assert_eq!(drain(&mut s), vec![]);
        s.token_ready(0);
        assert_eq!(drain(&mut s), vec![(0, a)]);
    }

    #[test]
    fn mailboxes_take_turns() {
        let now = Instant::now();
        let mut s = Schedule::new([1]);
        let a = ids(3);
        let b = ids(1);
        for id in &a {
            s.add(*id, 0, "a", now, now);
        }
        s.add(b[0], 0, "b", now, now);
        let mut order = Vec::new();
        while let Some((_, id)) = s.next_dispatch() {
            order.push(id);
            s.returned(id, Report::Done, Upstream::Untried);
        }
        assert_eq!(order, vec![a[0], b[0], a[1], a[2]]);
    }

    #[test]
    fn an_unreachable_upstream_is_probed_and_its_answer_makes_the_accounts_mail_due() {
        let now = Instant::now();
        let hour = now + Duration::from_secs(3600);
        let mut s = Schedule::new([1, 1]);
        let [a, b, other] = ids(3).try_into().unwrap();
        for id in [a, b] {
            s.add(id, 0, "m", now, now);
        }
        s.add(other, 1, "n", hour, now);
        // Exchange is down: a and b fail and wait an hour, and the upstream is probed
        // instead, at growing intervals.
        for id in [a, b] {
            assert_eq!(s.next_dispatch(), Some((0, id)));
            s.returned(id, Report::RetryAt(hour), Upstream::Unreachable);
        }
        let first = s.next_wake().unwrap();
        assert!(first <= Instant::now() + PROBE_FIRST);
        s.advance(first);
        assert_eq!(s.take_probes(), vec![0]);
        s.probed(0, false, first);
        assert_eq!(s.next_wake(), Some(first + PROBE_FIRST * 2));
        assert_eq!(drain(&mut s), vec![]);
        // It answers: a and b are due at once; the other account's message keeps its time.
        s.probed(0, true, first);
        assert_eq!(drain(&mut s), vec![(0, a)]);
        s.returned(a, Report::Done, Upstream::Reached);
        assert_eq!(drain(&mut s), vec![(0, b)]);
        s.returned(b, Report::Done, Upstream::Reached);
        assert!(s.contains(other) && s.take_probes().is_empty());
        // A probe timer left from the outage finds nothing to probe.
        s.advance(first + Duration::from_secs(600));
        assert!(s.take_probes().is_empty());
        // An attempt that reaches the upstream ends the outage as a probe does.
        s.add(a, 0, "m", now, now);
        s.add(b, 0, "m", hour, now);
        assert_eq!(drain(&mut s), vec![(0, a)]);
        s.returned(a, Report::RetryAt(hour), Upstream::Unreachable);
        s.due_now(a);
        assert_eq!(drain(&mut s), vec![(0, a)]);
        s.returned(a, Report::Done, Upstream::Reached);
        assert_eq!(drain(&mut s), vec![(0, b)]);
    }
}
