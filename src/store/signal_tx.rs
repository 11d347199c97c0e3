//! The exactly-once signal transaction, written once. A backend opens the transaction with
//! its own locking (SQLite's single writer, PostgreSQL's per-instrument advisory lock and
//! `lock_timeout`) and supplies each statement as a [`SignalTx`]; every decision and every
//! `rows_affected` check is here.

use super::{book_from_rows, Applied, ApplyError, PortfolioRow, PositionRow, SignalClaim};
use super::{timestamp_text, StoreError};
use crate::domain::{Portfolio, Position, Pyramiding};
use crate::trading::plan::{Book, Closed, Plan, PyramidingChange, Refusal};
use chrono::{DateTime, Utc};

/// One signal's open transaction, as a backend runs its statements. Each write returns the
/// rows it affected; [`apply`] decides what a count means.
pub(super) trait SignalTx: Sized {
    /// Inserts the fingerprint's row in the signal log as `applied`, or nothing when the
    /// fingerprint is already there (a concurrent claim of it waits for the first).
    async fn claim(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError>;
    /// Takes over the fingerprint's row when it waits as `queued`: marks it `applied` by
    /// this transaction.
    async fn take_over_queued(&mut self, claim: &SignalClaim<'_>) -> Result<u64, StoreError>;
    /// Where the alert stands among its instrument's alerts, read in one statement: whether
    /// an older one (by alert time, then fingerprint) waits as `queued`, and the alert time
    /// (RFC 3339 text) of the latest one recorded, queued ones aside.
    async fn standing(&mut self, claim: &SignalClaim<'_>) -> Result<Standing, StoreError>;
    /// Creates the portfolio row when the database has none yet, so that the version check
    /// always has a row.
    async fn ensure_portfolio(&mut self) -> Result<(), StoreError>;
    /// The instrument's open positions and the portfolio row, the latter locked where the
    /// backend locks rows.
    async fn book_rows(
        &mut self,
        instrument: &str,
    ) -> Result<(Vec<PositionRow>, Option<PortfolioRow>), StoreError>;
    /// Inserts an opened position.
    async fn insert_position(&mut self, position: &Position) -> Result<u64, StoreError>;
    /// Closes a position that is open.
    async fn close_position(&mut self, closed: &Closed) -> Result<u64, StoreError>;
    /// Writes the totals where the stored version is `portfolio.version - 1`.
    async fn write_portfolio(&mut self, portfolio: &Portfolio) -> Result<u64, StoreError>;
    /// Inserts or replaces the instrument's pyramiding row.
    async fn upsert_pyramiding(&mut self, pyramiding: &Pyramiding) -> Result<u64, StoreError>;
    /// Deletes the instrument's pyramiding row.
    async fn delete_pyramiding(&mut self, instrument: &str) -> Result<u64, StoreError>;
    /// Sets the fingerprint's outcome (a refusal's, or `queued`), with its reason.
    async fn set_outcome(
        &mut self,
        fingerprint: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// Commits.
    async fn commit(self) -> Result<(), StoreError>;
    /// Rolls back.
    async fn rollback(self) -> Result<(), StoreError>;
}

/// Where an alert stands among its instrument's alerts, as [`SignalTx::standing`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Standing {
    /// Whether an older alert of the instrument waits as `queued`: this one waits behind it.
    pub older_queued: bool,
    /// The alert time of the latest alert recorded on the instrument, queued ones aside: an
    /// alert older than it is superseded.
    pub latest_recorded_at: Option<String>,
}

/// Runs one signal in `tx`: claims its fingerprint (or takes over its `queued` row), waits as
/// `queued` behind an older queued alert of its instrument, else reads the book and writes
/// what `decide` returns: the plan's changes, or the refusal as the fingerprint's outcome.
/// Either every write commits or none does; a count that is not what the plan expects
/// rolls back.
pub(super) async fn apply<T, F>(
    mut tx: T,
    claim: &SignalClaim<'_>,
    decide: F,
) -> Result<Applied, ApplyError>
where
    T: SignalTx,
    F: FnOnce(&Book) -> Result<Plan, Refusal>,
{
    let signal = claim.signal;
    if tx.claim(claim).await? == 0 && tx.take_over_queued(claim).await? == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let standing = tx.standing(claim).await?;
    // Alerts of one instrument are applied in alert order: an older one waiting goes first.
    if standing.older_queued {
        let queued = tx.set_outcome(claim.fingerprint, QUEUED, None).await?;
        return finish(tx, queued, "the queued alert", Applied::Queued).await;
    }
    let latest_recorded_at = match standing.latest_recorded_at {
        None => None,
        Some(text) => Some(text.parse::<DateTime<Utc>>().map_err(|error| {
            StoreError::Corrupt(format!(
                "signal_log.alert_at = {text:?} on {} is not a time: {error}",
                signal.instrument
            ))
        })?),
    };
    crate::failpoint::hit("inside_transaction");
    let (mut positions, mut portfolio) = tx.book_rows(&signal.instrument).await?;
    if portfolio.is_none() {
        // Only a new database has no row; once created, it is read (and locked) again.
        tx.ensure_portfolio().await?;
        (positions, portfolio) = tx.book_rows(&signal.instrument).await?;
    }
    let mut book = book_from_rows(positions, portfolio)?;
    book.latest_recorded_at = latest_recorded_at;
    let plan = match decide(&book) {
        Ok(plan) => plan,
        Err(refusal) => {
            let reason = refusal.to_string();
            let recorded = tx
                .set_outcome(claim.fingerprint, refusal.status(), Some(&reason))
                .await?;
            return finish(
                tx,
                recorded,
                "the signal's claim",
                Applied::Refused(refusal),
            )
            .await;
        }
    };
    if let Some(position) = &plan.opened {
        let inserted = tx.insert_position(position).await?;
        if inserted != 1 {
            return conflict(tx, "the opened position was not inserted").await;
        }
    }
    for closed in &plan.closed {
        if tx.close_position(closed).await? != 1 {
            return conflict(tx, "a position to close was no longer open").await;
        }
    }
    // The version check: a writer holding a stale version changes nothing.
    if tx.write_portfolio(&plan.portfolio).await? != 1 {
        return conflict(tx, "portfolio state changed under this signal").await;
    }
    match &plan.pyramiding {
        PyramidingChange::Upsert(pyramiding) => {
            tx.upsert_pyramiding(pyramiding).await?;
        }
        PyramidingChange::Delete => {
            tx.delete_pyramiding(&signal.instrument).await?;
        }
        PyramidingChange::Keep => {}
    }
    tx.commit().await?;
    Ok(Applied::Done(plan))
}

/// Records `refusal` as the alert's outcome at once (claiming its fingerprint, or taking
/// over its `queued` row), whatever else waits on its instrument: it trades nothing, so it
/// takes no turn in alert order. A fingerprint already settled is [`Applied::Duplicate`].
pub(super) async fn refuse<T: SignalTx>(
    mut tx: T,
    claim: &SignalClaim<'_>,
    refusal: Refusal,
) -> Result<Applied, ApplyError> {
    if tx.claim(claim).await? == 0 && tx.take_over_queued(claim).await? == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let reason = refusal.to_string();
    let recorded = tx
        .set_outcome(claim.fingerprint, refusal.status(), Some(&reason))
        .await?;
    finish(
        tx,
        recorded,
        "the signal's claim",
        Applied::Refused(refusal),
    )
    .await
}

/// Commits when `count` is 1, else rolls back as a conflict over `what`.
async fn finish<T: SignalTx>(
    tx: T,
    count: u64,
    what: &str,
    applied: Applied,
) -> Result<Applied, ApplyError> {
    if count != 1 {
        return conflict(tx, &format!("{what} was not recorded")).await;
    }
    tx.commit().await?;
    Ok(applied)
}

/// Rolls back and reports a write conflict: nothing was written.
async fn conflict<T: SignalTx>(tx: T, why: &str) -> Result<Applied, ApplyError> {
    tx.rollback().await?;
    Err(ApplyError::Store(StoreError::Conflict(why.to_string())))
}

/// The signal log's status of an alert that waits to be applied.
pub(super) const QUEUED: &str = "queued";

/// Sets an outcome (same text for both backends).
pub(super) const SET_OUTCOME_SQL: &str =
    "UPDATE signal_log SET status = $2, reason = $3 WHERE fingerprint = $1";

/// The oldest queued alert of each instrument, oldest first, at most `$1`. `text` gives the
/// backend's text form of a time column. A queued row's `processed_at` is when it was queued.
pub(super) fn queued_heads_sql(text: fn(&str) -> String) -> sqlx::AssertSqlSafe<String> {
    let (received_at, queued_at) = (text("s.received_at"), text("s.processed_at"));
    sqlx::AssertSqlSafe(format!(
        "SELECT s.fingerprint, s.payload, {received_at} AS received_at, {queued_at} AS queued_at FROM signal_log s \
         WHERE s.status = 'queued' AND NOT EXISTS (SELECT 1 FROM signal_log o WHERE o.status = 'queued' \
         AND o.instrument = s.instrument AND (o.alert_at < s.alert_at OR (o.alert_at = s.alert_at AND o.fingerprint < s.fingerprint))) \
         ORDER BY s.alert_at, s.fingerprint LIMIT $1"
    ))
}

/// The alert time as both backends store it.
pub(super) fn alert_at(claim: &SignalClaim<'_>) -> String {
    timestamp_text(claim.signal.timestamp)
}
