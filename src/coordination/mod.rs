//! Coordination between instances that share one database (and, optionally, one Redis):
//! the leader lease for background tasks, the per-instrument signal lock, the fast dedup
//! layer and heartbeats.
//!
//! The [`Coordinator`] port (the leader lease) has two implementations: [`RedisCoordinator`]
//! (the fast layer, which also holds signal locks and dedup claims) and
//! [`DatabaseCoordinator`] (the store alone: the leadership row under a PostgreSQL advisory
//! lock; signals rely on their transaction's per-instrument advisory lock). [`Coordination`]
//! uses Redis while it answers and the database otherwise, and tells the machines when Redis
//! goes and comes back.
//!
//! Correctness never rests on this module: the database's fingerprint claim and the
//! portfolio version check make each signal exactly-once, and the leadership row's fencing
//! token refuses a former leader's writes. Coordination only saves work and keeps signals of
//! one instrument from interleaving.

mod database;
pub mod identity;
pub mod leader;
mod redis;

pub use self::database::DatabaseCoordinator;
pub use self::redis::{RedisCoordinator, DEFAULT_NAMESPACE, REDIS_COMMAND_TIMEOUT};

use crate::driver::Input;
use crate::policy::HaTimings;
use crate::store::{AnyStore, Fence, InstanceRow, StoreError};
use crate::vocabulary::FailureKind;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a signal waits, in all, for its instrument's lock or for a copy of itself that
/// another caller is applying, before it goes to the intake journal instead.
pub const SIGNAL_LOCK_WAIT: Duration = Duration::from_millis(200);

/// How often a waiting signal asks again.
pub const SIGNAL_LOCK_POLL: Duration = Duration::from_millis(5);

/// The most times a waiting signal asks; the wait's deadline usually ends it first.
const SIGNAL_LOCK_ATTEMPTS: u128 = SIGNAL_LOCK_WAIT.as_millis() / SIGNAL_LOCK_POLL.as_millis();

/// All the Redis work before a signal's transaction may take: the wait and the commands
/// around it. A Redis slower than this is not lost (each command has its own timeout, and
/// the heartbeat judges loss); the signal just goes on under database-only coordination.
pub const SIGNAL_REDIS_BUDGET: Duration = Duration::from_millis(250);

/// How long a signal's pending dedup claim lives unless settled: past the longest a caller
/// can hold it (the Redis work, the broker and a drain's transaction), so a claim orphaned
/// by a killed instance stops making copies wait within seconds, well inside TradingView's
/// resends. An applied fingerprint is remembered for the policy's `dedup_window` instead.
pub const PENDING_CLAIM_TTL: Duration = Duration::from_secs(3);

/// The `tracing` target of coordination log lines.
pub const COORDINATION_TARGET: &str = "vigil::coordination";

/// Bytes of randomness in an owner token.
const OWNER_TOKEN_BYTES: usize = 16;

/// Why coordination failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinationError {
    /// Redis refused, timed out or dropped the connection.
    #[error("redis unavailable: {0}")]
    Redis(String),
    /// The database failed (or fenced the write off).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis URL cannot be used.
    #[error("{0}")]
    BadUrl(String),
    /// Redis or the database did not answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// A random token naming one holder of one lease, lock or claim, so that releasing checks
/// the holder (compare-and-delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Hex text of [`OWNER_TOKEN_BYTES`] random bytes.
    pub token: String,
}

impl Owner {
    /// A fresh token.
    pub fn new() -> Owner {
        let mut bytes = [0_u8; OWNER_TOKEN_BYTES];
        // Without randomness, tokens from one clock and counter would still be unique per
        // process; the fallback keeps the service running rather than halting it.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            bytes[..8].copy_from_slice(&nanos.to_le_bytes());
            bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        }
        Owner {
            token: hex::encode(bytes),
        }
    }
}

impl Default for Owner {
    fn default() -> Owner {
        Owner::new()
    }
}

/// What the fast dedup layer knows of a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastClaim {
    /// This caller claimed it first.
    Claimed,
    /// Another caller claimed it and has not finished.
    Pending,
    /// Its signal was applied: a duplicate.
    Applied,
}

/// The coordination port: the leader lease, which instances agree on through Redis or the
/// database alone. Locks and dedup claims need no port: their database-only forms live in
/// the signal's own transaction (the advisory lock, the signal log's unique fingerprint), so
/// only Redis offers them separately.
#[allow(async_fn_in_trait)] // Called on concrete types only, never through `dyn`.
pub trait Coordinator {
    /// Tries to take the leader lease for `lease`; the new fencing token when taken.
    async fn acquire_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        instance_id: &str,
        lease: Duration,
    ) -> Result<Option<i64>, CoordinationError>;

    /// Extends a lease held with `fence`; `false` when it is no longer held.
    async fn renew_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fence: Fence<'_>,
        lease: Duration,
    ) -> Result<bool, CoordinationError>;

    /// Gives the lease up, so another instance may lead at once.
    async fn release_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fence: Fence<'_>,
    ) -> Result<(), CoordinationError>;
}

/// Which implementation serves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Redis answers.
    Redis,
    /// No Redis is configured, or it does not answer.
    Database,
}

/// Redis as the instance sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisHealth {
    /// No Redis URL was configured.
    NotConfigured,
    /// It answered last time.
    Up,
    /// It did not answer last time.
    Down,
}

/// What a signal may do after the fast checks.
#[derive(Debug)]
pub enum Gate {
    /// The fast dedup layer knows the signal was applied.
    Duplicate,
    /// The wait for the instrument's lock, or for a copy of the signal another caller is
    /// applying, ran past [`SIGNAL_LOCK_WAIT`].
    Busy,
    /// Go on to the database; settle the ticket with the outcome.
    Proceed(Ticket),
}

/// What a signal holds in Redis while the database decides. Whether settled or dropped (a
/// cancelled request), it releases what it holds in a background task, so neither the
/// answer nor a cancellation waits on Redis, and nothing is left held until its TTL.
#[derive(Debug)]
pub struct Ticket {
    /// The Redis it holds things in; `None` under database-only coordination.
    redis: Option<RedisCoordinator>,
    /// The signal's fingerprint.
    fingerprint: String,
    /// The signal's instrument.
    instrument: String,
    /// The dedup claim this signal made (or asked for), if it was first.
    claim: Option<Owner>,
    /// The instrument lock this signal holds (or asked for); set before the request is
    /// sent, so a cancellation between Redis setting it and the reply still releases it.
    lock: Option<Owner>,
    /// Whether the lock request was answered yes.
    locked: bool,
    /// Whether the signal was applied (or found applied): then the fingerprint is kept.
    applied: bool,
    /// How long an applied fingerprint is remembered.
    window: Duration,
}

impl Ticket {
    fn database_only(fingerprint: &str, instrument: &str) -> Ticket {
        Ticket {
            redis: None,
            fingerprint: fingerprint.to_string(),
            instrument: instrument.to_string(),
            claim: None,
            lock: None,
            locked: false,
            applied: false,
            window: Duration::ZERO,
        }
    }

    /// Whether this signal holds its instrument's Redis lock.
    pub fn holds_lock(&self) -> bool {
        self.locked
    }

    /// Records the outcome; the release runs in the background.
    pub fn settle(mut self, applied: bool) {
        self.applied = applied;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(redis) = self.redis.take() else {
            return;
        };
        if self.claim.is_none() && self.lock.is_none() && !self.applied {
            return;
        }
        let (fingerprint, instrument) = (self.fingerprint.clone(), self.instrument.clone());
        let (claim, lock) = (self.claim.take(), self.lock.take());
        let (applied, window) = (self.applied, self.window);
        // Outside a runtime nothing is left to release into; the TTLs clean up. A failure
        // here is not reported: the next heartbeat tells the machines about a lost Redis.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = release(
                    &redis,
                    &fingerprint,
                    &instrument,
                    claim,
                    lock,
                    applied,
                    window,
                )
                .await;
            });
        }
    }
}

/// Settles a claim and releases a lock.
async fn release(
    redis: &RedisCoordinator,
    fingerprint: &str,
    instrument: &str,
    claim: Option<Owner>,
    lock: Option<Owner>,
    applied: bool,
    window: Duration,
) -> Result<(), CoordinationError> {
    // An applied signal is remembered even when another caller made the claim, so later
    // resends stop at the fast layer.
    let settled = match (&claim, applied) {
        (_, true) => redis.mark_applied(fingerprint, window).await,
        (Some(owner), false) => redis.forget_claim(fingerprint, owner).await,
        (None, false) => Ok(()),
    };
    let unlocked = match &lock {
        Some(owner) => redis.unlock_instrument(instrument, owner).await.map(drop),
        None => Ok(()),
    };
    settled.and(unlocked)
}

/// Coordination as the service uses it: Redis while it answers, the database otherwise.
#[derive(Debug)]
pub struct Coordination {
    /// The configured Redis, if any.
    redis: Option<RedisCoordinator>,
    /// Whether Redis answered last time; starts `true` so the first heartbeat decides. A
    /// mutex rather than an atomic, so that the flag and the report to the machines change
    /// together and reports cannot overtake each other.
    redis_up: Mutex<bool>,
    /// The policy's HA timings.
    timings: HaTimings,
    /// Which instance this is.
    instance: String,
    /// Reports to the machines: Redis lost, Redis back.
    inputs: mpsc::Sender<Input>,
}

impl Coordination {
    /// Coordination through `redis` when given, the database otherwise.
    pub fn new(
        redis: Option<RedisCoordinator>,
        timings: HaTimings,
        instance: &str,
        inputs: mpsc::Sender<Input>,
    ) -> Coordination {
        Coordination {
            redis,
            redis_up: Mutex::new(true),
            timings,
            instance: instance.to_string(),
            inputs,
        }
    }

    /// The policy's HA timings.
    pub fn timings(&self) -> &HaTimings {
        &self.timings
    }

    /// Which implementation serves now.
    pub fn mode(&self) -> Mode {
        match self.live_redis() {
            Some(_) => Mode::Redis,
            None => Mode::Database,
        }
    }

    /// Redis as last seen.
    pub fn redis_health(&self) -> RedisHealth {
        match (&self.redis, self.redis_is_up()) {
            (None, _) => RedisHealth::NotConfigured,
            (Some(_), true) => RedisHealth::Up,
            (Some(_), false) => RedisHealth::Down,
        }
    }

    /// The configured Redis, whether or not it answers.
    pub fn configured_redis(&self) -> Option<&RedisCoordinator> {
        self.redis.as_ref()
    }

    /// Redis, while it answers.
    fn live_redis(&self) -> Option<&RedisCoordinator> {
        self.redis.as_ref().filter(|_| self.redis_is_up())
    }

    fn redis_is_up(&self) -> bool {
        *self.redis_up.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Flips the Redis flag to `up` and reports `input`, unless the flag already says so. A
    /// report the full queue refuses leaves the flag as it was, so the next heartbeat
    /// reports again.
    fn redis_became(&self, up: bool, input: Input) -> bool {
        let mut flag = self.redis_up.lock().unwrap_or_else(PoisonError::into_inner);
        if *flag == up || self.inputs.try_send(input).is_err() {
            return false;
        }
        *flag = up;
        true
    }

    /// Redis failed: coordinate through the database and tell the machines, once per loss.
    pub fn redis_failed(&self, error: &CoordinationError) {
        let CoordinationError::Redis(reason) = error else {
            return;
        };
        if self.redis_became(false, Input::Failure(FailureKind::RedisUnavailable)) {
            tracing::warn!(target: COORDINATION_TARGET, instance = %self.instance, "redis lost ({reason}); coordinating through the database");
        }
    }

    /// Redis answered: use it again and tell the machines, once per return. Returns whether
    /// this call told them.
    pub fn redis_answered(&self) -> bool {
        let told = self.redis.is_some()
            && self.redis_became(true, Input::Restored(FailureKind::RedisUnavailable));
        if told {
            tracing::info!(target: COORDINATION_TARGET, instance = %self.instance, "redis answers again; coordinating through redis");
        }
        told
    }

    /// Asks Redis whether it answers, records the answer and tells the machines of a change,
    /// as the heartbeat does; `None` with no Redis. `Ok(true)` when this call told them
    /// Redis is back.
    pub async fn check_redis(&self) -> Option<Result<bool, CoordinationError>> {
        let redis = self.redis.as_ref()?;
        let answer = redis.ping().await;
        Some(match answer {
            Ok(()) => Ok(self.redis_answered()),
            Err(error) => {
                self.redis_failed(&error);
                Err(error)
            }
        })
    }

    /// Asks Redis whether it answers for a retry of `redis_unavailable`, and records the
    /// answer without telling the machines: the answer is the retry's outcome, which the
    /// caller reports. `None` with no Redis.
    pub async fn probe_redis(&self) -> Option<Result<(), CoordinationError>> {
        let redis = self.redis.as_ref()?;
        let answer = redis.ping().await;
        let mut flag = self.redis_up.lock().unwrap_or_else(PoisonError::into_inner);
        if answer.is_ok() && !*flag {
            tracing::info!(target: COORDINATION_TARGET, instance = %self.instance, "redis answers again; coordinating through redis");
        }
        *flag = answer.is_ok();
        Some(answer)
    }

    /// The fast checks before a signal's transaction: claim the fingerprint in the dedup
    /// layer, then take the instrument's lock. A copy of a signal another caller is applying
    /// waits until that caller finishes, and is then a duplicate or claims it anew. All
    /// waiting ends after [`SIGNAL_LOCK_WAIT`] ([`Gate::Busy`]) and all Redis work after
    /// [`SIGNAL_REDIS_BUDGET`]. [`Gate::Duplicate`] is the fast layer's word only: the
    /// caller confirms it against the database before answering.
    pub async fn before_signal(&self, instrument: &str, fingerprint: &str) -> Gate {
        let Some(redis) = self.live_redis() else {
            return Gate::Proceed(Ticket::database_only(fingerprint, instrument));
        };
        match tokio::time::timeout(
            SIGNAL_REDIS_BUDGET,
            self.gate(redis, instrument, fingerprint),
        )
        .await
        {
            Ok(gate) => gate,
            // The unfinished ticket was dropped and releases what it got in the background.
            Err(_) => Gate::Proceed(Ticket::database_only(fingerprint, instrument)),
        }
    }

    async fn gate(&self, redis: &RedisCoordinator, instrument: &str, fingerprint: &str) -> Gate {
        let mut ticket = Ticket::database_only(fingerprint, instrument);
        ticket.redis = Some(redis.clone());
        ticket.window = self.timings.dedup_window;
        let deadline = tokio::time::Instant::now() + SIGNAL_LOCK_WAIT;
        // Claim the fingerprint, or wait while another caller holds the claim.
        let mut claimed = false;
        for _ in 0..SIGNAL_LOCK_ATTEMPTS {
            // Recorded before the request, so a cancellation still forgets it.
            let owner = Owner::new();
            ticket.claim = Some(owner.clone());
            match redis
                .claim_fingerprint(fingerprint, &owner, PENDING_CLAIM_TTL)
                .await
            {
                Ok(FastClaim::Claimed) => {
                    claimed = true;
                    break;
                }
                Ok(FastClaim::Applied) => {
                    ticket.claim = None;
                    return Gate::Duplicate;
                }
                Ok(FastClaim::Pending) => ticket.claim = None,
                Err(error) => {
                    self.redis_failed(&error);
                    return Gate::Proceed(ticket);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(SIGNAL_LOCK_POLL).await;
        }
        if !claimed {
            return Gate::Busy;
        }
        // Hold the instrument's lock.
        let owner = Owner::new();
        ticket.lock = Some(owner.clone());
        for _ in 0..SIGNAL_LOCK_ATTEMPTS {
            match redis
                .lock_instrument(instrument, &owner, self.timings.signal_lock_ttl)
                .await
            {
                Ok(true) => {
                    ticket.locked = true;
                    return Gate::Proceed(ticket);
                }
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(SIGNAL_LOCK_POLL).await;
                }
                Ok(false) => break,
                Err(error) => {
                    self.redis_failed(&error);
                    return Gate::Proceed(ticket);
                }
            }
        }
        // Dropping the ticket forgets the claim and the lock request.
        Gate::Busy
    }

    /// Tries to take the leader lease through whichever implementation serves now.
    pub async fn acquire_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
    ) -> Result<Option<i64>, CoordinationError> {
        let lease = self.timings.leader_lease;
        if let Some(redis) = self.live_redis() {
            match redis
                .acquire_lease(store, owner, &self.instance, lease)
                .await
            {
                Err(error @ CoordinationError::Redis(_)) => self.redis_failed(&error),
                other => return other,
            }
        }
        DatabaseCoordinator
            .acquire_lease(store, owner, &self.instance, lease)
            .await
    }

    /// Renews the lease held with `fencing_token`.
    pub async fn renew_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fencing_token: i64,
    ) -> Result<bool, CoordinationError> {
        let lease = self.timings.leader_lease;
        let fence = self.fence(fencing_token);
        if let Some(redis) = self.live_redis() {
            match redis.renew_lease(store, owner, fence, lease).await {
                Err(error @ CoordinationError::Redis(_)) => self.redis_failed(&error),
                other => return other,
            }
        }
        DatabaseCoordinator
            .renew_lease(store, owner, fence, lease)
            .await
    }

    /// Releases the lease held with `fencing_token`.
    pub async fn release_lease(
        &self,
        store: &AnyStore,
        owner: &Owner,
        fencing_token: i64,
    ) -> Result<(), CoordinationError> {
        let fence = self.fence(fencing_token);
        if let Some(redis) = self.live_redis() {
            match redis.release_lease(store, owner, fence).await {
                Err(error @ CoordinationError::Redis(_)) => self.redis_failed(&error),
                other => return other,
            }
        }
        DatabaseCoordinator.release_lease(store, owner, fence).await
    }

    /// Adds to `views` whether each instance's Redis heartbeat key is alive, while Redis
    /// answers; a Redis that does not answer within [`REDIS_COMMAND_TIMEOUT`] adds nothing.
    pub async fn add_redis_heartbeats(&self, views: &mut [InstanceView]) {
        let Some(redis) = self.live_redis() else {
            return;
        };
        let asked = async {
            let mut beating = Vec::with_capacity(views.len());
            for view in views.iter() {
                beating.push(redis.beating(&view.row.instance_id).await?);
            }
            Ok::<_, CoordinationError>(beating)
        };
        if let Ok(Ok(beating)) = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, asked).await {
            for (view, beating) in views.iter_mut().zip(beating) {
                view.redis_heartbeat = Some(beating);
            }
        }
    }

    /// The fence of this instance holding `fencing_token`.
    pub fn fence(&self, fencing_token: i64) -> Fence<'_> {
        Fence {
            instance_id: &self.instance,
            fencing_token,
        }
    }

    /// The instance this coordination speaks for.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

/// An instance as `/status` and `vigil status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// The row.
    #[serde(flatten)]
    pub row: InstanceRow,
    /// Milliseconds since its last heartbeat, when that parses.
    pub heartbeat_age_ms: Option<i64>,
    /// Whether the heartbeat is older than the policy's `ha.instance_stale_after`.
    pub stale: bool,
    /// Whether its Redis heartbeat key is alive; absent where Redis is not asked (no Redis,
    /// Redis down, or `vigil status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_heartbeat: Option<bool>,
}

/// Adds heartbeat ages, as of `now`, to instance rows.
pub fn instance_views(
    rows: Vec<InstanceRow>,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> Vec<InstanceView> {
    let stale_after_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    rows.into_iter()
        .map(|row| {
            let heartbeat_age_ms = DateTime::parse_from_rfc3339(&row.last_heartbeat)
                .ok()
                .map(|beat| (now - beat.with_timezone(&Utc)).num_milliseconds().max(0));
            let stale = heartbeat_age_ms.is_none_or(|age| age > stale_after_ms);
            InstanceView {
                row,
                heartbeat_age_ms,
                stale,
                redis_heartbeat: None,
            }
        })
        .collect()
}
