//! smtprelay: accepts SMTP from devices and apps, spools every message durably, and relays it
//! to Exchange Online with OAuth2. `ARCHITECTURE.md` maps the modules.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod private_files;
pub mod queue;
pub mod relay;
pub mod smtp;
pub mod tls;

/// A boxed future, for traits whose methods are asynchronous and must stay object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
