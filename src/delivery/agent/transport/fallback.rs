//! An SMTP account with `fallback_transport = "graph"`: when Exchange answers `535 5.7.139`
//! (SMTP AUTH disabled for the mailbox or tenant), the message goes through Microsoft Graph
//! with the account's Graph twin (same app and mailbox, its own Graph token) at once, and
//! the transport reports the switch. The switch is the account's: the queue manager records
//! it, shows it in `/health`, and tells every worker of the account until when to use Graph
//! (an hour; then SMTP is tried again, and a transaction that passes the login reports that
//! the account is back on SMTP).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    AccountEffect, GraphTransport, Outcome, Outgoing, SendError, SmtpTransport, Transport,
};
use crate::BoxFuture;
use crate::delivery::meaning::Explain;

/// How long an account stays on Graph before SMTP is tried again.
pub const RETRY_SMTP: Duration = Duration::from_secs(3600);

/// What the transport tells the manager about the account's way upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Exchange refused SMTP AUTH (the reply, with its diagnosis): send through Graph.
    ToGraph(String),
    /// A transaction passed SMTP's login while the account was on Graph.
    BackToSmtp,
}

pub struct FallbackTransport {
    pub smtp: SmtpTransport,
    pub graph: GraphTransport,
    /// Until when the account sends through Graph, as the manager recorded it.
    pub graph_until: watch::Receiver<Option<Instant>>,
    /// Where a switch is reported.
    pub report: Box<dyn Fn(Switch) + Send + Sync>,
    /// A switch this transport reported: it goes on Graph without waiting for the record.
    pub switched_until: Option<Instant>,
}

impl FallbackTransport {
    fn on_graph(&self, now: Instant) -> bool {
        let recorded = *self.graph_until.borrow();
        recorded
            .max(self.switched_until)
            .is_some_and(|until| now < until)
    }

    async fn send_message(&mut self, message: &Outgoing<'_>) -> Result<Outcome, SendError> {
        if self.on_graph(Instant::now()) {
            return self.graph.send(message).await;
        }
        match self.smtp.send(message).await {
            Err(SendError::Account(AccountEffect::Hold(reply)))
                if reply.is_status(535, "5.7.139") =>
            {
                let now = Instant::now();
                self.switched_until = Some(now + RETRY_SMTP);
                (self.report)(Switch::ToGraph(reply.described()));
                self.graph.send(message).await
            }
            result => {
                // A transaction means the login passed: SMTP AUTH is allowed again.
                if result.is_ok() && self.graph_until.borrow().is_some() {
                    self.switched_until = None;
                    (self.report)(Switch::BackToSmtp);
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
