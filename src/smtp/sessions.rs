//! Session admission: whether a new SMTP connection may open a session, against
//! `max_connections` and `max_connections_per_client`. The counts are the process's, so
//! sessions still open under a configuration a reload replaced count too; each session is
//! counted until its [`SessionPermit`] drops, however its task ends. `/metrics` shows the
//! total as `smtprelay_sessions_active`, which is the one count of open sessions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// The open sessions of the process.
pub struct Sessions {
    metrics: Arc<Metrics>,
    /// Open sessions per client address (for addresses with a limit).
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// Which limit turned a new session away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// `max_connections`: the whole relay is full.
    Total,
    /// `max_connections_per_client`: this address has its share.
    Client,
}

impl Sessions {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Sessions> {
        Arc::new(Sessions {
            metrics,
            clients: Mutex::default(),
        })
    }

    /// Admits a new session from `client` unless `max_total` are open already, or
    /// `max_per_client` (when the address has a limit) from that address. A counting
    /// semaphore of its own rather than Tokio's: its size is the running configuration's
    /// `max_connections`, which a reload may lower below the sessions already open, and
    /// nothing ever waits for a permit (a session over the limit is refused at once).
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        max_total: usize,
        max_per_client: Option<usize>,
    ) -> Result<SessionPermit, Crowded> {
        self.metrics
            .sessions_active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |active| {
                (active < max_total as u64).then_some(active + 1)
            })
            .map_err(|_| Crowded::Total)?;
        // From here the permit gives the session back, whatever follows.
        let mut permit = SessionPermit {
            sessions: Arc::clone(self),
            client: None,
        };
        if let Some(limit) = max_per_client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let open = clients.entry(client).or_insert(0);
            if *open >= limit {
                return Err(Crowded::Client);
            }
            *open += 1;
            permit.client = Some(client);
        }
        self.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }
}

/// One open SMTP session, counted until dropped.
pub struct SessionPermit {
    sessions: Arc<Sessions>,
    /// The address it counts against, when that has a limit.
    client: Option<IpAddr>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let sessions = &self.sessions;
        sessions
            .metrics
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
        let Some(client) = self.client else {
            return;
        };
        let mut clients = sessions.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = clients.get_mut(&client) {
            *open -= 1;
            if *open == 0 {
                clients.remove(&client);
            }
        }
    }
}
