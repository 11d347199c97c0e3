//! The Redis side of coordination: the leader lease, per-instrument signal locks, the fast
//! dedup layer and heartbeat keys. Every key lives under one namespace, and every value a
//! holder may later release carries that holder's random token, so nobody releases what
//! somebody else now holds.

use super::{CoordinationError, FastClaim, Owner};
use crate::store::{AnyStore, Fence, Store};
use chrono::Utc;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::time::Duration;

/// How long one Redis command may take. Far below a heartbeat interval, so a Redis that
/// hangs is noticed by the next heartbeat, and far below the signal deadline, so a signal
/// that meets it still has time to go through the database alone.
pub const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// How many times the connection manager reconnects inside one command before it reports
/// the failure. Losing Redis is the policy's to answer, not the driver's to hide.
const REDIS_RECONNECT_ATTEMPTS: usize = 1;

/// The namespace of every key vigil writes.
pub const DEFAULT_NAMESPACE: &str = "vigil";

/// The dedup value of a fingerprint whose signal is applied (or was found applied).
const APPLIED: &str = "applied";

/// Extends a key's expiry if it still holds the caller's token, or takes it again if it
/// expired; answers 1 when the caller holds it afterwards. Taking it again is safe because
/// the database row, checked next, decides whether the caller still leads.
const RENEW: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Deletes a key only if it still holds the caller's token (compare-and-delete).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A connection to the Redis that instances share, with the scripts it runs.
#[derive(Clone)]
pub struct RedisCoordinator {
    /// Reconnects by itself once Redis answers again.
    connection: ConnectionManager,
    /// The prefix of every key, so that tests and deployments sharing a Redis stay apart.
    namespace: String,
    /// Renew-or-retake of an expiring key.
    renew: Script,
    /// Compare-and-delete.
    release: Script,
}

impl std::fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> CoordinationError {
    CoordinationError::Redis(error.to_string())
}

fn bad_url(url: &str, error: &redis::RedisError) -> CoordinationError {
    CoordinationError::BadUrl(format!(
        "Redis URL `{}` is not valid: {error}; expected redis://HOST:PORT[/DB]",
        crate::store::redact(url)
    ))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RedisCoordinator {
    /// Checks that `url` is a Redis URL, without connecting.
    pub fn check_url(url: &str) -> Result<(), CoordinationError> {
        redis::Client::open(url)
            .map(drop)
            .map_err(|error| bad_url(url, &error))
    }

    /// Prepares a connection to `url` under `namespace`. Nothing is sent yet: Redis may be
    /// down at start, and the heartbeat reports it to the policy like any later loss.
    pub fn connect(url: &str, namespace: &str) -> Result<RedisCoordinator, CoordinationError> {
        let client = redis::Client::open(url).map_err(|error| bad_url(url, &error))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_COMMAND_TIMEOUT))
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_number_of_retries(REDIS_RECONNECT_ATTEMPTS)
            .set_max_delay(REDIS_CONNECT_TIMEOUT);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisCoordinator {
            connection,
            namespace: namespace.to_string(),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.namespace)
    }

    /// The one key of the leader lease.
    fn leader_key(&self) -> String {
        format!("{}:leader", self.namespace)
    }

    /// Answers whether Redis answers.
    pub async fn ping(&self) -> Result<(), CoordinationError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// `SET key value NX PX ttl`: whether the key was set.
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CoordinationError> {
        let mut connection = self.connection.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn release_key(&self, key: &str, token: &str) -> Result<bool, CoordinationError> {
        let mut connection = self.connection.clone();
        let deleted: i64 = self
            .release
            .key(key)
            .arg(token)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    /// Refreshes this instance's heartbeat key, which expires after `ttl` unless refreshed.
    pub async fn beat(
        &self,
        instance_id: &str,
        summary: &str,
        ttl: Duration,
    ) -> Result<(), CoordinationError> {
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(self.key("instance", instance_id))
            .arg(summary)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Whether `instance_id`'s heartbeat key is alive.
    pub async fn beating(&self, instance_id: &str) -> Result<bool, CoordinationError> {
        let mut connection = self.connection.clone();
        redis::cmd("EXISTS")
            .arg(self.key("instance", instance_id))
            .query_async::<i64>(&mut connection)
            .await
            .map(|count| count == 1)
            .map_err(unavailable)
    }

    /// `SET leader token NX PX lease`: whether `owner` now holds the Redis lease.
    pub async fn take_lease_key(
        &self,
        owner: &Owner,
        lease: Duration,
    ) -> Result<bool, CoordinationError> {
        self.set_if_absent(&self.leader_key(), &owner.token, lease)
            .await
    }

    /// Extends the Redis lease if `owner` holds it (or takes it back if it lapsed).
    pub async fn renew_lease_key(
        &self,
        owner: &Owner,
        lease: Duration,
    ) -> Result<bool, CoordinationError> {
        let mut connection = self.connection.clone();
        let held: i64 = self
            .renew
            .key(self.leader_key())
            .arg(&owner.token)
            .arg(millis(lease))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }

    /// Releases the Redis lease if `owner` still holds it.
    pub async fn release_lease_key(&self, owner: &Owner) -> Result<bool, CoordinationError> {
        self.release_key(&self.leader_key(), &owner.token).await
    }

    /// Takes the signal lock of `instrument` for `ttl`: whether `owner` now holds it.
    pub async fn lock_instrument(
        &self,
        instrument: &str,
        owner: &Owner,
        ttl: Duration,
    ) -> Result<bool, CoordinationError> {
        self.set_if_absent(&self.key("lock", instrument), &owner.token, ttl)
            .await
    }

    /// Releases the signal lock of `instrument` if `owner` still holds it.
    pub async fn unlock_instrument(
        &self,
        instrument: &str,
        owner: &Owner,
    ) -> Result<bool, CoordinationError> {
        self.release_key(&self.key("lock", instrument), &owner.token)
            .await
    }

    /// Claims `fingerprint` for `window` (`SET NX`): [`FastClaim::Claimed`] when this
    /// caller is the first, [`FastClaim::Applied`] when its signal was applied, and
    /// [`FastClaim::Pending`] while another caller is still applying it.
    pub async fn claim_fingerprint(
        &self,
        fingerprint: &str,
        owner: &Owner,
        window: Duration,
    ) -> Result<FastClaim, CoordinationError> {
        let key = self.key("dedup", fingerprint);
        if self.set_if_absent(&key, &owner.token, window).await? {
            return Ok(FastClaim::Claimed);
        }
        let mut connection = self.connection.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(match value.as_deref() {
            Some(APPLIED) => FastClaim::Applied,
            // Pending elsewhere, or expired between the two commands: the database decides.
            _ => FastClaim::Pending,
        })
    }

    /// Marks `fingerprint` applied for `window`.
    pub async fn mark_applied(
        &self,
        fingerprint: &str,
        window: Duration,
    ) -> Result<(), CoordinationError> {
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(self.key("dedup", fingerprint))
            .arg(APPLIED)
            .arg("PX")
            .arg(millis(window))
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Forgets a claim `owner` made on `fingerprint` whose signal was not applied, so a
    /// resend is not taken for a duplicate.
    pub async fn forget_claim(
        &self,
        fingerprint: &str,
        owner: &Owner,
    ) -> Result<(), CoordinationError> {
        self.release_key(&self.key("dedup", fingerprint), &owner.token)
            .await
            .map(drop)
    }
}

impl super::Coordinator for RedisCoordinator {
    async fn acquire_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        instance_id: &str,
        lease: Duration,
    ) -> Result<Option<i64>, CoordinationError> {
        if !self.take_lease_key(owner, lease).await? {
            return Ok(None);
        }
        // Redis granted the lease; the database issues the fencing token, unless it still
        // knows a valid leader (one that led through the database while Redis was away, or
        // whose row outlives its Redis key by a moment). That leader keeps leading and its
        // renewals take the Redis key back.
        match store.take_leadership(instance_id, lease, Utc::now()).await {
            Ok(Some(token)) => Ok(Some(token)),
            other => {
                // Holding a lease with no token would only keep others from leading.
                let _ = self.release_lease_key(owner).await;
                Ok(other?)
            }
        }
    }

    async fn renew_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fence: Fence<'_>,
        lease: Duration,
    ) -> Result<bool, CoordinationError> {
        // The database row decides. A contender may hold the Redis key for a moment (it
        // takes the key, the row refuses it, and it gives the key back); the leader keeps
        // leading, and its next renewal takes the key again.
        let _key_held = self.renew_lease_key(owner, lease).await?;
        Ok(store.renew_leadership(fence, lease, Utc::now()).await?)
    }

    async fn release_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fence: Fence<'_>,
    ) -> Result<(), CoordinationError> {
        let released = self.release_lease_key(owner).await;
        store.release_leadership(fence, Utc::now()).await?;
        released.map(drop)
    }
}
