//! The SQLite backend: one file, WAL journal, foreign keys on. Money is TEXT.

use super::signal_tx::{self, SignalTx, Standing};
use super::{
    classify, timestamp_text, Access, Applied, ApplyError, InstanceRecord, InstanceRow,
    PortfolioRow, PositionRow, PyramidingRow, QueuedRow, RecoveryRows, SignalClaim, SignalOutcome,
    StateWrite, Store, StoreError, CONNECT_TIMEOUT, POOL_MAX_CONNECTIONS,
};
use super::{fenced, lease_ms, ColumnRow, Fence, Footprint, MigrationRow, Schema};
use crate::domain::{Portfolio, Position, Pyramiding};
use crate::trading::plan::{Book, Closed, Plan, Refusal};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The connection pool.
    pool: SqlitePool,
    /// Signal transactions queue here, in arrival order, rather than in SQLite's busy
    /// handler, which sleeps in steps of up to 100 ms and lets latency run away under load.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// Maps SQLite result codes (extended codes carry the primary code in their low byte).
fn classify_sqlite(error: sqlx::Error) -> StoreError {
    classify(error, |code, message| {
        let primary = code.parse::<i64>().ok()? & 0xff;
        match primary {
                        // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL: the file cannot be used right now.
            5 | 6 | 10 | 13 | 14 | 15 => Some(StoreError::Unavailable(message.to_string())),
            // READONLY: in a read-only check, SQLite could not create its WAL index beside
            // the file because the directory is not writable.
            8 => Some(StoreError::Unavailable(format!(
                "{message} (SQLite needs to write its -shm index beside a WAL database, even to read it)"
            ))),
            1 if message.contains("BLOB") => Some(StoreError::Corrupt(message.to_string())),
            // CORRUPT, NOTADB: the file itself is damaged.
            11 | 26 => Some(StoreError::Corrupt(message.to_string())),
            1 if message.contains("no such table") => {
                Some(StoreError::NoSchema(message.to_string()))
            }
            _ => None,
        }
    })
}

/// The migrations this version ships for SQLite.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// What of vigil's the database holds: whether it has a migration history, and its tables.
const FOOTPRINT: &str = "SELECT \
     EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations') AS history, \
     EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'positions') AS tables";

/// The connection options `url` gives, or why it is not a SQLite URL.
pub(super) fn options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.split('?').next().is_none_or(str::is_empty) {
        return Err(StoreError::BadUrl(format!(
            "invalid SQLite URL `{url}`: it names no file; write sqlite://FILE, for example sqlite://vigil.db"
        )));
    }
    SqliteConnectOptions::from_str(url)
        .map_err(|error| StoreError::BadUrl(format!("invalid SQLite URL `{url}`: {error}")))
}

/// The portfolio row of a new database, from an initial capital (`?1`) at `?2`; nothing
/// when a row exists.
const CREATE_PORTFOLIO: &str =
    "INSERT INTO portfolio_state (id, initial_capital, closed_equity, total_risk, margin_used, version, updated_at) \
     VALUES (1, ?1, ?1, '0', '0', 0, ?2) ON CONFLICT (id) DO NOTHING";

/// A position's columns, in [`JsonPosition`]'s order.
macro_rules! position_columns {
    () => {
        "id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, \
         is_base_position, base_position_id, entry_time, version, exit_price, exit_time, realized_pnl"
    };
}

const LOAD_POSITIONS: &str = concat!("SELECT ", position_columns!(), " FROM positions");

/// The same rows as [`LOAD_POSITIONS`], built into one JSON array by SQLite itself: the
/// driver's per-row cost is several times SQLite's own, and recovery reads every open
/// position at once.
const LOAD_POSITIONS_JSON: &str = concat!(
    "SELECT json_group_array(json_array(",
    position_columns!(),
    ")) FROM positions"
);

/// The open positions, at most `?1`, as [`LOAD_POSITIONS_JSON`] builds them.
const LOAD_OPEN_POSITIONS_JSON: &str = concat!(
    "SELECT json_group_array(json_array(",
    position_columns!(),
    ")) FROM (SELECT * FROM positions WHERE status = 'open' ORDER BY instrument, entry_time, id LIMIT ?1)"
);

/// A money or lot column as SQLite holds it: text as written, or a number if a hand wrote
/// one; either way it reaches the decoder as text.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum Loose {
    Text(String),
    Number(serde_json::Number),
}

impl Loose {
    fn into_text(self) -> String {
        match self {
            Loose::Text(text) => text,
            Loose::Number(number) => number.to_string(),
        }
    }
}

/// One element of [`LOAD_POSITIONS_JSON`], in column order.
#[derive(Debug, serde::Deserialize)]
struct JsonPosition(
    String,
    String,
    String,
    Option<Loose>,
    Option<Loose>,
    Option<Loose>,
    Option<Loose>,
    Option<Loose>,
    Option<Loose>,
    i64,
    Option<String>,
    Option<Loose>,
    i64,
    Option<Loose>,
    Option<Loose>,
    Option<Loose>,
);

fn positions_from_json(json: &str) -> Result<Vec<PositionRow>, StoreError> {
    let rows: Vec<JsonPosition> = serde_json::from_str(json)
        .map_err(|error| StoreError::Corrupt(format!("positions cannot be read: {error}")))?;
    Ok(rows
        .into_iter()
        .map(
            |JsonPosition(
                id,
                instrument,
                label,
                status,
                lots,
                entry,
                stop,
                risk,
                margin,
                is_base,
                base,
                entry_time,
                version,
                exit_price,
                exit_time,
                realized_pnl,
            )| {
                PositionRow {
                    id,
                    instrument,
                    label,
                    status: status.map(Loose::into_text),
                    lots: lots.map(Loose::into_text),
                    entry_price: entry.map(Loose::into_text),
                    stop_price: stop.map(Loose::into_text),
                    risk_amount: risk.map(Loose::into_text),
                    margin: margin.map(Loose::into_text),
                    is_base_position: is_base != 0,
                    base_position_id: base,
                    entry_time: entry_time.map(Loose::into_text),
                    version,
                    exit_price: exit_price.map(Loose::into_text),
                    exit_time: exit_time.map(Loose::into_text),
                    realized_pnl: realized_pnl.map(Loose::into_text),
                }
            },
        )
        .collect())
}

const LOAD_PORTFOLIO: &str =
    "SELECT initial_capital, closed_equity, total_risk, margin_used, version FROM portfolio_state WHERE id = 1";

const LOAD_PYRAMIDING: &str =
    "SELECT instrument, last_pyramid_price, base_position_id FROM pyramiding_state ORDER BY instrument";

impl SqliteStore {
    /// Opens `url`. Read-write creates the file if it is missing; read-only never does.
    pub async fn connect(url: &str, access: Access) -> Result<SqliteStore, StoreError> {
        let options = options(url)?
            .foreign_keys(true)
            .busy_timeout(CONNECT_TIMEOUT);
        let file = options.get_filename().to_path_buf();
        let created = access == Access::ReadWrite
            && file != std::path::Path::new(":memory:")
            && !file.exists();
        let options = match access {
            Access::ReadWrite => options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
            Access::ReadOnly => options.read_only(true),
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(classify_sqlite)?;
        if created {
            // A mistyped path would otherwise start an empty book without a word.
            tracing::warn!(target: "vigil::store", "created a new, empty database at {}", file.display());
        }
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
        })
    }

    /// Begins a signal's transaction. IMMEDIATE takes the write lock now: SQLite has one
    /// writer, and a transaction that reads first and upgrades later can fail where this
    /// one waits (busy timeout).
    async fn begin_signal(
        &self,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, ()>,
            sqlx::Transaction<'static, sqlx::Sqlite>,
        ),
        StoreError,
    > {
        let writer = self.writer.lock().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify_sqlite)?;
        Ok((writer, tx))
    }
}

const LOAD_INSTRUMENT: &str =
    "SELECT id, instrument, label, status, lots, entry_price, stop_price, risk_amount, \
     margin, is_base_position, base_position_id, entry_time, version, exit_price, exit_time, realized_pnl \
     FROM positions WHERE instrument = ?1 AND status = 'open' ORDER BY entry_time";

impl Store for SqliteStore {
    async fn apply_signal<F>(
        &self,
        claim: &SignalClaim<'_>,
        decide: F,
    ) -> Result<Applied, ApplyError>
    where
        F: FnOnce(&Book) -> Result<Plan, Refusal>,
    {
        let (writer, tx) = self.begin_signal().await?;
        signal_tx::apply(
            SqliteSignalTx {
                tx,
                _writer: writer,
            },
            claim,
            decide,
        )
        .await
    }

    async fn refuse_signal(
        &self,
        claim: &SignalClaim<'_>,
        refusal: Refusal,
    ) -> Result<Applied, ApplyError> {
        let (writer, tx) = self.begin_signal().await?;
        signal_tx::refuse(
            SqliteSignalTx {
                tx,
                _writer: writer,
            },
            claim,
            refusal,
        )
        .await
    }

    async fn signal_outcome(&self, fingerprint: &str) -> Result<Option<SignalOutcome>, StoreError> {
        sqlx::query_as::<_, SignalOutcome>(
            "SELECT fingerprint, signal_type, instrument, status, reason, alert_at, received_at, instance_id FROM signal_log WHERE fingerprint = ?1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify_sqlite)
    }

    async fn signal_claimed(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM signal_log WHERE fingerprint = ?1 AND status <> 'queued'",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(found.is_some())
    }

    async fn queue_signals(&self, claims: &[SignalClaim<'_>]) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_sqlite)?;
        let mut new = 0;
        for claim in claims {
            let signal = claim.signal;
            new += sqlx::query(
                "INSERT INTO signal_log (fingerprint, signal_type, instrument, payload, status, received_at, instance_id, alert_at, \
                 processed_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(claim.fingerprint)
            .bind(signal.kind.as_str())
            .bind(&signal.instrument)
            .bind(signal.payload())
            .bind(timestamp_text(claim.received_at))
            .bind(claim.instance_id)
            .bind(signal_tx::alert_at(claim))
            .bind(timestamp_text(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(classify_sqlite)?
            .rows_affected();
        }
        tx.commit().await.map_err(classify_sqlite)?;
        Ok(usize::try_from(new).unwrap_or(usize::MAX))
    }

    async fn queued_heads(&self, limit: i64) -> Result<Vec<QueuedRow>, StoreError> {
        sqlx::query_as::<_, QueuedRow>(signal_tx::queued_heads_sql(str::to_string))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_sqlite)
    }

    async fn record_journal_backlog(
        &self,
        instance_id: &str,
        pending: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instance_metadata SET journal_pending = $2, last_heartbeat = $3 WHERE instance_id = $1")
            .bind(instance_id)
            .bind(pending)
            .bind(timestamp_text(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn journal_backlog_elsewhere(
        &self,
        instance_id: &str,
        fresh_since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(journal_pending), 0) FROM instance_metadata \
             WHERE instance_id <> $1 AND last_heartbeat > $2",
        )
        .bind(instance_id)
        .bind(timestamp_text(fresh_since))
        .fetch_one(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(pending)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn position_counts(&self) -> Result<(i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT COALESCE(SUM(status = 'open'), 0), COALESCE(SUM(status = 'closed'), 0) FROM positions",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify_sqlite)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let footprint = self.footprint().await?;
        super::run_migrations(&MIGRATOR, &self.pool, footprint, classify_sqlite).await
    }

    async fn load_recovery_rows(&self) -> Result<RecoveryRows, StoreError> {
        // One read transaction, so the three reads see the same committed state.
        let mut tx = self.pool.begin().await.map_err(classify_sqlite)?;
        let json: String = sqlx::query_scalar(LOAD_POSITIONS_JSON)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify_sqlite)?;
        let positions = positions_from_json(&json)?;
        let portfolio = sqlx::query_as::<_, PortfolioRow>(LOAD_PORTFOLIO)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify_sqlite)?;
        let pyramiding = sqlx::query_as::<_, PyramidingRow>(LOAD_PYRAMIDING)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify_sqlite)?;
        let Footprint { history, .. } = sqlx::query_as(FOOTPRINT)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify_sqlite)?;
        let applied = match history {
            false => None,
            true => Some(
                sqlx::query_as::<_, MigrationRow>(
                    "SELECT version, description, checksum, success FROM _sqlx_migrations ORDER BY version",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(classify_sqlite)?,
            ),
        };
        let columns: Vec<String> = super::DECODED_TABLES
            .iter()
            .map(|table| {
                format!("SELECT '{table}' AS table_name, name AS column_name, type AS data_type FROM pragma_table_info('{table}')")
            })
            .collect();
        let found = sqlx::query_as::<_, ColumnRow>(sqlx::AssertSqlSafe(format!(
            "{} ORDER BY 1, 2",
            columns.join(" UNION ALL ")
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify_sqlite)?;
        tx.rollback().await.map_err(classify_sqlite)?;
        let (shipped, expected) = super::shipped_schema(&MIGRATOR, false);
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
        let now = timestamp_text(now);
        sqlx::query(
            "INSERT INTO instance_metadata (instance_id, status, hostname, started_at, last_heartbeat, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, hostname = excluded.hostname, \
             started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat, updated_at = excluded.updated_at",
        )
        .bind(&instance.instance_id)
        .bind(status)
        .bind(&instance.hostname)
        .bind(timestamp_text(instance.started_at))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn instance_status(&self, instance_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT status FROM instance_metadata WHERE instance_id = ?1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify_sqlite)
    }

    async fn create_portfolio(&self, initial_capital: Decimal) -> Result<(), StoreError> {
        sqlx::query(CREATE_PORTFOLIO)
            .bind(initial_capital.to_string())
            .bind(timestamp_text(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn write_state(&self, state: &StateWrite) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify_sqlite)?;
        for position in &state.positions {
            insert_position(&mut tx, position).await?;
        }
        if let Some(portfolio) = &state.portfolio {
            sqlx::query(
                "INSERT INTO portfolio_state (id, initial_capital, closed_equity, total_risk, margin_used, version, updated_at) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET initial_capital = excluded.initial_capital, \
                 closed_equity = excluded.closed_equity, total_risk = excluded.total_risk, \
                 margin_used = excluded.margin_used, version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(portfolio.initial_capital.to_string())
            .bind(portfolio.closed_equity.to_string())
            .bind(portfolio.total_risk.to_string())
            .bind(portfolio.margin_used.to_string())
            .bind(portfolio.version)
            .bind(timestamp_text(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(classify_sqlite)?;
        }
        for pyramiding in &state.pyramiding {
            upsert_pyramiding(&mut tx, pyramiding).await?;
        }
        tx.commit().await.map_err(classify_sqlite)
    }

    async fn heartbeat(&self, instance_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE instance_metadata SET last_heartbeat = ?1 WHERE instance_id = ?2")
            .bind(timestamp_text(now))
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn instances(&self, now: DateTime<Utc>) -> Result<Vec<InstanceRow>, StoreError> {
        // Timestamps are stored in one fixed-width UTC format, so text order is time order.
        sqlx::query_as::<_, InstanceRow>(
            "SELECT m.instance_id, m.status, m.hostname, m.started_at, m.last_heartbeat, \
             COALESCE(l.expires_at > ?1, 0) AS leader \
             FROM instance_metadata m LEFT JOIN leadership l ON l.instance_id = m.instance_id \
             ORDER BY m.instance_id",
        )
        .bind(timestamp_text(now))
        .fetch_all(&self.pool)
        .await
        .map_err(classify_sqlite)
    }

    async fn take_leadership(
        &self,
        instance_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let _writer = self.writer.lock().await;
        let expires = now + chrono::Duration::milliseconds(lease_ms(lease));
        // SQLite has no sequence; the row's own token, plus one, only increases because the
        // row is never deleted.
        let token: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO leadership (id, instance_id, fencing_token, acquired_at, expires_at) \
             VALUES (1, ?1, COALESCE((SELECT fencing_token FROM leadership WHERE id = 1), 0) + 1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET instance_id = excluded.instance_id, \
                 fencing_token = leadership.fencing_token + 1, acquired_at = excluded.acquired_at, \
                 expires_at = excluded.expires_at \
             WHERE leadership.expires_at <= ?2 OR leadership.instance_id = ?1 \
             RETURNING fencing_token",
        )
        .bind(instance_id)
        .bind(timestamp_text(now))
        .bind(timestamp_text(expires))
        .fetch_optional(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(token.map(|(token,)| token))
    }

    async fn renew_leadership(
        &self,
        fence: Fence<'_>,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        let expires = now + chrono::Duration::milliseconds(lease_ms(lease));
        let renewed = sqlx::query(
            "UPDATE leadership SET expires_at = ?3 \
             WHERE id = 1 AND instance_id = ?1 AND fencing_token = ?2 AND expires_at > ?4",
        )
        .bind(fence.instance_id)
        .bind(fence.fencing_token)
        .bind(timestamp_text(expires))
        .bind(timestamp_text(now))
        .execute(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_leadership(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "UPDATE leadership SET expires_at = ?3 WHERE id = 1 AND instance_id = ?1 AND fencing_token = ?2",
        )
        .bind(fence.instance_id)
        .bind(fence.fencing_token)
        .bind(timestamp_text(now))
        .execute(&self.pool)
        .await
        .map_err(classify_sqlite)?;
        Ok(())
    }

    async fn record_statistics(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify_sqlite)?;
        let current: Option<(i64,)> =
            sqlx::query_as("SELECT fencing_token FROM leadership WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify_sqlite)?;
        let current = current.map(|(token,)| token);
        if current != Some(fence.fencing_token) {
            tx.rollback().await.map_err(classify_sqlite)?;
            return Err(fenced(fence, current));
        }
        // Totals are copied as stored text: SQLite keeps money as TEXT and never sums it.
        sqlx::query(
            "INSERT INTO statistics (taken_at, instance_id, open_positions, closed_equity, total_risk, \
             margin_used, fencing_token) \
             SELECT ?1, ?2, (SELECT COUNT(*) FROM positions WHERE status = 'open'), \
                    COALESCE(p.closed_equity, '0'), COALESCE(p.total_risk, '0'), COALESCE(p.margin_used, '0'), ?3 \
             FROM (SELECT 1) AS one LEFT JOIN portfolio_state p ON p.id = 1",
        )
        .bind(timestamp_text(now))
        .bind(fence.instance_id)
        .bind(fence.fencing_token)
        .execute(&mut *tx)
        .await
        .map_err(classify_sqlite)?;
        tx.commit().await.map_err(classify_sqlite)?;
        Ok(())
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        sqlx::query_as(FOOTPRINT)
            .fetch_one(&self.pool)
            .await
            .map_err(classify_sqlite)
    }

    async fn open_position_rows(&self, limit: i64) -> Result<Vec<PositionRow>, StoreError> {
        let json: String = sqlx::query_scalar(LOAD_OPEN_POSITIONS_JSON)
            .bind(limit)
            .fetch_one(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        positions_from_json(&json)
    }

    async fn raw_open_position_scan(&self) -> Result<usize, StoreError> {
        let rows = sqlx::query_as::<_, PositionRow>(LOAD_POSITIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(classify_sqlite)?;
        Ok(rows.len())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// One signal's transaction on SQLite, holding the process's writer lock.
struct SqliteSignalTx<'a> {
    /// The transaction, begun IMMEDIATE.
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// Held until the transaction ends.
    _writer: tokio::sync::MutexGuard<'a, ()>,
}

impl SqliteSignalTx<'_> {
    /// Runs one statement; the rows it affected.
    async fn run(
        &mut self,
        query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<u64, StoreError> {
        Ok(query
            .execute(&mut *self.tx)
            .await
            .map_err(classify_sqlite)?
            .rows_affected())
    }
}

impl SignalTx for SqliteSignalTx<'_> {
    async fn claim(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError> {
        let signal = claim.signal;
        self.run(
            sqlx::query(
                "INSERT INTO signal_log (fingerprint, signal_type, instrument, payload, status, received_at, processed_at, \
                 instance_id, alert_at) VALUES (?1, ?2, ?3, ?4, 'applied', ?5, ?6, ?7, ?8) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(claim.fingerprint)
            .bind(signal.kind.as_str())
            .bind(&signal.instrument)
            .bind(signal.payload())
            .bind(timestamp_text(claim.received_at))
            .bind(timestamp_text(Utc::now()))
            .bind(claim.instance_id)
            .bind(signal_tx::alert_at(claim)),
        )
        .await
    }

    async fn standing(&mut self, claim: &SignalClaim<'_>) -> Result<Standing, StoreError> {
        sqlx::query_as::<_, Standing>(
            "SELECT EXISTS (SELECT 1 FROM signal_log WHERE instrument = $1 AND status = 'queued' \
             AND (alert_at < $2 OR (alert_at = $2 AND fingerprint < $3))) AS older_queued, \
             (SELECT max(alert_at) FROM signal_log WHERE instrument = $1 AND status <> 'queued') AS latest_recorded_at",
        )
        .bind(&claim.signal.instrument)
        .bind(signal_tx::alert_at(claim))
        .bind(claim.fingerprint)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(classify_sqlite)
    }

    async fn ensure_portfolio(&mut self) -> Result<(), StoreError> {
        self.run(
            sqlx::query(CREATE_PORTFOLIO)
                .bind("0")
                .bind(timestamp_text(Utc::now())),
        )
        .await?;
        Ok(())
    }

    async fn book_rows(
        &mut self,
        instrument: &str,
    ) -> Result<(Vec<PositionRow>, Option<PortfolioRow>), StoreError> {
        let positions = sqlx::query_as::<_, PositionRow>(LOAD_INSTRUMENT)
            .bind(instrument)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(classify_sqlite)?;
        let portfolio = sqlx::query_as::<_, PortfolioRow>(LOAD_PORTFOLIO)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(classify_sqlite)?;
        Ok((positions, portfolio))
    }

    async fn insert_position(&mut self, position: &Position) -> Result<u64, StoreError> {
        insert_position(&mut self.tx, position).await
    }

    async fn close_position(&mut self, closed: &Closed) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE positions SET status = 'closed', exit_price = ?2, exit_time = ?3, realized_pnl = ?4, \
                 version = version + 1 WHERE id = ?1 AND status = 'open'",
            )
            .bind(&closed.id)
            .bind(closed.exit_price.to_string())
            .bind(timestamp_text(Utc::now()))
            .bind(closed.realized_pnl.to_string()),
        )
        .await
    }

    async fn write_portfolio(&mut self, portfolio: &Portfolio) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE portfolio_state SET closed_equity = ?1, total_risk = ?2, margin_used = ?3, version = ?4, \
                 updated_at = ?5 WHERE id = 1 AND version = ?6",
            )
            .bind(portfolio.closed_equity.to_string())
            .bind(portfolio.total_risk.to_string())
            .bind(portfolio.margin_used.to_string())
            .bind(portfolio.version)
            .bind(timestamp_text(Utc::now()))
            .bind(portfolio.version - 1),
        )
        .await
    }

    async fn upsert_pyramiding(&mut self, pyramiding: &Pyramiding) -> Result<u64, StoreError> {
        upsert_pyramiding(&mut self.tx, pyramiding).await
    }

    async fn delete_pyramiding(&mut self, instrument: &str) -> Result<u64, StoreError> {
        self.run(sqlx::query("DELETE FROM pyramiding_state WHERE instrument = ?1").bind(instrument))
            .await
    }

    async fn take_over_queued(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError> {
        self.run(
            sqlx::query(
                "UPDATE signal_log SET status = 'applied', processed_at = $2, instance_id = $3 \
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
        self.tx.commit().await.map_err(classify_sqlite)
    }

    async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(classify_sqlite)
    }
}

/// Inserts one position as it is.
async fn insert_position(
    tx: &mut sqlx::SqliteConnection,
    position: &Position,
) -> Result<u64, StoreError> {
    sqlx::query(
        "INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, \
         margin, is_base_position, base_position_id, entry_time, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(&position.id)
    .bind(&position.instrument)
    .bind(&position.label)
    .bind(position.status.as_str())
    .bind(position.lots.to_string())
    .bind(position.entry_price.to_string())
    .bind(position.stop_price.to_string())
    .bind(position.risk_amount.to_string())
    .bind(position.margin.to_string())
    .bind(position.is_base_position)
    .bind(&position.base_position_id)
    .bind(timestamp_text(position.entry_time))
    .bind(position.version)
    .execute(tx)
    .await
    .map_err(classify_sqlite)
    .map(|done| done.rows_affected())
}

/// Inserts or replaces an instrument's pyramiding row.
async fn upsert_pyramiding(
    tx: &mut sqlx::SqliteConnection,
    pyramiding: &Pyramiding,
) -> Result<u64, StoreError> {
    sqlx::query(
        "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) VALUES (?1, ?2, ?3) \
         ON CONFLICT (instrument) DO UPDATE SET last_pyramid_price = excluded.last_pyramid_price, \
         base_position_id = excluded.base_position_id",
    )
    .bind(&pyramiding.instrument)
    .bind(pyramiding.last_pyramid_price.to_string())
    .bind(&pyramiding.base_position_id)
    .execute(tx)
    .await
    .map_err(classify_sqlite)
    .map(|done| done.rows_affected())
}

super::operations::impl_operations!(
    SqliteStore,
    classify_sqlite,
    "",
    "",
    str::to_string,
    "BEGIN IMMEDIATE"
);
