//! One upstream account as delivery sees it: its TLS settings, pacing budgets, the messages
//! waiting for one of its connections, and whether it is paused (throttled, over quota, or
//! held until an admin acts).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pacing::SlidingWindow;
use crate::config::AccountConfig;
use crate::queue::{Envelope, QueueId};

pub const DAY: Duration = Duration::from_secs(86_400);

pub struct Lane {
    pub index: usize,
    pub config: AccountConfig,
    /// Outbound TLS for this account's upstream, or why it could not be set up.
    pub tls: Result<Arc<ClientConfig>, String>,
    pub rate: SlidingWindow,
    pub daily: SlidingWindow,
    paused: Mutex<Option<(Instant, String)>>,
    /// Messages handed to this account's workers; closed by the scheduler at shutdown.
    pub receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<QueueId>>,
}

impl Lane {
    /// The lane, and the sender the scheduler hands it messages through.
    pub fn new(index: usize, config: &AccountConfig) -> (Lane, mpsc::UnboundedSender<QueueId>) {
        let tls = crate::client_tls::client_config(config.upstream.ca_file.as_deref())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        let (queue, receiver) = mpsc::unbounded_channel();
        let rate = config.upstream.rate;
        let lane = Lane {
            index,
            rate: SlidingWindow::new(rate.count.into(), rate.period),
            daily: SlidingWindow::new(config.upstream.daily_recipients.into(), DAY),
            config: config.clone(),
            tls,
            paused: Mutex::new(None),
            receiver: tokio::sync::Mutex::new(receiver),
        };
        (lane, queue)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Pauses the account for `duration` (a longer pause already running is kept).
    pub fn pause(&self, duration: Duration, why: String) {
        let until = Instant::now() + duration;
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused.as_ref().is_none_or(|(at, _)| *at < until) {
            tracing::warn!(account = self.name(), pause_secs = duration.as_secs(), reason = %why, "account paused");
            *paused = Some((until, why));
        }
    }

    /// When the account may send again, if it is paused now.
    pub fn paused_until(&self) -> Option<(Instant, String)> {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        match &*paused {
            Some((until, _)) if *until <= Instant::now() => {
                *paused = None;
                None
            }
            other => other.clone(),
        }
    }

    /// The mailbox named in XOAUTH2 for this message.
    pub fn auth_mailbox(&self, envelope: &Envelope) -> String {
        if self.config.mailbox != "{sender}" {
            return self.config.mailbox.clone();
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
    let address = if envelope.sender.is_empty() {
        envelope
            .recipients
            .first()
            .map(String::as_str)
            .unwrap_or("")
    } else {
        envelope.sender.as_str()
    };
    lanes
        .iter()
        .position(|lane| lane.config.senders.iter().any(|g| g.matches(address)))
        .unwrap_or(0)
}
