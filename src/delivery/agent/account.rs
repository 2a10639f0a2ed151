//! An upstream account as its delivery agents send for it: its configuration, its outbound
//! TLS, and which mailbox and envelope sender a message uses upstream.

use std::sync::Arc;

use rustls::ClientConfig;

use crate::config::{AccountConfig, Transport};
use crate::queue::Envelope;

pub struct Account {
    pub config: AccountConfig,
    /// Outbound TLS for this account's upstream, or why it could not be set up.
    pub tls: Result<Arc<ClientConfig>, String>,
}

impl Account {
    pub fn new(config: &AccountConfig) -> Account {
        let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        Account {
            config: config.clone(),
            tls,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where this account's mail goes, for log lines: `host:port`, or Graph's endpoint.
    pub fn relay(&self) -> String {
        match self.config.transport {
            Transport::Smtp => {
                format!(
                    "{}:{}",
                    self.config.upstream.host, self.config.upstream.port
                )
            }
            Transport::Graph => self.config.graph_endpoint.clone(),
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
