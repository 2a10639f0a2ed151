//! What a mailbox's budgets grant and why they refuse: the words the queue manager's budgets
//! ([`super::manager::budget`]) and the delivery agents that hold their grants share.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// How the budgets name a mailbox: an address's case does not make it another mailbox.
pub fn key(mailbox: &str) -> String {
    mailbox.to_ascii_lowercase()
}

/// Which limit holds a send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// `rate`: messages per period.
    Rate,
    /// `daily_recipients`: recipients per rolling 24 h.
    Daily,
    /// `max_connections`: every connection (SMTP session, Graph request) the mailbox may
    /// have at once is in use, on this node or another.
    Connections,
    /// The nodes of a cluster cannot share the budgets (Redis is unreachable) and no
    /// `[cluster] nodes` says what this node's share would be.
    Unshared,
    /// Redis just became unreachable: this node waits until the other nodes, which may
    /// still reach Redis, have noticed its silence and left its share free.
    Handover,
}

impl Window {
    /// Why a mailbox waits, in words.
    pub fn reason(&self) -> &'static str {
        match self {
            Window::Rate => "rate budget spent",
            Window::Daily => "daily recipient budget spent",
            Window::Connections => "every connection the mailbox may have is in use",
            Window::Unshared => {
                "Redis is unreachable and [cluster] nodes is not set: sending waits for Redis"
            }
            Window::Handover => {
                "Redis just became unreachable: sending within this node's share starts in a moment"
            }
        }
    }
}

/// How soon a mailbox whose connections are all in use looks again.
pub const CONNECTION_POLL: Duration = Duration::from_millis(100);

/// The send does not fit now; `until` is the earliest time it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub window: Window,
    pub until: Instant,
}

type Then = Option<Box<dyn FnOnce() + Send>>;

/// A send or a connection counted against a mailbox's limits. Dropping a send's grant marks
/// it finished, which is when the windows start counting it (the upstream had the message by
/// then); [`Grant::give_back`] takes the count back for a send that never reached the
/// upstream. Dropping a connection's grant gives the connection back.
pub struct Grant {
    finish: Then,
    give_back: Then,
}

impl Grant {
    pub fn new(finish: impl FnOnce() + Send + 'static) -> Grant {
        Grant {
            finish: Some(Box::new(finish)),
            give_back: None,
        }
    }

    /// A send's grant, which `give_back` undoes.
    pub fn undoable(
        finish: impl FnOnce() + Send + 'static,
        give_back: impl FnOnce() + Send + 'static,
    ) -> Grant {
        Grant {
            finish: Some(Box::new(finish)),
            give_back: Some(Box::new(give_back)),
        }
    }

    /// The send never reached the upstream: it counts for nothing (a grant that cannot be
    /// undone, a connection's, ends as when dropped).
    pub fn give_back(mut self) {
        if let Some(give_back) = self.give_back.take() {
            self.finish = None;
            give_back();
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish();
        }
    }
}
