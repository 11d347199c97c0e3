//! What operators change and what the restart budget counts: the kill switch (`vigil pause`,
//! `vigil resume`) and the record of every start. A small capability of its own, next to
//! [`super::Store`]: only the executor's heartbeat, the operator endpoints and the start-up
//! need it.

use super::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::future::Future;

/// What the operator's kill switch holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pause {
    /// Trading is not paused.
    #[default]
    None,
    /// Nothing is applied (`vigil pause`).
    All,
    /// Only exits are applied (`vigil pause --exits-only`).
    ExitsOnly,
}

impl Pause {
    /// The name stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Pause::None => "none",
            Pause::All => "all",
            Pause::ExitsOnly => "exits_only",
        }
    }

    /// The pause with this stored name.
    pub fn parse(name: &str) -> Option<Pause> {
        [Pause::None, Pause::All, Pause::ExitsOnly]
            .into_iter()
            .find(|pause| pause.as_str() == name)
    }

    /// Whether the pause holds an alert of `kind` back.
    pub fn holds_back(self, kind: crate::vocabulary::SignalType) -> bool {
        match self {
            Pause::None => false,
            Pause::All => true,
            Pause::ExitsOnly => kind != crate::vocabulary::SignalType::Exit,
        }
    }

    /// The refusal an alert it holds back is recorded with.
    pub const fn refusal(self) -> crate::trading::plan::Refusal {
        crate::trading::plan::Refusal::Paused {
            exits_only: matches!(self, Pause::ExitsOnly),
        }
    }

    /// The machines' input for this pause.
    pub const fn input(self) -> crate::driver::Input {
        match self {
            Pause::None => crate::driver::Input::Resume,
            Pause::All => crate::driver::Input::Pause { exits_only: false },
            Pause::ExitsOnly => crate::driver::Input::Pause { exits_only: true },
        }
    }
}

/// The kill switch as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PauseSwitch {
    /// What it holds back.
    pub pause: Pause,
    /// What the operator said about it (may be empty).
    pub reason: String,
    /// When it last changed, RFC 3339; `None` when it never has.
    pub changed_at: Option<String>,
    /// Who changed it: the command line (`cli@HOST`) or an instance's operator endpoint.
    pub changed_by: String,
}

/// How the previous run of an instance ended, as its recorded status tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviousEnd {
    /// The instance never ran against this database.
    First,
    /// It stopped gracefully (`stopped`).
    Stopped,
    /// It halted on a failure (`crashed`).
    Halted,
    /// It was killed or lost: it never recorded `stopped` or `crashed`.
    Killed,
}

impl PreviousEnd {
    /// The end a recorded status means; no row is a first start.
    pub fn from_status(status: Option<&str>) -> PreviousEnd {
        match status {
            None => PreviousEnd::First,
            Some("stopped") => PreviousEnd::Stopped,
            Some("crashed") => PreviousEnd::Halted,
            Some(_) => PreviousEnd::Killed,
        }
    }

    /// The name stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            PreviousEnd::First => "first",
            PreviousEnd::Stopped => "stopped",
            PreviousEnd::Halted => "halted",
            PreviousEnd::Killed => "killed",
        }
    }

    /// Whether a start after this end counts against the restart budget.
    pub const fn is_unclean(self) -> bool {
        matches!(self, PreviousEnd::Halted | PreviousEnd::Killed)
    }
}

/// The starts the restart budget counts since some time, per instance id.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct CountedStarts {
    /// The instance id.
    pub instance_id: String,
    /// Its counted starts.
    pub starts: i64,
}

/// What [`Operations::admit_start`] found and decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartDecision {
    /// How the previous run of the instance ended.
    pub previous: PreviousEnd,
    /// The counted starts before this one, per instance id.
    pub counted: Vec<CountedStarts>,
    /// Whether the start was admitted (and recorded).
    pub admitted: bool,
}

/// The kill switch and the start record.
pub trait Operations {
    /// The kill switch; not paused when it was never set.
    fn pause_switch(&self) -> impl Future<Output = Result<PauseSwitch, StoreError>>;

    /// Sets the kill switch.
    fn set_pause_switch(
        &self,
        pause: Pause,
        reason: &str,
        changed_by: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// The status the last run of `instance_id` recorded, if it ever ran here.
    fn last_status(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>>;

    /// Counted starts since `since`, per instance id, by id.
    fn counted_starts(
        &self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<CountedStarts>, StoreError>>;

    /// Decides a start of `instance_id` in one transaction that holds the start lock, so two
    /// instances starting at once are counted one after the other: reads how its last run
    /// ended and the counted starts since `since`, asks `admit`, and when it admits, records
    /// the start (counted when that end was unclean) and marks the instance `starting`, so
    /// that a run killed before it records anything else still counts as killed.
    fn admit_start<F>(
        &self,
        instance_id: &str,
        hostname: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        admit: F,
    ) -> impl Future<Output = Result<StartDecision, StoreError>>
    where
        F: FnOnce(PreviousEnd, &[CountedStarts]) -> bool;

    /// Stops counting every start recorded so far; returns how many were counted.
    fn reset_starts(&self) -> impl Future<Output = Result<u64, StoreError>>;

    /// The fingerprint of the alert applied last, if any.
    fn last_applied(&self) -> impl Future<Output = Result<Option<String>, StoreError>>;

    /// Writes a snapshot's rows, as stored, in one transaction: every position (bases
    /// first), the portfolio row and the pyramiding rows; only into a database that holds
    /// none of them and no signal (checked in the same transaction, under the start lock),
    /// else [`StoreError::Conflict`] names what it holds.
    fn restore_rows(
        &self,
        rows: &super::RecoveryRows,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>>;
}

/// The SQL both backends share: `$n` placeholders; times bound as RFC 3339 text and cast by
/// `time` (PostgreSQL's `::timestamptz`, nothing on SQLite), and read back as text by
/// `text` (a column expression).
#[derive(Debug)]
pub(super) struct OperationsSql;

impl OperationsSql {
    pub(super) fn read_switch(text: fn(&str) -> String) -> sqlx::AssertSqlSafe<String> {
        let changed_at = text("changed_at");
        sqlx::AssertSqlSafe(format!(
            "SELECT pause, reason, {changed_at} AS changed_at, changed_by FROM operator_switch WHERE id = 1"
        ))
    }

    pub(super) fn write_switch(time: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO operator_switch (id, pause, reason, changed_at, changed_by) \
             VALUES (1, $1, $2, $3{time}, $4) \
             ON CONFLICT (id) DO UPDATE SET pause = excluded.pause, reason = excluded.reason, \
             changed_at = excluded.changed_at, changed_by = excluded.changed_by"
        ))
    }

    pub(super) const LAST_STATUS: &'static str =
        "SELECT status FROM instance_metadata WHERE instance_id = $1";

    pub(super) fn counted_starts(time: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "SELECT instance_id, COUNT(*) AS starts FROM instance_starts \
             WHERE counted AND started_at >= $1{time} GROUP BY instance_id ORDER BY instance_id"
        ))
    }

    pub(super) fn insert_start(time: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO instance_starts (instance_id, hostname, started_at, previous_end, counted) \
             VALUES ($1, $2, $3{time}, $4, $5)"
        ))
    }

    pub(super) const MARK_STARTING: &'static str =
        "UPDATE instance_metadata SET status = 'starting' WHERE instance_id = $1";

    pub(super) const RESET_STARTS: &'static str =
        "UPDATE instance_starts SET counted = false WHERE counted";

    pub(super) const LAST_APPLIED: &'static str =
        "SELECT fingerprint FROM signal_log WHERE status = 'applied' \
         ORDER BY processed_at DESC, id DESC LIMIT 1";

    pub(super) const STORED_ROWS: &'static str =
        "SELECT (SELECT COUNT(*) FROM positions) + (SELECT COUNT(*) FROM portfolio_state) \
         + (SELECT COUNT(*) FROM pyramiding_state) + (SELECT COUNT(*) FROM signal_log)";

    pub(super) fn insert_position(num: &str, time: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, \
             risk_amount, margin, is_base_position, base_position_id, entry_time, version, \
             exit_price, exit_time, realized_pnl) VALUES ($1, $2, $3, $4, $5{num}, $6{num}, \
             $7{num}, $8{num}, $9{num}, $10, $11, $12{time}, $13, $14{num}, $15{time}, $16{num})"
        ))
    }

    pub(super) fn insert_portfolio(num: &str, time: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO portfolio_state (id, initial_capital, closed_equity, total_risk, \
             margin_used, version, updated_at) VALUES (1, $1{num}, $2{num}, $3{num}, $4{num}, $5, $6{time})"
        ))
    }

    pub(super) fn insert_pyramiding(num: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) \
             VALUES ($1, $2{num}, $3)"
        ))
    }
}

/// The kill switch row as read.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct SwitchRow {
    pub pause: String,
    pub reason: String,
    pub changed_at: String,
    pub changed_by: String,
}

impl SwitchRow {
    /// The switch it holds, or why it cannot be read; no row is a switch never set.
    pub(super) fn into_switch(row: Option<SwitchRow>) -> Result<PauseSwitch, StoreError> {
        let Some(row) = row else {
            return Ok(PauseSwitch::default());
        };
        row.switch()
    }

    fn switch(self) -> Result<PauseSwitch, StoreError> {
        let pause = Pause::parse(&self.pause).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "operator_switch.pause = {:?} is not none, all or exits_only",
                self.pause
            ))
        })?;
        Ok(PauseSwitch {
            pause,
            reason: self.reason,
            changed_at: Some(self.changed_at),
            changed_by: self.changed_by,
        })
    }
}

/// Implements [`Operations`] for a backend's store, written once: `$store` has a `pool`,
/// errors are classified by `$classify`, times and decimals are bound as text cast by
/// `$time_in` and `$num_in` and times read back through `$time_out` (see [`OperationsSql`]);
/// `$begin_locked` begins a transaction that holds the backend's start lock.
macro_rules! impl_operations {
    ($store:ty, $classify:path, $time_in:expr, $num_in:expr, $time_out:expr, $begin_locked:expr) => {
        impl $crate::store::operations::Operations for $store {
            async fn pause_switch(
                &self,
            ) -> Result<$crate::store::operations::PauseSwitch, $crate::store::StoreError> {
                let row = sqlx::query_as::<_, $crate::store::operations::SwitchRow>(
                    $crate::store::operations::OperationsSql::read_switch($time_out),
                )
                .fetch_optional(&self.pool)
                .await
                .map_err($classify)?;
                $crate::store::operations::SwitchRow::into_switch(row)
            }

            async fn set_pause_switch(
                &self,
                pause: $crate::store::operations::Pause,
                reason: &str,
                changed_by: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::operations::OperationsSql::write_switch(
                    $time_in,
                ))
                .bind(pause.as_str())
                .bind(reason)
                .bind($crate::store::timestamp_text(now))
                .bind(changed_by)
                .execute(&self.pool)
                .await
                .map_err($classify)?;
                Ok(())
            }

            async fn last_status(
                &self,
                instance_id: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                let row: Option<(String,)> =
                    sqlx::query_as($crate::store::operations::OperationsSql::LAST_STATUS)
                        .bind(instance_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($classify)?;
                Ok(row.map(|(status,)| status))
            }

            async fn counted_starts(
                &self,
                since: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::operations::CountedStarts>, $crate::store::StoreError>
            {
                sqlx::query_as::<_, $crate::store::operations::CountedStarts>(
                    $crate::store::operations::OperationsSql::counted_starts($time_in),
                )
                .bind($crate::store::timestamp_text(since))
                .fetch_all(&self.pool)
                .await
                .map_err($classify)
            }

            async fn admit_start<F>(
                &self,
                instance_id: &str,
                hostname: &str,
                since: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
                admit: F,
            ) -> Result<$crate::store::operations::StartDecision, $crate::store::StoreError>
            where
                F: FnOnce(
                    $crate::store::operations::PreviousEnd,
                    &[$crate::store::operations::CountedStarts],
                ) -> bool,
            {
                use $crate::store::operations::{OperationsSql, PreviousEnd, StartDecision};
                let mut tx = self
                    .pool
                    .begin_with(sqlx::AssertSqlSafe(($begin_locked).to_string()))
                    .await
                    .map_err($classify)?;
                let status: Option<(String,)> = sqlx::query_as(OperationsSql::LAST_STATUS)
                    .bind(instance_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($classify)?;
                let previous = PreviousEnd::from_status(status.as_ref().map(|(s,)| s.as_str()));
                let counted = sqlx::query_as::<_, $crate::store::operations::CountedStarts>(
                    OperationsSql::counted_starts($time_in),
                )
                .bind($crate::store::timestamp_text(since))
                .fetch_all(&mut *tx)
                .await
                .map_err($classify)?;
                let admitted = admit(previous, &counted);
                if !admitted {
                    tx.rollback().await.map_err($classify)?;
                    return Ok(StartDecision {
                        previous,
                        counted,
                        admitted,
                    });
                }
                sqlx::query(OperationsSql::insert_start($time_in))
                    .bind(instance_id)
                    .bind(hostname)
                    .bind($crate::store::timestamp_text(now))
                    .bind(previous.as_str())
                    .bind(previous.is_unclean())
                    .execute(&mut *tx)
                    .await
                    .map_err($classify)?;
                sqlx::query(OperationsSql::MARK_STARTING)
                    .bind(instance_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($classify)?;
                tx.commit().await.map_err($classify)?;
                Ok(StartDecision {
                    previous,
                    counted,
                    admitted,
                })
            }

            async fn reset_starts(&self) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::operations::OperationsSql::RESET_STARTS)
                    .execute(&self.pool)
                    .await
                    .map_err($classify)?;
                Ok(done.rows_affected())
            }

            async fn last_applied(&self) -> Result<Option<String>, $crate::store::StoreError> {
                let row: Option<(String,)> =
                    sqlx::query_as($crate::store::operations::OperationsSql::LAST_APPLIED)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($classify)?;
                Ok(row.map(|(fingerprint,)| fingerprint))
            }

            async fn restore_rows(
                &self,
                rows: &$crate::store::RecoveryRows,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::operations::OperationsSql;
                let mut tx = self
                    .pool
                    .begin_with(sqlx::AssertSqlSafe(($begin_locked).to_string()))
                    .await
                    .map_err($classify)?;
                let (stored,): (i64,) = sqlx::query_as(OperationsSql::STORED_ROWS)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($classify)?;
                if stored > 0 {
                    tx.rollback().await.map_err($classify)?;
                    return Err($crate::store::StoreError::Conflict(format!(
                        "the database is not empty ({stored} rows of positions, portfolio, \
                         pyramiding state and signals)"
                    )));
                }
                // Bases first: a pyramid's row names its base.
                let mut positions: Vec<_> = rows.positions.iter().collect();
                positions.sort_by_key(|row| !row.is_base_position);
                for row in positions {
                    sqlx::query(OperationsSql::insert_position($num_in, $time_in))
                        .bind(&row.id)
                        .bind(&row.instrument)
                        .bind(&row.label)
                        .bind(&row.status)
                        .bind(&row.lots)
                        .bind(&row.entry_price)
                        .bind(&row.stop_price)
                        .bind(&row.risk_amount)
                        .bind(&row.margin)
                        .bind(row.is_base_position)
                        .bind(&row.base_position_id)
                        .bind(&row.entry_time)
                        .bind(row.version)
                        .bind(&row.exit_price)
                        .bind(&row.exit_time)
                        .bind(&row.realized_pnl)
                        .execute(&mut *tx)
                        .await
                        .map_err($classify)?;
                }
                if let Some(row) = &rows.portfolio {
                    sqlx::query(OperationsSql::insert_portfolio($num_in, $time_in))
                        .bind(&row.initial_capital)
                        .bind(&row.closed_equity)
                        .bind(&row.total_risk)
                        .bind(&row.margin_used)
                        .bind(row.version)
                        .bind($crate::store::timestamp_text(now))
                        .execute(&mut *tx)
                        .await
                        .map_err($classify)?;
                }
                for row in &rows.pyramiding {
                    sqlx::query(OperationsSql::insert_pyramiding($num_in))
                        .bind(&row.instrument)
                        .bind(&row.last_pyramid_price)
                        .bind(&row.base_position_id)
                        .execute(&mut *tx)
                        .await
                        .map_err($classify)?;
                }
                tx.commit().await.map_err($classify)
            }
        }
    };
}
pub(super) use impl_operations;
