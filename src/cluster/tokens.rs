//! The token store of a cluster: every node's tokens in Redis, sealed with the token key as
//! in the file store (the same key file on every node), so Redis never holds a usable token.
//!
//! Keys: `tokens` (hash: account → `<revision>:<sealed>`, `<revision>:` once removed),
//! `tokens-version` (counts every write, so a node notices writes with one GET), and
//! `token-lock:<account>` (who asks Entra for the account's token now: `<node>/<random>`,
//! with an expiry the holder keeps pushing back while it asks; released by compare-and-delete,
//! and gone by itself within [`FLIGHT_TTL`] of its node dying). Writes are compare-and-set on
//! the revision, in one script, so a rotated refresh token is never replaced by an older one.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Cluster, Inner};
use crate::oauth::TokenKey;
use crate::oauth::store::{
    Flight, FlightGuard, Saved, Sealer, StoreError, StoreFuture, StoreVersion, Stored,
    StoredTokens, TokenStore, Write,
};

/// How long a token request may go unrenewed before another node may ask instead.
pub const FLIGHT_TTL: Duration = Duration::from_secs(15);
const FLIGHT_RENEW_EVERY: Duration = Duration::from_secs(5);

/// KEYS: tokens, tokens-version. ARGV: account, "over"|"restore"|"replace", revision read,
/// after (for "restore": the revision to write at), sealed tokens ("" to remove). Returns the
/// new revision, or -1 when the entry is no longer at the revision read ("restore": when the
/// store holds that revision or a newer one).
const SAVE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
local revision = 0
if current then revision = tonumber(string.match(current, '^(%d+):')) end
if ARGV[2] == 'over' and revision ~= tonumber(ARGV[3]) then return -1 end
local next = math.max(revision, tonumber(ARGV[4])) + 1
if ARGV[2] == 'restore' then
  if current and revision >= tonumber(ARGV[4]) then return -1 end
  next = tonumber(ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', next) .. ':' .. ARGV[5])
redis.call('INCR', KEYS[2])
return next
"#;

/// KEYS: tokens, tokens-version. ARGV: account, sealed, account, sealed, …
/// Makes the hash hold exactly these accounts (the others removed), each at a new revision.
const REPLACE_ALL: &str = r#"
local given = {}
for i = 1, #ARGV, 2 do given[ARGV[i]] = ARGV[i + 1] end
local all = redis.call('HGETALL', KEYS[1])
local revisions = {}
for i = 1, #all, 2 do
  local revision, sealed = string.match(all[i + 1], '^(%d+):(.*)$')
  revisions[all[i]] = tonumber(revision)
  if given[all[i]] == nil and sealed ~= '' then
    redis.call('HSET', KEYS[1], all[i], string.format('%.0f', tonumber(revision) + 1) .. ':')
  end
end
for account, sealed in pairs(given) do
  local next = (revisions[account] or 0) + 1
  redis.call('HSET', KEYS[1], account, string.format('%.0f', next) .. ':' .. sealed)
end
redis.call('INCR', KEYS[2])
return 1
"#;

/// KEYS: token-lock. ARGV: owner, ttl ms. Returns {"mine", owner} or {"elsewhere", holder}.
const FLIGHT: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'mine', ARGV[1]} end
return {'elsewhere', redis.call('GET', KEYS[1]) or ''}
"#;

/// KEYS: token-lock. ARGV: owner, ttl ms (0: release). Only the owner renews or releases.
const KEEP: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#;

struct Scripts {
    save: Script,
    replace_all: Script,
    flight: Script,
    keep: Script,
}

pub struct RedisStore {
    inner: Arc<Inner>,
    sealer: Sealer,
    scripts: Arc<Scripts>,
}

impl Cluster {
    /// The cluster's token store, sealed with `key`.
    pub fn token_store(&self, key: TokenKey) -> RedisStore {
        RedisStore {
            inner: Arc::clone(&self.inner),
            sealer: Sealer::new(key),
            scripts: Arc::new(Scripts {
                save: Script::new(SAVE),
                replace_all: Script::new(REPLACE_ALL),
                flight: Script::new(FLIGHT),
                keep: Script::new(KEEP),
            }),
        }
    }
}

impl RedisStore {
    fn unreachable(&self) -> impl FnOnce(String) -> StoreError + '_ {
        move |error| StoreError::Unreachable {
            store: self.describe(),
            error,
        }
    }

    /// One hash value as an entry.
    fn entry(&self, account: &str, value: &str) -> Result<Stored, StoreError> {
        let sealed_error = || StoreError::Decrypt {
            store: self.describe(),
            account: account.to_owned(),
        };
        let (revision, sealed) = value.split_once(':').ok_or_else(sealed_error)?;
        let revision = revision.parse().map_err(|_| sealed_error())?;
        let tokens = match sealed {
            "" => None,
            sealed => Some(self.sealer.open(account, sealed).ok_or_else(sealed_error)?),
        };
        Ok(Stored { revision, tokens })
    }

    fn lock_key(&self, account: &str) -> String {
        self.inner.key("token-lock", account)
    }

    /// Renews or releases (`ttl` zero) the lock `owner` holds.
    async fn keep(inner: &Inner, scripts: &Scripts, key: &str, owner: &str, ttl: Duration) -> bool {
        let mut invocation = scripts.keep.prepare_invoke();
        invocation.key(key).arg(owner).arg(ttl.as_millis() as u64);
        inner.call::<i64>(&invocation).await.is_ok_and(|n| n == 1)
    }
}

impl TokenStore for RedisStore {
    fn load_all(&self) -> StoreFuture<'_, BTreeMap<String, Stored>> {
        Box::pin(async move {
            let all: HashMap<String, String> = self
                .inner
                .query(redis::cmd("HGETALL").arg(self.inner.shared_key("tokens")))
                .await
                .map_err(self.unreachable())?;
            all.iter()
                .map(|(account, value)| Ok((account.clone(), self.entry(account, value)?)))
                .collect()
        })
    }

    fn load<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let value: Option<String> = self
                .inner
                .query(
                    redis::cmd("HGET")
                        .arg(self.inner.shared_key("tokens"))
                        .arg(account),
                )
                .await
                .map_err(self.unreachable())?;
            value.map(|v| self.entry(account, &v)).transpose()
        })
    }

    fn save<'a>(
        &'a self,
        account: &'a str,
        tokens: Option<&'a StoredTokens>,
        write: Write,
    ) -> StoreFuture<'a, Saved> {
        Box::pin(async move {
            let sealed = tokens.map_or(String::new(), |t| self.sealer.seal(account, t));
            let (mode, read, after) = match write {
                Write::Over { revision, after } => ("over", revision, after),
                Write::Restore { revision } => ("restore", 0, revision),
                Write::Replace => ("replace", 0, 0),
            };
            let mut invocation = self.scripts.save.prepare_invoke();
            invocation
                .key(self.inner.shared_key("tokens"))
                .key(self.inner.shared_key("tokens-version"))
                .arg(account)
                .arg(mode)
                .arg(read)
                .arg(after)
                .arg(sealed);
            let revision: i64 = self
                .inner
                .call(&invocation)
                .await
                .map_err(self.unreachable())?;
            Ok(match u64::try_from(revision) {
                Ok(revision) => Saved::Written { revision },
                Err(_) => Saved::Conflict,
            })
        })
    }

    fn replace_all(&self, accounts: BTreeMap<String, StoredTokens>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut invocation = self.scripts.replace_all.prepare_invoke();
            invocation
                .key(self.inner.shared_key("tokens"))
                .key(self.inner.shared_key("tokens-version"));
            for (account, tokens) in &accounts {
                invocation
                    .arg(account)
                    .arg(self.sealer.seal(account, tokens));
            }
            self.inner
                .call::<i64>(&invocation)
                .await
                .map_err(self.unreachable())?;
            Ok(())
        })
    }

    fn version(&self) -> StoreFuture<'_, Option<StoreVersion>> {
        Box::pin(async move {
            let (version, epoch): (Option<u64>, Option<String>) = self
                .inner
                .query(
                    redis::cmd("MGET")
                        .arg(self.inner.shared_key("tokens-version"))
                        .arg(self.inner.shared_key("epoch")),
                )
                .await
                .map_err(self.unreachable())?;
            // The epoch tells a Redis that restarted empty and counted up to the same number.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            epoch.hash(&mut hasher);
            Ok(version.map(|v| StoreVersion::new([v, hasher.finish(), 0])))
        })
    }

    fn flight<'a>(&'a self, account: &'a str) -> StoreFuture<'a, Flight> {
        Box::pin(async move {
            let key = self.lock_key(account);
            let owner = format!("{}/{}", self.inner.config.node_name, super::new_epoch());
            let mut invocation = self.scripts.flight.prepare_invoke();
            invocation
                .key(&key)
                .arg(&owner)
                .arg(FLIGHT_TTL.as_millis() as u64);
            let (outcome, holder): (String, String) = self
                .inner
                .call(&invocation)
                .await
                .map_err(self.unreachable())?;
            let node = holder
                .rsplit_once('/')
                .map_or(holder.as_str(), |(node, _)| node)
                .to_owned();
            if outcome != "mine" {
                return Ok(Flight::Elsewhere { holder: node });
            }
            let (inner, scripts) = (Arc::clone(&self.inner), Arc::clone(&self.scripts));
            let (renew_key, renew_owner) = (key.clone(), owner.clone());
            let renewing = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FLIGHT_RENEW_EVERY).await;
                    if !Self::keep(&inner, &scripts, &renew_key, &renew_owner, FLIGHT_TTL).await {
                        return;
                    }
                }
            });
            let (inner, scripts) = (Arc::clone(&self.inner), Arc::clone(&self.scripts));
            let release = async move {
                Self::keep(&inner, &scripts, &key, &owner, Duration::ZERO).await;
            };
            Ok(Flight::Mine(FlightGuard::shared(
                node,
                renewing.abort_handle(),
                release,
            )))
        })
    }

    fn describe(&self) -> String {
        format!("Redis at {}", self.inner.redis_display)
    }
}
