//! Counters the relay keeps about itself, written out in the Prometheus text format
//! (version 0.0.4). Gauges that describe the present (queue depth, token expiry) are read
//! from their owners when scraped, not kept here.

pub mod activity;
pub mod tls;

pub use activity::{Activity, DeliveryResult, ResultKind};

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the delivery latency histogram: queue arrival to upstream 250.
const LATENCY_BUCKETS: [f64; 10] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

#[derive(Default)]
pub struct Metrics {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub messages_received_total: AtomicU64,
    pub messages_refused_total: AtomicU64,
    accounts: Mutex<BTreeMap<String, AccountCounters>>,
    last_delivery: Mutex<Option<LastDelivery>>,
    /// Refused commands and connections, by reason (`SmtpError::reason`).
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// What happened lately, for the status page and `/health`.
    pub activity: Activity,
    /// Inbound TLS: versions by listener, and the clients still on TLS older than 1.2.
    pub tls: tls::TlsStats,
}

#[derive(Default, Clone)]
struct AccountCounters {
    delivered: u64,
    deferred: u64,
    bounced: u64,
    latency_buckets: [u64; LATENCY_BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

/// The most recent delivery attempt's result, for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastDelivery {
    pub account: String,
    pub result: &'static str,
    pub reply: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

pub enum Outcome {
    Delivered { latency: Duration },
    Deferred,
    Bounced,
}

impl Outcome {
    fn kind(&self) -> ResultKind {
        match self {
            Outcome::Delivered { .. } => ResultKind::Delivered,
            Outcome::Deferred => ResultKind::Deferred,
            Outcome::Bounced => ResultKind::Bounced,
        }
    }
}

impl Metrics {
    pub fn refused(&self, reason: &'static str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// A message was accepted and queued.
    pub fn received(&self) {
        self.messages_received_total.fetch_add(1, Ordering::Relaxed);
        self.activity.received(crate::clock::unix_secs());
    }

    /// An attempt's result for a whole message (`result.result` is set from `outcome`).
    pub fn delivery(&self, outcome: Outcome, mut result: DeliveryResult) {
        result.result = outcome.kind();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let counters = accounts.entry(result.account.clone()).or_default();
        match outcome {
            Outcome::Delivered { latency } => {
                counters.delivered += 1;
                let seconds = latency.as_secs_f64();
                for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                    if seconds <= *bound {
                        counters.latency_buckets[i] += 1;
                    }
                }
                counters.latency_count += 1;
                counters.latency_sum += seconds;
            }
            Outcome::Deferred => counters.deferred += 1,
            Outcome::Bounced => counters.bounced += 1,
        }
        drop(accounts);
        *self.last_delivery.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastDelivery {
            account: result.account.clone(),
            result: result.result.name(),
            reply: result.reply.clone(),
            at: result.at,
        });
        self.activity.delivery(result);
    }

    pub fn last_delivery(&self) -> Option<LastDelivery> {
        self.last_delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Appends the counters in the text format.
    pub fn render(&self, out: &mut String) {
        counter(
            out,
            "smtprelay_sessions_total",
            "SMTP sessions accepted",
            self.sessions_total.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "smtprelay_sessions_active",
            "SMTP sessions open now",
            self.sessions_active.load(Ordering::Relaxed) as f64,
        );
        counter(
            out,
            "smtprelay_messages_received_total",
            "messages accepted and queued",
            self.messages_received_total.load(Ordering::Relaxed),
        );
        counter(
            out,
            "smtprelay_messages_refused_total",
            "messages refused at the end of DATA",
            self.messages_refused_total.load(Ordering::Relaxed),
        );
        let refusals = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let name = "smtprelay_refusals_total";
        let _ = write!(
            out,
            "# HELP {name} commands and connections refused, by reason\n# TYPE {name} counter\n"
        );
        for (reason, count) in refusals {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
        self.tls.render(out);
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, help, pick) in [
            (
                "smtprelay_messages_delivered_total",
                "messages delivered upstream",
                (|c: &AccountCounters| c.delivered) as fn(&AccountCounters) -> u64,
            ),
            (
                "smtprelay_messages_deferred_total",
                "delivery attempts deferred",
                |c| c.deferred,
            ),
            (
                "smtprelay_messages_bounced_total",
                "messages with failed recipients reported",
                |c| c.bounced,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (account, counters) in &accounts {
                let _ = writeln!(
                    out,
                    "{name}{{account=\"{}\"}} {}",
                    escape(account),
                    pick(counters)
                );
            }
        }
        let name = "smtprelay_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} time from arrival to upstream acceptance\n# TYPE {name} histogram"
        );
        for (account, counters) in &accounts {
            let account = escape(account);
            for (bound, count) in LATENCY_BUCKETS.iter().zip(counters.latency_buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{account=\"{account}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{account=\"{account}\",le=\"+Inf\"}} {}",
                counters.latency_count
            );
            let _ = writeln!(
                out,
                "{name}_sum{{account=\"{account}\"}} {}",
                counters.latency_sum
            );
            let _ = writeln!(
                out,
                "{name}_count{{account=\"{account}\"}} {}",
                counters.latency_count
            );
        }
    }
}

pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Label values escape backslash, quote and newline.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
