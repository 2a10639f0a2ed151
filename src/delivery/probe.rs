//! Is an account's upstream back? While it cannot be reached the scheduler sends it no mail
//! and asks this instead, on a short back-off: a connection and EHLO (with the account's
//! TLS) for SMTP, any HTTP answer from Graph's endpoint for Graph. No login, no token, no
//! mail, so nothing is counted against the mailbox's limits or the messages' attempts.

use std::time::Duration;

use tokio::time::Instant;

use super::client::UpstreamConnection;
use super::lane::Lane;
use crate::config::Transport;

/// The first probe after an attempt could not reach the upstream, doubled after each that
/// fails, up to [`LONGEST`].
pub const FIRST: Duration = Duration::from_secs(5);
pub const LONGEST: Duration = Duration::from_secs(120);

/// Whether the lane's upstream answers now; why not, in words.
pub async fn upstream_answers(lane: &Lane, helo_name: &str) -> Result<(), String> {
    // A lane that fell back to Graph sends through its Graph twin: that is what to ask.
    if let Some(twin) = &lane.config.fallback
        && lane.fallback.current(Instant::now()).is_some()
    {
        return super::transport::graph::endpoint_answers(twin).await;
    }
    if lane.config.transport == Transport::Graph {
        return super::transport::graph::endpoint_answers(&lane.config).await;
    }
    let tls = lane.tls.clone()?;
    let connection = UpstreamConnection::connect(&lane.config.upstream, tls, helo_name)
        .await
        .map_err(|e| e.to_string())?;
    connection.quit().await;
    Ok(())
}
