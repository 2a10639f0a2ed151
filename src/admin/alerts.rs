//! Alerts: conditions an admin must hear about before mail stops (tokens that will lapse,
//! accounts that need a login or a fix, repeated refresh failures, old mail in the queue),
//! sent to a webhook (JSON POST, retried) and/or by e-mail through the relay itself.
//! De-duplicated: one alert when a condition starts, one when it clears.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_secs as unix_now;
use crate::config::Config;
use crate::oauth::manager::{Health, TokenManager};
use crate::queue::admission::Admission;
use crate::queue::{Envelope, QueueId, Spool};

/// How often conditions are looked at when nothing else prompts it.
const EVALUATE_EVERY: Duration = Duration::from_secs(10);
const WEBHOOK_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AlertEvent {
    /// Stable name of the condition, e.g. `account:contoso:needs_login`.
    pub key: String,
    /// `firing` or `resolved`.
    pub state: &'static str,
    pub summary: String,
    pub host: String,
    /// Unix seconds.
    pub at: u64,
}

/// The conditions that fired and have not cleared, by key. It lives for the process: a
/// reload must not make a condition that is still true fire again.
pub type AlertMemory = Arc<std::sync::Mutex<BTreeMap<String, String>>>;

pub struct Alerter {
    config: Arc<Config>,
    spool: Arc<Spool>,
    tokens: Option<Arc<TokenManager>>,
    delivery: Arc<crate::delivery::DeliveryStatus>,
    http: Option<reqwest::Client>,
    active: AlertMemory,
}

impl Alerter {
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        tokens: Option<Arc<TokenManager>>,
        delivery: Arc<crate::delivery::DeliveryStatus>,
        active: AlertMemory,
    ) -> Alerter {
        let http = config.alerts.webhook.as_ref().and_then(|url| {
            let client = crate::tls::client_config(None)
                .map_err(|e| e.to_string())
                .and_then(|tls| {
                    reqwest::Client::builder()
                        .tls_backend_preconfigured(tls)
                        .timeout(Duration::from_secs(15))
                        .build()
                        .map_err(|e| e.to_string())
                });
            client
                .inspect_err(|e| {
                    tracing::error!(webhook = %url, error = %e,
                        "alerts cannot be sent to the webhook: its HTTPS client cannot be set up");
                })
                .ok()
        });
        Alerter {
            config,
            spool,
            tokens,
            delivery,
            http,
            active,
        }
    }

    fn conditions(&self) -> BTreeMap<String, String> {
        conditions(
            &self.config,
            &self.spool,
            self.tokens.as_deref(),
            &self.delivery,
        )
    }

    /// Sends what started or cleared since the last look.
    pub async fn evaluate(&mut self) {
        let now = self.conditions();
        let mut events = Vec::new();
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            for (key, summary) in &now {
                if !active.contains_key(key) {
                    events.push(self.event(key, "firing", summary));
                }
            }
            for (key, summary) in active.iter() {
                if !now.contains_key(key) {
                    events.push(self.event(key, "resolved", summary));
                }
            }
            *active = now;
        }
        for event in events {
            tracing::warn!(alert = %event.key, state = event.state, summary = %event.summary, "alert");
            self.send(&event).await;
        }
    }

    fn event(&self, key: &str, state: &'static str, summary: &str) -> AlertEvent {
        AlertEvent {
            key: key.to_owned(),
            state,
            summary: summary.to_owned(),
            host: self.config.server.hostname.clone(),
            at: unix_now(),
        }
    }

    async fn send(&self, event: &AlertEvent) {
        if let (Some(url), Some(http)) = (&self.config.alerts.webhook, &self.http) {
            let mut delay = Duration::from_secs(1);
            for attempt in 1..=WEBHOOK_ATTEMPTS {
                match http.post(url).json(event).send().await {
                    Ok(response) if response.status().is_success() => break,
                    Ok(response) => {
                        tracing::warn!(status = %response.status(), attempt, "alert webhook refused the alert")
                    }
                    Err(e) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if let Some(to) = &self.config.alerts.email
            && let Err(e) = self.queue_email(to, event).await
        {
            tracing::error!(error = %e, "cannot queue the alert e-mail");
        }
    }

    /// Queues the alert as a message from the relay itself (see `Envelope::from_relay`).
    async fn queue_email(&self, to: &str, event: &AlertEvent) -> std::io::Result<QueueId> {
        let from = self
            .config
            .accounts
            .first()
            .and_then(|a| a.mailbox.fixed())
            .unwrap_or(to)
            .to_owned();
        let subject = format!(
            "[smtprelay {}] {}: {}",
            event.host,
            event.state.to_uppercase(),
            event.summary.chars().take(120).collect::<String>()
        );
        let content = format!(
            "From: smtprelay on {host} <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\n\
             Auto-Submitted: auto-generated\r\nX-Smtprelay-Alert: {key}\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{summary}\r\n\r\nState: {state}\r\nCondition: {key}\r\n",
            host = event.host,
            date = chrono::Utc::now().to_rfc2822(),
            key = event.key,
            summary = event.summary,
            state = event.state,
        );
        let envelope = Envelope::from_relay(to, &event.host, false);
        let mut writer = self.spool.create(envelope);
        writer.write(content.as_bytes()).await?;
        writer.commit().await
    }

    /// Looks at the conditions every few seconds and on every token event, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut events = self.tokens.as_ref().map(|t| t.subscribe());
        loop {
            // A webhook that does not answer (retries, timeouts) must not hold up a stop.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.evaluate() => {}
            }
            let token_event = async {
                match events.as_mut() {
                    Some(events) => {
                        let _ = events.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVALUATE_EVERY) => {}
                _ = token_event => {}
                _ = self.delivery.changed() => {}
            }
        }
    }
}

/// The conditions that hold now, by key, with a summary (the status page lists them too).
pub fn conditions(
    config: &Config,
    spool: &Spool,
    tokens: Option<&TokenManager>,
    delivery: &crate::delivery::DeliveryStatus,
) -> BTreeMap<String, String> {
    let mut now = BTreeMap::new();
    let alerts = &config.alerts;
    // Limits that refuse new mail: one alert when reached, one when it clears.
    for limit in Admission::new(config, spool, delivery).reached() {
        now.insert(limit.alert_key(), limit.describe());
    }
    let Some(tokens) = tokens else {
        if !config.accounts.is_empty() {
            now.insert(
                "tokens:unavailable".into(),
                "no token store key: no mail can be delivered (run `smtprelay token keygen`)"
                    .into(),
            );
        }
        return now;
    };
    // Mailboxes the upstream holds until an admin acts, and accounts on their fallback.
    for held in delivery.held().iter().filter(|h| h.needs_admin) {
        now.insert(
            format!("mailbox:{}:{}:held", held.account, held.mailbox),
            format!(
                "account {}: mailbox {} cannot send: {}",
                held.account, held.mailbox, held.reason
            ),
        );
    }
    for fallback in delivery.fallbacks() {
        now.insert(
            format!("account:{}:graph_fallback", fallback.account),
            fallback.describe(),
        );
    }
    let unix = unix_now();
    for status in tokens.statuses() {
        let account = &status.account;
        match &status.health {
            Health::NeedsLogin(reason) => {
                now.insert(format!("account:{account}:needs_login"), format!("account {account} needs a login (smtprelay token login --account {account}): {reason}"));
            }
            Health::Misconfigured(reason) => {
                now.insert(
                    format!("account:{account}:misconfigured"),
                    format!("account {account} is misconfigured: {reason}"),
                );
            }
            _ => {}
        }
        if status.consecutive_failures >= alerts.refresh_failure_threshold {
            now.insert(
                format!("account:{account}:refresh_failures"),
                format!(
                    "account {account}: {} token requests in a row failed",
                    status.consecutive_failures
                ),
            );
        }
        // A token that cannot be renewed by itself and lapses soon.
        let warning = alerts.token_expiry_warning.as_secs();
        let lapses = match (
            status.auto_refresh,
            status.access_token_expires_at,
            status.refresh_token_expires_at,
        ) {
            (false, Some(expires), _) => Some(expires),
            (true, _, Some(refresh_expires))
                if status.flow != crate::config::Flow::ClientCredentials =>
            {
                Some(refresh_expires)
            }
            _ => None,
        };
        if let Some(at) = lapses
            && at <= unix + warning
        {
            now.insert(
                format!("account:{account}:expiring"),
                format!("account {account}: its token lapses in {} min and cannot be renewed without a login", at.saturating_sub(unix) / 60),
            );
        }
    }
    if let Some(received) = spool.oldest_received_at() {
        let age = (unix * 1000).saturating_sub(received) / 1000;
        if age > alerts.queue_age_warning.as_secs() {
            now.insert(
                "queue:old_mail".into(),
                format!(
                    "the oldest message has waited {} min in the queue",
                    age / 60
                ),
            );
        }
    }
    now
}
