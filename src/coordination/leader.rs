//! The instance's pulse while it serves: the Redis heartbeat (which is also how a lost or
//! returning Redis is noticed), and the leader lease for background tasks with the tasks
//! themselves: a statistics snapshot written under the fencing token, and a read-only check
//! of portfolio totals against positions that raises an alarm.
//!
//! Only an instance that is `active` or `degraded` leads; one that enters any other state
//! (`recovering`, `stopping`, `crashed`, ...) gives the lease up at once.

use super::{Coordination, Owner, COORDINATION_TARGET};
use crate::domain::Instrument;
use crate::machines::lifecycle;
use crate::recovery;
use crate::shared::Shared;
use crate::store::{AnyStore, Store, StoreError};
use chrono::Utc;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Counter: consistency checks that found stored totals disagreeing with positions.
pub const CONSISTENCY_ALARMS: &str = "vigil_consistency_alarms_total";

/// Gauge: 1 when the leader's last consistency check passed, 0 when it raised an alarm.
pub const CONSISTENCY_OK: &str = "vigil_consistency_ok";

/// Counter: statistics snapshots written by this instance as leader.
pub const STATISTICS_SNAPSHOTS: &str = "vigil_statistics_snapshots_total";

/// What the leader's consistency check compares against.
#[derive(Debug, Clone)]
pub struct LeaderTasks {
    /// The policy's recovery tolerance.
    pub tolerance: Decimal,
    /// The deployment's instruments.
    pub instruments: BTreeMap<String, Instrument>,
    /// The deployment's initial capital.
    pub initial_capital: Option<Decimal>,
}

/// A lease this instance holds.
#[derive(Debug)]
struct Leading {
    /// The random token the Redis lease carries.
    owner: Owner,
    /// The fencing token every background write carries.
    fencing_token: i64,
    /// Until when the lease is surely held: the start of the last renewal that succeeded
    /// (or of the take), plus the lease. Taken before the request, so it never overstates.
    held_until: Instant,
    /// When the background tasks run next.
    tasks_due: Instant,
}

/// Why leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepDown {
    /// The lifecycle left `active`/`degraded`.
    Ineligible(lifecycle::State),
    /// Another instance holds the lease now.
    Lost,
    /// No renewal succeeded in time: the lease may lapse before the next one.
    Unrenewed,
    /// A background write was refused for an older fencing token.
    Fenced,
    /// The store is gone (the database is being reopened).
    NoStore,
}

impl std::fmt::Display for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDown::Ineligible(state) => write!(f, "the instance is {}", state.name()),
            StepDown::Lost => f.write_str("another instance holds the lease"),
            StepDown::Unrenewed => f.write_str("the lease could not be renewed in time"),
            StepDown::Fenced => f.write_str("a newer leader fenced this one off"),
            StepDown::NoStore => f.write_str("the database is not connected"),
        }
    }
}

/// How often the pulse wakes: every heartbeat, and at least three times per lease, so a
/// lease is renewed at no more than a third of its length. It is also the longest any one
/// coordination call of the pulse may take.
pub fn tick(coordination: &Coordination) -> Duration {
    let timings = coordination.timings();
    timings.heartbeat_interval.min(timings.leader_lease / 3)
}

/// Stops a task when dropped: the heartbeat ends with the pulse, however the pulse ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs until the lifecycle stops or crashes, then gives up any lease it holds.
pub async fn run(shared: Arc<Shared>, tasks: LeaderTasks) {
    // The heartbeat has its own task, so a slow database cannot delay noticing Redis.
    let _beating = AbortOnDrop(tokio::spawn(beat_loop(Arc::clone(&shared))));
    let tick = tick(&shared.coordination);
    let mut lifecycle = shared.lifecycle.subscribe();
    let mut renewals = tokio::time::interval(tick);
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<Leading> = None;
    let mut consistent = true;
    loop {
        let state = lifecycle.borrow_and_update().state;
        leading = match (leading, shared.store()) {
            (Some(lead), None) => {
                publish(&shared, None);
                // The row lapses by itself; the Redis key is given back now.
                if let Some(redis) = shared.coordination.configured_redis() {
                    let _ = bounded(&shared, redis.release_lease_key(&lead.owner)).await;
                }
                log_step_down(&shared, lead.fencing_token, StepDown::NoStore);
                None
            }
            (Some(lead), Some(store)) if !state.is_serving() => {
                step_down(&shared, &store, lead, StepDown::Ineligible(state)).await;
                None
            }
            (Some(lead), Some(store)) => {
                keep_leading(&shared, &store, lead, &tasks, &mut consistent).await
            }
            (None, Some(store)) if state.is_serving() => {
                match try_to_lead(&shared, &store).await {
                    // The lifecycle may have moved on while the lease was being taken.
                    Some(lead) if !shared.view().state.is_serving() => {
                        let now = shared.view().state;
                        step_down(&shared, &store, lead, StepDown::Ineligible(now)).await;
                        None
                    }
                    taken => taken,
                }
            }
            (None, _) => None,
        };
        if state.is_ending() && leading.is_none() {
            return;
        }
        tokio::select! {
            changed = lifecycle.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = renewals.tick() => {}
        }
    }
}

/// Refreshes the Redis heartbeat key every heartbeat interval; its answer says whether
/// Redis is there.
async fn beat_loop(shared: Arc<Shared>) {
    let coordination = &shared.coordination;
    let Some(redis) = coordination.configured_redis() else {
        return;
    };
    let timings = coordination.timings().clone();
    let mut beats = tokio::time::interval(timings.heartbeat_interval);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beats.tick().await;
        let fencing_token = shared.leading();
        let summary = serde_json::json!({
            "state": shared.view().state.name(),
            "leader": fencing_token.is_some(),
            "fencing_token": fencing_token,
            "at": crate::store::timestamp_text(Utc::now()),
        })
        .to_string();
        let beat = redis.beat(
            coordination.instance(),
            &summary,
            timings.instance_stale_after,
        );
        match tokio::time::timeout(timings.heartbeat_interval, beat).await {
            Ok(Ok(())) => {
                coordination.redis_answered();
            }
            Ok(Err(error)) => coordination.redis_failed(&error),
            Err(_) => coordination.redis_failed(&super::CoordinationError::Redis(format!(
                "the heartbeat took longer than {:?}",
                timings.heartbeat_interval
            ))),
        }
    }
}

/// Runs one coordination call of the pulse within a tick.
async fn bounded<T>(
    shared: &Shared,
    call: impl std::future::Future<Output = Result<T, super::CoordinationError>>,
) -> Result<T, super::CoordinationError> {
    let tick = tick(&shared.coordination);
    match tokio::time::timeout(tick, call).await {
        Ok(result) => result,
        Err(_) => Err(super::CoordinationError::TimedOut(tick)),
    }
}

async fn try_to_lead(shared: &Shared, store: &AnyStore) -> Option<Leading> {
    let coordination = &shared.coordination;
    let owner = Owner::new();
    let started = Instant::now();
    match bounded(shared, coordination.acquire_lease(store, &owner)).await {
        Ok(Some(fencing_token)) => {
            tracing::info!(
                target: COORDINATION_TARGET,
                instance = %coordination.instance(),
                mode = ?coordination.mode(),
                "leading background tasks with fencing token {fencing_token}"
            );
            publish(shared, Some(fencing_token));
            Some(Leading {
                owner,
                fencing_token,
                held_until: started + coordination.timings().leader_lease,
                tasks_due: Instant::now(),
            })
        }
        Ok(None) => None,
        Err(error) => {
            // A lease request that timed out may still have been granted; giving it back
            // (compare-and-delete) keeps it from blocking others until it expires.
            let _ = bounded(shared, coordination.release_lease(store, &owner, 0)).await;
            tracing::debug!(target: COORDINATION_TARGET, instance = %coordination.instance(), "cannot take the lease: {error}");
            None
        }
    }
}

async fn keep_leading(
    shared: &Shared,
    store: &AnyStore,
    mut lead: Leading,
    tasks: &LeaderTasks,
    consistent: &mut bool,
) -> Option<Leading> {
    let coordination = &shared.coordination;
    let (lease, tick) = (coordination.timings().leader_lease, tick(coordination));
    let started = Instant::now();
    let renewed = bounded(
        shared,
        coordination.renew_lease(store, &lead.owner, lead.fencing_token),
    )
    .await;
    match renewed {
        Ok(true) => lead.held_until = started + lease,
        Ok(false) => {
            step_down(shared, store, lead, StepDown::Lost).await;
            return None;
        }
        Err(error) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %coordination.instance(), "cannot renew the lease (fencing token {}): {error}", lead.fencing_token);
            // The next renewal comes a tick from now: stop leading unless the lease surely
            // lasts past it, so that two instances never both believe they lead.
            if Instant::now() + tick >= lead.held_until {
                step_down(shared, store, lead, StepDown::Unrenewed).await;
                return None;
            }
            // Background tasks run only right after a renewal, so that none can outlast
            // the lease this instance surely holds.
            return Some(lead);
        }
    }
    if Instant::now() < lead.tasks_due {
        return Some(lead);
    }
    lead.tasks_due = Instant::now() + coordination.timings().leader_task_interval;
    let snapshot = store.record_statistics(coordination.fence(lead.fencing_token), Utc::now());
    match bounded(shared, async { Ok(snapshot.await?) }).await {
        Ok(()) => metrics::counter!(STATISTICS_SNAPSHOTS).increment(1),
        Err(super::CoordinationError::Store(StoreError::Fenced(reason))) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %coordination.instance(), "statistics snapshot refused: {reason}");
            step_down(shared, store, lead, StepDown::Fenced).await;
            return None;
        }
        Err(error) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %coordination.instance(), "statistics snapshot not written: {error}");
        }
    }
    check_consistency(shared, store, tasks, consistent).await;
    Some(lead)
}

/// Reads positions and totals from one snapshot and runs the recovery validation on them.
/// It writes nothing: an alarm is for an operator to look at.
async fn check_consistency(
    shared: &Shared,
    store: &AnyStore,
    tasks: &LeaderTasks,
    consistent: &mut bool,
) {
    let instance = shared.coordination.instance();
    let started = std::time::Instant::now();
    let read = async { Ok(store.load_recovery_rows().await?) };
    let rows = match bounded(shared, read).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %instance, "consistency check could not read the database: {error}");
            return;
        }
    };
    let terms = recovery::Terms {
        tolerance: tasks.tolerance,
        instruments: &tasks.instruments,
        initial_capital: tasks.initial_capital,
    };
    let (_, mut receipt) = recovery::recover(rows, &terms);
    receipt.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match receipt.failure() {
        None => {
            metrics::gauge!(CONSISTENCY_OK).set(1.0);
            if !*consistent {
                tracing::info!(target: COORDINATION_TARGET, instance = %instance, "consistency check passes again: {}", receipt.summary());
            }
            *consistent = true;
        }
        Some(_) => {
            metrics::gauge!(CONSISTENCY_OK).set(0.0);
            metrics::counter!(CONSISTENCY_ALARMS).increment(1);
            tracing::error!(target: COORDINATION_TARGET, instance = %instance, "consistency alarm: {}", receipt.summary());
            // Once per alarm, not at every check while it lasts.
            if *consistent {
                shared.notifier.notify(
                    crate::notify::Event::ConsistencyAlarm,
                    format!("consistency alarm: {}", receipt.summary()),
                );
            }
            for check in receipt.checks.iter().filter(|check| !check.passed) {
                tracing::error!(target: COORDINATION_TARGET, instance = %instance, check = check.name, "{}", check.detail);
            }
            *consistent = false;
        }
    }
}

async fn step_down(shared: &Shared, store: &AnyStore, lead: Leading, why: StepDown) {
    // Published first: from here on this instance claims no leadership, whatever the
    // release below answers. The release is compare-and-delete, so it never frees a lease
    // another instance took meanwhile.
    publish(shared, None);
    let release = shared
        .coordination
        .release_lease(store, &lead.owner, lead.fencing_token);
    if let Err(error) = bounded(shared, release).await {
        tracing::warn!(target: COORDINATION_TARGET, instance = %shared.coordination.instance(), "cannot release the lease (it expires by itself): {error}");
    }
    log_step_down(shared, lead.fencing_token, why);
}

fn log_step_down(shared: &Shared, fencing_token: i64, why: StepDown) {
    tracing::info!(
        target: COORDINATION_TARGET,
        instance = %shared.coordination.instance(),
        "stepped down as leader (fencing token {fencing_token}): {why}"
    );
}

/// Publishes the leadership this instance holds, and tells the operator's sinks when it
/// changed.
fn publish(shared: &Shared, fencing_token: Option<i64>) {
    let before = shared.leadership.send_replace(fencing_token);
    let message = match (before, fencing_token) {
        (None, Some(token)) => format!("leading background tasks with fencing token {token}"),
        (Some(token), None) => format!("stepped down as leader (fencing token {token})"),
        _ => return,
    };
    shared
        .notifier
        .notify(crate::notify::Event::LeaderChange, message);
}
