//! One upstream account as the queue manager sees it: the account its agents send for, its
//! limits and the connections its workers may hold ([`LanePermits`]), and whether it sends
//! through its Graph fallback now ([`FallbackState`]). Which account a message goes through
//! is decided here too ([`route`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::budget::{Budget, Channel, Limits};
use crate::BoxFuture;
use crate::config::{AccountConfig, Transport};
use crate::delivery::agent::Account;
use crate::delivery::agent::permits::Permits;
use crate::delivery::agent::transport::fallback::RETRY_SMTP;
use crate::delivery::grant::{Exhausted, Grant};
use crate::queue::Envelope;

pub struct Lane {
    pub index: usize,
    pub account: Arc<Account>,
    /// With `fallback_transport`: whether the account sends through Graph now.
    pub fallback: FallbackState,
}

impl Lane {
    pub fn new(index: usize, config: &AccountConfig) -> Lane {
        Lane {
            index,
            account: Arc::new(Account::new(config)),
            fallback: FallbackState::default(),
        }
    }

    pub fn name(&self) -> &str {
        self.account.name()
    }

    pub fn config(&self) -> &AccountConfig {
        &self.account.config
    }

    pub fn limits(&self) -> Limits {
        Limits::of(&self.config().upstream)
    }

    /// What its connections are, for the mailbox's connection limit (an SMTP lane that falls
    /// back to Graph keeps SMTP's, the lower).
    pub fn channel(&self) -> Channel {
        match self.config().transport {
            Transport::Smtp => Channel::Smtp,
            Transport::Graph => Channel::Graph,
        }
    }

    /// What the lane's workers may hold of `budget`.
    pub fn permits(&self, budget: Arc<dyn Budget>) -> LanePermits {
        LanePermits {
            budget,
            limits: self.limits(),
            channel: self.channel(),
            connections: u32::try_from(self.config().upstream.max_connections).unwrap_or(u32::MAX),
        }
    }
}

/// A lane's budgets, as its workers ask for them.
pub struct LanePermits {
    budget: Arc<dyn Budget>,
    limits: Limits,
    channel: Channel,
    connections: u32,
}

impl Permits for LanePermits {
    fn connection<'a>(&'a self, mailbox: &'a str) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        self.budget.connect(mailbox, self.channel, self.connections)
    }

    fn send<'a>(
        &'a self,
        mailbox: &'a str,
        recipients: u64,
    ) -> BoxFuture<'a, Result<Grant, Exhausted>> {
        self.budget.take(mailbox, self.limits, recipients)
    }

    fn keep_idle(&self) -> Duration {
        self.budget.keep_idle()
    }
}

/// Whether an account sends through its Graph fallback, and since when: recorded from what
/// its workers report (Exchange said SMTP AUTH is disabled; SMTP worked again), and
/// published to them as the time SMTP is tried again.
pub struct FallbackState {
    inner: Mutex<Option<Switched>>,
    /// Until when the account sends through Graph, for its workers.
    published: watch::Sender<Option<Instant>>,
}

impl Default for FallbackState {
    fn default() -> FallbackState {
        FallbackState {
            inner: Mutex::default(),
            published: watch::Sender::new(None),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Switched {
    /// Why: Exchange's reply, with its diagnosis.
    pub reason: String,
    pub since: std::time::SystemTime,
    /// When SMTP is tried again.
    pub until: Instant,
}

impl FallbackState {
    /// The switch, while it lasts.
    pub fn current(&self, now: Instant) -> Option<Switched> {
        self.lock().clone().filter(|s| now < s.until)
    }

    /// What the workers read: until when to send through Graph.
    pub fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.published.subscribe()
    }

    pub fn switch(&self, reason: String, now: Instant) {
        let mut inner = self.lock();
        let since = match &*inner {
            // Still refused after the hour: the same episode goes on.
            Some(switched) => switched.since,
            None => std::time::SystemTime::now(),
        };
        let until = now + RETRY_SMTP;
        *inner = Some(Switched {
            reason,
            since,
            until,
        });
        self.published.send_replace(Some(until));
    }

    /// SMTP worked again; false if the account was not on its fallback.
    pub fn back(&self) -> bool {
        let was = self.lock().take().is_some();
        self.published.send_replace(None);
        was
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Switched>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The account for a message: the one it names (`Envelope::account`, while configured),
/// else the first whose `senders` match, else the first account. Reports from the relay
/// (null sender) follow the address they go to.
pub fn route(lanes: &[Arc<Lane>], envelope: &Envelope) -> usize {
    account_for(lanes.iter().map(|lane| lane.config()), envelope)
}

/// The index of the account among `accounts` that a message goes through (see [`route`]).
pub fn account_for<'a>(
    accounts: impl IntoIterator<Item = &'a crate::config::AccountConfig> + Clone,
    envelope: &Envelope,
) -> usize {
    let named = envelope.account.as_deref().and_then(|chosen| {
        accounts
            .clone()
            .into_iter()
            .position(|account| account.name == chosen)
    });
    if let Some(index) = named {
        return index;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_naming_an_account_goes_through_it_whatever_its_sender() {
        let account = |name: &str, senders: &str| {
            format!(
                "[[account]]\nname = \"{name}\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\n\
                 client_secret_file = \"secret\"\nmailbox = \"{name}@contoso.com\"\nsenders = [{senders:?}]\n"
            )
        };
        let text = format!(
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n{}{}",
            account("scanners", "*@scan.contoso.com"),
            account("apps", "*@apps.contoso.com")
        );
        let config =
            crate::config::Config::parse(std::path::Path::new("/etc/smtprelay.toml"), text)
                .unwrap();
        let mut envelope = Envelope::from_relay("a@fabrikam.com", "relay", false);
        envelope.sender = "hr@apps.contoso.com".into();
        assert_eq!(account_for(&config.accounts, &envelope), 1);
        envelope.account = Some("scanners".into());
        assert_eq!(account_for(&config.accounts, &envelope), 0);
        // An account no longer configured (a reload removed it): routed by its sender.
        envelope.account = Some("gone".into());
        assert_eq!(account_for(&config.accounts, &envelope), 1);
    }

    #[test]
    fn the_switch_lasts_an_hour_and_keeps_its_start_when_renewed() {
        let state = FallbackState::default();
        let workers = state.subscribe();
        let now = Instant::now();
        assert!(state.current(now).is_none());
        state.switch("535 5.7.139".into(), now);
        let first = state.current(now).unwrap();
        assert_eq!(*workers.borrow(), Some(now + RETRY_SMTP));
        assert!(
            state
                .current(now + RETRY_SMTP - Duration::from_secs(1))
                .is_some()
        );
        assert!(
            state.current(now + RETRY_SMTP).is_none(),
            "SMTP is tried again"
        );
        state.switch("535 5.7.139".into(), now + RETRY_SMTP);
        let renewed = state.current(now + RETRY_SMTP).unwrap();
        assert_eq!(renewed.since, first.since);
        assert!(state.back());
        assert!(state.current(now).is_none());
        assert_eq!(*workers.borrow(), None);
        assert!(!state.back());
    }
}
