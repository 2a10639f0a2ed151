//! What a worker must hold to talk to its account's upstream: one of the mailbox's
//! connections while its connection is open, and room in the mailbox's budgets for each
//! message. The queue manager gives each lane's workers its budgets through [`Permits`]: a
//! worker asks, holds what it is granted until the upstream has the message, and hands a
//! refusal back with the attempt; the manager decides what the refusal means for the
//! schedule. Asking never waits for room.

use std::time::Duration;

use crate::BoxFuture;
use crate::delivery::grant::{Exhausted, Grant};

pub trait Permits: Send + Sync {
    /// One of the connections `mailbox` may have open at once, held until the grant drops.
    fn connection<'a>(&'a self, mailbox: &'a str) -> BoxFuture<'a, Result<Grant, Exhausted>>;

    /// Room for one message to `recipients` recipients as `mailbox`: it counts from when the
    /// grant drops (the upstream had the message), or for nothing if it is given back.
    fn send<'a>(
        &'a self,
        mailbox: &'a str,
        recipients: u64,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>>;

    /// How long a worker keeps an idle connection (and its grant) open.
    fn keep_idle(&self) -> Duration;
}
