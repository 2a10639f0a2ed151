//! The durable queue: the spool on disk (this issue) and, later, the delivery scheduler.

pub mod id;
pub mod message_file;
pub mod spool;

pub use id::QueueId;
pub use message_file::{ClientInfo, Envelope, MessageFile};
pub use spool::{Spool, SpoolError, SpoolPaths};
