//! The token manager: one per process, shared by every delivery task and the CLI.
//!
//! - [`TokenManager::access_token`] returns a token with more than `refresh_before` left, or
//!   refreshes first. Callers that arrive during a refresh wait for that same refresh (one
//!   token request, however many callers).
//! - [`TokenManager::invalidate`] forgets a token the server refused (535 5.7.3, HTTP 401).
//! - [`TokenManager::reconfigure`] applies a reload's accounts and timings in place: nothing
//!   waits for it, and unchanged accounts keep their tokens and any request under way.
//! - [`TokenManager::run`] refreshes every account before expiry even when no mail flows, so a
//!   refresh token never idles out, and picks up tokens written by `smtprelay token login`
//!   or by other nodes.
//! - A rotated refresh token is saved before anything uses it; a failed refresh never discards
//!   stored tokens. Saves name the revision they started from, so a token refreshed from an
//!   old refresh token never replaces a newer one; one that could not be saved (the store
//!   unreachable) is saved when the store answers again, and put back if the store lost it.
//! - Processes sharing a store (nodes with `[cluster]`) ask for each account's token one at a
//!   time ([`super::store::Flight`]): the others wait for the revision it writes, and use it.
//! - Accounts that need a login or a configuration fix are *held*: callers get an error at
//!   once (no token request) until the store changes or a slow recheck comes due.
//!
//! In-memory deadlines use Tokio's clock, so tests drive them with `tokio::time::pause`;
//! the store keeps Unix times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{ErrorClass, TokenError};
use super::flows::OAuthAccount;
use super::http::{TokenClient, TokenResponse};
use super::secret::Secret;
use super::store::{
    Flight, FlightGuard, Saved, StoreError, StoreVersion, Stored, StoredTokens, TokenStore, Write,
};
use crate::config::{AccountConfig, Config, Flow, TokensConfig};

/// How long an account that needs a login waits before one more try on its own (a new
/// login via the CLI is picked up at once).
const NEEDS_LOGIN_RECHECK: Duration = Duration::from_secs(3600);
/// How long a misconfigured account waits before trying again (the admin may fix consent or
/// a secret in the portal without touching the relay).
const MISCONFIGURED_RECHECK: Duration = Duration::from_secs(300);
/// How often the background task looks for tokens written by another process.
const STORE_POLL: Duration = Duration::from_secs(5);
/// While another node asks for an account's token, how often to look for what it stored.
const FLIGHT_POLL: Duration = Duration::from_millis(200);
/// While the store cannot say who may ask and the token at hand still works, how long to
/// keep it before trying again.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// Entra's refresh tokens expire after 90 days without use.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 86400);
/// How often a token request may come before `[tokens] min_request_interval` (the one
/// fresh request after the upstream refused a token).
const FLOOR_WAIVER_EVERY: Duration = Duration::from_secs(60);
/// Longest back-off between attempts after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A token ready for XOAUTH2.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// No token has been obtained yet (and none is needed until mail or the schedule asks).
    NoToken,
    Valid,
    Refreshing,
    /// Someone must run `smtprelay token login`.
    NeedsLogin(String),
    /// The admin must fix the configuration or the app registration.
    Misconfigured(String),
    /// Transient failures; retrying with back-off.
    Failing(String),
}

impl Health {
    pub fn name(&self) -> &'static str {
        match self {
            Health::NoToken => "no_token",
            Health::Valid => "valid",
            Health::Refreshing => "refreshing",
            Health::NeedsLogin(_) => "needs_login",
            Health::Misconfigured(_) => "misconfigured",
            Health::Failing(_) => "failing",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::NeedsLogin(r) | Health::Misconfigured(r) | Health::Failing(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TokenEventKind {
    Refreshed {
        expires_in_secs: u64,
        rotated_refresh_token: bool,
    },
    Invalidated,
    NeedsLogin {
        reason: String,
    },
    Misconfigured {
        reason: String,
    },
    NetworkError {
        reason: String,
    },
    /// Tokens written by another process (the CLI) were loaded.
    Loaded,
    /// A refreshed token could not be saved; it is used from memory.
    StoreFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenEvent {
    pub account: String,
    #[serde(flatten)]
    pub kind: TokenEventKind,
}

/// Everything `token status` and `/health` show about one account.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    pub account: String,
    pub flow: Flow,
    #[serde(flatten)]
    pub health: Health,
    pub access_token_expires_at: Option<u64>,
    pub access_token_expires_in_secs: Option<i64>,
    /// An access token is at hand that has neither expired nor been refused upstream.
    pub usable_token: bool,
    pub has_refresh_token: bool,
    pub refresh_token_age_secs: Option<u64>,
    /// Estimate: 90 days after the refresh token was issued, unless it is used before.
    pub refresh_token_expires_at: Option<u64>,
    pub login_at: Option<u64>,
    pub last_refresh_at: Option<u64>,
    pub next_refresh_at: Option<u64>,
    pub auto_refresh: bool,
    pub refreshes_total: u64,
    pub refresh_failures_total: u64,
    pub consecutive_failures: u32,
    pub average_lifetime_secs: Option<u64>,
    /// The store's revision of these tokens as this process last read or wrote it.
    pub revision: u64,
    /// These tokens are newer than the store's (it did not answer): they are saved when it does.
    pub unsaved: bool,
    /// The node asking for this account's token now, when the store is shared.
    pub refresh_lock_holder: Option<String>,
    /// `[tokens] min_request_interval`: the floor between two token requests.
    pub min_request_interval_secs: u64,
    /// Before this (Unix seconds), this process makes no token request for the account.
    pub next_request_allowed_at: Option<u64>,
}

struct Slot {
    /// Replaced in place when a reload changes the account but not whom it asks for tokens.
    account: RwLock<Result<Arc<OAuthAccount>, String>>,
    flow: Flow,
    state: Mutex<SlotState>,
    /// Held while a token request runs: the single flight.
    refresh: tokio::sync::Mutex<()>,
    /// Cancelled when a reload removes the account or changes whom it asks (endpoint, client,
    /// flow, scope): its waits end, and a token it was still asking for is not kept.
    retired: CancellationToken,
}

/// What asks for an account's tokens, or why nothing can (its credential cannot be read).
fn oauth_of(config: &AccountConfig) -> Result<Arc<OAuthAccount>, String> {
    OAuthAccount::new(config)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

impl Slot {
    fn new(flow: Flow, account: Result<Arc<OAuthAccount>, String>, state: SlotState) -> Slot {
        let mut slot = Slot {
            account: RwLock::new(account),
            flow,
            state: Mutex::new(state),
            refresh: tokio::sync::Mutex::new(()),
            retired: CancellationToken::new(),
        };
        slot.hold_if_misconfigured(None);
        slot
    }

    fn oauth(&self) -> Result<Arc<OAuthAccount>, String> {
        self.account
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `account` asks the same endpoint for the same client, flow and scope: then
    /// the tokens at hand are its tokens.
    fn same_identity(&self, account: &Result<Arc<OAuthAccount>, String>) -> bool {
        match (&self.oauth(), account) {
            (Ok(old), Ok(new)) => {
                old.endpoints.token == new.endpoints.token
                    && old.config.client_id == new.config.client_id
                    && old.config.flow == new.config.flow
                    && old.scope == new.scope
            }
            _ => false,
        }
    }

    /// An account whose credential cannot be used (or whose store cannot be read: `store_error`)
    /// makes no request until a slow recheck or a reload.
    fn hold_if_misconfigured(&mut self, store_error: Option<&str>) {
        let reason = match (store_error, self.oauth()) {
            (Some(reason), _) => reason.to_owned(),
            (None, Err(reason)) => reason,
            (None, Ok(_)) => return,
        };
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.health = Health::Misconfigured(reason);
        state.held_until = Some(Instant::now() + MISCONFIGURED_RECHECK);
    }
}

/// What a reload may change about token requests without a restart.
#[derive(Debug, Clone, Copy)]
struct Timing {
    refresh_before: Duration,
    retry_attempts: u32,
    retry_delay: Duration,
    min_request_interval: Duration,
}

impl Timing {
    fn of(settings: &TokensConfig) -> Timing {
        Timing {
            refresh_before: settings.refresh_before,
            retry_attempts: settings.retry_attempts,
            retry_delay: settings.retry_delay,
            min_request_interval: settings.min_request_interval,
        }
    }
}

struct SlotState {
    tokens: StoredTokens,
    /// The store's revision `tokens` came from or went to.
    revision: u64,
    /// `tokens` are newer than the store's `revision`, which they must go over.
    unsaved: bool,
    /// Who holds the account's flight elsewhere (or here), while someone does.
    flight_holder: Option<String>,
    /// Tokio-clock mirror of `tokens.expires_at`.
    expires: Option<Instant>,
    /// How long the current access token was issued for, when known: a token is refreshed
    /// at most once per half of it, whatever `refresh_before` says.
    lifetime: Option<Duration>,
    /// The provider's lifetime was reported as shorter than `refresh_before` (once).
    warned_short_lifetime: bool,
    /// When this process last asked the endpoint for the account's token.
    last_request: Option<Instant>,
    /// The next request may come before the floor: the upstream refused a token.
    floor_waived: bool,
    /// When a request last came before the floor: one a minute at most may.
    last_waiver: Option<Instant>,
    health: Health,
    /// While set and in the future, no token request is made.
    held_until: Option<Instant>,
    /// When the next attempt after a transient failure is due.
    retry_at: Option<Instant>,
    refreshes: u64,
    failures: u64,
    consecutive_failures: u32,
    lifetime_total: Duration,
}

impl SlotState {
    fn new(tokens: StoredTokens) -> SlotState {
        let expires = tokens
            .access_token
            .as_ref()
            .map(|_| instant_of(tokens.expires_at));
        let health = if tokens.access_token.is_some() || tokens.refresh_token.is_some() {
            Health::Valid
        } else {
            Health::NoToken
        };
        // Stores written before tokens carried their issue time give no lifetime; the
        // configured margin alone applies until the next refresh.
        let lifetime = match (&tokens.access_token, tokens.refreshed_at) {
            (Some(_), Some(at)) => Some(Duration::from_secs(tokens.expires_at.saturating_sub(at))),
            _ => None,
        };
        SlotState {
            tokens,
            revision: 0,
            unsaved: false,
            flight_holder: None,
            expires,
            lifetime,
            warned_short_lifetime: false,
            last_request: None,
            floor_waived: false,
            last_waiver: None,
            health,
            held_until: None,
            retry_at: None,
            refreshes: 0,
            failures: 0,
            consecutive_failures: 0,
            lifetime_total: Duration::ZERO,
        }
    }

    /// How much must be left of the current token for it not to need a refresh:
    /// `refresh_before`, but never more than half the token's lifetime (a provider issuing
    /// tokens shorter than `refresh_before` would otherwise have every use refresh).
    fn margin(&self, refresh_before: Duration) -> Duration {
        match self.lifetime {
            Some(lifetime) => refresh_before.min(lifetime / 2),
            None => refresh_before,
        }
    }

    /// The current token if it needs no refresh yet.
    fn fresh_token(&self, refresh_before: Duration) -> Option<AccessToken> {
        self.token_with(self.margin(refresh_before))
    }

    /// Until when no token request may be made, if that is still ahead.
    fn floor_until(&self, floor: Duration) -> Option<Instant> {
        if self.floor_waived {
            return None;
        }
        let until = self.last_request? + floor;
        (until > Instant::now()).then_some(until)
    }

    /// The current token if it has more than `margin` left.
    fn token_with(&self, margin: Duration) -> Option<AccessToken> {
        let token = self.tokens.access_token.as_ref()?;
        let expires = self.expires?;
        (expires.checked_duration_since(Instant::now())? > margin).then(|| AccessToken {
            token: token.clone(),
            expires_at: self.tokens.expires_at,
        })
    }

    fn held(&self) -> Option<TokenError> {
        let until = self.held_until?;
        if Instant::now() >= until {
            return None;
        }
        let reason = self.health.reason().unwrap_or("held").to_owned();
        Some(TokenError::Held(reason))
    }
}

/// What waiting for the right to ask for an account's token came to.
enum Flown {
    /// This process asks, with the guard to release afterwards (`None` when the store cannot
    /// be asked, and this process asks on its own).
    Mine(Option<FlightGuard>),
    /// Another process stored a token meanwhile: no request.
    Stored(AccessToken),
    /// The manager is stopping.
    Stopped,
}

/// Whether a new token that cannot be saved is still usable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// The daemon: mail keeps flowing with the token in memory (the failure is logged and
    /// announced as an event).
    BestEffort,
    /// Admin commands: the stored token is the point, so a save failure is the result.
    Required,
}

/// Why a token is requested.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The current one is (nearly) used up: one another process stored meanwhile does too.
    Due,
    /// An admin asked for a new one.
    Asked,
}

pub struct TokenManager {
    /// The configured accounts. A reload changes this map in place ([`TokenManager::reconfigure`]):
    /// the manager lives as long as the process, as the spool does.
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    timing: Mutex<Timing>,
    store: Arc<dyn TokenStore>,
    /// What the store was made from: changing it takes a restart.
    store_settings: TokensConfig,
    client: TokenClient,
    events: broadcast::Sender<TokenEvent>,
    store_version: Mutex<Option<StoreVersion>>,
    /// Cancelled when [`TokenManager::run`]'s shutdown is: every wait between requests (a
    /// back-off, the floor, another node's request, the refresh lock) ends then, so a stop
    /// never waits for one. A request under way is finished: a rotated refresh token must
    /// reach the store.
    stopping: CancellationToken,
    /// Told of each reload, so [`TokenManager::run`] keeps the new accounts fresh too.
    reconfigured: tokio::sync::watch::Sender<()>,
}

impl TokenManager {
    /// Sets up every configured account and loads what the store holds. A store that cannot
    /// be read (wrong key, tampering) marks the accounts misconfigured rather than failing:
    /// intake keeps accepting mail, which waits for the admin's fix. A store that does not
    /// answer yet (Redis) is read as soon as it does.
    pub async fn new(
        config: &Config,
        store: Arc<dyn TokenStore>,
        client: TokenClient,
    ) -> TokenManager {
        let version = store.version().await.ok().flatten();
        let (stored, store_error, version) = match store.load_all().await {
            Ok(stored) => (stored, None, version),
            Err(e) if e.is_transient() => {
                tracing::warn!(target: "tokens", error = %e, "token store unreachable: its tokens are loaded when it answers");
                (BTreeMap::new(), None, None)
            }
            Err(e) => (BTreeMap::new(), Some(e.to_string()), version),
        };
        let slots = config
            .token_accounts()
            .map(|account| {
                let entry = stored.get(&account.name);
                let mut state =
                    SlotState::new(entry.and_then(|e| e.tokens.clone()).unwrap_or_default());
                state.revision = entry.map_or(0, |e| e.revision);
                let mut slot = Slot::new(account.flow, oauth_of(account), state);
                slot.hold_if_misconfigured(store_error.as_deref());
                (account.name.clone(), Arc::new(slot))
            })
            .collect();
        let (events, _) = broadcast::channel(256);
        TokenManager {
            slots: RwLock::new(slots),
            timing: Mutex::new(Timing::of(&config.tokens)),
            store_version: Mutex::new(version),
            store,
            store_settings: config.tokens.clone(),
            client,
            events,
            stopping: CancellationToken::new(),
            reconfigured: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Whether `config`'s `[tokens]` names the store this manager was made with (the file,
    /// its key and backups): a different one takes a restart.
    pub fn same_store(&self, config: &Config) -> bool {
        let (now, next) = (&self.store_settings, &config.tokens);
        now.store == next.store
            && now.file == next.file
            && now.key_file == next.key_file
            && now.backups == next.backups
    }

    /// Applies a reload's accounts and timings in place, without waiting for anything:
    /// - an account that still asks the same endpoint for the same client, flow and scope
    ///   keeps its tokens, counters, floor and any request under way; holds and back-offs are
    ///   lifted (a reload is the admin's way of saying "try again");
    /// - a new account, or one that now asks elsewhere, starts afresh (keeping only its
    ///   counters, so `/metrics` and alerts do not start over) and takes what the store holds;
    /// - a removed or changed account's waits end, and what it was still asking for is dropped.
    ///
    /// Requests for the other accounts, and the mail that waits for them, go on meanwhile.
    pub fn reconfigure(&self, config: &Config) {
        *lock(&self.timing) = Timing::of(&config.tokens);
        let mut fresh = false;
        {
            let mut slots = write(&self.slots);
            let mut previous = std::mem::take(&mut *slots);
            for account in config.token_accounts() {
                let oauth = oauth_of(account);
                let slot = match previous.remove(&account.name) {
                    Some(slot) if slot.same_identity(&oauth) => {
                        *slot.account.write().unwrap_or_else(|e| e.into_inner()) = oauth;
                        let mut state = lock(&slot.state);
                        state.held_until = None;
                        state.retry_at = None;
                        drop(state);
                        slot
                    }
                    old => {
                        let mut state = SlotState::new(StoredTokens::default());
                        if let Some(old) = old {
                            old.retired.cancel();
                            let old = lock(&old.state);
                            state.refreshes = old.refreshes;
                            state.failures = old.failures;
                            state.consecutive_failures = old.consecutive_failures;
                            state.lifetime_total = old.lifetime_total;
                        }
                        fresh = true;
                        Arc::new(Slot::new(account.flow, oauth, state))
                    }
                };
                slots.insert(account.name.clone(), slot);
            }
            for removed in previous.values() {
                removed.retired.cancel();
            }
        }
        if fresh {
            // New slots hold revision 0: the next look at the store adopts what it has.
            *lock(&self.store_version) = None;
        }
        self.reconfigured.send_replace(());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TokenEvent> {
        self.events.subscribe()
    }

    fn slot(&self, account: &str) -> Result<Arc<Slot>, TokenError> {
        read(&self.slots)
            .get(account)
            .cloned()
            .ok_or_else(|| TokenError::UnknownAccount(account.to_owned()))
    }

    /// The accounts as configured now.
    fn slots(&self) -> Vec<(String, Arc<Slot>)> {
        read(&self.slots)
            .iter()
            .map(|(name, slot)| (name.clone(), Arc::clone(slot)))
            .collect()
    }

    fn timing(&self) -> Timing {
        *lock(&self.timing)
    }

    fn emit(&self, account: &str, kind: TokenEventKind) {
        let _ = self.events.send(TokenEvent {
            account: account.to_owned(),
            kind,
        });
    }

    /// A valid token for `account`, refreshing first when less than `refresh_before` is left.
    pub async fn access_token(&self, account: &str) -> Result<AccessToken, TokenError> {
        self.access_token_until(account, &CancellationToken::new())
            .await
    }

    /// [`TokenManager::access_token`] for a caller that may stop first (a delivery whose
    /// generation a reload retires): its waits for a back-off, the floor or another caller's
    /// request end with [`TokenError::Stopped`] when `caller` is cancelled. A request under
    /// way is not cut short.
    pub async fn access_token_until(
        &self,
        account: &str,
        caller: &CancellationToken,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(account)?;
        let slot = &*slot;
        let refresh_before = self.timing().refresh_before;
        if let Some(token) = lock(&slot.state).fresh_token(refresh_before) {
            return Ok(token);
        }
        self.reload_if_changed().await;
        let _flight = self.lock_refresh(slot, caller).await?;
        // Whoever held the lock before us may have refreshed already.
        if let Some(token) = lock(&slot.state).fresh_token(refresh_before) {
            return Ok(token);
        }
        // A retry is scheduled (the endpoint or the store failed just now), or the floor
        // between requests has not passed, and the token at hand still works until then.
        {
            let state = lock(&slot.state);
            let waiting = state.retry_at.is_some_and(|at| at > Instant::now())
                || state
                    .floor_until(self.timing().min_request_interval)
                    .is_some();
            if waiting && let Some(token) = state.token_with(Duration::ZERO) {
                return Ok(token);
            }
        }
        let held = lock(&slot.state).held();
        let result = match held {
            Some(error) => Err(error),
            None => {
                self.refresh_locked(account, slot, Persist::BestEffort, Why::Due, caller)
                    .await
            }
        };
        // A token that is inside the refresh margin but not expired still works.
        result.or_else(|error| lock(&slot.state).token_with(Duration::ZERO).ok_or(error))
    }

    /// Forgets `token` after the server refused it, so the next caller gets a new one.
    /// A token that was already replaced is left alone.
    pub fn invalidate(&self, account: &str, token: &Secret) {
        let Ok(slot) = self.slot(account) else {
            return;
        };
        let mut state = lock(&slot.state);
        if state.tokens.access_token.as_ref() == Some(token) {
            state.expires = Some(Instant::now());
            // One fresh request at once, but one a minute at most: a mailbox that refuses
            // every token must not become a request loop.
            state.floor_waived = state
                .last_waiver
                .is_none_or(|at| at.elapsed() >= FLOOR_WAIVER_EVERY);
            drop(state);
            tracing::info!(target: "tokens", account, "access token refused upstream; it will be refreshed");
            self.emit(account, TokenEventKind::Invalidated);
        }
    }

    /// Requests a new token now, whatever the current one's expiry or hold (`token refresh`:
    /// the admin may just have fixed what held the account). Fails if the result cannot be
    /// saved, since the command's point is the stored token.
    pub async fn refresh_now(&self, account: &str) -> Result<AccessToken, TokenError> {
        let slot = self.slot(account)?;
        self.store.load_all().await?;
        self.reload_if_changed().await;
        let stop = &self.stopping;
        let _flight = self.lock_refresh(&slot, stop).await?;
        self.refresh_locked(account, &slot, Persist::Required, Why::Asked, stop)
            .await
    }

    /// Saves tokens from an interactive login (or a first client-credentials request).
    pub async fn store_response(
        &self,
        account: &str,
        response: TokenResponse,
        login: bool,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(account)?;
        let _flight = self.lock_refresh(&slot, &self.stopping).await?;
        self.accept(account, &slot, response, login, Persist::Required)
            .await
    }

    /// Must be called with `slot.refresh` held. `why` says whether a token another process
    /// stored meanwhile does instead (it does unless an admin asked for a new one).
    async fn refresh_locked(
        &self,
        account: &str,
        slot: &Slot,
        persist: Persist,
        why: Why,
        caller: &CancellationToken,
    ) -> Result<AccessToken, TokenError> {
        let oauth = match slot.oauth() {
            Ok(oauth) => oauth,
            Err(reason) => {
                let error = TokenError::Credential(reason);
                self.fail(account, slot, &error);
                return Err(error);
            }
        };
        // Before the cluster's flight: a node that held it while waiting out its own floor
        // would keep the others from asking, and a Redis that lost the lock meanwhile would
        // let another node ask as well.
        self.wait_for_floor(slot, caller).await?;
        let guard = match self.take_flight(account, slot, why, caller).await {
            Flown::Mine(guard) => guard,
            Flown::Stored(stored_meanwhile) => return Ok(stored_meanwhile),
            Flown::Stopped => {
                lock(&slot.state).flight_holder = None;
                return Err(TokenError::Stopped);
            }
        };
        let refresh_token = {
            let mut state = lock(&slot.state);
            // A retry after failures stays "failing" until it succeeds: /health must not
            // flip to healthy for the moment a request is under way.
            if !matches!(state.health, Health::Failing(_)) {
                state.health = Health::Refreshing;
            }
            state.tokens.refresh_token.clone()
        };
        let retries = match why {
            Why::Due => self.timing().retry_attempts,
            // The admin is waiting for the answer, and can ask again.
            Why::Asked => 0,
        };
        let result = self
            .with_retries(account, slot, retries, caller, || async {
                match (slot.flow, &refresh_token) {
                    (Flow::ClientCredentials, _) => oauth.client_credentials(&self.client).await,
                    (_, Some(refresh_token)) => oauth.refresh(&self.client, refresh_token).await,
                    (_, None) => Err(TokenError::NotLoggedIn(account.to_owned())),
                }
            })
            .await;
        let result = match result {
            // A reload removed the account or changed whom it asks: this token is not its.
            Ok(_) if slot.retired.is_cancelled() => Err(TokenError::Stopped),
            Ok(response) => self.accept(account, slot, response, false, persist).await,
            // Not a failure of the endpoint's: nothing to record.
            Err(TokenError::Stopped) => Err(TokenError::Stopped),
            Err(error) => {
                self.fail(account, slot, &error);
                Err(error)
            }
        };
        if let Some(guard) = guard {
            guard.release().await;
        }
        lock(&slot.state).flight_holder = None;
        result
    }

    /// Waits until this process may ask for `account`'s token (see [`Flown`]).
    async fn take_flight(
        &self,
        account: &str,
        slot: &Slot,
        why: Why,
        caller: &CancellationToken,
    ) -> Flown {
        loop {
            if why == Why::Due
                && let Some(token) = self.adopt_stored(account, slot).await
            {
                return Flown::Stored(token);
            }
            match self.store.flight(account).await {
                Ok(Flight::Mine(guard)) => {
                    // Whoever held it before may have stored a token just now.
                    if why == Why::Due
                        && let Some(token) = self.adopt_stored(account, slot).await
                    {
                        guard.release().await;
                        lock(&slot.state).flight_holder = None;
                        return Flown::Stored(token);
                    }
                    lock(&slot.state).flight_holder = guard.holder.clone();
                    return Flown::Mine(Some(guard));
                }
                Ok(Flight::Elsewhere { holder }) => {
                    lock(&slot.state).flight_holder = Some(holder);
                    if self
                        .pause_until(Instant::now() + FLIGHT_POLL, slot, caller)
                        .await
                        .is_err()
                    {
                        return Flown::Stopped;
                    }
                }
                Err(e) => {
                    let mut state = lock(&slot.state);
                    if why == Why::Due
                        && let Some(token) = state.token_with(Duration::ZERO)
                    {
                        // The token at hand still works: ask again soon rather than behind
                        // the other nodes' backs.
                        state.retry_at = Some(Instant::now() + STORE_RETRY);
                        return Flown::Stored(token);
                    }
                    // Mail must not wait for the store: this process asks on its own, and
                    // saves what it gets when the store answers.
                    tracing::warn!(target: "tokens", account, error = %e,
                        "token store unreachable: asking for a token without the other nodes' agreement");
                    return Flown::Mine(None);
                }
            }
        }
    }

    /// Reads the account's entry, adopts it if another process wrote it, and returns the
    /// account's token if that needs no refresh yet: then no request is due, nor a retry.
    async fn adopt_stored(&self, account: &str, slot: &Slot) -> Option<AccessToken> {
        self.read_back(account, slot).await.ok()?;
        let mut state = lock(&slot.state);
        let token = state.fresh_token(self.timing().refresh_before)?;
        state.retry_at = None;
        Some(token)
    }

    /// Reads the account's entry and adopts it if another process wrote it since.
    async fn read_back(&self, account: &str, slot: &Slot) -> Result<Option<Stored>, StoreError> {
        let entry = self.store.load(account).await?;
        if let Some(entry) = &entry
            && entry.revision != lock(&slot.state).revision
        {
            self.adopt(account, slot, entry);
        }
        Ok(entry)
    }

    /// Makes another process's write of the account current here.
    fn adopt(&self, account: &str, slot: &Slot, entry: &Stored) {
        let tokens = entry.tokens.clone().unwrap_or_default();
        let mut state = lock(&slot.state);
        state.revision = entry.revision;
        state.unsaved = false;
        state.flight_holder = None;
        if state.tokens == tokens {
            return;
        }
        let fresh = SlotState::new(tokens);
        state.tokens = fresh.tokens;
        state.expires = fresh.expires;
        state.lifetime = fresh.lifetime;
        state.health = fresh.health;
        state.held_until = None;
        state.retry_at = None;
        state.consecutive_failures = 0;
        drop(state);
        tracing::info!(target: "tokens", account, revision = entry.revision, "loaded tokens written by another process");
        self.emit(account, TokenEventKind::Loaded);
    }

    /// Keeps a successful response: persists it first, then makes it current.
    async fn accept(
        &self,
        account: &str,
        slot: &Slot,
        response: TokenResponse,
        login: bool,
        persist: Persist,
    ) -> Result<AccessToken, TokenError> {
        let now = crate::clock::unix_secs();
        let lifetime = Duration::from_secs(response.expires_in);
        let (mut tokens, read_revision) = {
            let state = lock(&slot.state);
            (state.tokens.clone(), state.revision)
        };
        let rotated =
            response.refresh_token.is_some() && response.refresh_token != tokens.refresh_token;
        tokens.access_token = Some(response.access_token);
        tokens.expires_at = now + response.expires_in;
        if let Some(refresh_token) = response.refresh_token {
            if rotated {
                tokens.refresh_token_issued_at = Some(now);
            }
            tokens.refresh_token = Some(refresh_token);
        }
        if login {
            tokens.login_at = Some(now);
        }
        tokens.refreshed_at = Some(now);
        if response.scope.is_some() {
            tokens.scope = response.scope;
        }
        // Persist before use: after rotation the old refresh token may already be dead, so
        // this one must survive a crash. A login replaces whatever is stored; a refresh only
        // the revision it started from.
        let mut over = read_revision;
        let mut conflicts = 0;
        let (revision, unsaved) = loop {
            let write = match login {
                true => Write::Replace,
                false => Write::Over {
                    revision: over,
                    after: over,
                },
            };
            let error = match self.store.save(account, Some(&tokens), write).await {
                // The next poll reads this write back, and finds nothing new in it.
                Ok(Saved::Written { revision }) => break (revision, false),
                Ok(Saved::Conflict) if conflicts < 3 => {
                    conflicts += 1;
                    match self.superseded(account, slot).await? {
                        Some(theirs) => return Ok(theirs),
                        None => {
                            over = lock(&slot.state).revision;
                            continue;
                        }
                    }
                }
                Ok(Saved::Conflict) => TokenError::Store(StoreError::Contended {
                    store: self.store.describe(),
                    account: account.to_owned(),
                }),
                Err(e) => e.into(),
            };
            if persist == Persist::Required {
                return Err(error);
            }
            tracing::error!(target: "tokens", account, error = %error, "cannot save the new token; using it from memory, and saving it when the store answers");
            self.emit(
                account,
                TokenEventKind::StoreFailed {
                    reason: error.to_string(),
                },
            );
            break (over, true);
        };
        let token = AccessToken {
            token: tokens.access_token.clone().expect("just set"),
            expires_at: tokens.expires_at,
        };
        let short_lifetime = lifetime < self.timing().refresh_before;
        {
            let mut state = lock(&slot.state);
            if short_lifetime && !state.warned_short_lifetime {
                state.warned_short_lifetime = true;
                tracing::warn!(target: "tokens", account, lifetime_secs = lifetime.as_secs(),
                    refresh_before_secs = self.timing().refresh_before.as_secs(),
                    "the provider issues tokens for less than refresh_before: each is refreshed when half of it is left");
            }
            state.expires = Some(Instant::now() + lifetime);
            state.lifetime = Some(lifetime);
            state.tokens = tokens;
            state.revision = revision;
            state.unsaved = unsaved;
            state.health = Health::Valid;
            state.held_until = None;
            state.retry_at = None;
            state.refreshes += 1;
            state.consecutive_failures = 0;
            state.lifetime_total += lifetime;
        }
        tracing::info!(target: "tokens", account, expires_in = lifetime.as_secs(), rotated, revision, "token refreshed");
        self.emit(
            account,
            TokenEventKind::Refreshed {
                expires_in_secs: lifetime.as_secs(),
                rotated_refresh_token: rotated,
            },
        );
        Ok(token)
    }

    /// Another writer stored the account while this process asked for a token (a node that
    /// could not reach the store, an admin's login or logout): what is stored wins. Returns
    /// its token if it has a usable one; `None` when ours should go over it instead.
    async fn superseded(
        &self,
        account: &str,
        slot: &Slot,
    ) -> Result<Option<AccessToken>, TokenError> {
        let entry = self.read_back(account, slot).await?;
        if let Some(token) = lock(&slot.state).token_with(Duration::ZERO) {
            tracing::info!(target: "tokens", account, "another process stored this account's tokens meanwhile; those are used");
            return Ok(Some(token));
        }
        let logged_out = entry.as_ref().is_some_and(|e| e.tokens.is_none());
        if logged_out && slot.flow != Flow::ClientCredentials {
            return Err(TokenError::NotLoggedIn(account.to_owned()));
        }
        Ok(None)
    }

    /// Records a failed request; stored tokens are kept whatever the failure.
    fn fail(&self, account: &str, slot: &Slot, error: &TokenError) {
        let reason = error.to_string();
        let (kind, health, held, retry) = match error.class() {
            ErrorClass::Reauthenticate => (
                TokenEventKind::NeedsLogin {
                    reason: reason.clone(),
                },
                Health::NeedsLogin(reason),
                Some(NEEDS_LOGIN_RECHECK),
                None,
            ),
            ErrorClass::Misconfigured => (
                TokenEventKind::Misconfigured {
                    reason: reason.clone(),
                },
                Health::Misconfigured(reason),
                Some(MISCONFIGURED_RECHECK),
                None,
            ),
            ErrorClass::Transient => {
                let failures = lock(&slot.state).consecutive_failures + 1;
                let backoff = self
                    .timing()
                    .retry_delay
                    .saturating_mul(1 << failures.min(16))
                    .min(MAX_BACKOFF);
                (
                    TokenEventKind::NetworkError {
                        reason: reason.clone(),
                    },
                    Health::Failing(reason),
                    None,
                    Some(error.retry_after().unwrap_or(backoff).min(MAX_BACKOFF)),
                )
            }
        };
        // An account that was never logged in made no request: that is a state to report
        // once, not a failure to count (an alert on the failure counter would fire for it).
        let requested = !matches!(error, TokenError::NotLoggedIn(_));
        {
            let mut state = lock(&slot.state);
            if requested {
                tracing::warn!(target: "tokens", account, state = health.name(), error = %error, "token request failed");
                state.failures += 1;
                state.consecutive_failures += 1;
            } else if state.health != health {
                tracing::info!(target: "tokens", account, %error, "waiting for a login");
            }
            state.health = health;
            state.held_until = held.map(|d| Instant::now() + d);
            state.retry_at = retry.map(|d| Instant::now() + d);
        }
        self.emit(account, kind);
    }

    /// Runs `request` with up to `retries` retries for transient errors, doubling
    /// `retry_delay` with jitter, and honouring Retry-After; every request waits for the
    /// floor between requests (the first finds it passed: see `refresh_locked`).
    async fn with_retries<F, Fut>(
        &self,
        account: &str,
        slot: &Slot,
        retries: u32,
        caller: &CancellationToken,
        request: F,
    ) -> Result<TokenResponse, TokenError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<TokenResponse, TokenError>>,
    {
        let mut attempt = 0;
        loop {
            self.wait_for_floor(slot, caller).await?;
            self.note_request(slot);
            let error = match request().await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            let retryable = error.class() == ErrorClass::Transient || error.is_clock_skew();
            if !retryable || attempt >= retries {
                return Err(error);
            }
            let base = self
                .timing()
                .retry_delay
                .saturating_mul(1 << attempt.min(16));
            let jitter = 0.5 + rand::random::<f64>();
            let delay = error
                .retry_after()
                .unwrap_or_else(|| base.mul_f64(jitter))
                .min(MAX_BACKOFF);
            tracing::info!(target: "tokens", account, error = %error, retry_in_ms = delay.as_millis() as u64, "token request failed; retrying");
            self.pause_until(Instant::now() + delay, slot, caller)
                .await?;
            attempt += 1;
        }
    }

    /// Waits until the floor between requests has passed (or was waived).
    async fn wait_for_floor(
        &self,
        slot: &Slot,
        caller: &CancellationToken,
    ) -> Result<(), TokenError> {
        let floor = self.timing().min_request_interval;
        loop {
            let until = lock(&slot.state).floor_until(floor);
            match until {
                Some(until) => self.pause_until(until, slot, caller).await?,
                None => return Ok(()),
            }
        }
    }

    /// Counts a request as made now: the next waits for the floor.
    fn note_request(&self, slot: &Slot) {
        let mut state = lock(&slot.state);
        let now = Instant::now();
        state.last_request = Some(now);
        if state.floor_waived {
            state.last_waiver = Some(now);
        }
        state.floor_waived = false;
    }

    /// Sleeps until `until`, or fails with [`TokenError::Stopped`] when waiting ends first.
    async fn pause_until(
        &self,
        until: Instant,
        slot: &Slot,
        caller: &CancellationToken,
    ) -> Result<(), TokenError> {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => Ok(()),
            _ = self.wait_ends(slot, caller) => Err(TokenError::Stopped),
        }
    }

    /// Completes when a wait for `slot` must end: the manager stops, a reload retires the
    /// account, or the caller stops.
    async fn wait_ends(&self, slot: &Slot, caller: &CancellationToken) {
        tokio::select! {
            _ = self.stopping.cancelled() => {}
            _ = slot.retired.cancelled() => {}
            _ = caller.cancelled() => {}
        }
    }

    /// The account's refresh lock (the single flight), or [`TokenError::Stopped`] when the
    /// manager stops while another holds it.
    async fn lock_refresh<'a>(
        &self,
        slot: &'a Slot,
        caller: &CancellationToken,
    ) -> Result<tokio::sync::MutexGuard<'a, ()>, TokenError> {
        tokio::select! {
            guard = slot.refresh.lock() => Ok(guard),
            _ = self.wait_ends(slot, caller) => Err(TokenError::Stopped),
        }
    }

    /// Brings this process and the store together: loads what another process (the CLI,
    /// another node) wrote, saves tokens the store could not take when they were new, and puts
    /// back tokens a store lost (Redis restarted empty).
    pub async fn reload_if_changed(&self) {
        let Ok(version) = self.store.version().await else {
            return;
        };
        let slots = self.slots();
        let behind = slots.iter().any(|(_, slot)| lock(&slot.state).unsaved);
        if *lock(&self.store_version) == version && !behind {
            return;
        }
        let stored = match self.store.load_all().await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(target: "tokens", error = %e, "cannot read the token store");
                if !e.is_transient() {
                    *lock(&self.store_version) = version;
                }
                return;
            }
        };
        *lock(&self.store_version) = version;
        for (account, slot) in &slots {
            let (revision, unsaved, has_tokens, tokens) = {
                let state = lock(&slot.state);
                let has_tokens =
                    state.tokens.access_token.is_some() || state.tokens.refresh_token.is_some();
                (
                    state.revision,
                    state.unsaved,
                    has_tokens,
                    state.tokens.clone(),
                )
            };
            let write = match stored.get(account) {
                Some(entry) if entry.revision != revision => {
                    self.adopt(account, slot, entry);
                    continue;
                }
                Some(_) if unsaved => Write::Over {
                    revision,
                    after: revision,
                },
                // Absent is not removed (that leaves the revision behind): the store lost
                // what this process knows. Every node puts back what it holds, and the
                // newest revision wins (tokens this node could not save are newer than the
                // revision they came from).
                None if has_tokens && (revision > 0 || unsaved) => {
                    tracing::warn!(target: "tokens", account, "the token store lost this account's tokens (Redis restarted empty?): putting back this node's");
                    Write::Restore {
                        revision: revision + u64::from(unsaved),
                    }
                }
                _ => continue,
            };
            // A refresh under way saves its own result.
            let Ok(_flight) = slot.refresh.try_lock() else {
                continue;
            };
            match self.store.save(account, Some(&tokens), write).await {
                Ok(Saved::Written { revision }) => {
                    let mut state = lock(&slot.state);
                    if state.tokens == tokens {
                        state.revision = revision;
                        state.unsaved = false;
                    }
                    drop(state);
                    tracing::info!(target: "tokens", account, revision, "saved tokens the store did not have");
                }
                // Someone else wrote it first: the next round adopts theirs.
                Ok(Saved::Conflict) => {}
                Err(e) => {
                    tracing::warn!(target: "tokens", account, error = %e, "cannot save tokens to the store yet")
                }
            }
        }
    }

    /// When the account next needs a token request, if it does on its own.
    fn next_refresh(&self, slot: &Slot) -> Option<Instant> {
        let state = lock(&slot.state);
        let due = if let Some(until) = state.held_until {
            until
        } else if let Some(retry) = state.retry_at {
            retry
        } else {
            match (&state.tokens.access_token, state.expires) {
                (Some(_), Some(expires)) => expires
                    .checked_sub(state.margin(self.timing().refresh_before))
                    .unwrap_or_else(Instant::now),
                // App-only accounts can get their first token without anyone's help;
                // delegated accounts with a refresh token but no access token can too.
                _ if slot.flow == Flow::ClientCredentials
                    || state.tokens.refresh_token.is_some() =>
                {
                    Instant::now()
                }
                _ => return None,
            }
        };
        let floor = state.floor_until(self.timing().min_request_interval);
        Some(floor.map_or(due, |floor| floor.max(due)))
    }

    /// Keeps every account fresh until `shutdown`, each in its own task (a slow token endpoint
    /// holds up only its own account), and picks up what the CLI writes to the store.
    /// Accounts a reload adds get their own task then; a removed or changed account's task
    /// ends with its slot.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut accounts = tokio::task::JoinSet::new();
        let mut kept: Vec<Arc<Slot>> = Vec::new();
        let mut reconfigured = self.reconfigured.subscribe();
        loop {
            kept.retain(|slot| !slot.retired.is_cancelled());
            for (account, slot) in self.slots() {
                if !kept.iter().any(|kept| Arc::ptr_eq(kept, &slot)) {
                    kept.push(Arc::clone(&slot));
                    accounts.spawn(Arc::clone(&self).keep_fresh(account, slot, shutdown.clone()));
                }
            }
            while accounts.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(STORE_POLL) => self.reload_if_changed().await,
                // New accounts take what the store holds for them at once.
                Ok(()) = reconfigured.changed() => self.reload_if_changed().await,
                _ = shutdown.cancelled() => break,
            }
        }
        self.stopping.cancel();
        while accounts.join_next().await.is_some() {}
    }

    /// Refreshes one account whenever it is due. A request under way is not cut short by
    /// `shutdown`: a rotated refresh token must reach the store (each request has its
    /// timeout); the waits between requests are.
    async fn keep_fresh(
        self: Arc<Self>,
        account: String,
        slot: Arc<Slot>,
        shutdown: CancellationToken,
    ) {
        // Any event for the account (a login stored by the CLI, an invalidation) may move its
        // next refresh: look again then.
        let mut events = self.subscribe();
        loop {
            let due = self.next_refresh(&slot);
            // Read after `due`: "due now" must count as due.
            let now = Instant::now();
            let wake = match due {
                Some(due) if due <= now => {
                    let Ok(_flight) = self.lock_refresh(&slot, &shutdown).await else {
                        return;
                    };
                    // Re-check under the lock: a caller may have just refreshed.
                    if self
                        .next_refresh(&slot)
                        .is_some_and(|d| d <= Instant::now())
                    {
                        let _ = self
                            .refresh_locked(
                                &account,
                                &slot,
                                Persist::BestEffort,
                                Why::Due,
                                &shutdown,
                            )
                            .await;
                    }
                    continue;
                }
                Some(due) => due.min(now + STORE_POLL),
                None => now + STORE_POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                Ok(event) = events.recv() => {
                    if event.account != account {
                        continue;
                    }
                }
                _ = shutdown.cancelled() => return,
                _ = slot.retired.cancelled() => return,
            }
        }
    }

    pub fn statuses(&self) -> Vec<AccountStatus> {
        let now = crate::clock::unix_secs();
        let timing = self.timing();
        self.slots()
            .into_iter()
            .map(|(account, slot)| {
                let next = self.next_refresh(&slot).map(|at| unix_of(at, now));
                let state = lock(&slot.state);
                let tokens = &state.tokens;
                AccountStatus {
                    account,
                    flow: slot.flow,
                    health: state.health.clone(),
                    access_token_expires_at: tokens
                        .access_token
                        .as_ref()
                        .map(|_| tokens.expires_at),
                    access_token_expires_in_secs: tokens
                        .access_token
                        .as_ref()
                        .map(|_| tokens.expires_at as i64 - now as i64),
                    usable_token: tokens.access_token.is_some()
                        && state.expires.is_some_and(|at| at > Instant::now()),
                    has_refresh_token: tokens.refresh_token.is_some(),
                    refresh_token_age_secs: tokens
                        .refresh_token_issued_at
                        .map(|at| now.saturating_sub(at)),
                    refresh_token_expires_at: tokens
                        .refresh_token
                        .as_ref()
                        .and(tokens.refresh_token_issued_at)
                        .map(|at| at + REFRESH_TOKEN_LIFETIME.as_secs()),
                    login_at: tokens.login_at,
                    last_refresh_at: tokens.refreshed_at,
                    next_refresh_at: next,
                    auto_refresh: slot.flow == Flow::ClientCredentials
                        || tokens.refresh_token.is_some(),
                    refreshes_total: state.refreshes,
                    refresh_failures_total: state.failures,
                    consecutive_failures: state.consecutive_failures,
                    average_lifetime_secs: (state.refreshes > 0)
                        .then(|| state.lifetime_total.as_secs() / state.refreshes),
                    revision: state.revision,
                    unsaved: state.unsaved,
                    refresh_lock_holder: state.flight_holder.clone(),
                    min_request_interval_secs: timing.min_request_interval.as_secs(),
                    next_request_allowed_at: state
                        .floor_until(timing.min_request_interval)
                        .map(|at| unix_of(at, now)),
                }
            })
            .collect()
    }

    pub fn oauth_account(&self, account: &str) -> Result<Arc<OAuthAccount>, TokenError> {
        self.slot(account)?.oauth().map_err(TokenError::Credential)
    }

    pub fn client(&self) -> &TokenClient {
        &self.client
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The Tokio instant at which a Unix time in seconds falls.
fn instant_of(unix: u64) -> Instant {
    crate::clock::instant_at_unix_ms(unix.saturating_mul(1000))
}

fn unix_of(at: Instant, now_unix: u64) -> u64 {
    let now = Instant::now();
    if at >= now {
        now_unix + (at - now).as_secs()
    } else {
        now_unix.saturating_sub((now - at).as_secs())
    }
}

#[cfg(test)]
mod tests {
    //! Timing, with Tokio's clock paused and the token endpoint answered in-process.

    use std::collections::VecDeque;
    use std::path::Path;

    use super::*;
    use crate::oauth::http::{RawResponse, Transport};
    use crate::oauth::store::{StoreFuture, apply, apply_all};

    /// Answers token requests from a script, then with fresh tokens; records when each
    /// request came.
    #[derive(Default)]
    struct Scripted {
        script: Mutex<VecDeque<RawResponse>>,
        requests: Mutex<Vec<(Instant, String)>>,
        lifetime: u64,
    }

    impl Scripted {
        fn request_times(&self) -> Vec<Duration> {
            let requests = lock(&self.requests);
            let start = requests.first().map(|r| r.0);
            requests.iter().map(|r| r.0 - start.unwrap()).collect()
        }
    }

    fn json(status: u16, body: serde_json::Value, retry_after: Option<u64>) -> RawResponse {
        RawResponse {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: body.to_string().into_bytes(),
        }
    }

    impl Transport for Scripted {
        fn post_form<'a>(
            &'a self,
            _url: &'a str,
            form: &'a [(&'a str, &'a str)],
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<RawResponse, String>> + Send + 'a>,
        > {
            let grant = form
                .iter()
                .find(|(k, _)| *k == "grant_type")
                .map_or("devicecode", |(_, v)| v)
                .to_owned();
            lock(&self.requests).push((Instant::now(), grant.clone()));
            let scripted = lock(&self.script).pop_front();
            let n = lock(&self.requests).len();
            let response = scripted.unwrap_or_else(|| {
                json(
                    200,
                    serde_json::json!({
                        "token_type": "Bearer",
                        "access_token": format!("token-{n}"),
                        "refresh_token": format!("refresh-{n}"),
                        "expires_in": self.lifetime,
                    }),
                    None,
                )
            });
            Box::pin(async move { Ok(response) })
        }
    }

    #[derive(Default)]
    struct MemoryStore(Mutex<BTreeMap<String, Stored>>);

    impl TokenStore for MemoryStore {
        fn load_all(&self) -> StoreFuture<'_, BTreeMap<String, Stored>> {
            let all = lock(&self.0).clone();
            Box::pin(async move { Ok(all) })
        }
        fn load<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Option<Stored>> {
            let entry = lock(&self.0).get(account).cloned();
            Box::pin(async move { Ok(entry) })
        }
        fn save<'a>(
            &'a self,
            account: &'a str,
            tokens: Option<&'a StoredTokens>,
            write: Write,
        ) -> StoreFuture<'a, Saved> {
            let saved = apply(&mut lock(&self.0), account, tokens, write);
            Box::pin(async move { Ok(saved) })
        }
        fn replace_all(&self, accounts: BTreeMap<String, StoredTokens>) -> StoreFuture<'_, ()> {
            apply_all(&mut lock(&self.0), accounts);
            Box::pin(async { Ok(()) })
        }
        fn version(&self) -> StoreFuture<'_, Option<StoreVersion>> {
            Box::pin(async { Ok(None) })
        }
        fn flight<'a>(&'a self, _account: &'a str) -> StoreFuture<'a, Flight> {
            Box::pin(async { Ok(Flight::Mine(FlightGuard::local())) })
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    async fn manager(dir: &Path, flow: &str, transport: Arc<Scripted>) -> Arc<TokenManager> {
        std::fs::write(dir.join("secret"), "s3cret").unwrap();
        let text = format!(
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [tokens]\nretry_attempts = 3\nretry_delay = \"1s\"\nrefresh_before = \"5m\"\n\
             [[account]]\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\n\
             flow = \"{flow}\"\nclient_secret_file = \"secret\"\nmailbox = \"relay@contoso.com\"\n"
        );
        let config = Config::parse(&dir.join("smtprelay.toml"), text).unwrap();
        Arc::new(
            TokenManager::new(
                &config,
                Arc::new(MemoryStore::default()),
                TokenClient::with_transport(transport),
            )
            .await,
        )
    }

    fn scripted(lifetime: u64) -> Arc<Scripted> {
        Arc::new(Scripted {
            lifetime,
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_happens_when_less_than_the_margin_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let first = manager.access_token("contoso").await.unwrap();
        tokio::time::advance(Duration::from_secs(3600 - 300 - 1)).await;
        assert_eq!(
            manager.access_token("contoso").await.unwrap().token,
            first.token
        );
        assert_eq!(endpoint.request_times().len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_ne!(
            manager.access_token("contoso").await.unwrap().token,
            first.token
        );
        assert_eq!(endpoint.request_times().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_task_keeps_tokens_fresh_without_callers() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
        // Refreshes are due at 0, 55 min, 1 h 50 min, 2 h 45 min, 3 h 40 min.
        tokio::time::sleep(Duration::from_secs(3 * 3600 + 20 * 60)).await;
        let times = endpoint.request_times();
        assert_eq!(times.len(), 4, "{times:?}");
        for (i, at) in times.iter().enumerate() {
            assert_eq!(at.as_secs(), i as u64 * 3300, "{times:?}");
        }
        shutdown.cancel();
        task.await.unwrap();
        let status = &manager.statuses()[0];
        assert_eq!(status.refreshes_total, 4);
        assert_eq!(status.average_lifetime_secs, Some(3600));
    }

    /// What a reload might read: the test account "contoso" (of `client_id`) with `tables`
    /// and `more` accounts after it.
    fn reloaded(dir: &Path, client_id: &str, tables: &str, more: &str) -> Config {
        let text = format!(
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [tokens]\nretry_attempts = 3\nretry_delay = \"1s\"\nrefresh_before = \"5m\"\n{tables}\
             [[account]]\nname = \"contoso\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = {client_id:?}\n\
             flow = \"client_credentials\"\nclient_secret_file = \"secret\"\nmailbox = \"relay@contoso.com\"\n{more}"
        );
        Config::parse(&dir.join("smtprelay.toml"), text).unwrap()
    }

    /// Issue 22, point 2: a reload reconfigures the process's manager in place. An account
    /// that asks as before keeps its token and counters (no request); one the reload adds is
    /// asked for; one whose client changed starts afresh, and a caller waiting out its
    /// back-off is let go at once instead of waiting for the retries.
    #[tokio::test(start_paused = true)]
    async fn a_reload_reconfigures_accounts_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let first = manager.access_token("contoso").await.unwrap();

        let fabrikam = "[[account]]\nname = \"fabrikam\"\ntenant = \"fabrikam.onmicrosoft.com\"\n\
                        client_id = \"app\"\nflow = \"client_credentials\"\n\
                        client_secret_file = \"secret\"\nmailbox = \"relay@fabrikam.com\"\n";
        manager.reconfigure(&reloaded(
            dir.path(),
            "app",
            "min_request_interval = \"30s\"\n",
            fabrikam,
        ));
        let again = manager.access_token("contoso").await.unwrap();
        assert_eq!(again.token, first.token);
        assert_eq!(endpoint.request_times().len(), 1);
        manager.access_token("fabrikam").await.unwrap();
        assert_eq!(endpoint.request_times().len(), 2);
        let statuses = manager.statuses();
        assert_eq!(statuses.len(), 2);
        assert_eq!(statuses[0].refreshes_total, 1);
        assert_eq!(statuses[0].min_request_interval_secs, 30);

        // contoso's token is refused; Entra answers 503 to the new requests: a caller waits
        // out the back-off between retries.
        manager.invalidate("contoso", &again.token);
        for _ in 0..4 {
            lock(&endpoint.script).push_back(json(503, serde_json::json!({}), None));
        }
        let waiting = tokio::spawn({
            let manager = Arc::clone(&manager);
            async move { manager.access_token("contoso").await }
        });
        while endpoint.request_times().len() < 3 {
            tokio::task::yield_now().await;
        }
        let asked = Instant::now();
        manager.reconfigure(&reloaded(dir.path(), "other-app", "", ""));
        let result = waiting.await.unwrap();
        assert!(
            matches!(result, Err(TokenError::Stopped)),
            "{:?}",
            result.map(|t| t.expires_at)
        );
        assert_eq!(
            asked.elapsed(),
            Duration::ZERO,
            "the back-off was waited out"
        );
        assert_eq!(endpoint.request_times().len(), 3);
        let statuses = manager.statuses();
        assert_eq!(statuses.len(), 1, "fabrikam was removed");
        assert_eq!(statuses[0].health, Health::NoToken);
        assert_eq!(statuses[0].refresh_failures_total, 0);
        assert_eq!(statuses[0].refreshes_total, 1, "counters are kept");
        // The account starts afresh from what the store holds, as at a start (an admin who
        // changes the client runs `token login` for it first): no request for that.
        manager.access_token("contoso").await.unwrap();
        assert_eq!(endpoint.request_times().len(), 3);
    }

    /// Asks for the token every `every` for `how_long`, as busy workers do.
    async fn keep_asking(manager: &TokenManager, every: Duration, how_long: Duration) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            manager.access_token("contoso").await.unwrap();
            tokio::time::sleep(every).await;
        }
    }

    /// Issue 22: tokens that live less than `refresh_before` used to be refreshed by every
    /// caller and every turn of the background task (thousands of requests a second).
    #[tokio::test(start_paused = true)]
    async fn two_minute_tokens_are_refreshed_once_per_half_lifetime_while_relaying() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(120);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
        // Workers asking for the token every 10 ms for 20 s.
        keep_asking(&manager, Duration::from_millis(10), Duration::from_secs(20)).await;
        let times = endpoint.request_times();
        assert!(times.len() <= 3, "{} requests in 20 s", times.len());
        // And over ten minutes, one request per minute (half of each token's life).
        tokio::time::sleep(Duration::from_secs(600 - 20)).await;
        let times = endpoint.request_times();
        assert!((10..=11).contains(&times.len()), "{times:?}");
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(gap >= Duration::from_secs(60), "{times:?}");
        }
        let status = &manager.statuses()[0];
        assert_eq!(status.min_request_interval_secs, 15);
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Log lines written while the returned guard lives (this thread only: the tests run on
    /// Tokio's current-thread runtime).
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(Arc::clone(&logs));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test(start_paused = true)]
    async fn a_lifetime_shorter_than_refresh_before_warns_once_and_does_not_loop() {
        let (logs, _guard) = capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(60);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
        keep_asking(
            &manager,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )
        .await;
        shutdown.cancel();
        task.await.unwrap();
        // One request per half minute: 0, 30, …, 270 (300 if the last turn got there).
        let times = endpoint.request_times();
        assert!((10..=11).contains(&times.len()), "{times:?}");
        let logs = String::from_utf8(lock(&logs).clone()).unwrap();
        let warnings: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("less than refresh_before"))
            .collect();
        assert_eq!(warnings.len(), 1, "{logs}");
        assert!(warnings[0].contains("lifetime_secs=60"), "{logs}");
    }

    /// A token the upstream refuses gets one fresh request at once; when the fresh one is
    /// refused too, the next waits for the floor: five requests a minute at most.
    #[tokio::test(start_paused = true)]
    async fn refused_tokens_get_one_fresh_request_then_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        let first = manager.access_token("contoso").await.unwrap();
        manager.invalidate("contoso", &first.token);
        let second = manager.access_token("contoso").await.unwrap();
        assert_ne!(second.token, first.token);
        assert_eq!(endpoint.request_times(), [Duration::ZERO, Duration::ZERO]);
        assert!(manager.statuses()[0].next_request_allowed_at.is_some());
        manager.invalidate("contoso", &second.token);
        for _ in 0..50 {
            let next = manager.access_token("contoso").await.unwrap();
            manager.invalidate("contoso", &next.token);
        }
        let times = endpoint.request_times();
        assert_eq!(times.len(), 52, "{times:?}");
        for six in times.windows(6) {
            assert!(six[5] - six[0] >= Duration::from_secs(60), "{times:?}");
        }
        // The floor between the others.
        assert_eq!(times[2], Duration::from_secs(15), "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_back_off_and_honour_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        lock(&endpoint.script).extend([
            json(503, serde_json::json!({}), None),
            json(500, serde_json::json!({}), None),
            json(
                429,
                serde_json::json!({"error": "temporarily_unavailable"}),
                Some(30),
            ),
        ]);
        let manager = manager(dir.path(), "client_credentials", Arc::clone(&endpoint)).await;
        manager.access_token("contoso").await.unwrap();
        let times = endpoint.request_times();
        assert_eq!(times.len(), 4);
        // 1 s then 2 s (±50% jitter) are below the 15 s floor between requests, which
        // decides; then the server's 30 s.
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [15, 15, 30].map(Duration::from_secs), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn device_code_polling_follows_interval_and_slow_down() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        let pending = || {
            json(
                400,
                serde_json::json!({"error": "authorization_pending"}),
                None,
            )
        };
        lock(&endpoint.script).extend([
            json(
                200,
                serde_json::json!({"device_code": "dc", "user_code": "ABCD", "verification_uri": "https://microsoft.com/devicelogin", "expires_in": 900, "interval": 5}),
                None,
            ),
            pending(),
            json(400, serde_json::json!({"error": "slow_down"}), None),
            pending(),
        ]);
        let manager = manager(dir.path(), "device_code", Arc::clone(&endpoint)).await;
        let oauth = manager.oauth_account("contoso").unwrap();
        let response = oauth.device_code(manager.client(), |_| {}).await.unwrap();
        assert_eq!(response.refresh_token.unwrap().expose(), "refresh-5");
        let times: Vec<u64> = endpoint
            .request_times()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(times, [0, 5, 10, 20, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_device_code_ends_the_login() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = scripted(3600);
        lock(&endpoint.script).push_back(json(
            200,
            serde_json::json!({"device_code": "dc", "user_code": "ABCD", "verification_uri": "https://microsoft.com/devicelogin", "expires_in": "12", "interval": "5"}),
            None,
        ));
        for _ in 0..10 {
            lock(&endpoint.script).push_back(json(
                400,
                serde_json::json!({"error": "authorization_pending"}),
                None,
            ));
        }
        let manager = manager(dir.path(), "device_code", endpoint).await;
        let oauth = manager.oauth_account("contoso").unwrap();
        let error = oauth
            .device_code(manager.client(), |_| {})
            .await
            .unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");
    }
}
