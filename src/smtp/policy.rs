//! Who may relay what: trusted networks, SMTP AUTH users, sender and recipient allowlists,
//! per-client message rate and the AUTH failure lockout. Shared by every session.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::SmtpError;
use crate::config::values::{AddressGlob, Rate, allowed_by};
use crate::config::{AccessConfig, Config, UserConfig};

pub struct Policy {
    access: AccessConfig,
    users: HashMap<String, UserConfig>,
    client_rate: DefaultKeyedRateLimiter<IpAddr>,
    auth_failures: FailureWindow,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        Policy {
            access: config.access.clone(),
            users: config
                .users
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect(),
            client_rate: RateLimiter::keyed(quota(config.access.client_rate)),
            auth_failures: FailureWindow::new(config.access.auth_failure_limit),
        }
    }

    /// Clients in `trusted_networks` may relay without AUTH.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.access.trusted_networks.iter().any(|n| n.contains(&ip))
    }

    /// The sender must pass `[access].allowed_senders` and, for an AUTH user, the user's own list.
    pub fn check_sender(&self, sender: &str, user: Option<&str>) -> Result<(), SmtpError> {
        let user_globs: &[AddressGlob] = user
            .and_then(|name| self.users.get(name))
            .map_or(&[], |u| &u.allowed_senders);
        if allowed_by(&self.access.allowed_senders, sender) && allowed_by(user_globs, sender) {
            Ok(())
        } else {
            Err(SmtpError::SenderNotAllowed(format!("<{sender}>")))
        }
    }

    pub fn check_recipient(&self, recipient: &str) -> Result<(), SmtpError> {
        if allowed_by(&self.access.allowed_recipients, recipient) {
            Ok(())
        } else {
            Err(SmtpError::RecipientNotAllowed(format!("<{recipient}>")))
        }
    }

    /// Takes one message from the client's budget.
    pub fn check_client_rate(&self, ip: IpAddr) -> Result<(), SmtpError> {
        self.client_rate
            .check_key(&canonical(ip))
            .map_err(|_| SmtpError::RateLimited)
    }

    pub fn auth_locked_out(&self, ip: IpAddr) -> bool {
        self.auth_failures.is_over_limit(canonical(ip))
    }

    /// Checks a user name and password. Unknown users cost the same argon2 work as known
    /// ones, so response times do not reveal which names exist.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        username: &str,
        password: String,
    ) -> Result<String, SmtpError> {
        let hash = self.users.get(username).map(|u| u.password_hash.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
        let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|_| SmtpError::AuthTemporaryFailure)?;
        if known && verified {
            Ok(username.to_owned())
        } else {
            self.auth_failures.record(canonical(ip));
            Err(SmtpError::AuthFailed)
        }
    }

    /// Forgets clients that have been quiet, so memory stays bounded under scans.
    pub fn housekeeping(&self) {
        self.client_rate.retain_recent();
        self.client_rate.shrink_to_fit();
        self.auth_failures.prune();
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let interval = rate.period / rate.count.max(1);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

pub fn hash_password(password: &str) -> String {
    let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("no user has this password"))
}

/// Failed AUTH attempts per client within a sliding window. Unlike a token bucket it can be
/// asked "is this client locked out?" without spending anything.
struct FailureWindow {
    limit: Rate,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureWindow {
    fn new(limit: Rate) -> Self {
        FailureWindow {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut failures = self.lock();
        let times = failures.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.limit.count as usize {
            times.pop_front();
        }
    }

    fn is_over_limit(&self, ip: IpAddr) -> bool {
        let mut failures = self.lock();
        let Some(times) = failures.get_mut(&ip) else {
            return false;
        };
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limit.period)
        {
            times.pop_front();
        }
        times.len() >= self.limit.count as usize
    }

    fn prune(&self) {
        let now = Instant::now();
        self.lock().retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < self.limit.period)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lockout_after_limit_and_release_after_period() {
        let window = FailureWindow::new(Rate {
            count: 3,
            period: Duration::from_millis(200),
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            window.record(ip);
        }
        assert!(!window.is_over_limit(ip));
        window.record(ip);
        assert!(window.is_over_limit(ip));
        assert!(!window.is_over_limit("192.0.2.2".parse().unwrap()));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!window.is_over_limit(ip));
    }

    #[test]
    fn password_hashes_verify() {
        let hash = hash_password("correct horse");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
