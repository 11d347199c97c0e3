//! Whether this process may take its instance id. Two processes under one id would both
//! believe they lead, share one heartbeat and one journal name: a start is refused while
//! another live process holds the id.
//!
//! "Live" is judged without trusting clocks across hosts: on this host, a running instance
//! holds the id's host lock (an advisory lock on a file named for the id and the database,
//! released by the kernel when the process ends, however it ends); on another host, a
//! heartbeat that advances while this start watches it is live. A row left by a process
//! that was killed stops advancing, so a restart after a crash is never refused.

use crate::store::{InstanceRow, Store, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions, TryLockError};
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
    /// A process on this host holds the id's host lock.
    #[error(
        "instance id {id:?} is held by a live process on this host: it holds the lock {}; \
         stop that process first, or give this one another --instance id",
        lock.display()
    )]
    Here {
        /// The id.
        id: String,
        /// The lock file it holds.
        lock: PathBuf,
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

/// An instance id as a file name part: letters, digits, `.`, `-` and `_` kept, anything else
/// written `_`. The intake journal and the host lock are both named with it.
pub fn file_name_part(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// The lock a running instance holds on its id and database on this host, for as long as it
/// runs; the kernel releases it when the process ends.
#[derive(Debug)]
pub struct HostLock {
    /// The open, locked file; dropping it releases the lock.
    _file: File,
    /// Where it is.
    pub path: PathBuf,
}

/// The host lock's file for `id` on the database `database` (see
/// [`crate::store::database_identity`]), in `directory`: one per id and database, so two
/// deployments on one host may reuse an id.
pub fn host_lock_path(directory: &Path, id: &str, database: &str) -> PathBuf {
    let digest = Sha256::digest(database.as_bytes());
    let tag: String = digest
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    directory.join(format!("vigil-{}-{tag}.lock", file_name_part(id)))
}

/// Takes the host lock at `path`: `Err` when a live process holds it, `Ok(None)` when locks
/// cannot be taken here (a file system without them, a directory not writable), which the
/// caller reports; the heartbeat check still runs.
pub fn lock_on_this_host(id: &str, path: &Path) -> Result<Option<HostLock>, Held> {
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(HostLock {
            _file: file,
            path: path.to_path_buf(),
        })),
        Err(TryLockError::WouldBlock) => Err(Held::Here {
            id: id.to_string(),
            lock: path.to_path_buf(),
        }),
        Err(TryLockError::Error(_)) => Ok(None),
    }
}

/// Who else holds `id` at `now` (`None`: nobody), as far as other hosts go, for this process
/// on `hostname` (this host's processes are the [`HostLock`]'s to tell). Watching another host's
/// heartbeat sleeps [`HEARTBEAT_WATCH_INTERVALS`] × `heartbeat_interval`.
pub async fn check(
    store: &impl Store,
    id: &str,
    hostname: &str,
    heartbeat_interval: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Held>, StoreError> {
    let Some(row) = row_of(store, id, now).await? else {
        return Ok(None);
    };
    if ENDED_STATUSES.contains(&row.status.as_str()) || row.hostname == hostname {
        return Ok(None);
    }
    let stale_after = heartbeat_interval.saturating_mul(HEARTBEAT_STALE_INTERVALS);
    let fresh = DateTime::parse_from_rfc3339(&row.last_heartbeat).is_ok_and(|beat| {
        chrono::Duration::from_std(stale_after)
            .is_ok_and(|stale| now.signed_duration_since(beat) < stale)
    });
    if !fresh {
        return Ok(None);
    }
    tokio::time::sleep(heartbeat_interval.saturating_mul(HEARTBEAT_WATCH_INTERVALS)).await;
    let after = row_of(store, id, now).await?;
    Ok(after
        .filter(|after| {
            after.last_heartbeat != row.last_heartbeat
                && !ENDED_STATUSES.contains(&after.status.as_str())
        })
        .map(|after| Held::Elsewhere {
            id: id.to_string(),
            hostname: after.hostname,
            before: row.last_heartbeat,
            after: after.last_heartbeat,
        }))
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
