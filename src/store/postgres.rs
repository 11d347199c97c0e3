//! The PostgreSQL backend. Money is NUMERIC; it is read back as text so that decoding
//! happens in Rust exactly as for SQLite, and written as text cast to NUMERIC.

use super::signal_tx::{self, SignalTx, Standing};
use super::{
    classify, timestamp_text, Access, Applied, ApplyError, InstanceRecord, InstanceRow,
    PortfolioRow, PositionRow, PyramidingRow, QueuedRow, RecoveryRows, SignalClaim, SignalOutcome,
    StateWrite, Store, StoreError, CONNECT_TIMEOUT, POOL_MAX_CONNECTIONS,
};
use super::{fenced, lease_ms, ColumnRow, Fence, Footprint, MigrationRow, Schema};
use crate::domain::Pyramiding;
use crate::domain::{Portfolio, Position};
use crate::trading::plan::{Book, Closed, Plan, Refusal};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::str::FromStr;
use std::time::Duration;

/// The first key of vigil's advisory locks, so they cannot collide with another
/// application's locks on the same database.
const ADVISORY_LOCK_CLASS: i32 = 0x7669_6700;

/// The second key of the advisory lock that serialises leadership decisions. Instrument
/// locks use [`instrument_lock_key`] under their own class.
const LEADERSHIP_LOCK_KEY: i32 = 0;

/// The second key of the advisory lock that serialises start decisions (the restart
/// budget).
const START_LOCK_KEY: i32 = 1;

/// The class of per-instrument signal locks.
const INSTRUMENT_LOCK_CLASS: i32 = ADVISORY_LOCK_CLASS + 1;

/// A PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Everything but signals: recovery, status, heartbeats, leadership, probes. Its
    /// sessions cut off a statement after [`GENERAL_STATEMENT_TIMEOUT_MS`].
    pool: PgPool,
    /// Signals only, so that no status query or scan can take their connections. Its
    /// sessions cut off a statement, a lock wait or an idle transaction below the signal's
    /// own deadline, so a statement vigil gave up on does not keep running on the server and
    /// a paused holder does not keep its locks.
    signals: PgPool,
}

/// Connections in the signal pool: room for [`crate::intake::DRAIN_CONCURRENCY`] drain
/// transactions and [`LIVE_SIGNAL_CONNECTIONS`] live alerts besides.
pub const SIGNAL_POOL_CONNECTIONS: u32 = 10;

/// Signal-pool connections kept for live alerts while a backlog drains.
const LIVE_SIGNAL_CONNECTIONS: u32 = 2;

const _: () = assert!(
    crate::intake::DRAIN_CONCURRENCY + LIVE_SIGNAL_CONNECTIONS as usize
        <= SIGNAL_POOL_CONNECTIONS as usize
);

/// Server-side bounds of the signal pool's sessions, in milliseconds: each below the
/// client's deadline for a queued alert's transaction (1.5 s), the lock wait below the one
/// for an alert applied within its request (450 ms).
const SIGNAL_STATEMENT_TIMEOUT_MS: u64 = 1200;
const SIGNAL_LOCK_TIMEOUT_MS: u64 = 400;
const SIGNAL_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 1500;

/// Server-side bounds of the general pool's sessions, in milliseconds: below recovery's 30 s
/// read, so a scan vigil gave up on ends on the server too.
const GENERAL_STATEMENT_TIMEOUT_MS: u64 = 25_000;
const GENERAL_LOCK_TIMEOUT_MS: u64 = 1000;
const GENERAL_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5000;

const _: () = assert!(
    SIGNAL_STATEMENT_TIMEOUT_MS < crate::intake::DRAIN_STORE_DEADLINE.as_millis() as u64
        && SIGNAL_IDLE_IN_TRANSACTION_TIMEOUT_MS
            <= crate::intake::DRAIN_STORE_DEADLINE.as_millis() as u64
        && SIGNAL_LOCK_TIMEOUT_MS < crate::intake::DIRECT_STORE_DEADLINE.as_millis() as u64
);

/// Session settings, as startup options: `statement_timeout`, `lock_timeout` and
/// `idle_in_transaction_session_timeout`, in milliseconds.
fn session_bounds(
    options: PgConnectOptions,
    statement_ms: u64,
    lock_ms: u64,
    idle_ms: u64,
) -> PgConnectOptions {
    options.options([
        ("statement_timeout", statement_ms.to_string()),
        ("lock_timeout", lock_ms.to_string()),
        ("idle_in_transaction_session_timeout", idle_ms.to_string()),
    ])
}

/// Maps PostgreSQL SQLSTATE codes.
fn classify_pg(error: sqlx::Error) -> StoreError {
    classify(error, |code, message| {
        let message = message.to_string();
        match code {
            // connection exceptions, shutdowns, too many connections
            _ if code.starts_with("08") => Some(StoreError::Unavailable(message)),
            // shutdowns, too many connections, and a database that refuses connections
            // (ALLOW_CONNECTIONS false, as during maintenance)
            "57P01" | "57P02" | "57P03" | "53300" | "55000" => {
                Some(StoreError::Unavailable(message))
            }
            "42P01" => Some(StoreError::NoSchema(message)),
            // invalid_catalog_name: the URL names a database the server does not have.
            "3D000" => Some(StoreError::Other(format!(
                "{message}: create it (`createdb NAME`, or `CREATE DATABASE name;` in psql), or correct the database name in the URL"
            ))),
            // lock_not_available and query_canceled: a lock wait or a statement ran past the
            // session's bound. Contention, not an outage: the heartbeat judges the database.
            "55P03" | "57014" => Some(StoreError::Conflict(message)),
            _ => None,
        }
    })
}

/// The migrations this version ships for PostgreSQL.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// What of vigil's the database holds: whether it has a migration history, and its tables.
const FOOTPRINT: &str =
    "SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS history, to_regclass('positions') IS NOT NULL AS tables";

/// The migrations a database records.
const LOAD_MIGRATIONS: &str =
    "SELECT version, description, checksum, success FROM _sqlx_migrations ORDER BY version";

/// The connection options `url` gives, or why it is not a PostgreSQL URL.
pub(super) fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|error| {
        StoreError::BadUrl(format!(
            "invalid PostgreSQL URL `{}`: {error}",
            super::redact(url)
        ))
    })
}

/// The portfolio row of a new database, from an initial capital (`$1`); nothing when a row
/// exists.
const CREATE_PORTFOLIO: &str =
    "INSERT INTO portfolio_state (id, initial_capital, closed_equity, total_risk, margin_used, version, updated_at) \
     VALUES (1, $1::numeric, $1::numeric, 0, 0, 0, now()) ON CONFLICT (id) DO NOTHING";

/// Timestamps as the RFC 3339 text SQLite stores, so rows decode the same way.
/// A position's columns as text, to be decoded by `store::codec`.
macro_rules! position_columns {
    () => {
        "id, instrument, label, status, lots::text AS lots, entry_price::text AS entry_price, \
         stop_price::text AS stop_price, risk_amount::text AS risk_amount, margin::text AS margin, is_base_position, \
         base_position_id, to_char(entry_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS entry_time, version, \
         exit_price::text AS exit_price, to_char(exit_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS exit_time, \
         realized_pnl::text AS realized_pnl"
    };
}

const LOAD_POSITIONS: &str = concat!(
    "SELECT ",
    position_columns!(),
    " FROM positions ORDER BY id"
);

/// The open positions, at most `$1`.
const LOAD_OPEN_POSITIONS: &str = concat!(
    "SELECT ",
    position_columns!(),
    " FROM positions WHERE status = 'open' ORDER BY instrument, positions.entry_time, id LIMIT $1"
);

const LOAD_PORTFOLIO: &str = "SELECT initial_capital::text AS initial_capital, closed_equity::text AS closed_equity, \
     total_risk::text AS total_risk, margin_used::text AS margin_used, version FROM portfolio_state WHERE id = 1";

const LOAD_PYRAMIDING: &str =
    "SELECT instrument, last_pyramid_price::text AS last_pyramid_price, base_position_id \
     FROM pyramiding_state ORDER BY instrument";

/// One signal's transaction on PostgreSQL.
struct PgSignalTx {
    /// The transaction on a signal-pool session.
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// What the claim's statement read of the instrument's alerts: the claim and the
    /// standing share one round trip.
    standing: Option<Standing>,
}

/// The second key of an instrument's advisory lock: the first 4 bytes of the SHA-256 of
/// its name, computed here so that the key is a number written into the `BEGIN` statement
/// (the lock costs no round trip of its own) and never text from outside.
fn instrument_lock_key(instrument: &str) -> i32 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(instrument.as_bytes());
    let mut key = [0_u8; 4];
    key.copy_from_slice(&digest[..4]);
    i32::from_be_bytes(key)
}

impl PgSignalTx {
    /// Begins it on the signal pool, and takes the instrument's advisory lock in the same
    /// round trip, so that signals of one instrument never interleave whether or not Redis
    /// holds its lock too.
    async fn begin(pool: &PgPool, instrument: &str) -> Result<PgSignalTx, StoreError> {
        // The lock ends with the transaction; the session's lock_timeout bounds the wait.
        let begin = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({INSTRUMENT_LOCK_CLASS}, {})",
            instrument_lock_key(instrument)
        );
        let tx = pool
            .begin_with(sqlx::AssertSqlSafe(begin))
            .await
            .map_err(classify_pg)?;
        Ok(PgSignalTx { tx, standing: None })
    }

    /// Runs one statement; the rows it affected.
    async fn run(
        &mut self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64, StoreError> {
        Ok(query
            .execute(&mut *self.tx)
            .await
            .map_err(classify_pg)?
            .rows_affected())
    }
}

impl SignalTx for PgSignalTx {
    async fn claim(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError> {
        let signal = claim.signal;
        // The reads do not see the row this statement inserts; what they answer is the same
        // (this alert is never older than itself, and is not queued).
        let (claimed, older_queued, latest_recorded_at) =
            sqlx::query_as::<_, (i64, bool, Option<String>)>(
                "WITH claimed AS (INSERT INTO signal_log (fingerprint, signal_type, instrument, payload, status, \
                 received_at, processed_at, instance_id, alert_at) VALUES ($1, $2, $3, $4, 'applied', $5::timestamptz, \
                 now(), $6, $7::timestamptz) ON CONFLICT (fingerprint) DO NOTHING RETURNING 1) \
                 SELECT (SELECT COUNT(*) FROM claimed), \
                 EXISTS (SELECT 1 FROM signal_log WHERE instrument = $3 AND status = 'queued' \
                 AND (alert_at < $7::timestamptz OR (alert_at = $7::timestamptz AND fingerprint < $1))), \
                 (SELECT to_char(max(alert_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM signal_log WHERE instrument = $3 AND status <> 'queued')",
            )
            .bind(claim.fingerprint)
            .bind(signal.kind.as_str())
            .bind(&signal.instrument)
            .bind(signal.payload())
            .bind(timestamp_text(claim.received_at))
            .bind(claim.instance_id)
            .bind(signal_tx::alert_at(claim))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(classify_pg)?;
        self.standing = Some(Standing {
            older_queued,
            latest_recorded_at,
        });
        u64::try_from(claimed)
            .map_err(|_| StoreError::Corrupt(format!("a claim counted {claimed} rows")))
    }

    async fn standing(&mut self, claim: &SignalClaim<'_>) -> Result<Standing, StoreError> {
        if let Some(standing) = self.standing.take() {
            return Ok(standing);
        }
        sqlx::query_as::<_, Standing>(
            "SELECT EXISTS (SELECT 1 FROM signal_log WHERE instrument = $1 AND status = 'queued' \
             AND (alert_at < $2::timestamptz OR (alert_at = $2::timestamptz AND fingerprint < $3))) AS older_queued, \
             (SELECT to_char(max(alert_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM signal_log WHERE instrument = $1 AND status <> 'queued') AS latest_recorded_at",
        )
        .bind(&claim.signal.instrument)
        .bind(signal_tx::alert_at(claim))
        .bind(claim.fingerprint)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(classify_pg)
    }

    async fn ensure_portfolio(&mut self) -> Result<(), StoreError> {
        // On a new database the row does not exist yet and FOR UPDATE would lock nothing, so
        // it is created first; a concurrent creator waits here for this transaction.
        self.run(sqlx::query(CREATE_PORTFOLIO).bind("0")).await?;
        Ok(())
    }

    async fn book_rows(
        &mut self,
        instrument: &str,
    ) -> Result<(Vec<PositionRow>, Option<PortfolioRow>), StoreError> {
        // The portfolio row is the one lock every signal takes: totals are global.
        let portfolio = sqlx::query_as::<_, PortfolioRow>(
            "SELECT initial_capital::text AS initial_capital, closed_equity::text AS closed_equity, \
             total_risk::text AS total_risk, margin_used::text AS margin_used, version \
             FROM portfolio_state WHERE id = 1 FOR UPDATE",
        )
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(classify_pg)?;
        let positions = sqlx::query_as::<_, PositionRow>(LOAD_INSTRUMENT)
            .bind(instrument)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(classify_pg)?;
        Ok((positions, portfolio))
    }

    async fn insert_position(&mut self, position: &Position) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, \
                 margin, is_base_position, base_position_id, entry_time, version) \
                 VALUES ($1, $2, $3, 'open', $4::numeric, $5::numeric, $6::numeric, $7::numeric, $8::numeric, $9, $10, \
                 $11::timestamptz, 1)",
            )
            .bind(&position.id)
            .bind(&position.instrument)
            .bind(&position.label)
            .bind(position.lots.to_string())
            .bind(position.entry_price.to_string())
            .bind(position.stop_price.to_string())
            .bind(position.risk_amount.to_string())
            .bind(position.margin.to_string())
            .bind(position.is_base_position)
            .bind(&position.base_position_id)
            .bind(timestamp_text(position.entry_time)),
        )
        .await
    }

    async fn close_position(&mut self, closed: &Closed) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE positions SET status = 'closed', exit_price = $2::numeric, exit_time = now(), \
                 realized_pnl = $3::numeric, version = version + 1 WHERE id = $1 AND status = 'open'",
            )
            .bind(&closed.id)
            .bind(closed.exit_price.to_string())
            .bind(closed.realized_pnl.to_string()),
        )
        .await
    }

    async fn write_portfolio(&mut self, portfolio: &Portfolio) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE portfolio_state SET closed_equity = $1::numeric, total_risk = $2::numeric, \
                 margin_used = $3::numeric, version = $4, updated_at = now() WHERE id = 1 AND version = $5",
            )
            .bind(portfolio.closed_equity.to_string())
            .bind(portfolio.total_risk.to_string())
            .bind(portfolio.margin_used.to_string())
            .bind(portfolio.version)
            .bind(portfolio.version - 1),
        )
        .await
    }

    async fn upsert_pyramiding(&mut self, pyramiding: &Pyramiding) -> Result<u64, StoreError> {
        upsert_pyramiding(&mut self.tx, pyramiding).await
    }

    async fn delete_pyramiding(&mut self, instrument: &str) -> Result<u64, StoreError> {
        self.run(sqlx::query("DELETE FROM pyramiding_state WHERE instrument = $1").bind(instrument))
            .await
    }

    async fn take_over_queued(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE signal_log SET status = 'applied', processed_at = $2::timestamptz, instance_id = $3 \
                 WHERE fingerprint = $1 AND status = 'queued'",
            )
            .bind(claim.fingerprint)
            .bind(timestamp_text(Utc::now()))
            .bind(claim.instance_id),
        )
        .await
    }

    async fn set_outcome(
        &mut self,
        fingerprint: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(signal_tx::SET_OUTCOME_SQL)
                .bind(fingerprint)
                .bind(status)
                .bind(reason),
        )
        .await
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(classify_pg)
    }

    async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(classify_pg)
    }
}

impl PgStore {
    /// Connects to `url`. Read-only sessions refuse every write.
    pub async fn connect(url: &str, access: Access) -> Result<PgStore, StoreError> {
        let options = options(url)?;
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
            .connect_with(session_bounds(
                options.clone(),
                GENERAL_STATEMENT_TIMEOUT_MS,
                GENERAL_LOCK_TIMEOUT_MS,
                GENERAL_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            ))
            .await
            .map_err(classify_pg)?;
        // Opened lazily: a database that refuses signals' connections is found by the
        // signal that needs one, within its deadline.
        let signals = PgPoolOptions::new()
            .max_connections(SIGNAL_POOL_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(session_bounds(
                options,
                SIGNAL_STATEMENT_TIMEOUT_MS,
                SIGNAL_LOCK_TIMEOUT_MS,
                SIGNAL_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            ));
        Ok(PgStore { pool, signals })
    }
}

/// Signal-pool sessions opened, and warmed, before the instance serves.
pub const SIGNAL_POOL_WARM_CONNECTIONS: usize = 2;

/// What a warmed session reads once: every table and index a signal transaction uses, so
/// the session's catalog caches are loaded before the first alert rather than during it.
const WARM_UP: &str = "SELECT (SELECT COUNT(*) FROM portfolio_state) \
     + (SELECT COUNT(*) FROM signal_log WHERE fingerprint = '' OR (instrument = '' AND status = 'queued')) \
     + (SELECT COUNT(*) FROM positions WHERE instrument = '' AND status = 'open') \
     + (SELECT COUNT(*) FROM pyramiding_state WHERE instrument = '')";

impl PgStore {
    /// Opens [`SIGNAL_POOL_WARM_CONNECTIONS`] signal-pool sessions at once and reads
    /// [`WARM_UP`] on each, so that the first alerts after a start do not pay for new
    /// sessions. Best effort: a session that fails now is opened by the alert that needs it.
    pub async fn warm_signal_pool(&self) {
        let warm = (0..SIGNAL_POOL_WARM_CONNECTIONS).map(|_| async {
            let mut session = self.signals.acquire().await.ok()?;
            sqlx::query(WARM_UP).execute(&mut *session).await.ok()
        });
        let warmed = futures_util::future::join_all(warm).await;
        let failed = warmed.iter().filter(|warmed| warmed.is_none()).count();
        if failed > 0 {
            tracing::debug!(target: "vigil::store", "{failed} signal sessions not warmed; they open on demand");
        }
    }
}

const LOAD_INSTRUMENT: &str = "SELECT id, instrument, label, status, lots::text AS lots, entry_price::text AS entry_price, \
     stop_price::text AS stop_price, risk_amount::text AS risk_amount, margin::text AS margin, is_base_position, \
     base_position_id, to_char(entry_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS entry_time, version, \
     exit_price::text AS exit_price, to_char(exit_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS exit_time, \
     realized_pnl::text AS realized_pnl FROM positions WHERE instrument = $1 AND status = 'open' ORDER BY entry_time";

impl Store for PgStore {
    async fn apply_signal<F>(
        &self,
        claim: &SignalClaim<'_>,
        decide: F,
    ) -> Result<Applied, ApplyError>
    where
        F: FnOnce(&Book) -> Result<Plan, Refusal>,
    {
        let tx = PgSignalTx::begin(&self.signals, &claim.signal.instrument).await?;
        signal_tx::apply(tx, claim, decide).await
    }

    async fn refuse_signal(
        &self,
        claim: &SignalClaim<'_>,
        refusal: Refusal,
    ) -> Result<Applied, ApplyError> {
        let tx = PgSignalTx::begin(&self.signals, &claim.signal.instrument).await?;
        signal_tx::refuse(tx, claim, refusal).await
    }

    async fn signal_outcome(&self, fingerprint: &str) -> Result<Option<SignalOutcome>, StoreError> {
        sqlx::query_as::<_, SignalOutcome>(
            "SELECT fingerprint, signal_type, instrument, status, reason, to_char(alert_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS alert_at, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS received_at, instance_id FROM signal_log WHERE fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify_pg)
    }

    async fn signal_claimed(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT 1::bigint FROM signal_log WHERE fingerprint = $1 AND status <> 'queued'",
        )
        .bind(fingerprint)
        .fetch_optional(&self.signals)
        .await
        .map_err(classify_pg)?;
        Ok(found.is_some())
    }

    async fn queue_signals(&self, claims: &[SignalClaim<'_>]) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        let mut new = 0;
        for claim in claims {
            let signal = claim.signal;
            new += sqlx::query(
                "INSERT INTO signal_log (fingerprint, signal_type, instrument, payload, status, received_at, instance_id, alert_at, \
                 processed_at) VALUES ($1, $2, $3, $4, 'queued', $5::timestamptz, $6, $7::timestamptz, now()) \
                 ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(claim.fingerprint)
            .bind(signal.kind.as_str())
            .bind(&signal.instrument)
            .bind(signal.payload())
            .bind(timestamp_text(claim.received_at))
            .bind(claim.instance_id)
            .bind(signal_tx::alert_at(claim))
            .execute(&mut *tx)
            .await
            .map_err(classify_pg)?
            .rows_affected();
        }
        tx.commit().await.map_err(classify_pg)?;
        Ok(usize::try_from(new).unwrap_or(usize::MAX))
    }

    async fn queued_heads(&self, limit: i64) -> Result<Vec<QueuedRow>, StoreError> {
        sqlx::query_as::<_, QueuedRow>(signal_tx::queued_heads_sql(pg_time_text))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_pg)
    }

    async fn record_journal_backlog(
        &self,
        instance_id: &str,
        pending: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instance_metadata SET journal_pending = $2, last_heartbeat = $3::timestamptz WHERE instance_id = $1")
            .bind(instance_id)
            .bind(pending)
            .bind(timestamp_text(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(classify_pg)?;
        Ok(())
    }

    async fn journal_backlog_elsewhere(
        &self,
        instance_id: &str,
        fresh_since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(journal_pending), 0)::bigint FROM instance_metadata \
             WHERE instance_id <> $1 AND last_heartbeat > $2::timestamptz",
        )
        .bind(instance_id)
        .bind(timestamp_text(fresh_since))
        .fetch_one(&self.pool)
        .await
        .map_err(classify_pg)?;
        Ok(pending)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify_pg)?;
        Ok(())
    }

    async fn position_counts(&self) -> Result<(i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE status = 'open'), COUNT(*) FILTER (WHERE status = 'closed') FROM positions",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify_pg)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let footprint = self.footprint().await?;
        super::run_migrations(&MIGRATOR, &self.pool, footprint, classify_pg).await
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
        let Footprint { history, .. } = sqlx::query_as(FOOTPRINT)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify_pg)?;
        let applied = match history {
            false => None,
            true => Some(
                sqlx::query_as::<_, MigrationRow>(LOAD_MIGRATIONS)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify_pg)?,
            ),
        };
        let found = sqlx::query_as::<_, ColumnRow>(
            "SELECT table_name::text AS table_name, column_name::text AS column_name, data_type::text AS data_type \
             FROM information_schema.columns WHERE table_schema = current_schema() AND table_name::text = ANY($1) \
             ORDER BY 1, 2",
        )
        .bind(super::DECODED_TABLES.to_vec())
        .fetch_all(&mut *tx)
        .await
        .map_err(classify_pg)?;
        tx.rollback().await.map_err(classify_pg)?;
        let (shipped, expected) = super::shipped_schema(&MIGRATOR, true);
        Ok(RecoveryRows {
            positions,
            portfolio,
            pyramiding,
            schema: Some(Schema {
                shipped,
                applied,
                expected,
                found,
            }),
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

    async fn create_portfolio(&self, initial_capital: Decimal) -> Result<(), StoreError> {
        sqlx::query(CREATE_PORTFOLIO)
            .bind(initial_capital.to_string())
            .execute(&self.pool)
            .await
            .map_err(classify_pg)?;
        Ok(())
    }

    async fn write_state(&self, state: &StateWrite) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        let positions = &state.positions;
        let column =
            |f: &dyn Fn(&Position) -> String| positions.iter().map(f).collect::<Vec<String>>();
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
            upsert_pyramiding(&mut tx, pyramiding).await?;
        }
        tx.commit().await.map_err(classify_pg)
    }

    async fn heartbeat(&self, instance_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instance_metadata SET last_heartbeat = $1::timestamptz WHERE instance_id = $2",
        )
        .bind(timestamp_text(now))
        .bind(instance_id)
        .execute(&self.pool)
        .await
        .map_err(classify_pg)?;
        Ok(())
    }

    async fn instances(&self, _now: DateTime<Utc>) -> Result<Vec<InstanceRow>, StoreError> {
        sqlx::query_as::<_, InstanceRow>(
            "SELECT m.instance_id, m.status, m.hostname, \
             to_char(m.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS started_at, \
             to_char(m.last_heartbeat AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS last_heartbeat, \
             COALESCE(l.expires_at > clock_timestamp(), false) AS leader \
             FROM instance_metadata m LEFT JOIN leadership l ON l.instance_id = m.instance_id \
             ORDER BY m.instance_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify_pg)
    }

    async fn take_leadership(
        &self,
        instance_id: &str,
        lease: Duration,
        _now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        // Database-only coordination: one leadership decision at a time, across instances.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(LEADERSHIP_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(classify_pg)?;
        // Expiry is judged by the database's clock, the one clock all instances share.
        let token: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO leadership (id, instance_id, fencing_token, acquired_at, expires_at) \
             VALUES (1, $1, nextval('leader_fencing_token'), clock_timestamp(), \
                     clock_timestamp() + $2 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET instance_id = excluded.instance_id, \
                 fencing_token = excluded.fencing_token, acquired_at = excluded.acquired_at, \
                 expires_at = excluded.expires_at \
             WHERE leadership.expires_at <= clock_timestamp() OR leadership.instance_id = $1 \
             RETURNING fencing_token",
        )
        .bind(instance_id)
        .bind(lease_ms(lease))
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify_pg)?;
        tx.commit().await.map_err(classify_pg)?;
        Ok(token.map(|(token,)| token))
    }

    async fn renew_leadership(
        &self,
        fence: Fence<'_>,
        lease: Duration,
        _now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE leadership SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = 1 AND instance_id = $1 AND fencing_token = $2 AND expires_at > clock_timestamp()",
        )
        .bind(fence.instance_id)
        .bind(fence.fencing_token)
        .bind(lease_ms(lease))
        .execute(&self.pool)
        .await
        .map_err(classify_pg)?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_leadership(
        &self,
        fence: Fence<'_>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leadership SET expires_at = clock_timestamp() \
             WHERE id = 1 AND instance_id = $1 AND fencing_token = $2",
        )
        .bind(fence.instance_id)
        .bind(fence.fencing_token)
        .execute(&self.pool)
        .await
        .map_err(classify_pg)?;
        Ok(())
    }

    async fn record_statistics(
        &self,
        fence: Fence<'_>,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_pg)?;
        // The figures first, from one snapshot, so that the leadership row is never locked
        // across the scan and renewals never queue behind it.
        let (open, closed_equity, total_risk, margin_used): (i64, String, String, String) =
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM positions WHERE status = 'open'), \
                 COALESCE(p.closed_equity, 0)::text, COALESCE(p.total_risk, 0)::text, COALESCE(p.margin_used, 0)::text \
                 FROM (SELECT 1) AS one LEFT JOIN portfolio_state p ON p.id = 1",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(classify_pg)?;
        // The fencing check: the row lock holds off a new leader until this write commits,
        // and a token older than the row's writes nothing.
        let current: Option<(i64,)> =
            sqlx::query_as("SELECT fencing_token FROM leadership WHERE id = 1 FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify_pg)?;
        let current = current.map(|(token,)| token);
        if current != Some(fence.fencing_token) {
            tx.rollback().await.map_err(classify_pg)?;
            return Err(fenced(fence, current));
        }
        sqlx::query(
            "INSERT INTO statistics (taken_at, instance_id, open_positions, closed_equity, total_risk, \
             margin_used, fencing_token) \
             VALUES (clock_timestamp(), $1, $2, $3::numeric, $4::numeric, $5::numeric, $6)",
        )
        .bind(fence.instance_id)
        .bind(open)
        .bind(closed_equity)
        .bind(total_risk)
        .bind(margin_used)
        .bind(fence.fencing_token)
        .execute(&mut *tx)
        .await
        .map_err(classify_pg)?;
        tx.commit().await.map_err(classify_pg)?;
        Ok(())
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        sqlx::query_as(FOOTPRINT)
            .fetch_one(&self.pool)
            .await
            .map_err(classify_pg)
    }

    async fn open_position_rows(&self, limit: i64) -> Result<Vec<PositionRow>, StoreError> {
        sqlx::query_as::<_, PositionRow>(LOAD_OPEN_POSITIONS)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_pg)
    }

    async fn raw_open_position_scan(&self) -> Result<usize, StoreError> {
        let rows = sqlx::query_as::<_, PositionRow>(LOAD_POSITIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_pg)?;
        Ok(rows.len())
    }

    async fn close(&self) {
        tokio::join!(self.pool.close(), self.signals.close());
    }
}

/// Inserts or replaces an instrument's pyramiding row.
async fn upsert_pyramiding(
    tx: &mut PgConnection,
    pyramiding: &Pyramiding,
) -> Result<u64, StoreError> {
    sqlx::query(
        "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) \
         VALUES ($1, $2::numeric, $3) \
         ON CONFLICT (instrument) DO UPDATE SET last_pyramid_price = excluded.last_pyramid_price, \
         base_position_id = excluded.base_position_id",
    )
    .bind(&pyramiding.instrument)
    .bind(pyramiding.last_pyramid_price.to_string())
    .bind(&pyramiding.base_position_id)
    .execute(tx)
    .await
    .map_err(classify_pg)
    .map(|done| done.rows_affected())
}

/// A PostgreSQL time column as RFC 3339 text in UTC.
fn pg_time_text(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

super::operations::impl_operations!(
    PgStore,
    classify_pg,
    "::timestamptz",
    "::numeric",
    pg_time_text,
    format!("BEGIN; SELECT pg_advisory_xact_lock({ADVISORY_LOCK_CLASS}, {START_LOCK_KEY})")
);
