//! Whether this process may take its instance id. Two processes under one id would both
//! believe they lead, share one heartbeat and one journal name: a start is refused while
//! another live process holds the id.
//!
//! "Live" is judged without trusting clocks across hosts: on this host, the process holding
//! the id's intake journal (its lock) is alive; on another host, a heartbeat that advances
//! while this start watches it is. A row left by a process that was killed stops advancing,
//! so a restart after a crash is never refused.

use crate::store::{InstanceRow, Store, StoreError};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A heartbeat older than this many heartbeat intervals (by this host's clock) is taken for
/// a process that has ended, without watching it: generous, so that hosts whose clocks
/// disagree by less than that are still watched.
pub const HEARTBEAT_STALE_INTERVALS: u32 = 10;

/// How many heartbeat intervals a start watches another host's fresh heartbeat for: two, so
/// a live holder writes at least one in the meantime.
pub const HEARTBEAT_WATCH_INTERVALS: u32 = 2;

/// Statuses a process records as it ends: a row with one is held by nobody.
const ENDED_STATUSES: [&str; 2] = ["stopped", "crashed"];

/// Why the id cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Held {
    /// A process on this host holds the id's intake journal.
    #[error(
        "instance id {id:?} is held by a live process on this host: it has the intake journal \
         {} open; stop that process first, or give this one another --instance id",
        journal.display()
    )]
    Here {
        /// The id.
        id: String,
        /// The journal it holds.
        journal: PathBuf,
    },
    /// A process on another host keeps the id's heartbeat advancing.
    #[error(
        "instance id {id:?} is held by a live process on {hostname}: its heartbeat advanced \
         from {before} to {after} while this start watched it; stop that process first, or \
         give this one another --instance id"
    )]
    Elsewhere {
        /// The id.
        id: String,
        /// The host the row names.
        hostname: String,
        /// The heartbeat first read.
        before: String,
        /// The heartbeat read after the watch.
        after: String,
    },
}

/// What a start learned about its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody else holds it (no row, an ended or stale one, or a holder that has died).
    Free,
    /// Another live process holds it.
    Held(Held),
}

/// Whether the intake journal at `path` is held by another process (its lock is taken).
pub fn journal_is_held(path: &Path) -> std::io::Result<bool> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    match file.try_lock() {
        // Dropping the file releases the lock at once.
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(error))
            if error.kind() == std::io::ErrorKind::Unsupported =>
        {
            Ok(false)
        }
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Whether `id` (this process runs on `hostname`, with its journal at `journal`) may be
/// taken at `now`. Watching another host's heartbeat sleeps
/// [`HEARTBEAT_WATCH_INTERVALS`] × `heartbeat_interval`.
pub async fn check(
    store: &impl Store,
    id: &str,
    hostname: &str,
    journal: &Path,
    heartbeat_interval: Duration,
    now: DateTime<Utc>,
) -> Result<Verdict, StoreError> {
    let Some(row) = row_of(store, id, now).await? else {
        return Ok(Verdict::Free);
    };
    if ENDED_STATUSES.contains(&row.status.as_str()) {
        return Ok(Verdict::Free);
    }
    if row.hostname == hostname {
        return match journal_is_held(journal) {
            Ok(true) => Ok(Verdict::Held(Held::Here {
                id: id.to_string(),
                journal: journal.to_path_buf(),
            })),
            // An unreadable journal is the journal's own error to report, at its opening.
            Ok(false) | Err(_) => Ok(Verdict::Free),
        };
    }
    let stale_after = heartbeat_interval.saturating_mul(HEARTBEAT_STALE_INTERVALS);
    let fresh = DateTime::parse_from_rfc3339(&row.last_heartbeat).is_ok_and(|beat| {
        chrono::Duration::from_std(stale_after)
            .is_ok_and(|stale| now.signed_duration_since(beat) < stale)
    });
    if !fresh {
        return Ok(Verdict::Free);
    }
    tokio::time::sleep(heartbeat_interval.saturating_mul(HEARTBEAT_WATCH_INTERVALS)).await;
    let after = row_of(store, id, now).await?;
    Ok(match after {
        Some(after)
            if after.last_heartbeat != row.last_heartbeat
                && !ENDED_STATUSES.contains(&after.status.as_str()) =>
        {
            Verdict::Held(Held::Elsewhere {
                id: id.to_string(),
                hostname: after.hostname,
                before: row.last_heartbeat,
                after: after.last_heartbeat,
            })
        }
        _ => Verdict::Free,
    })
}

async fn row_of(
    store: &impl Store,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<InstanceRow>, StoreError> {
    match store.instances(now).await {
        Ok(rows) => Ok(rows.into_iter().find(|row| row.instance_id == id)),
        // A blank database, not migrated yet: no instance has run on it.
        Err(StoreError::NoSchema(_)) => Ok(None),
        Err(error) => Err(error),
    }
}
