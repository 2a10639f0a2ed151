//! One upstream account as delivery sees it: its TLS settings, its limits, the messages
//! handed to its workers, and which mailbox and sender a message uses upstream.

use std::sync::Arc;

use rustls::ClientConfig;
use tokio::sync::mpsc;

use super::budget::{Channel, Limits};
use super::transport::fallback::FallbackState;
use crate::config::AccountConfig;
use crate::queue::{Envelope, QueueId};

pub struct Lane {
    pub index: usize,
    pub config: AccountConfig,
    /// Outbound TLS for this account's upstream, or why it could not be set up.
    pub tls: Result<Arc<ClientConfig>, String>,
    /// Messages handed to this account's workers; closed by the scheduler at shutdown.
    pub receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<QueueId>>,
    /// With `fallback_transport`: whether the account sends through Graph now.
    pub fallback: Arc<FallbackState>,
}

impl Lane {
    /// The lane, and the sender the scheduler hands it messages through.
    pub fn new(index: usize, config: &AccountConfig) -> (Lane, mpsc::UnboundedSender<QueueId>) {
        let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        let (queue, receiver) = mpsc::unbounded_channel();
        let lane = Lane {
            index,
            config: config.clone(),
            tls,
            receiver: tokio::sync::Mutex::new(receiver),
            fallback: Arc::default(),
        };
        (lane, queue)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where this account's mail goes, for log lines: `host:port`, or Graph's endpoint.
    pub fn relay(&self) -> String {
        match self.config.transport {
            crate::config::Transport::Smtp => {
                format!(
                    "{}:{}",
                    self.config.upstream.host, self.config.upstream.port
                )
            }
            crate::config::Transport::Graph => self.config.graph_endpoint.clone(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits::of(&self.config.upstream)
    }

    /// What its connections are, for the mailbox's connection limit (an SMTP lane that falls
    /// back to Graph keeps SMTP's, the lower).
    pub fn channel(&self) -> Channel {
        match self.config.transport {
            crate::config::Transport::Smtp => Channel::Smtp,
            crate::config::Transport::Graph => Channel::Graph,
        }
    }
    /// The mailbox named in XOAUTH2 for this message.
    pub fn auth_mailbox(&self, envelope: &Envelope) -> String {
        if let Some(mailbox) = self.config.mailbox.fixed() {
            return mailbox.to_owned();
        }
        // A report from the relay itself goes out as the mailbox it reports to.
        if envelope.sender.is_empty() {
            return envelope.recipients.first().cloned().unwrap_or_default();
        }
        envelope.sender.clone()
    }

    /// The envelope sender used upstream.
    pub fn upstream_sender(&self, envelope: &Envelope) -> String {
        if self.config.rewrite_sender || envelope.sender.is_empty() {
            self.auth_mailbox(envelope)
        } else {
            envelope.sender.clone()
        }
    }
}

/// The account for a message: the first whose `senders` match, else the first account.
/// Reports from the relay (null sender) follow the address they go to.
pub fn route(lanes: &[Arc<Lane>], envelope: &Envelope) -> usize {
    account_for(lanes.iter().map(|lane| &lane.config), envelope)
}

/// The index of the account among `accounts` that a message goes through (see [`route`]).
pub fn account_for<'a>(
    accounts: impl IntoIterator<Item = &'a crate::config::AccountConfig>,
    envelope: &Envelope,
) -> usize {
    let first_recipient = envelope.recipients.first().map(String::as_str);
    account_for_sender(accounts, &envelope.sender, first_recipient)
}

/// [`account_for`] before the envelope is complete: intake asks at RCPT, with the sender
/// and the first recipient (which decides for the null sender) it has so far.
pub fn account_for_sender<'a>(
    accounts: impl IntoIterator<Item = &'a crate::config::AccountConfig>,
    sender: &str,
    first_recipient: Option<&str>,
) -> usize {
    let address = if sender.is_empty() {
        first_recipient.unwrap_or("")
    } else {
        sender
    };
    accounts
        .into_iter()
        .position(|account| account.senders.iter().any(|g| g.matches(address)))
        .unwrap_or(0)
}
