//! The queue manager: decides what is sent when and through which account, and records what
//! became of it. The scheduler owns the schedule and is the only writer of delivery state;
//! lanes route messages to accounts and feed their agents; budgets and pacing are its
//! inputs; settle and disposition record an ended attempt and decide what follows; status
//! is what it shows the admin.

pub mod budget;
pub mod disposition;
pub mod dsn;
pub mod lane;
pub mod pacing;
pub mod schedule;
pub mod scheduler;
pub mod settle;
pub mod status;

use std::sync::Arc;

use crate::config::Config;
use crate::oauth::manager::TokenManager;
use crate::queue::Spool;

/// What the scheduler and the tasks that record its results work with.
pub struct Context {
    pub spool: Arc<Spool>,
    pub tokens: Arc<TokenManager>,
    pub config: Arc<Config>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub budget: Arc<dyn budget::Budget>,
}
