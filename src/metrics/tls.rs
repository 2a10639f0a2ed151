//! What the listeners' TLS handshakes tell the admin: sessions by listener and version,
//! failed handshakes, and the clients that still speak TLS older than 1.2 (the devices to
//! replace or update, and the reason a legacy listener exists). Bounded like the rest.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::smtp::tls::{Negotiated, TlsVersion};

/// How long a client stays on the list after its last session.
pub const OUTDATED_KEPT_SECS: u64 = 7 * 24 * 3600;
/// The most clients listed; past it the one seen longest ago makes room.
const OUTDATED_MAX: usize = 1000;

#[derive(Default)]
pub struct TlsStats {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: BTreeMap<(SocketAddr, TlsVersion), u64>,
    failures: BTreeMap<SocketAddr, u64>,
    outdated: HashMap<IpAddr, OutdatedClient>,
    /// The list changed since it was last taken for saving.
    unsaved: bool,
}

/// A client seen on TLS older than 1.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutdatedClient {
    pub address: IpAddr,
    /// The last EHLO/HELO name it gave (empty before it gave one).
    pub helo: String,
    pub version: TlsVersion,
    pub cipher: String,
    /// Unix seconds.
    pub last_seen: u64,
    /// Messages it sent over such a session.
    pub messages: u64,
}

impl TlsStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake on `listener` (its bound address) agreed on `tls`.
    pub fn established(
        &self,
        listener: SocketAddr,
        client: IpAddr,
        helo: Option<&str>,
        tls: &Negotiated,
        now: u64,
    ) {
        let mut inner = self.lock();
        *inner.sessions.entry((listener, tls.version)).or_default() += 1;
        if !tls.version.is_outdated() {
            return;
        }
        inner.forget_older_than(now.saturating_sub(OUTDATED_KEPT_SECS));
        if !inner.outdated.contains_key(&client) && inner.outdated.len() >= OUTDATED_MAX {
            let oldest = inner
                .outdated
                .values()
                .min_by_key(|c| c.last_seen)
                .map(|c| c.address);
            if let Some(oldest) = oldest {
                inner.outdated.remove(&oldest);
            }
        }
        let entry = inner
            .outdated
            .entry(client)
            .or_insert_with(|| OutdatedClient {
                address: client,
                helo: String::new(),
                version: tls.version,
                cipher: String::new(),
                last_seen: now,
                messages: 0,
            });
        entry.version = tls.version;
        entry.cipher.clone_from(&tls.cipher);
        entry.last_seen = now;
        if let Some(helo) = helo {
            entry.helo = helo.to_owned();
        }
        inner.unsaved = true;
    }

    /// A client on outdated TLS named itself (EHLO/HELO after the handshake).
    pub fn named(&self, client: IpAddr, helo: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.outdated.get_mut(&client) {
            entry.helo = helo.to_owned();
            inner.unsaved = true;
        }
    }

    /// A client on outdated TLS sent a message.
    pub fn message(&self, client: IpAddr, now: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.outdated.get_mut(&client) {
            entry.messages += 1;
            entry.last_seen = now;
            inner.unsaved = true;
        }
    }

    /// The list to save, when it changed since the last call.
    pub fn unsaved(&self) -> Option<Vec<OutdatedClient>> {
        let mut inner = self.lock();
        if !std::mem::take(&mut inner.unsaved) {
            return None;
        }
        Some(inner.outdated.values().cloned().collect())
    }

    /// Puts back a list saved by an earlier run (what this run saw since wins).
    pub fn restore(&self, clients: Vec<OutdatedClient>) {
        let mut inner = self.lock();
        for client in clients {
            inner.outdated.entry(client.address).or_insert(client);
        }
    }

    pub fn handshake_failed(&self, listener: SocketAddr) {
        *self.lock().failures.entry(listener).or_default() += 1;
    }

    /// The clients seen on TLS older than 1.2 in the last 7 days, most recent first.
    pub fn outdated(&self, now: u64) -> Vec<OutdatedClient> {
        let mut inner = self.lock();
        inner.forget_older_than(now.saturating_sub(OUTDATED_KEPT_SECS));
        let mut clients: Vec<OutdatedClient> = inner.outdated.values().cloned().collect();
        clients.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then(a.address.cmp(&b.address))
        });
        clients
    }

    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let inner = self.lock();
        let name = "smtprelay_tls_sessions_total";
        let _ = writeln!(
            out,
            "# HELP {name} TLS sessions by listener and negotiated version\n# TYPE {name} counter"
        );
        for ((listener, version), count) in &inner.sessions {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{listener}\",version=\"{version}\"}} {count}"
            );
        }
        let name = "smtprelay_tls_handshake_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} TLS handshakes that failed, by listener\n# TYPE {name} counter"
        );
        for (listener, count) in &inner.failures {
            let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {count}");
        }
        let name = "smtprelay_tls_outdated_clients";
        let _ = writeln!(
            out,
            "# HELP {name} clients seen on TLS older than 1.2 in the last 7 days\n# TYPE {name} gauge\n{name} {}",
            inner.outdated.len()
        );
    }
}

impl Inner {
    fn forget_older_than(&mut self, horizon: u64) {
        self.outdated
            .retain(|_, client| client.last_seen >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(version: TlsVersion) -> Negotiated {
        Negotiated {
            version,
            cipher: "TLS_RSA_WITH_AES_128_CBC_SHA".into(),
        }
    }

    #[test]
    fn only_clients_older_than_tls_1_2_are_listed_and_for_seven_days() {
        let stats = TlsStats::default();
        let listener: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let old: IpAddr = "10.0.0.7".parse().unwrap();
        let new: IpAddr = "10.0.0.8".parse().unwrap();
        stats.established(
            listener,
            old,
            Some("printer"),
            &tls(TlsVersion::Tls10),
            1000,
        );
        stats.established(listener, new, None, &tls(TlsVersion::Tls12), 1000);
        stats.message(old, 1010);
        stats.message(new, 1010);
        let listed = stats.outdated(2000);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].address, old);
        assert_eq!(listed[0].helo, "printer");
        assert_eq!(listed[0].messages, 1);
        assert_eq!(listed[0].last_seen, 1010);
        assert!(stats.outdated(1010 + OUTDATED_KEPT_SECS).len() == 1);
        assert!(stats.outdated(1011 + OUTDATED_KEPT_SECS).is_empty());
    }

    #[test]
    fn the_list_is_bounded_and_the_longest_unseen_makes_room() {
        let stats = TlsStats::default();
        let listener: SocketAddr = "127.0.0.1:25".parse().unwrap();
        for i in 0..OUTDATED_MAX as u32 + 5 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            stats.established(
                listener,
                client,
                None,
                &tls(TlsVersion::Tls11),
                100 + u64::from(i),
            );
        }
        let listed = stats.outdated(10_000);
        assert_eq!(listed.len(), OUTDATED_MAX);
        assert!(
            !listed
                .iter()
                .any(|c| c.address == IpAddr::from([10, 0, 0, 0]))
        );
        let mut text = String::new();
        stats.render(&mut text);
        assert!(text.contains(&format!(
            "smtprelay_tls_sessions_total{{listener=\"127.0.0.1:25\",version=\"TLSv1.1\"}} {}",
            OUTDATED_MAX + 5
        )));
    }
}
