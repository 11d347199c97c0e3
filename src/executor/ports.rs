//! What the executor touches, behind small traits, so that tests inject a database, a Redis
//! or a broker that fails, hangs or recovers on cue. The service's own implementations are
//! here too: [`StoreDatabase`] over the real store, [`RedisCheck`] over coordination.

use crate::machines::lifecycle;
use crate::shared::Shared;
use crate::store::operations::{Operations, Pause};
use crate::store::{Access, AnyStore, InstanceRecord, RecoveryRows, Store, StoreError};
use chrono::Utc;
use rust_decimal::Decimal;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A boxed future, so the ports can be trait objects.
pub type PortFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The database, as start-up, probes, heartbeats and status writes need it.
pub trait Database: Send + Sync + std::fmt::Debug {
    /// Opens the database if it is not open and, read-write, applies migrations.
    fn open(&self) -> PortFuture<'_, Result<(), StoreError>>;
    /// Whether the database answers now, opening it first if needed.
    fn ping(&self) -> PortFuture<'_, Result<(), StoreError>>;
    /// Reads everything recovery needs, in one snapshot.
    fn load_recovery_rows(&self) -> PortFuture<'_, Result<RecoveryRows, StoreError>>;
    /// Records the instance status (nothing, read-only).
    fn record_status(&self, status: lifecycle::State) -> PortFuture<'_, Result<(), StoreError>>;
    /// Refreshes the instance's heartbeat (read-only: a ping).
    fn heartbeat(&self) -> PortFuture<'_, Result<(), StoreError>>;
    /// Creates the portfolio row of a new database with `initial_capital` (nothing,
    /// read-only, or when a row exists).
    fn create_portfolio(&self, initial_capital: Decimal) -> PortFuture<'_, Result<(), StoreError>> {
        let _ = initial_capital;
        Box::pin(async { Ok(()) })
    }
    /// The operator's kill switch (never set, for a database that has none).
    fn pause(&self) -> PortFuture<'_, Result<Pause, StoreError>> {
        Box::pin(async { Ok(Pause::None) })
    }
    /// Closes the database.
    fn close(&self) -> PortFuture<'_, ()>;
}

/// What a watch's question found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The dependency answers; the watch reports its return.
    Answered,
    /// The dependency answers and has already told the machines itself.
    Reported,
    /// It does not answer yet.
    Failed,
}

/// A dependency that can be asked whether it answers: Redis.
pub trait HealthCheck: Send + Sync + std::fmt::Debug {
    /// For a retry: `Ok` when it answers (or is not configured), else why not. The answer
    /// is the retry's outcome, which the caller reports.
    fn check(&self) -> PortFuture<'_, Result<(), String>>;

    /// For a watch: asks once. A dependency that reports its own return (Redis does, with
    /// the flag coordination keeps) answers [`Watched::Reported`], so the return is reported
    /// once and in order with its other reports.
    fn watch(&self) -> PortFuture<'_, Watched> {
        Box::pin(async {
            match self.check().await {
                Ok(()) => Watched::Answered,
                Err(_) => Watched::Failed,
            }
        })
    }
}

/// The real database: the store, opened from its URL and published to the HTTP layer
/// through [`Shared::store`], which is the one place the open store is kept.
#[derive(Debug)]
pub struct StoreDatabase {
    /// The database URL.
    url: String,
    /// Read-write for the service; read-only for `recover --check`.
    access: Access,
    /// Who is running, for status rows and heartbeats.
    instance: InstanceRecord,
    /// Holds the open store for everyone.
    shared: Arc<Shared>,
    /// Whether migrations have run in this process: once is enough, and a watch re-running
    /// recovery every few seconds must not migrate each time.
    migrated: AtomicBool,
}

impl StoreDatabase {
    /// The database at `url`, opened with `access`, kept in `shared`.
    pub fn new(
        url: &str,
        access: Access,
        instance: InstanceRecord,
        shared: Arc<Shared>,
    ) -> StoreDatabase {
        StoreDatabase {
            url: url.to_string(),
            access,
            instance,
            shared,
            migrated: AtomicBool::new(false),
        }
    }

    /// The open store, opening it if needed.
    async fn store(&self) -> Result<AnyStore, StoreError> {
        if let Some(store) = self.shared.store() {
            return Ok(store);
        }
        let store = AnyStore::connect(&self.url, self.access).await?;
        self.shared.store.send_replace(Some(store.clone()));
        Ok(store)
    }
}

impl Database for StoreDatabase {
    fn open(&self) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let store = self.store().await?;
            if self.access == Access::ReadWrite && !self.migrated.load(Ordering::Acquire) {
                store.migrate().await?;
                self.migrated.store(true, Ordering::Release);
                store.warm_signal_pool().await;
            }
            Ok(())
        })
    }

    fn ping(&self) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.store().await?.ping().await })
    }

    fn load_recovery_rows(&self) -> PortFuture<'_, Result<RecoveryRows, StoreError>> {
        Box::pin(async move { self.store().await?.load_recovery_rows().await })
    }

    fn record_status(&self, status: lifecycle::State) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.access == Access::ReadOnly {
                return Ok(());
            }
            let Some(store) = self.shared.store() else {
                // Never opened: there is nowhere to record it yet.
                return Ok(());
            };
            store
                .record_status(&self.instance, status.name(), Utc::now())
                .await
        })
    }

    fn heartbeat(&self) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let store = self.store().await?;
            match self.access {
                Access::ReadWrite => {
                    store
                        .heartbeat(&self.instance.instance_id, Utc::now())
                        .await
                }
                Access::ReadOnly => store.ping().await,
            }
        })
    }

    fn create_portfolio(&self, initial_capital: Decimal) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.access == Access::ReadOnly {
                return Ok(());
            }
            self.store().await?.create_portfolio(initial_capital).await
        })
    }

    fn pause(&self) -> PortFuture<'_, Result<Pause, StoreError>> {
        Box::pin(async move { Ok(self.store().await?.pause_switch().await?.pause) })
    }

    fn close(&self) -> PortFuture<'_, ()> {
        Box::pin(async move {
            if let Some(store) = self.shared.store.send_replace(None) {
                store.close().await;
            }
        })
    }
}

/// Redis as coordination sees it: a ping that also updates what `/ready` shows.
#[derive(Debug)]
pub struct RedisCheck(pub Arc<Shared>);

impl HealthCheck for RedisCheck {
    fn check(&self) -> PortFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.0.coordination.probe_redis().await {
                None | Some(Ok(())) => Ok(()),
                Some(Err(error)) => Err(error.to_string()),
            }
        })
    }

    fn watch(&self) -> PortFuture<'_, Watched> {
        Box::pin(async move {
            match self.0.coordination.check_redis().await {
                None | Some(Ok(false)) => Watched::Answered,
                Some(Ok(true)) => Watched::Reported,
                Some(Err(_)) => Watched::Failed,
            }
        })
    }
}
