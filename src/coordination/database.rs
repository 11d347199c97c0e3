//! Database-only coordination: what instances agree on when no Redis answers. The lease is
//! the leadership row, taken under a PostgreSQL transaction-level advisory lock and judged
//! by the database's clock; the instrument lock is the advisory lock every signal
//! transaction takes; the dedup layer is the signal log's unique fingerprint itself.

use super::{CoordinationError, Coordinator, FastClaim, Owner};
use crate::store::{AnyStore, Fence, Store, Takeover};
use chrono::Utc;
use std::time::Duration;

/// Coordination through the database alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatabaseCoordinator;

impl Coordinator for DatabaseCoordinator {
    async fn acquire_lease(
        &self,
        store: &AnyStore,
        _owner: &Owner,
        instance_id: &str,
        lease: Duration,
    ) -> Result<Option<i64>, CoordinationError> {
        Ok(store
            .take_leadership(instance_id, lease, Takeover::IfFree, Utc::now())
            .await?)
    }

    async fn renew_lease(
        &self,
        store: &AnyStore,
        _owner: &Owner,
        fence: Fence<'_>,
        lease: Duration,
    ) -> Result<bool, CoordinationError> {
        Ok(store.renew_leadership(fence, lease, Utc::now()).await?)
    }

    async fn release_lease(
        &self,
        store: &AnyStore,
        _owner: &Owner,
        fence: Fence<'_>,
    ) -> Result<(), CoordinationError> {
        Ok(store.release_leadership(fence, Utc::now()).await?)
    }

    /// The signal's own transaction takes the instrument's advisory lock (PostgreSQL) or the
    /// single writer lock (SQLite), so there is nothing to take here.
    async fn lock_instrument(
        &self,
        _instrument: &str,
        _owner: &Owner,
        _ttl: Duration,
    ) -> Result<bool, CoordinationError> {
        Ok(true)
    }

    async fn unlock_instrument(
        &self,
        _instrument: &str,
        _owner: &Owner,
    ) -> Result<(), CoordinationError> {
        Ok(())
    }

    /// The signal log's unique fingerprint is the dedup layer.
    async fn claim_fingerprint(
        &self,
        _fingerprint: &str,
        _owner: &Owner,
        _window: Duration,
    ) -> Result<FastClaim, CoordinationError> {
        Ok(FastClaim::Unknown)
    }

    async fn settle_fingerprint(
        &self,
        _fingerprint: &str,
        _owner: &Owner,
        _applied: bool,
        _window: Duration,
    ) -> Result<(), CoordinationError> {
        Ok(())
    }
}
