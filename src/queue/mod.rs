//! The durable queue: the spool on disk and each message's delivery state.

pub mod admission;
pub mod id;
pub mod message_file;
pub mod reply;
pub mod spool;
pub mod state;

pub use id::QueueId;
pub use message_file::{ClientInfo, Envelope, MessageFile};
pub use reply::UpstreamReply;
pub use spool::{Spool, SpoolError, SpoolPaths};
pub use state::{DeliveryState, RecipientState, RecipientStatus};
