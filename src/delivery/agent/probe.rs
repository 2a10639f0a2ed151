//! Is an account's upstream back? While it cannot be reached the scheduler sends it no mail
//! and asks this instead, on a short back-off: a connection and EHLO (with the account's
//! TLS) for SMTP, any HTTP answer from Graph's endpoint for Graph. No login, no token, no
//! mail, so nothing is counted against the mailbox's limits or the messages' attempts.

use super::account::Account;
use super::client::UpstreamConnection;
use crate::config::Transport;

/// Whether the account's upstream answers now (its Graph twin's, while `on_fallback`); why
/// not, in words.
pub async fn upstream_answers(
    account: &Account,
    on_fallback: bool,
    helo_name: &str,
) -> Result<(), String> {
    // An account that fell back to Graph sends through its Graph twin: that is what to ask.
    if let Some(twin) = account.config.fallback.as_deref().filter(|_| on_fallback) {
        return super::transport::graph::endpoint_answers(twin).await;
    }
    if account.config.transport == Transport::Graph {
        return super::transport::graph::endpoint_answers(&account.config).await;
    }
    let tls = account.tls.clone()?;
    let connection = UpstreamConnection::connect(&account.config.upstream, tls, helo_name)
        .await
        .map_err(|e| e.to_string())?;
    connection.quit().await;
    Ok(())
}
