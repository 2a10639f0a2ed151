//! What the admin sees at a glance: one report ([`StatusReport`]) of health, accounts and
//! their tokens, budgets, pauses, the queue by what it waits for, recent deliveries, firing
//! alerts and the last hour's traffic. Served as JSON (`/status.json`), as a page (`/`, see
//! [`super::page`]) and as text for a terminal (`/status.txt`, which `smtprelay status`
//! prints).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;

use super::{Admin, HealthReport, Status};
use crate::clock::rfc3339;
use crate::delivery::Census;
use crate::delivery::HeldMailbox;
use crate::delivery::Limits;
use crate::metrics::activity::{DeliveryResult, Minute};

#[derive(Serialize)]
pub struct StatusReport {
    pub hostname: String,
    pub version: &'static str,
    /// Unix seconds.
    pub generated_at: u64,
    pub status: Status,
    pub reasons: Vec<String>,
    pub accounts: Vec<AccountView>,
    pub budgets: Vec<BudgetView>,
    /// Mailboxes whose mail waits for a budget or a pause.
    pub pauses: Vec<HeldMailbox>,
    pub queue: QueueView,
    /// The last delivery results, newest first.
    pub deliveries: Vec<DeliveryResult>,
    pub alerts: Vec<FiringAlert>,
    /// Per minute, oldest first.
    pub last_hour: Vec<Minute>,
    /// Clients seen on TLS older than 1.2 in the last 7 days, most recent first: the
    /// devices to replace or update.
    pub outdated_tls_clients: Vec<crate::metrics::tls::OutdatedClient>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterReport>,
}

#[derive(Serialize)]
pub struct AccountView {
    pub name: String,
    pub transport: crate::config::Transport,
    pub mailbox: String,
    pub flow: crate::config::Flow,
    /// `valid`, `refreshing`, `failing`, … (`unavailable` without a token store key).
    pub token: &'static str,
    pub token_reason: Option<String>,
    /// Unix seconds.
    pub token_expires_at: Option<u64>,
    pub next_refresh_at: Option<u64>,
    /// With `[cluster]`: the node asking Entra for this account's token now, if one is.
    pub refresh_lock_holder: Option<String>,
    pub backlog: BacklogView,
}

/// An account's queued messages against its `max_backlog`, and in days of its mailbox's
/// `daily_recipients` (each message counted as one recipient).
#[derive(Serialize)]
pub struct BacklogView {
    /// Absent until delivery has counted the queue (or while it cannot run).
    pub queued: Option<usize>,
    pub max: u64,
    pub days: Option<f64>,
    /// Past it, its new mail is refused.
    pub full: bool,
}

impl BacklogView {
    fn of(account: &crate::config::AccountConfig, queued: Option<usize>) -> BacklogView {
        let daily = f64::from(account.upstream.daily_recipients.max(1));
        BacklogView {
            queued,
            max: account.max_backlog,
            // Two decimals are all anyone reads.
            days: queued.map(|q| (q as f64 / daily * 100.0).round() / 100.0),
            full: queued.is_some_and(|q| q as u64 >= account.max_backlog),
        }
    }

    /// "120 of 30000 (0.01 days of budget)", or "not counted yet".
    pub fn words(&self) -> String {
        match (self.queued, self.days) {
            (Some(queued), Some(days)) => format!(
                "{queued} of {} queued ({days} days of budget){}",
                self.max,
                if self.full {
                    ", FULL: new mail refused"
                } else {
                    ""
                }
            ),
            _ => format!("not counted yet (cap {})", self.max),
        }
    }
}

impl AccountView {
    /// What to say beside the token's state: why it is not valid, and who is getting the
    /// account a new token while someone is.
    pub fn remarks(&self) -> impl Iterator<Item = String> + '_ {
        let refreshing = self
            .refresh_lock_holder
            .as_ref()
            .map(|node| format!("{node} is getting a new token"));
        self.token_reason.iter().cloned().chain(refreshing)
    }
}

/// One mailbox's budgets.
#[derive(Serialize)]
pub struct BudgetView {
    pub account: String,
    pub mailbox: String,
    pub sent: u64,
    /// e.g. `30/1m`.
    pub rate: String,
    pub rate_limit: u32,
    pub recipients_today: u64,
    pub daily_limit: u32,
    /// Unix seconds; absent when it may send now.
    pub next_send_at: Option<u64>,
}

#[derive(Serialize)]
pub struct QueueView {
    pub depth: usize,
    pub oldest_age_seconds: Option<u64>,
    #[serde(flatten)]
    pub census: Census,
}

#[derive(Serialize)]
pub struct FiringAlert {
    pub key: String,
    pub summary: String,
}

/// Gathers the report from the parts' owners.
pub async fn report(admin: &Admin, health: HealthReport) -> StatusReport {
    let now = crate::clock::unix_secs();
    let accounts = admin
        .config
        .accounts
        .iter()
        .map(|account| {
            let status = health.accounts.iter().find(|s| s.account == account.name);
            AccountView {
                name: account.name.clone(),
                transport: account.transport,
                mailbox: account.mailbox.to_string(),
                flow: account.flow,
                token: status.map_or("unavailable", |s| s.health.name()),
                token_reason: status.and_then(|s| s.health.reason().map(str::to_owned)),
                token_expires_at: status.and_then(|s| s.access_token_expires_at),
                next_refresh_at: status.and_then(|s| s.next_refresh_at),
                refresh_lock_holder: status.and_then(|s| s.refresh_lock_holder.clone()),
                backlog: BacklogView::of(account, admin.delivery.backlog_of(&account.name)),
            }
        })
        .collect();
    let deliveries = admin.metrics.activity.recent();
    let budgets = budgets(admin, &health.held_mailboxes, &deliveries, now).await;
    let alerts = super::alerts::conditions(
        &admin.config,
        &admin.spool,
        admin.tokens.as_deref(),
        &admin.delivery,
    )
    .into_iter()
    .map(|(key, summary)| FiringAlert { key, summary })
    .collect();
    StatusReport {
        hostname: admin.config.server.hostname.clone(),
        version: env!("CARGO_PKG_VERSION"),
        generated_at: now,
        status: health.status,
        reasons: health.reasons,
        accounts,
        budgets,
        pauses: health.held_mailboxes,
        cluster: health.cluster,
        queue: QueueView {
            depth: health.queue.depth,
            oldest_age_seconds: health.queue.oldest_age_seconds,
            census: match admin.tokens {
                Some(_) => admin.delivery.queue(),
                // Delivery does not run without the token store's key: all of it waits.
                None => Census {
                    waiting_for_token: health.queue.depth,
                    ..Census::default()
                },
            },
        },
        deliveries,
        alerts,
        last_hour: admin.metrics.activity.last_hour(now),
        outdated_tls_clients: admin.metrics.tls.outdated(now),
    }
}

/// The budgets of the mailboxes worth showing: each account's fixed mailbox, and those that
/// sent lately or wait (accounts that send as `{sender}` have one per sender).
async fn budgets(
    admin: &Admin,
    held: &[HeldMailbox],
    deliveries: &[DeliveryResult],
    now: u64,
) -> Vec<BudgetView> {
    let mut mailboxes = BTreeSet::new();
    for account in &admin.config.accounts {
        if let Some(mailbox) = account.mailbox.fixed() {
            mailboxes.insert((account.name.clone(), mailbox.to_ascii_lowercase()));
        }
    }
    let named = held
        .iter()
        .map(|h| (&h.account, &h.mailbox))
        .chain(deliveries.iter().map(|d| (&d.account, &d.mailbox)));
    for (account, mailbox) in named {
        mailboxes.insert((account.clone(), mailbox.to_ascii_lowercase()));
    }
    let mut views = Vec::new();
    for (account, mailbox) in mailboxes {
        let Some(config) = admin.config.account(&account) else {
            continue;
        };
        let limits = Limits::of(&config.upstream);
        let usage = admin.budget.usage(&mailbox, limits).await;
        let instant_now = tokio::time::Instant::now();
        views.push(BudgetView {
            account,
            mailbox,
            sent: usage.sent,
            rate: limits.rate.to_string(),
            rate_limit: limits.rate.count,
            recipients_today: usage.recipients_today,
            daily_limit: limits.daily_recipients,
            next_send_at: usage.next_send.map(|at| {
                let wait = at.saturating_duration_since(instant_now);
                now + wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            }),
        });
    }
    views
}

/// "3m 20s" for a number of seconds.
pub fn duration_words(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

/// The report for a terminal (`smtprelay status`).
pub fn text(report: &StatusReport) -> String {
    let mut out = String::new();
    // Shouted when it needs a look, as a terminal has no colours to spare.
    let status = match report.status {
        Status::Healthy => Status::Healthy.name().to_owned(),
        other => other.name().to_uppercase(),
    };
    let _ = writeln!(
        out,
        "smtprelay {} on {}: {status} (at {})",
        report.version,
        report.hostname,
        rfc3339(report.generated_at)
    );
    for reason in &report.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
    let _ = writeln!(out, "\nAccounts");
    for a in &report.accounts {
        let expiry = a.token_expires_at.map_or(String::new(), |at| {
            if at > report.generated_at {
                format!(", expires in {}", duration_words(at - report.generated_at))
            } else {
                ", expired".to_owned()
            }
        });
        let _ = writeln!(
            out,
            "  {:<20} {} as {} ({}): token {}{expiry}{}",
            a.name,
            a.transport,
            a.mailbox,
            a.flow,
            a.token,
            a.remarks()
                .map(|words| format!(" ({words})"))
                .collect::<String>()
        );
        let _ = writeln!(out, "  {:<20} backlog {}", "", a.backlog.words());
    }
    if !report.budgets.is_empty() {
        let _ = writeln!(out, "\nBudgets");
        for b in &report.budgets {
            let next = b.next_send_at.map_or("now".to_owned(), rfc3339);
            let _ = writeln!(
                out,
                "  {:<32} {}/{} in the rate window ({}), {}/{} recipients today; next send {next}",
                b.mailbox, b.sent, b.rate_limit, b.rate, b.recipients_today, b.daily_limit
            );
        }
    }
    if let Some(cluster) = &report.cluster {
        let _ = writeln!(
            out,
            "\nCluster: node {} with Redis at {} ({}); budgets {}",
            cluster.node,
            cluster.redis,
            if cluster.reachable {
                "answering"
            } else {
                "UNREACHABLE"
            },
            cluster.mode_words()
        );
        for node in &cluster.nodes {
            let _ = writeln!(
                out,
                "  {:<24} {} up since {}, last heartbeat {}",
                node.name,
                node.version,
                rfc3339(node.started_at),
                rfc3339(node.last_seen_ms / 1000)
            );
        }
    }
    if !report.pauses.is_empty() {
        let _ = writeln!(out, "\nPaused");
        for p in &report.pauses {
            let _ = writeln!(out, "  {}", p.describe());
        }
    }
    let q = &report.queue;
    let _ = writeln!(
        out,
        "\nQueue: {} message(s){}",
        q.depth,
        q.oldest_age_seconds.map_or(String::new(), |age| format!(
            ", the oldest waiting {}",
            duration_words(age)
        ))
    );
    let c = &q.census;
    let _ = writeln!(
        out,
        "  due {}, delivering {}, deferred {}, held {}, waiting for a token {}, waiting for a budget {}, paused {}",
        c.due, c.in_flight, c.deferred, c.held, c.waiting_for_token, c.waiting_for_budget, c.paused
    );
    let _ = writeln!(out, "\nAlerts");
    if report.alerts.is_empty() {
        let _ = writeln!(out, "  none firing");
    }
    for alert in &report.alerts {
        let _ = writeln!(out, "  {}: {}", alert.key, alert.summary);
    }
    let hour = report.last_hour.iter().fold((0, 0, 0), |(r, d, f), m| {
        (r + m.received, d + m.delivered, f + m.deferred)
    });
    let _ = writeln!(
        out,
        "\nLast hour: {} received, {} delivered, {} deferred",
        hour.0, hour.1, hour.2
    );
    if !report.outdated_tls_clients.is_empty() {
        let _ = writeln!(out, "\nClients on TLS older than 1.2 (last 7 days)");
        for c in &report.outdated_tls_clients {
            let _ = writeln!(
                out,
                "  {} {} {} {}, last seen {}, {} message(s)",
                c.address,
                crate::logging::Untrusted(if c.helo.is_empty() { "-" } else { &c.helo }),
                c.version,
                c.cipher,
                rfc3339(c.last_seen),
                c.messages
            );
        }
    }
    let _ = writeln!(out, "\nRecent deliveries");
    if report.deliveries.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for d in report.deliveries.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} {} {:<9} {} <{}> ({} rcpt): {}",
            rfc3339(d.at),
            d.queue_id,
            d.result.name(),
            d.account,
            crate::logging::Untrusted(&d.sender),
            d.recipients,
            d.reply.as_deref().unwrap_or("")
        );
    }
    out
}
