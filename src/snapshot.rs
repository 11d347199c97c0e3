//! State snapshots: the positions, totals and pyramiding state with the portfolio version,
//! written to a file of their own. They serve twice: `vigil restore FILE` loads one into an
//! empty database, and at recovery the newest valid one is a witness, so that a database
//! *behind* it (an old backup restored by mistake, a WAL lost after `kill -9`) halts instead
//! of trading on lost history.
//!
//! A file is `INSTANCE-TIME.snapshot`: the JSON body, a newline, and `sha256 HEX` of the
//! body. It is written to a temporary file, fsynced, renamed into place and its directory
//! fsynced, so a crash leaves the old set or the new one, never half a file; the newest
//! [`SNAPSHOTS_KEPT`] of an instance are kept. A file whose checksum or body does not hold is
//! skipped for the one before it.

use crate::store::{PortfolioRow, PositionRow, PyramidingRow, RecoveryRows};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The format of the files this version writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Snapshots kept per instance; older ones are removed after each write.
pub const SNAPSHOTS_KEPT: usize = 5;

/// How often a serving instance writes a snapshot (and once more at every graceful stop).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

/// How long reading the state for a snapshot may take.
pub const SNAPSHOT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The file name ending of snapshots.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

/// The most snapshot files looked at for a witness, newest first.
pub const MAX_SNAPSHOTS_READ: usize = 64;

/// One snapshot of the stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The instance that wrote it.
    pub instance: String,
    /// When, RFC 3339.
    pub written_at: String,
    /// The portfolio row's version: every applied signal raises it by one.
    pub portfolio_version: i64,
    /// The fingerprint of the alert applied last, when the signal log holds one.
    #[serde(default)]
    pub last_applied_fingerprint: Option<String>,
    /// Every position, open and closed, as stored.
    pub positions: Vec<PositionRow>,
    /// The portfolio row, as stored.
    pub portfolio: Option<PortfolioRow>,
    /// Every pyramiding row, as stored.
    pub pyramiding: Vec<PyramidingRow>,
}

impl Snapshot {
    /// A snapshot of `rows`, as `instance` read them at `written_at`.
    pub fn of(rows: RecoveryRows, instance: &str, written_at: &str) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            instance: instance.to_string(),
            written_at: written_at.to_string(),
            portfolio_version: rows.portfolio.as_ref().map_or(0, |row| row.version),
            last_applied_fingerprint: None,
            positions: rows.positions,
            portfolio: rows.portfolio,
            pyramiding: rows.pyramiding,
        }
    }

    /// The rows it holds, as recovery reads them.
    pub fn rows(&self) -> RecoveryRows {
        RecoveryRows {
            positions: self.positions.clone(),
            portfolio: self.portfolio.clone(),
            pyramiding: self.pyramiding.clone(),
            schema: None,
        }
    }

    /// The file's bytes: the body, then its checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        let sum = hex::encode(Sha256::digest(&bytes));
        bytes.extend_from_slice(format!("\nsha256 {sum}\n").as_bytes());
        bytes
    }

    /// Reads a file's bytes; the error says what does not hold.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
        let (body, trailer) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or_else(|| "it has no checksum line".to_string())?;
        let sum = trailer
            .strip_prefix("sha256 ")
            .ok_or_else(|| "its last line is not `sha256 HEX`".to_string())?;
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("its checksum line is damaged (not 64 hex digits): the file was cut short or changed".into());
        }
        let actual = hex::encode(Sha256::digest(body.as_bytes()));
        if sum != actual {
            return Err(format!(
                "its checksum does not hold (the file says {}, the body hashes to {})",
                short(sum),
                short(&actual)
            ));
        }
        let snapshot: Snapshot = serde_json::from_str(body)
            .map_err(|error| format!("its body does not read: {error}"))?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "it is format {}, and this vigil reads format {SNAPSHOT_FORMAT}",
                snapshot.format
            ));
        }
        Ok(snapshot)
    }
}

fn short(sum: &str) -> &str {
    sum.get(..12).unwrap_or(sum)
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system refused.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a snapshot.
    #[error("{} is not a snapshot vigil can use: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What does not hold.
        why: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of `instance`'s snapshot written at `written_at` (RFC 3339): the id in the
/// form the journal uses, and the time with only digits, `T` and `Z`, so names sort by time.
pub fn file_name(instance: &str, written_at: &str) -> String {
    let time: String = written_at
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T' || *c == 'Z')
        .collect();
    format!(
        "{}-{time}{SNAPSHOT_SUFFIX}",
        crate::coordination::identity::file_name_part(instance)
    )
}

/// Writes `snapshot` into `dir` (created if missing), durably, and removes the instance's
/// snapshots beyond the newest [`SNAPSHOTS_KEPT`]. Returns the file written.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io("cannot create the snapshot directory", dir))?;
    let name = file_name(&snapshot.instance, &snapshot.written_at);
    let path = dir.join(&name);
    let temporary = dir.join(format!(".{name}.tmp"));
    {
        let mut file =
            std::fs::File::create(&temporary).map_err(io("cannot create", &temporary))?;
        file.write_all(&snapshot.encode())
            .map_err(io("cannot write", &temporary))?;
        file.sync_all().map_err(io("cannot fsync", &temporary))?;
    }
    std::fs::rename(&temporary, &path).map_err(io("cannot rename into place", &path))?;
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io("cannot fsync the snapshot directory", dir))?;
    for old in files(dir, &snapshot.instance)?
        .into_iter()
        .skip(SNAPSHOTS_KEPT)
    {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// Reads the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(io("cannot read", path))?;
    Snapshot::decode(&bytes).map_err(|why| SnapshotError::Invalid {
        path: path.to_path_buf(),
        why,
    })
}

/// `instance`'s snapshot files in `dir`, newest first (none when `dir` does not exist).
pub fn files(dir: &Path, instance: &str) -> Result<Vec<PathBuf>, SnapshotError> {
    let prefix = format!(
        "{}-",
        crate::coordination::identity::file_name_part(instance)
    );
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io("cannot list", dir)(error)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            // Exactly `ID-TIME.snapshot`: another id that starts with this one (`vigil` and
            // `vigil-2`) is not this instance's.
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix(SNAPSHOT_SUFFIX))
                .is_some_and(|time| {
                    !time.is_empty()
                        && time
                            .bytes()
                            .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z')
                })
        })
        .collect();
    found.sort();
    found.reverse();
    Ok(found)
}

/// What [`newest_valid`] found.
#[derive(Debug)]
pub struct Found {
    /// The newest snapshot that reads, with its file.
    pub newest: Option<(PathBuf, Snapshot)>,
    /// Every newer file that did not read, with why, newest first.
    pub skipped: Vec<SnapshotError>,
}

/// The newest snapshot of `instance` in `dir` that reads, and every newer file that did not;
/// at most [`MAX_SNAPSHOTS_READ`] files are looked at.
pub fn newest_valid(dir: &Path, instance: &str) -> Result<Found, SnapshotError> {
    let mut skipped = Vec::new();
    for path in files(dir, instance)?.into_iter().take(MAX_SNAPSHOTS_READ) {
        match read(&path) {
            Ok(snapshot) if snapshot.instance != instance => skipped.push(SnapshotError::Invalid {
                path,
                why: format!(
                    "it was written by instance {:?}, not {instance:?}",
                    snapshot.instance
                ),
            }),
            Ok(snapshot) => {
                return Ok(Found {
                    newest: Some((path, snapshot)),
                    skipped,
                })
            }
            Err(error) => skipped.push(error),
        }
    }
    Ok(Found {
        newest: None,
        skipped,
    })
}

/// Reads the state from `store` and writes it as `instance`'s newest snapshot in `dir`. A
/// database behind the newest snapshot there is not written over it: that snapshot is the
/// witness that history was lost. Returns the file and the snapshot written.
pub async fn take(
    store: &crate::store::AnyStore,
    dir: &Path,
    instance: &str,
) -> Result<(PathBuf, Snapshot), String> {
    use crate::store::Store;
    let rows = match tokio::time::timeout(SNAPSHOT_READ_TIMEOUT, store.load_recovery_rows()).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => return Err(format!("the state could not be read: {error}")),
        Err(_) => {
            return Err(format!(
                "the state could not be read within {}",
                humantime::format_duration(SNAPSHOT_READ_TIMEOUT)
            ))
        }
    };
    use crate::store::operations::Operations;
    let last = match tokio::time::timeout(SNAPSHOT_READ_TIMEOUT, store.last_applied()).await {
        Ok(Ok(last)) => last,
        Ok(Err(error)) => return Err(format!("the signal log could not be read: {error}")),
        Err(_) => return Err("the signal log did not answer in time".to_string()),
    };
    let written_at = crate::store::timestamp_text(chrono::Utc::now());
    let mut snapshot = Snapshot::of(rows, instance, &written_at);
    snapshot.last_applied_fingerprint = last;
    let (dir, instance) = (dir.to_path_buf(), instance.to_string());
    tokio::task::spawn_blocking(move || {
        if let Ok(Found {
            newest: Some((newest, witness)),
            ..
        }) = newest_valid(&dir, &instance)
        {
            if snapshot.portfolio_version < witness.portfolio_version {
                return Err(format!(
                    "the database's portfolio is at version {}, behind {} (version {}): \
                     not written, so that it stays the witness; see `vigil recover --check`",
                    snapshot.portfolio_version,
                    newest.display(),
                    witness.portfolio_version
                ));
            }
        }
        write(&dir, &snapshot)
            .map(|path| (path, snapshot))
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| format!("the snapshot writer failed: {error}"))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snapshot(version: i64) -> Snapshot {
        let portfolio = PortfolioRow {
            initial_capital: Some("1000000".into()),
            closed_equity: Some("1000000".into()),
            total_risk: Some("0".into()),
            margin_used: Some("0".into()),
            version,
        };
        Snapshot::of(
            RecoveryRows {
                positions: Vec::new(),
                portfolio: Some(portfolio),
                pyramiding: Vec::new(),
                schema: None,
            },
            "vigil-1",
            &format!("2026-12-04T10:00:{version:02}.000000Z"),
        )
    }

    /// What a case does to a file's bytes.
    type Damage = fn(&mut Vec<u8>);

    /// (what is done to the newest file's bytes, what reading it says)
    #[test]
    fn damaged_files_are_named_and_skipped() {
        let dir = std::env::temp_dir().join(format!("vigil-snapshot-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        #[rustfmt::skip]
        let cases: &[(&str, Damage, &str)] = &[
            ("a flipped byte", |bytes| bytes[20] ^= 0x01, "its checksum does not hold"),
            ("a cut tail", |bytes| bytes.truncate(bytes.len() - 30), "its checksum line is damaged"),
            ("a cut checksum line", |bytes| bytes.truncate(bytes.len() - 70), "its last line is not `sha256 HEX`"),
            ("an empty file", |bytes| bytes.clear(), "it has no checksum line"),
        ];
        for (what, damage, said) in cases {
            let _ = std::fs::remove_dir_all(&dir);
            write(&dir, &snapshot(1)).unwrap();
            let newest = write(&dir, &snapshot(2)).unwrap();
            let mut bytes = std::fs::read(&newest).unwrap();
            damage(&mut bytes);
            std::fs::write(&newest, bytes).unwrap();
            let Found { newest, skipped } = newest_valid(&dir, "vigil-1").unwrap();
            let (_, witness) = newest.unwrap();
            assert_eq!(
                witness.portfolio_version, 1,
                "{what}: falls back to the one before"
            );
            assert_eq!(skipped.len(), 1, "{what}");
            assert!(
                skipped[0].to_string().contains(said),
                "{what}: {}",
                skipped[0]
            );
        }
        // Only the newest few are kept.
        for version in 3..12 {
            write(&dir, &snapshot(version)).unwrap();
        }
        assert_eq!(files(&dir, "vigil-1").unwrap().len(), SNAPSHOTS_KEPT);
        let found = newest_valid(&dir, "vigil-1").unwrap();
        assert_eq!(found.newest.unwrap().1.portfolio_version, 11);
        assert!(files(&dir, "vigil-2").unwrap().is_empty());
        // An id that starts with another's is not taken for it.
        assert!(files(&dir, "vigil").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
