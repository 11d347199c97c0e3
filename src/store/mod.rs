//! Storage: one [`Store`] trait, two sqlx backends chosen by URL. SQLite (`sqlite://…`, a
//! file in WAL mode, the embedded default) and PostgreSQL (`postgres://…`, production and
//! HA). Only this module knows SQL.
//!
//! Reads for recovery return rows as stored, money as decimal *text*, so that decoding, and
//! deciding what is corrupt, happens once in Rust for both backends.

pub mod codec;
pub mod operations;
mod postgres;
mod signal_tx;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::{Portfolio, Position, Pyramiding};
use crate::trading::plan::Book;
use crate::vocabulary::FailureKind;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::future::Future;
use std::time::Duration;

/// The URL `vigil run` and `vigil migrate` use when none is given: a SQLite file in the
/// working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://vigil.db";

/// The most connections a pool opens. Recovery needs one; the webhook path needs a few.
pub const POOL_MAX_CONNECTIONS: u32 = 8;

/// How long to wait for a connection before calling the database unavailable. Short, so the
/// policy's retry schedule, not the driver, decides how long to wait in all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a store may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The service: migrations, status, trading.
    ReadWrite,
    /// `vigil recover --check`: the connection itself refuses writes, so the check cannot
    /// change anything even by mistake.
    ReadOnly,
}

/// A position row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct PositionRow {
    /// Unique id.
    pub id: String,
    /// Instrument.
    pub instrument: String,
    /// Label.
    pub label: String,
    /// `open` or `closed`, as stored (`None`: NULL).
    pub status: Option<String>,
    /// Decimal text (`None`: NULL, which vigil never writes).
    pub lots: Option<String>,
    /// Decimal text.
    pub entry_price: Option<String>,
    /// Decimal text.
    pub stop_price: Option<String>,
    /// Decimal text.
    pub risk_amount: Option<String>,
    /// Decimal text.
    pub margin: Option<String>,
    /// Base or pyramid.
    pub is_base_position: bool,
    /// The base of a pyramid.
    pub base_position_id: Option<String>,
    /// RFC 3339 text.
    pub entry_time: Option<String>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Decimal text; set when the position closed, and only then.
    pub exit_price: Option<String>,
    /// RFC 3339 text; set when the position closed, and only then.
    pub exit_time: Option<String>,
    /// Decimal text; set when the position closed, and only then.
    pub realized_pnl: Option<String>,
}

/// The portfolio row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct PortfolioRow {
    /// Decimal text.
    pub initial_capital: Option<String>,
    /// Decimal text.
    pub closed_equity: Option<String>,
    /// Decimal text.
    pub total_risk: Option<String>,
    /// Decimal text.
    pub margin_used: Option<String>,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// A pyramiding row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct PyramidingRow {
    /// Instrument.
    pub instrument: String,
    /// Decimal text.
    pub last_pyramid_price: Option<String>,
    /// The base position.
    pub base_position_id: Option<String>,
}

/// A migration, as this version of vigil ships it or as a database records it applied.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MigrationRow {
    /// Its number.
    pub version: i64,
    /// What it does, from its file name.
    pub description: String,
    /// The SHA-384 of its SQL: a migration changed after it was applied differs here.
    pub checksum: Vec<u8>,
    /// Whether it ran to the end (sqlx records a failed one as not successful).
    pub success: bool,
}

/// A column's declared type, as the database reports it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ColumnRow {
    /// Its table.
    pub table_name: String,
    /// Its name.
    pub column_name: String,
    /// Its type, in the backend's words (`numeric`, `TEXT`).
    pub data_type: String,
}

/// The schema a database holds next to the one this version of vigil writes, so recovery
/// can tell a database it may trust from one changed by hand or by another program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// The migrations this version ships, in order.
    pub shipped: Vec<MigrationRow>,
    /// The migrations the database records; `None` when it has no migration table.
    pub applied: Option<Vec<MigrationRow>>,
    /// The types this version gives the columns recovery decodes.
    pub expected: Vec<ColumnRow>,
    /// Those columns' types as found (a column missing is absent here).
    pub found: Vec<ColumnRow>,
}

/// The columns recovery decodes, with the type each backend gives them: (table, column,
/// PostgreSQL type, SQLite declared type).
const DECODED_COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("portfolio_state", "closed_equity", "numeric", "TEXT"),
    ("portfolio_state", "initial_capital", "numeric", "TEXT"),
    ("portfolio_state", "margin_used", "numeric", "TEXT"),
    ("portfolio_state", "total_risk", "numeric", "TEXT"),
    ("portfolio_state", "version", "bigint", "INTEGER"),
    ("positions", "entry_price", "numeric", "TEXT"),
    (
        "positions",
        "entry_time",
        "timestamp with time zone",
        "TEXT",
    ),
    ("positions", "exit_price", "numeric", "TEXT"),
    ("positions", "exit_time", "timestamp with time zone", "TEXT"),
    ("positions", "is_base_position", "boolean", "INTEGER"),
    ("positions", "lots", "numeric", "TEXT"),
    ("positions", "margin", "numeric", "TEXT"),
    ("positions", "realized_pnl", "numeric", "TEXT"),
    ("positions", "risk_amount", "numeric", "TEXT"),
    ("positions", "stop_price", "numeric", "TEXT"),
    ("positions", "version", "bigint", "INTEGER"),
    ("pyramiding_state", "last_pyramid_price", "numeric", "TEXT"),
];

/// The tables of [`DECODED_COLUMNS`].
const DECODED_TABLES: [&str; 3] = ["portfolio_state", "positions", "pyramiding_state"];

/// What this version of vigil ships for a backend: `migrator`'s migrations, and the decoded
/// columns' types, `postgres` choosing which of the two.
fn shipped_schema(
    migrator: &sqlx::migrate::Migrator,
    postgres: bool,
) -> (Vec<MigrationRow>, Vec<ColumnRow>) {
    let shipped = migrator
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| MigrationRow {
            version: migration.version,
            description: migration.description.to_string(),
            checksum: migration.checksum.to_vec(),
            success: true,
        })
        .collect();
    let expected = DECODED_COLUMNS
        .iter()
        .map(|(table, column, pg, sqlite)| ColumnRow {
            table_name: (*table).to_string(),
            column_name: (*column).to_string(),
            data_type: (if postgres { *pg } else { *sqlite }).to_string(),
        })
        .collect();
    (shipped, expected)
}

/// A migration error in words an operator can act on: one that means the database's schema
/// is not the one this version wrote is corrupt data, not a passing failure.
fn migration_drift(error: &sqlx::migrate::MigrateError) -> Option<StoreError> {
    use sqlx::migrate::MigrateError;
    let what = match error {
        MigrateError::VersionMismatch(version) => format!(
            "migration {version} was changed after it was applied here: its checksum differs from the one this version of vigil ships"
        ),
        MigrateError::VersionMissing(version) => format!(
            "migration {version} is applied here but this version of vigil does not ship it: was the database written by a newer vigil?"
        ),
        MigrateError::Dirty(version) => format!(
            "migration {version} was left half-applied"
        ),
        _ => return None,
    };
    Some(StoreError::Corrupt(format!(
        "schema drift: {what}; restore the database from a backup, or run the vigil that wrote it"
    )))
}

/// What of vigil's a database holds, read before migrating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Footprint {
    /// Whether the migration history (`_sqlx_migrations`) exists.
    pub history: bool,
    /// Whether vigil's tables exist (`positions` stands for them).
    pub tables: bool,
}

impl Footprint {
    /// A new database: nothing of vigil's, which `vigil run` migrates.
    pub fn is_blank(self) -> bool {
        !self.history && !self.tables
    }

    /// Refuses to migrate a database whose vigil tables exist without their migration
    /// history: running the migrations again would fail half-way, or worse.
    fn migratable(self) -> Result<(), StoreError> {
        if self.tables && !self.history {
            return Err(StoreError::Corrupt(
                "schema drift: vigil's tables exist but their migration history (the _sqlx_migrations table) is missing; restore the database from a backup".into(),
            ));
        }
        Ok(())
    }
}

/// Migrates the database behind `pool` with `migrator`, unless `footprint` says it must not
/// be; `classify` turns the backend's errors into store errors.
async fn run_migrations<DB>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
    footprint: Footprint,
    classify: fn(sqlx::Error) -> StoreError,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    footprint.migratable()?;
    migrator
        .run(pool)
        .await
        .map_err(|error| classify_migration(error, classify))
}

/// Everything recovery reads, from one consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryRows {
    /// Every position, open and closed (unknown statuses included, so they are caught).
    pub positions: Vec<PositionRow>,
    /// The portfolio row, if one was ever written.
    pub portfolio: Option<PortfolioRow>,
    /// Every pyramiding row.
    pub pyramiding: Vec<PyramidingRow>,
    /// The schema, next to the one this version writes; `None` when not read (a test's
    /// rows).
    pub schema: Option<Schema>,
}

/// A signal's row in the signal log: what became of one alert.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct SignalOutcome {
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// BASE_ENTRY, PYRAMID or EXIT.
    pub signal_type: String,
    /// The instrument.
    pub instrument: String,
    /// `applied`, `rejected`, `expired` or `superseded`.
    pub status: String,
    /// Why it was not applied.
    pub reason: Option<String>,
    /// The alert's own time, RFC 3339 (absent for alerts recorded before it was kept).
    pub alert_at: Option<String>,
    /// When the instance received it, RFC 3339.
    pub received_at: String,
    /// The instance that recorded it.
    pub instance_id: String,
}

/// An alert waiting in the signal log as `queued`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueuedRow {
    /// Its fingerprint.
    pub fingerprint: String,
    /// The signal, as its canonical JSON.
    pub payload: String,
    /// When an instance received it, RFC 3339.
    pub received_at: String,
    /// When it was queued in the signal log, RFC 3339.
    pub queued_at: String,
}

/// An instance as the instance table records it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct InstanceRow {
    /// The instance id.
    pub instance_id: String,
    /// The last lifecycle status it recorded.
    pub status: String,
    /// Its host.
    pub hostname: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Its last heartbeat, RFC 3339.
    pub last_heartbeat: String,
    /// Whether it holds an unexpired leader lease now.
    pub leader: bool,
}

/// Who is writing the instance status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The instance id.
    pub instance_id: String,
    /// The host it runs on.
    pub hostname: String,
    /// When this process started.
    pub started_at: DateTime<Utc>,
}

/// A full state to write in one transaction (seeding, tests, benchmarks).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateWrite {
    /// Positions to insert.
    pub positions: Vec<Position>,
    /// The portfolio row to write.
    pub portfolio: Option<Portfolio>,
    /// Pyramiding rows to write.
    pub pyramiding: Vec<Pyramiding>,
}

/// Why a store operation failed, already classified for the failure policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database refused, timed out or dropped the connection, or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded.
    #[error("stored data cannot be decoded: {0}")]
    Corrupt(String),
    /// The database lacks vigil tables.
    #[error("the database lacks vigil tables ({0}): run `vigil migrate` on a new database, or restore this one if its tables were dropped")]
    NoSchema(String),
    /// The URL is not one vigil understands.
    #[error("{0}")]
    BadUrl(String),
    /// A concurrent writer changed what this transaction read; nothing was written.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// A background-task write carried a fencing token older than the current leader's;
    /// nothing was written.
    #[error("fenced off: {0}")]
    Fenced(String),
    /// Anything else.
    #[error("database error: {0}")]
    Other(String),
}

impl StoreError {
    /// The failure kind the policy answers this error with.
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::Unavailable(_) => FailureKind::DbUnavailable,
            StoreError::Corrupt(_) => FailureKind::DataCorrupt,
            StoreError::NoSchema(_)
            | StoreError::BadUrl(_)
            | StoreError::Conflict(_)
            | StoreError::Fenced(_)
            | StoreError::Other(_) => FailureKind::Unexpected,
        }
    }
}

/// Classifies a migration failure: a database error inside it is classified like any other
/// (a locked file or a dropped connection is `db_unavailable`, to be retried); a migration
/// history that does not match the shipped migrations is not.
fn classify_migration(
    error: sqlx::migrate::MigrateError,
    classify: impl Fn(sqlx::Error) -> StoreError,
) -> StoreError {
    if let Some(drift) = migration_drift(&error) {
        return drift;
    }
    match error {
        sqlx::migrate::MigrateError::Execute(error)
        | sqlx::migrate::MigrateError::ExecuteMigration(error, _) => classify(error),
        other => StoreError::Other(format!("migration failed: {other}")),
    }
}

/// Classifies an sqlx error. Backend-specific database codes are passed in by the backends.
fn classify(
    error: sqlx::Error,
    database_code: impl Fn(&str, &str) -> Option<StoreError>,
) -> StoreError {
    let text = error.to_string();
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(text),
        sqlx::Error::ColumnDecode { index, source }
            if source.is::<sqlx::error::UnexpectedNullError>() =>
        {
            StoreError::Corrupt(format!(
                "column {} is NULL, which vigil never writes there: the row was changed by hand or by another program",
                index.trim_matches('"')
            ))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(text),
        sqlx::Error::ColumnNotFound(_) => StoreError::NoSchema(text),
        sqlx::Error::Configuration(_) => StoreError::BadUrl(text),
        sqlx::Error::Database(database) => {
            let code = database
                .code()
                .map(|code| code.into_owned())
                .unwrap_or_default();
            // The server's own message, without the driver's additions (the server's source
            // line, on PostgreSQL), and its code, which its documentation explains.
            let mut text = database.message().to_string();
            // A constraint's message names the constraint; the table is what a person knows.
            if let Some(table) = database
                .table()
                .filter(|table| !text.contains(&format!("\"{table}\"")))
            {
                text.push_str(&format!(" in table {table}"));
            }
            if !code.is_empty() {
                text.push_str(&format!(" (SQLSTATE {code})"));
            }
            database_code(&code, database.message()).unwrap_or(StoreError::Other(text))
        }
        _ => StoreError::Other(text),
    }
}

/// A signal claimed in the signal log, in the same transaction as its effects.
#[derive(Debug, Clone)]
pub struct SignalClaim<'a> {
    /// The signal.
    pub signal: &'a crate::trading::Signal,
    /// Its fingerprint: the unique key of the signal log.
    pub fingerprint: &'a str,
    /// The instance processing it.
    pub instance_id: &'a str,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// What applying a signal did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The signal was new; this is what it changed.
    Done(crate::trading::plan::Plan),
    /// The signal was new and is recorded with this outcome; it traded nothing.
    Refused(crate::trading::plan::Refusal),
    /// An older alert of its instrument waits: it is recorded `queued` behind it.
    Queued,
    /// The fingerprint was already claimed: nothing changed.
    Duplicate,
}

/// Why a signal's transaction did not commit: nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The database failed, or a concurrent writer got there first.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a background task writes, with the fencing token it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    /// The leader writing.
    pub instance_id: &'a str,
    /// Its fencing token; a write with a token older than the leadership row's is refused.
    pub fencing_token: i64,
}

/// Storage as the rest of vigil sees it.
pub trait Store {
    /// Claims the signal's fingerprint and applies what `decide` plans, in one transaction:
    /// either the claim and every change commit together, or nothing does. A refusal is
    /// recorded as the fingerprint's outcome ([`Applied::Refused`]). A fingerprint already
    /// claimed is [`Applied::Duplicate`] and changes nothing.
    fn apply_signal<F>(
        &self,
        claim: &SignalClaim<'_>,
        decide: F,
    ) -> impl Future<Output = Result<Applied, ApplyError>>
    where
        F: FnOnce(&Book) -> Result<crate::trading::plan::Plan, crate::trading::plan::Refusal>;

    /// Records `refusal` as the outcome of the claimed alert in one transaction, at once,
    /// whatever else waits on its instrument (see [`signal_tx::refuse`]).
    fn refuse_signal(
        &self,
        claim: &SignalClaim<'_>,
        refusal: crate::trading::plan::Refusal,
    ) -> impl Future<Output = Result<Applied, ApplyError>>;

    /// Whether `fingerprint` is claimed in the signal log.
    fn signal_claimed(&self, fingerprint: &str) -> impl Future<Output = Result<bool, StoreError>>;

    /// The signal log's row for `fingerprint`, if any.
    fn signal_outcome(
        &self,
        fingerprint: &str,
    ) -> impl Future<Output = Result<Option<SignalOutcome>, StoreError>>;

    /// Records alerts as `queued` in the signal log, with their payloads, for any instance to
    /// apply in alert order; a fingerprint the log already holds is left as it is. Returns
    /// how many were new.
    fn queue_signals(
        &self,
        claims: &[SignalClaim<'_>],
    ) -> impl Future<Output = Result<usize, StoreError>>;

    /// The oldest queued alert of each instrument, in alert order (time, then fingerprint),
    /// at most `limit`.
    fn queued_heads(&self, limit: i64) -> impl Future<Output = Result<Vec<QueuedRow>, StoreError>>;

    /// Records how many alerts `instance_id` holds in its local journal, not yet queued here.
    fn record_journal_backlog(
        &self,
        instance_id: &str,
        pending: i64,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// How many alerts the other instances whose heartbeat is newer than `fresh_since` hold
    /// in their local journals.
    fn journal_backlog_elsewhere(
        &self,
        instance_id: &str,
        fresh_since: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, StoreError>>;

    /// Answers whether the database is reachable (a trivial query).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>>;

    /// Counts positions by status, for `/status`.
    fn position_counts(&self) -> impl Future<Output = Result<(i64, i64), StoreError>>;

    /// Applies the migrations that have not run yet. Idempotent.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>>;

    /// Reads open positions, the portfolio and pyramiding state from one snapshot.
    fn load_recovery_rows(&self) -> impl Future<Output = Result<RecoveryRows, StoreError>>;

    /// Records the instance status (and refreshes its heartbeat).
    fn record_status(
        &self,
        instance: &InstanceRecord,
        status: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Refreshes the instance's heartbeat. A write, so it also proves the database is
    /// writable.
    fn heartbeat(
        &self,
        instance_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Every instance the table knows, by id, with whether it leads at `now`.
    /// PostgreSQL judges leases by its own clock, so instances need not agree on the time.
    fn instances(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<InstanceRow>, StoreError>>;

    /// Takes the leadership row for `instance_id` for `lease`, with a new fencing token
    /// higher than any before, when the row is free, expired, or this instance's own
    /// (a restart under the same id). `None` while another instance's lease is valid.
    fn take_leadership(
        &self,
        instance_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>>;

    /// Extends the lease `fence` holds by `lease`; `false` when it no longer holds it.
    fn renew_leadership(
        &self,
        fence: Fence<'_>,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>>;

    /// Ends the lease `fence` holds, so another instance may lead at once.
    fn release_leadership(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Writes a statistics snapshot (open positions and portfolio totals, read in the same
    /// transaction) under `fence`: [`StoreError::Fenced`] when a newer leader exists.
    fn record_statistics(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// The recorded status of `instance_id`, if any.
    fn instance_status(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>>;

    /// Writes positions, the portfolio and pyramiding state in one transaction.
    fn write_state(&self, state: &StateWrite) -> impl Future<Output = Result<(), StoreError>>;

    /// Creates the portfolio row with `initial_capital` (closed equity starts there) when
    /// the database has none; a row that exists is left as it is.
    fn create_portfolio(
        &self,
        initial_capital: Decimal,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// The open positions' rows, by instrument and entry time, at most `limit`.
    fn open_position_rows(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PositionRow>, StoreError>>;

    /// Reads open positions straight into rows with no decoding: the raw read limit that
    /// recovery is measured against.
    fn raw_open_position_scan(&self) -> impl Future<Output = Result<usize, StoreError>>;

    /// What of vigil's the database holds: its migration history, its tables.
    fn footprint(&self) -> impl Future<Output = Result<Footprint, StoreError>>;

    /// Closes the pool, waiting for connections to finish.
    fn close(&self) -> impl Future<Output = ()>;
}

/// A store of either backend, chosen by URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// `sqlite://…`
    Sqlite(SqliteStore),
    /// `postgres://…` or `postgresql://…`
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens and warms sessions for signals before the instance serves (PostgreSQL's signal
    /// pool; SQLite has nothing to warm). Best effort.
    pub async fn warm_signal_pool(&self) {
        if let AnyStore::Postgres(store) = self {
            store.warm_signal_pool().await;
        }
    }

    /// Connects to `url`. A read-write SQLite store creates its file on first use.
    pub async fn connect(url: &str, access: Access) -> Result<AnyStore, StoreError> {
        match Backend::of(url)? {
            Backend::Sqlite => Ok(AnyStore::Sqlite(SqliteStore::connect(url, access).await?)),
            Backend::Postgres => Ok(AnyStore::Postgres(PgStore::connect(url, access).await?)),
        }
    }
}

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend `url`'s scheme names.
    fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::BadUrl(format!(
                "database URL `{}` is neither sqlite://FILE nor postgres://…",
                redact(url)
            )))
        }
    }
}

/// The file a SQLite `url` names, when it does not exist yet in a directory that does: a
/// read-write start creates it (SQLite creates no directories).
pub fn missing_sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if Backend::of(url).ok()? != Backend::Sqlite {
        return None;
    }
    let (file, directory) = sqlite_file(url)?;
    (file != std::path::Path::new(":memory:") && !file.exists() && directory.is_dir())
        .then_some(file)
}

/// The file a SQLite `url` names, and the directory it is in (`.` for a bare name).
fn sqlite_file(url: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let file = sqlite::options(url).ok()?.get_filename().to_path_buf();
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    Some((file, directory))
}

/// The query parameters of a PostgreSQL URL that the driver does not understand and so
/// ignores (`connect_timeout`, a misspelt `sslmode`), by name only: their values may be
/// secrets.
pub fn ignored_url_parameters(url: &str) -> Vec<String> {
    /// The parameters sqlx's PostgreSQL driver reads.
    const KNOWN: [&str; 18] = [
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
    ];
    if Backend::of(url).ok() != Some(Backend::Postgres) {
        return Vec::new();
    }
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .filter(|key| !key.is_empty() && !KNOWN.contains(key) && !key.starts_with("options["))
        .map(str::to_string)
        .collect()
}

/// What names the database `url` points at, the same from any working directory: a SQLite
/// file's absolute path, or a PostgreSQL URL without its password.
pub fn database_identity(url: &str) -> String {
    if Backend::of(url).ok() == Some(Backend::Sqlite) {
        if let Some((file, directory)) = sqlite_file(url) {
            if let (Ok(directory), Some(name)) = (directory.canonicalize(), file.file_name()) {
                return format!("sqlite:{}", directory.join(name).display());
            }
        }
    }
    redact(url)
}

/// Checks that `url` names a database vigil can open, and parses as its backend's URL,
/// without connecting: a setting that can never work is refused before anything starts.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    match Backend::of(url)? {
        Backend::Sqlite => sqlite::options(url).map(drop),
        Backend::Postgres => postgres::options(url).map(drop),
    }
}

/// Hides a password in a URL before it is shown.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if secret_parameter(key) => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Whether a URL query parameter holds a secret (`password`, `sslpassword`, a token).
fn secret_parameter(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|part| key.contains(part))
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl operations::Operations for AnyStore {
    async fn pause_switch(&self) -> Result<operations::PauseSwitch, StoreError> {
        delegate!(self, store => store.pause_switch().await)
    }

    async fn set_pause_switch(
        &self,
        pause: operations::Pause,
        reason: &str,
        changed_by: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.set_pause_switch(pause, reason, changed_by, now).await)
    }

    async fn last_status(&self, instance_id: &str) -> Result<Option<String>, StoreError> {
        delegate!(self, store => store.last_status(instance_id).await)
    }

    async fn counted_starts(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<operations::CountedStarts>, StoreError> {
        delegate!(self, store => store.counted_starts(since).await)
    }

    async fn admit_start<F>(
        &self,
        instance_id: &str,
        hostname: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        admit: F,
    ) -> Result<operations::StartDecision, StoreError>
    where
        F: FnOnce(operations::PreviousEnd, &[operations::CountedStarts]) -> bool,
    {
        delegate!(self, store => store.admit_start(instance_id, hostname, since, now, admit).await)
    }

    async fn reset_starts(&self) -> Result<u64, StoreError> {
        delegate!(self, store => store.reset_starts().await)
    }

    async fn last_applied(&self) -> Result<Option<String>, StoreError> {
        delegate!(self, store => store.last_applied().await)
    }

    async fn restore_rows(
        &self,
        rows: &RecoveryRows,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.restore_rows(rows, now).await)
    }
}

impl Store for AnyStore {
    async fn apply_signal<F>(
        &self,
        claim: &SignalClaim<'_>,
        decide: F,
    ) -> Result<Applied, ApplyError>
    where
        F: FnOnce(&Book) -> Result<crate::trading::plan::Plan, crate::trading::plan::Refusal>,
    {
        delegate!(self, store => store.apply_signal(claim, decide).await)
    }

    async fn refuse_signal(
        &self,
        claim: &SignalClaim<'_>,
        refusal: crate::trading::plan::Refusal,
    ) -> Result<Applied, ApplyError> {
        delegate!(self, store => store.refuse_signal(claim, refusal).await)
    }

    async fn signal_claimed(&self, fingerprint: &str) -> Result<bool, StoreError> {
        delegate!(self, store => store.signal_claimed(fingerprint).await)
    }

    async fn signal_outcome(&self, fingerprint: &str) -> Result<Option<SignalOutcome>, StoreError> {
        delegate!(self, store => store.signal_outcome(fingerprint).await)
    }

    async fn queue_signals(&self, claims: &[SignalClaim<'_>]) -> Result<usize, StoreError> {
        delegate!(self, store => store.queue_signals(claims).await)
    }

    async fn queued_heads(&self, limit: i64) -> Result<Vec<QueuedRow>, StoreError> {
        delegate!(self, store => store.queued_heads(limit).await)
    }

    async fn record_journal_backlog(
        &self,
        instance_id: &str,
        pending: i64,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.record_journal_backlog(instance_id, pending).await)
    }

    async fn journal_backlog_elsewhere(
        &self,
        instance_id: &str,
        fresh_since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        delegate!(self, store => store.journal_backlog_elsewhere(instance_id, fresh_since).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, store => store.ping().await)
    }

    async fn position_counts(&self) -> Result<(i64, i64), StoreError> {
        delegate!(self, store => store.position_counts().await)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        delegate!(self, store => store.migrate().await)
    }

    async fn load_recovery_rows(&self) -> Result<RecoveryRows, StoreError> {
        delegate!(self, store => store.load_recovery_rows().await)
    }

    async fn record_status(
        &self,
        instance: &InstanceRecord,
        status: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.record_status(instance, status, now).await)
    }

    async fn instance_status(&self, instance_id: &str) -> Result<Option<String>, StoreError> {
        delegate!(self, store => store.instance_status(instance_id).await)
    }

    async fn heartbeat(&self, instance_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        delegate!(self, store => store.heartbeat(instance_id, now).await)
    }

    async fn instances(&self, now: DateTime<Utc>) -> Result<Vec<InstanceRow>, StoreError> {
        delegate!(self, store => store.instances(now).await)
    }

    async fn take_leadership(
        &self,
        instance_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        delegate!(self, store => store.take_leadership(instance_id, lease, now).await)
    }

    async fn renew_leadership(
        &self,
        fence: Fence<'_>,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        delegate!(self, store => store.renew_leadership(fence, lease, now).await)
    }

    async fn release_leadership(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.release_leadership(fence, now).await)
    }

    async fn record_statistics(
        &self,
        fence: Fence<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.record_statistics(fence, now).await)
    }

    async fn write_state(&self, state: &StateWrite) -> Result<(), StoreError> {
        delegate!(self, store => store.write_state(state).await)
    }

    async fn create_portfolio(&self, initial_capital: Decimal) -> Result<(), StoreError> {
        delegate!(self, store => store.create_portfolio(initial_capital).await)
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        delegate!(self, store => store.footprint().await)
    }

    async fn open_position_rows(&self, limit: i64) -> Result<Vec<PositionRow>, StoreError> {
        delegate!(self, store => store.open_position_rows(limit).await)
    }

    async fn raw_open_position_scan(&self) -> Result<usize, StoreError> {
        delegate!(self, store => store.raw_open_position_scan().await)
    }

    async fn close(&self) {
        delegate!(self, store => store.close().await)
    }
}

/// The most open positions one listing shows (`GET /positions`, `vigil positions`): far more
/// than any risk budget holds open, and a bound on what a damaged table can make it read.
pub const MAX_LISTED_POSITIONS: usize = 1_000;

/// The open positions, by instrument and entry time: at most [`MAX_LISTED_POSITIONS`], and
/// whether there were more. A row that does not decode makes the listing corrupt, naming it.
pub async fn open_positions(store: &impl Store) -> Result<(Vec<Position>, bool), StoreError> {
    const ASKED: i64 = MAX_LISTED_POSITIONS as i64 + 1;
    let mut rows = store.open_position_rows(ASKED).await?;
    let more = rows.len() > MAX_LISTED_POSITIONS;
    rows.truncate(MAX_LISTED_POSITIONS);
    let (mut positions, _) = codec::decode_rows(rows, None).map_err(StoreError::Corrupt)?;
    positions.sort_by(|a, b| {
        (&a.instrument, a.entry_time, &a.id).cmp(&(&b.instrument, b.entry_time, &b.id))
    });
    Ok((positions, more))
}

/// Decodes what a signal's transaction read. The transaction creates the portfolio row
/// before reading it, so a missing row means the table was changed by hand.
fn book_from_rows(
    positions: Vec<PositionRow>,
    portfolio: Option<PortfolioRow>,
) -> Result<Book, StoreError> {
    let (open, portfolio) =
        codec::decode_rows(positions, portfolio.as_ref()).map_err(StoreError::Corrupt)?;
    let portfolio = portfolio.ok_or_else(|| {
        StoreError::Corrupt("the portfolio row vanished inside a transaction".into())
    })?;
    Ok(Book {
        open,
        portfolio,
        latest_recorded_at: None,
    })
}

/// A lease length in whole milliseconds, as both backends add it to their clock.
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// The refusal of a background-task write whose token is older than the leadership row's.
fn fenced(fence: Fence<'_>, current: Option<i64>) -> StoreError {
    StoreError::Fenced(match current {
        Some(current) => format!(
            "{} holds fencing token {}, but the current leader's token is {current}",
            fence.instance_id, fence.fencing_token
        ),
        None => format!(
            "{} holds fencing token {}, but no leadership was ever granted",
            fence.instance_id, fence.fencing_token
        ),
    })
}

/// RFC 3339 with microseconds and `Z`, the one timestamp text both backends store and read.
pub fn timestamp_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_can_never_work_are_refused_before_connecting() {
        // (URL, what the refusal says; `None` when it may be tried)
        let cases = [
            ("sqlite://vigil.db", None),
            ("sqlite::memory:", None),
            ("postgres://vigil:secret@db:5432/vigil", None),
            ("postgresql://db/vigil?sslmode=require", None),
            ("notaurl", Some("is neither sqlite://FILE nor postgres://")),
            ("sqlite://", Some("it names no file")),
            ("sqlite://?mode=rwc", Some("it names no file")),
            (
                "mysql://db/vigil",
                Some("is neither sqlite://FILE nor postgres://"),
            ),
            ("postgres://db:99999/vigil", Some("invalid port number")),
            (
                "postgres://db/vigil?sslmode=sometimes",
                Some("invalid PostgreSQL URL"),
            ),
            (
                "postgres://vigil:secret@db:port/vigil",
                Some("invalid PostgreSQL URL `postgres://vigil:***@"),
            ),
        ];
        for (url, refusal) in cases {
            let checked = check_url(url).map_err(|error| error.to_string());
            match (refusal, checked) {
                (None, checked) => assert_eq!(checked, Ok(()), "{url}"),
                (Some(text), Err(error)) => {
                    assert!(error.contains(text), "{url}: {error}");
                    assert!(!error.contains("secret"), "{url}: {error}");
                }
                (Some(text), Ok(())) => panic!("{url} was accepted; expected: {text}"),
            }
        }
    }

    #[test]
    fn parameters_the_driver_ignores_are_named_without_their_values() {
        for (url, ignored) in [
            ("postgres://db/vigil", vec![]),
            (
                "postgres://db/vigil?sslmode=require&application_name=v",
                vec![],
            ),
            (
                "postgres://db/vigil?sslpassword=zz&connect_timeout=5",
                vec!["sslpassword", "connect_timeout"],
            ),
            ("sqlite://vigil.db?mode=rwc", vec![]),
        ] {
            assert_eq!(ignored_url_parameters(url), ignored, "{url}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            (
                "postgres://vigil:secret@db:5432/vigil",
                "postgres://vigil:***@db:5432/vigil",
            ),
            ("postgres://vigil@db/vigil", "postgres://vigil@db/vigil"),
            ("sqlite://vigil.db", "sqlite://vigil.db"),
            (
                "postgres://db/vigil?user=vigil&password=secret&sslmode=require",
                "postgres://db/vigil?user=vigil&password=***&sslmode=require",
            ),
            (
                "postgres://vigil:secret@db/vigil?sslpassword=secret",
                "postgres://vigil:***@db/vigil?sslpassword=***",
            ),
            (
                "postgres://db/vigil?options=a@b&Password=secret",
                "postgres://db/vigil?options=a@b&Password=***",
            ),
            ("redis://:secret@cache:6379/1", "redis://:***@cache:6379/1"),
            ("notaurl", "notaurl"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown);
        }
    }
}
