//! Database-only coordination: what instances agree on when no Redis answers. The lease is
//! the leadership row, taken under a PostgreSQL transaction-level advisory lock and judged
//! by the database's clock. Signals need nothing here: the instrument lock is the advisory
//! lock every signal transaction takes, and the dedup layer is the signal log itself.

use super::{CoordinationError, Coordinator, Owner};
use crate::store::{AnyStore, Fence, Store};
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
            .take_leadership(instance_id, lease, Utc::now())
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
}
