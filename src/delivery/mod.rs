//! Outbound: the scheduler that drains the queue, one lane per account with its workers, the
//! per-mailbox budgets, the SMTP client that talks to Exchange Online, and what its replies
//! mean.

pub mod budget;
pub mod client;
pub mod disposition;
pub mod dsn;
pub mod lane;
pub mod meaning;
pub mod pacing;
pub mod probe;
pub mod schedule;
pub mod scheduler;
pub mod settle;
pub mod status;
pub mod transaction;
pub mod transport;
pub mod worker;

pub use budget::{Budget, Limits, LocalBudget};
pub use client::{ClientError, UpstreamConnection};
pub use lane::{account_for, account_for_sender};
pub use schedule::{Census, Standing};
pub use scheduler::{Control, ControlRequest, Delivery, Outbound};
pub use status::{DeliveryStatus, FallbackInUse, HeldMailbox};
