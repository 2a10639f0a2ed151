//! An SMTP account with `fallback_transport = "graph"`: when Exchange answers `535 5.7.139`
//! (SMTP AUTH disabled for the mailbox or tenant), the account's mail goes through Microsoft
//! Graph with the account's Graph twin (same app and mailbox, its own Graph token), and SMTP
//! is tried again every [`RETRY_SMTP`] to go back once it is allowed again. The switch is the
//! lane's, shared by its workers, and shown in `/health`.

use crate::delivery::meaning::Explain;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    AccountEffect, GraphTransport, Outcome, Outgoing, SendError, SmtpTransport, Transport,
};
use crate::delivery::budget::BoxFuture;

/// How long the account stays on Graph before SMTP is tried again.
pub const RETRY_SMTP: Duration = Duration::from_secs(3600);

/// Whether an account sends through its fallback, and since when.
#[derive(Default)]
pub struct FallbackState {
    inner: Mutex<Option<Switched>>,
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

    fn switch(&self, reason: String, now: Instant) {
        let mut inner = self.lock();
        let since = match &*inner {
            // Still refused after the hour: the same episode goes on.
            Some(switched) => switched.since,
            None => std::time::SystemTime::now(),
        };
        *inner = Some(Switched {
            reason,
            since,
            until: now + RETRY_SMTP,
        });
    }

    /// SMTP worked again.
    fn back(&self) -> bool {
        self.lock().take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Switched>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FallbackTransport {
    pub smtp: SmtpTransport,
    pub graph: GraphTransport,
    pub state: Arc<FallbackState>,
    pub account: String,
}

impl FallbackTransport {
    async fn send_message(&mut self, message: &Outgoing<'_>) -> Result<Outcome, SendError> {
        if self.state.current(Instant::now()).is_some() {
            return self.graph.send(message).await;
        }
        match self.smtp.send(message).await {
            Err(SendError::Account(AccountEffect::Hold(reply)))
                if reply.is_status(535, "5.7.139") =>
            {
                let reason = reply.described();
                tracing::warn!(account = %self.account, %reason, retry_smtp_in_secs = RETRY_SMTP.as_secs(),
                    "SMTP AUTH is disabled: sending through Microsoft Graph instead");
                self.state.switch(reason, Instant::now());
                self.graph.send(message).await
            }
            result => {
                // A transaction means the login passed: SMTP AUTH is allowed again.
                if result.is_ok() && self.state.back() {
                    tracing::info!(account = %self.account, "SMTP AUTH works again: back to SMTP");
                }
                result
            }
        }
    }
}

impl Transport for FallbackTransport {
    fn send<'a>(
        &'a mut self,
        message: &'a Outgoing<'a>,
    ) -> BoxFuture<'a, Result<Outcome, SendError>> {
        Box::pin(self.send_message(message))
    }

    fn is_open(&self) -> bool {
        self.smtp.is_open()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.smtp.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_lasts_an_hour_and_keeps_its_start_when_renewed() {
        let state = FallbackState::default();
        let now = Instant::now();
        assert!(state.current(now).is_none());
        state.switch("535 5.7.139".into(), now);
        let first = state.current(now).unwrap();
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
        assert!(!state.back());
    }
}
