//! The PostgreSQL backend. Money is NUMERIC; it is read back as text so that decoding
//! happens in Rust exactly as for SQLite, and written as text cast to NUMERIC.

use super::{
    classify, timestamp_text, Access, InstanceRecord, PortfolioRow, PositionRow, PyramidingRow,
    RecoveryRows, StateWrite, Store, StoreError, CONNECT_TIMEOUT, POOL_MAX_CONNECTIONS,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::str::FromStr;

/// A PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// The connection pool.
    pool: PgPool,
}

/// Maps PostgreSQL SQLSTATE codes.
fn classify_pg(error: sqlx::Error) -> StoreError {
    classify(error, |code, message| {
        let message = message.to_string();
        match code {
            // connection exceptions, shutdowns, too many connections
            _ if code.starts_with("08") => Some(StoreError::Unavailable(message)),
            "57P01" | "57P02" | "57P03" | "53300" => Some(StoreError::Unavailable(message)),
            "42P01" => Some(StoreError::NoSchema(message)),
            _ => None,
        }
    })
}

/// Timestamps as the RFC 3339 text SQLite stores, so rows decode the same way.
const LOAD_POSITIONS: &str = "SELECT id, instrument, label, status, lots::text AS lots, entry_price::text AS entry_price, \
     stop_price::text AS stop_price, risk_amount::text AS risk_amount, margin::text AS margin, is_base_position, \
     base_position_id, to_char(entry_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS entry_time, version \
     FROM positions WHERE status <> 'closed' ORDER BY id";

const LOAD_PORTFOLIO: &str = "SELECT initial_capital::text AS initial_capital, closed_equity::text AS closed_equity, \
     total_risk::text AS total_risk, margin_used::text AS margin_used, version FROM portfolio_state WHERE id = 1";

const LOAD_PYRAMIDING: &str =
    "SELECT instrument, last_pyramid_price::text AS last_pyramid_price, base_position_id \
     FROM pyramiding_state ORDER BY instrument";

impl PgStore {
    /// Connects to `url`. Read-only sessions refuse every write.
    pub async fn connect(url: &str, access: Access) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|error| {
            StoreError::BadUrl(format!(
                "invalid PostgreSQL URL `{}`: {error}",
                super::redact(url)
            ))
        })?;
        let options = match access {
            Access::ReadWrite => options,
            Access::ReadOnly => options.options([("default_transaction_read_only", "on")]),
        };
        // One plain connection first: a pool retries a refused connection until its timeout
        // and then reports only the timeout, hiding the cause and the policy's schedule.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(classify_pg)?;
        probe.close().await.map_err(classify_pg)?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(classify_pg)?;
        Ok(PgStore { pool })
    }
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|error| StoreError::Other(format!("migration failed: {error}")))
    }

    async fn load_recovery_rows(&self) -> Result<RecoveryRows, StoreError> {
        // One repeatable-read snapshot, so the three reads see the same committed state.
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(classify_pg)?;
        let positions = sqlx::query_as::<_, PositionRow>(LOAD_POSITIONS)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify_pg)?;
        let portfolio = sqlx::query_as::<_, PortfolioRow>(LOAD_PORTFOLIO)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify_pg)?;
        let pyramiding = sqlx::query_as::<_, PyramidingRow>(LOAD_PYRAMIDING)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify_pg)?;
        tx.rollback().await.map_err(classify_pg)?;
        Ok(RecoveryRows {
            positions,
            portfolio,
            pyramiding,
        })
    }

    async fn record_status(
        &self,
        instance: &InstanceRecord,
        status: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instance_metadata (instance_id, status, hostname, started_at, last_heartbeat, updated_at) \
             VALUES ($1, $2, $3, $4::timestamptz, $5::timestamptz, $5::timestamptz) \
             ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, hostname = excluded.hostname, \
             started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat, updated_at = excluded.updated_at",
        )
        .bind(&instance.instance_id)
        .bind(status)
        .bind(&instance.hostname)
        .bind(timestamp_text(instance.started_at))
        .bind(timestamp_text(now))
        .execute(&self.pool)
        .await
        .map_err(classify_pg)?;
        Ok(())
    }

    async fn instance_status(&self, instance_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT status FROM instance_metadata WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify_pg)
    }

    async fn write_state(&self, state: &StateWrite) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        let positions = &state.positions;
        let column = |f: &dyn Fn(&crate::domain::Position) -> String| {
            positions.iter().map(f).collect::<Vec<String>>()
        };
        // One statement for all positions: thousands of round trips would dominate seeding.
        sqlx::query(
            "INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, \
             is_base_position, base_position_id, entry_time, version) \
             SELECT id, instrument, label, status, lots::numeric, entry_price::numeric, stop_price::numeric, \
             risk_amount::numeric, margin::numeric, is_base_position, base_position_id, entry_time::timestamptz, version \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::text[], $10::bool[], $11::text[], $12::text[], $13::int8[]) \
             AS t(id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, is_base_position, \
             base_position_id, entry_time, version)",
        )
        .bind(column(&|p| p.id.clone()))
        .bind(column(&|p| p.instrument.clone()))
        .bind(column(&|p| p.label.clone()))
        .bind(column(&|p| p.status.as_str().to_string()))
        .bind(column(&|p| p.lots.to_string()))
        .bind(column(&|p| p.entry_price.to_string()))
        .bind(column(&|p| p.stop_price.to_string()))
        .bind(column(&|p| p.risk_amount.to_string()))
        .bind(column(&|p| p.margin.to_string()))
        .bind(positions.iter().map(|p| p.is_base_position).collect::<Vec<bool>>())
        .bind(positions.iter().map(|p| p.base_position_id.clone()).collect::<Vec<Option<String>>>())
        .bind(column(&|p| timestamp_text(p.entry_time)))
        .bind(positions.iter().map(|p| p.version).collect::<Vec<i64>>())
        .execute(&mut *tx)
        .await
        .map_err(classify_pg)?;
        if let Some(portfolio) = &state.portfolio {
            sqlx::query(
                "INSERT INTO portfolio_state (id, initial_capital, closed_equity, total_risk, margin_used, version, updated_at) \
                 VALUES (1, $1::numeric, $2::numeric, $3::numeric, $4::numeric, $5, now()) \
                 ON CONFLICT (id) DO UPDATE SET initial_capital = excluded.initial_capital, \
                 closed_equity = excluded.closed_equity, total_risk = excluded.total_risk, \
                 margin_used = excluded.margin_used, version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(portfolio.initial_capital.to_string())
            .bind(portfolio.closed_equity.to_string())
            .bind(portfolio.total_risk.to_string())
            .bind(portfolio.margin_used.to_string())
            .bind(portfolio.version)
            .execute(&mut *tx)
            .await
            .map_err(classify_pg)?;
        }
        for pyramiding in &state.pyramiding {
            sqlx::query(
                "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) \
                 VALUES ($1, $2::numeric, $3) \
                 ON CONFLICT (instrument) DO UPDATE SET last_pyramid_price = excluded.last_pyramid_price, \
                 base_position_id = excluded.base_position_id",
            )
            .bind(&pyramiding.instrument)
            .bind(pyramiding.last_pyramid_price.to_string())
            .bind(&pyramiding.base_position_id)
            .execute(&mut *tx)
            .await
            .map_err(classify_pg)?;
        }
        tx.commit().await.map_err(classify_pg)
    }

    async fn raw_open_position_scan(&self) -> Result<usize, StoreError> {
        let rows = sqlx::query_as::<_, PositionRow>(LOAD_POSITIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_pg)?;
        Ok(rows.len())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
