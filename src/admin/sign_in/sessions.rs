//! Who is signed in to the console, and whose sign-in is under way: the process's, not a
//! generation's, so a reload (SIGHUP) signs nobody out. A reload applies the new
//! `viewers`/`operators` to every open session (someone the lists no longer name is signed
//! out) and `session_timeout` at the next request; a new issuer or client id, or no
//! `[admin.sign_in]` at all, signs everyone out, since the sessions were vouched for by an
//! issuer the relay no longer trusts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Role;
use super::id_token::Claims;
use crate::config::SignInConfig;
use crate::oauth::Secret;

/// A sign-in started and not yet back: its browser has this long to return.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// Sign-ins under way at once, at most: a stranger's requests to `/signin` cannot grow
/// memory without bound.
const PENDING_MAX: usize = 1000;

/// A sign-in under way: what its callback must match.
pub struct Pending {
    pub verifier: Secret,
    pub nonce: String,
    started: Instant,
}

impl Pending {
    pub fn new(verifier: Secret, nonce: String) -> Pending {
        Pending {
            verifier,
            nonce,
            started: Instant::now(),
        }
    }

    fn live(&self) -> bool {
        self.started.elapsed() < PENDING_FOR
    }
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// Every form's POST must carry this (CSRF).
    pub csrf: String,
    /// Who the ID token said they are: their name on the page and in the log, and what a
    /// reload decides their role from again.
    claims: Claims,
    last_seen: Instant,
}

impl Session {
    /// How the page and the audit log name them (see `Claims::user`).
    pub fn user(&self) -> &str {
        self.claims.user()
    }

    /// Their display name, if the ID token gave one.
    pub fn name(&self) -> Option<&str> {
        self.claims.name.as_deref()
    }

    pub fn new(claims: Claims, role: Role) -> Session {
        Session {
            role,
            csrf: crate::oauth::flows::random_token(32),
            claims,
            last_seen: Instant::now(),
        }
    }
}

/// What a reload did to the open sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub kept: usize,
    pub role_changed: usize,
    pub signed_out: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("too many sign-ins under way; try again in a few minutes")]
pub struct TooManySignIns;

#[derive(Default)]
pub struct Sessions(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// The issuer and client id the sessions were opened under.
    vouched_by: Option<(String, String)>,
    pending: HashMap<String, Pending>,
    open: HashMap<String, Session>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a configuration that now runs (at start and on each reload).
    pub fn adopt(&self, config: Option<&SignInConfig>) -> Adopted {
        let mut inner = self.lock();
        let vouched_by = config.map(|c| (c.issuer.clone(), c.client_id.clone()));
        let mut adopted = Adopted::default();
        let Some(config) = config.filter(|_| inner.vouched_by == vouched_by) else {
            adopted.signed_out = inner.open.len();
            inner.open.clear();
            inner.pending.clear();
            inner.vouched_by = vouched_by;
            return adopted;
        };
        inner
            .open
            .retain(|_, session| match super::access(config, &session.claims) {
                None => {
                    adopted.signed_out += 1;
                    false
                }
                Some(role) => {
                    if role != session.role {
                        adopted.role_changed += 1;
                        session.role = role;
                    } else {
                        adopted.kept += 1;
                    }
                    true
                }
            });
        adopted
    }

    /// Remembers a sign-in under way, by its `state`.
    pub fn begin(&self, state: String, pending: Pending) -> Result<(), TooManySignIns> {
        let mut inner = self.lock();
        inner.pending.retain(|_, p| p.live());
        if inner.pending.len() >= PENDING_MAX {
            return Err(TooManySignIns);
        }
        inner.pending.insert(state, pending);
        Ok(())
    }

    /// The sign-in `state` names, once: a callback cannot be replayed.
    pub fn take_pending(&self, state: &str) -> Option<Pending> {
        self.lock().pending.remove(state).filter(Pending::live)
    }

    /// Opens `session`; its id, for the cookie.
    pub fn open(&self, session: Session, timeout: Duration) -> String {
        let id = crate::oauth::flows::random_token(32);
        let mut inner = self.lock();
        inner.open.retain(|_, s| s.last_seen.elapsed() < timeout);
        inner.open.insert(id.clone(), session);
        id
    }

    /// The session `id` names, if it was used within `timeout` (which it renews).
    pub fn get(&self, id: &str, timeout: Duration) -> Option<Session> {
        let mut inner = self.lock();
        let session = inner.open.get_mut(id)?;
        if session.last_seen.elapsed() >= timeout {
            inner.open.remove(id);
            return None;
        }
        session.last_seen = Instant::now();
        Some(session.clone())
    }

    pub fn close(&self, id: &str) -> Option<Session> {
        self.lock().open.remove(id)
    }

    /// Ages every session, for tests of the timeout.
    #[doc(hidden)]
    pub fn age(&self, by: Duration) {
        for session in self.lock().open.values_mut() {
            session.last_seen -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Principal;

    fn config(issuer: &str, client_id: &str, operators: &[&str]) -> SignInConfig {
        SignInConfig {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: None,
            client_certificate: None,
            client_private_key: None,
            client_assertion_algorithm: crate::config::AssertionAlgorithm::Ps256,
            redirect_url: "https://relay.example/signin/callback".into(),
            viewers: vec![Principal::parse("role:Relay.Viewer").unwrap()],
            operators: operators
                .iter()
                .map(|p| Principal::parse(p).unwrap())
                .collect(),
            session_timeout: Duration::from_secs(3600),
        }
    }

    fn claims(upn: &str, roles: &[&str]) -> Claims {
        Claims {
            sub: upn.into(),
            name: None,
            preferred_username: Some(upn.into()),
            upn: None,
            email: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            groups: Vec::new(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_reload_keeps_sessions_under_the_new_lists_and_a_new_issuer_signs_everyone_out() {
        let sessions = Sessions::default();
        let first = config("https://idp/v2.0", "console", &["boss@contoso.com"]);
        sessions.adopt(Some(&first));
        let boss = sessions.open(
            Session::new(
                claims("boss@contoso.com", &["Relay.Viewer"]),
                Role::Operator,
            ),
            HOUR,
        );
        let vic = sessions.open(
            Session::new(claims("vic@contoso.com", &["Relay.Viewer"]), Role::Viewer),
            HOUR,
        );
        let gone = sessions.open(
            Session::new(claims("ex@contoso.com", &["Old.Role"]), Role::Viewer),
            HOUR,
        );
        let _ = sessions.begin("state".into(), Pending::new(Secret::new("v"), "n".into()));

        // The same lists: nothing changes, and the CSRF token stays the page's.
        let csrf = sessions.get(&boss, HOUR).unwrap().csrf;
        let same = sessions.adopt(Some(&first));
        assert_eq!(
            same,
            Adopted {
                kept: 2,
                role_changed: 0,
                signed_out: 1
            }
        );
        assert!(sessions.get(&gone, HOUR).is_none());
        assert_eq!(sessions.get(&boss, HOUR).unwrap().csrf, csrf);

        // The boss is no longer an operator: a viewer now (their role says so), same session.
        let demoted = config("https://idp/v2.0", "console", &[]);
        assert_eq!(sessions.adopt(Some(&demoted)).role_changed, 1);
        assert_eq!(sessions.get(&boss, HOUR).unwrap().role, Role::Viewer);
        assert!(sessions.take_pending("state").is_some());

        // Another client id: everyone out, sign-ins under way too.
        let _ = sessions.begin("state".into(), Pending::new(Secret::new("v"), "n".into()));
        let moved = config("https://idp/v2.0", "another-console", &[]);
        assert_eq!(sessions.adopt(Some(&moved)).signed_out, 2);
        assert!(sessions.get(&boss, HOUR).is_none());
        assert!(sessions.get(&vic, HOUR).is_none());
        assert!(sessions.take_pending("state").is_none());

        // Sign-in turned off, then on again with the same issuer: nobody is let back in.
        let again = sessions.open(
            Session::new(claims("vic@contoso.com", &["Relay.Viewer"]), Role::Viewer),
            HOUR,
        );
        sessions.adopt(None);
        sessions.adopt(Some(&moved));
        assert!(sessions.get(&again, HOUR).is_none());
    }

    #[test]
    fn a_session_ends_after_its_timeout_unused_and_each_use_renews_it() {
        let sessions = Sessions::default();
        let id = sessions.open(
            Session::new(claims("vic@contoso.com", &[]), Role::Viewer),
            HOUR,
        );
        sessions.age(HOUR - Duration::from_secs(5));
        assert!(sessions.get(&id, HOUR).is_some(), "used in time");
        sessions.age(HOUR - Duration::from_secs(5));
        assert!(sessions.get(&id, HOUR).is_some(), "renewed by the last use");
        sessions.age(HOUR);
        assert!(sessions.get(&id, HOUR).is_none());
        assert!(sessions.get(&id, HOUR * 2).is_none(), "gone for good");
    }
}
