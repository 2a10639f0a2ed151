//! The delivery agents: for each account, a worker per connection it may have, each taking
//! the messages the queue manager hands the account's lane and sending them through one
//! transport (SMTP, Graph, or SMTP that falls back to Graph). A worker holds the grants the
//! account's budgets give it ([`permits`]) and reports what the upstream said; it decides
//! nothing about the queue: results, retries, pauses and the fallback switch are the
//! manager's to record. Nothing here imports the manager.

pub mod account;
pub mod client;
pub mod permits;
pub mod probe;
pub mod transaction;
pub mod transport;
pub mod worker;

pub use account::Account;
pub use worker::Upstream;
