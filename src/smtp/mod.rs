//! Inbound SMTP. The protocol pieces do no I/O (`command`, `line`, `data`, `reply`, `sasl`);
//! `session` drives them over one connection, `listener` accepts connections.

pub mod command;
pub mod data;
pub mod error;
pub mod line;
pub mod listener;
pub mod policy;
pub mod proxy;
pub mod reply;
pub mod sasl;
pub mod session;
pub mod sessions;
pub mod tls;

pub use error::SmtpError;
pub use reply::Reply;
