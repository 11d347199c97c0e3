//! The instance's pulse while it serves: the Redis heartbeat (which is also how a lost or
//! returning Redis is noticed), and the leader lease for background tasks with the tasks
//! themselves: a statistics snapshot written under the fencing token, and a read-only check
//! of portfolio totals against positions that raises an alarm.
//!
//! Only an instance that is `active` or `degraded` leads; one that enters any other state
//! (`recovering`, `stopping`, `crashed`, ...) gives the lease up at once.

use super::{Coordination, Owner, COORDINATION_TARGET};
use crate::domain::Instrument;
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
}

/// A lease this instance holds.
#[derive(Debug)]
struct Leading {
    /// The random token the Redis lease carries.
    owner: Owner,
    /// The fencing token every background write carries.
    fencing_token: i64,
    /// When the lease was last renewed (or taken).
    renewed_at: Instant,
    /// When the background tasks run next.
    tasks_due: Instant,
}

/// Why leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepDown {
    /// The lifecycle left `active`/`degraded`.
    Ineligible(&'static str),
    /// Another instance holds the lease now.
    Lost,
    /// No renewal succeeded within a whole lease.
    Unrenewed,
    /// A background write was refused for an older fencing token.
    Fenced,
}

impl std::fmt::Display for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDown::Ineligible(state) => write!(f, "the instance is {state}"),
            StepDown::Lost => f.write_str("another instance holds the lease"),
            StepDown::Unrenewed => f.write_str("the lease could not be renewed in time"),
            StepDown::Fenced => f.write_str("a newer leader fenced this one off"),
        }
    }
}

/// How often the pulse wakes: every heartbeat, and at least three times per lease, so a
/// lease is renewed at no more than a third of its length.
pub fn tick(coordination: &Coordination) -> Duration {
    let timings = coordination.timings();
    timings.heartbeat_interval.min(timings.leader_lease / 3)
}

/// Runs until the lifecycle stops or crashes, then gives up any lease it holds.
pub async fn run(shared: Arc<Shared>, tasks: LeaderTasks) {
    let coordination = &shared.coordination;
    let timings = coordination.timings().clone();
    let tick = tick(coordination);
    let mut lifecycle = shared.lifecycle.subscribe();
    let mut leading: Option<Leading> = None;
    let mut next_beat = Instant::now();
    let mut consistent = true;
    loop {
        let state = lifecycle.borrow_and_update().state;
        let now = Instant::now();
        if now >= next_beat {
            beat(
                &shared,
                state,
                leading.as_ref().map(|lead| lead.fencing_token),
            )
            .await;
            next_beat = now + timings.heartbeat_interval;
        }
        let store = shared.store();
        let eligible = matches!(state, "active" | "degraded");
        leading = match (leading, store.as_ref()) {
            (Some(lead), Some(store)) if !eligible => {
                step_down(&shared, store, lead, StepDown::Ineligible(state)).await;
                None
            }
            (Some(lead), None) => {
                // Without a store nothing can be written or renewed; the lease lapses.
                publish(&shared, None);
                log_step_down(&shared, lead.fencing_token, StepDown::Unrenewed);
                None
            }
            (Some(lead), Some(store)) => {
                keep_leading(&shared, store, lead, &tasks, &mut consistent).await
            }
            (None, Some(store)) if eligible => try_to_lead(&shared, store).await,
            (None, _) => None,
        };
        if matches!(state, "stopping" | "stopped" | "crashed") {
            return;
        }
        let wake = (Instant::now() + tick).min(next_beat);
        tokio::select! {
            changed = lifecycle.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Refreshes the Redis heartbeat key; its answer says whether Redis is there.
async fn beat(shared: &Shared, state: &str, fencing_token: Option<i64>) {
    let coordination = &shared.coordination;
    let Some(redis) = coordination.configured_redis() else {
        return;
    };
    let summary = serde_json::json!({
        "state": state,
        "leader": fencing_token.is_some(),
        "fencing_token": fencing_token,
        "at": crate::store::timestamp_text(Utc::now()),
    })
    .to_string();
    let ttl = coordination.timings().instance_stale_after;
    match redis.beat(coordination.instance(), &summary, ttl).await {
        Ok(()) => coordination.redis_answered(),
        Err(error) => coordination.redis_failed(&error),
    }
}

async fn try_to_lead(shared: &Shared, store: &AnyStore) -> Option<Leading> {
    let coordination = &shared.coordination;
    let owner = Owner::new();
    match coordination.acquire_lease(store, &owner).await {
        Ok(Some(fencing_token)) => {
            tracing::info!(
                target: COORDINATION_TARGET,
                instance = %coordination.instance(),
                mode = ?coordination.mode(),
                "leading background tasks with fencing token {fencing_token}"
            );
            publish(shared, Some(fencing_token));
            let now = Instant::now();
            Some(Leading {
                owner,
                fencing_token,
                renewed_at: now,
                tasks_due: now,
            })
        }
        Ok(None) => None,
        Err(error) => {
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
    let lease = coordination.timings().leader_lease;
    match coordination
        .renew_lease(store, &lead.owner, lead.fencing_token)
        .await
    {
        Ok(true) => lead.renewed_at = Instant::now(),
        Ok(false) => {
            publish(shared, None);
            log_step_down(shared, lead.fencing_token, StepDown::Lost);
            return None;
        }
        Err(error) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %coordination.instance(), "cannot renew the lease (fencing token {}): {error}", lead.fencing_token);
            // Others may take the lease once it expires; stop before that can happen.
            if lead.renewed_at.elapsed() >= lease {
                publish(shared, None);
                log_step_down(shared, lead.fencing_token, StepDown::Unrenewed);
                return None;
            }
        }
    }
    if Instant::now() < lead.tasks_due {
        return Some(lead);
    }
    lead.tasks_due = Instant::now() + coordination.timings().leader_task_interval;
    match store
        .record_statistics(coordination.fence(lead.fencing_token), Utc::now())
        .await
    {
        Ok(()) => metrics::counter!(STATISTICS_SNAPSHOTS).increment(1),
        Err(StoreError::Fenced(reason)) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %coordination.instance(), "statistics snapshot refused: {reason}");
            publish(shared, None);
            log_step_down(shared, lead.fencing_token, StepDown::Fenced);
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
    let rows = match store.load_recovery_rows().await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(target: COORDINATION_TARGET, instance = %instance, "consistency check could not read the database: {error}");
            return;
        }
    };
    let (_, mut receipt) = recovery::recover(rows, tasks.tolerance, &tasks.instruments, 0);
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
            for check in receipt.checks.iter().filter(|check| !check.passed) {
                tracing::error!(target: COORDINATION_TARGET, instance = %instance, check = check.name, "{}", check.detail);
            }
            *consistent = false;
        }
    }
}

async fn step_down(shared: &Shared, store: &AnyStore, lead: Leading, why: StepDown) {
    // Published first: from here on this instance claims no leadership, whatever the
    // release below answers.
    publish(shared, None);
    if let Err(error) = shared
        .coordination
        .release_lease(store, &lead.owner, lead.fencing_token)
        .await
    {
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

fn publish(shared: &Shared, fencing_token: Option<i64>) {
    shared.leadership.send_replace(fencing_token);
}
