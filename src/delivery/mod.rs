//! Outbound, as Postfix splits it: the queue manager ([`manager`]) decides what is sent when,
//! through which account, and records what became of it; the delivery agents ([`agent`])
//! send what they are handed and report what the upstream said. Between them: what the
//! upstream's replies mean ([`meaning`]) and what the budgets grant ([`grant`]). The agents
//! import nothing of the manager.

pub mod agent;
pub mod grant;
pub mod manager;
pub mod meaning;

pub use agent::client::{ClientError, UpstreamConnection};
pub use manager::budget::{self, Budget, Limits, LocalBudget};
pub use manager::lane::{account_for, account_for_sender};
pub use manager::schedule::{Census, Standing};
pub use manager::scheduler::{Control, ControlRequest, Delivery, Outbound};
pub use manager::status::{DeliveryStatus, FallbackInUse, HeldMailbox};
