//! Outbound: the scheduler that drains the queue, one lane per account with its workers and
//! pacing, the SMTP client that talks to Exchange Online, and what its replies mean.

pub mod classify;
pub mod client;
pub mod dsn;
pub mod lane;
pub mod pacing;
pub mod reply;
pub mod scheduler;
pub mod transaction;
pub mod worker;

pub use client::{ClientError, UpstreamConnection};
pub use reply::UpstreamReply;
pub use scheduler::Delivery;
