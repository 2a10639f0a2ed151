//! Outbound: the SMTP client that talks to Exchange Online, and what its replies mean.
//! (The scheduler that drains the queue through it is the delivery milestone.)

pub mod client;
pub mod reply;

pub use client::{ClientError, UpstreamConnection};
pub use reply::UpstreamReply;
