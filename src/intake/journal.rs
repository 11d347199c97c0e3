//! The intake journal: a local, append-only file of checksummed records that holds what the
//! database could not take in time, so that nothing acknowledged is lost across `kill -9` or
//! power loss. A payload is appended and fsynced before its sender gets an answer; later a
//! drainer applies it and settles it. The journal is a durable queue of opaque bytes and
//! knows nothing about what they mean.
//!
//! # Format
//!
//! The file is a sequence of records, each an 8-byte header followed by a body:
//!
//! | bytes     | field         | meaning                                               |
//! |-----------|---------------|-------------------------------------------------------|
//! | 4         | `len: u32` LE | length of the body                                    |
//! | 4         | `crc: u32` LE | CRC-32 (IEEE, as computed by `crc32fast`) of the body |
//! | 1         | `tag: u8`     | body: 1 = appended, 2 = settled                       |
//! | 8         | `seq: u64` LE | body: the record's sequence number                    |
//! | `len − 9` | payload       | body: appended records only; settled records have none |
//!
//! Appended seqs strictly increase through the file. A settled record names a seq appended
//! earlier in the same file, and each seq is settled at most once. A body is at most
//! [`MAX_RECORD_BYTES`] and the file at most [`MAX_JOURNAL_BYTES`].
//!
//! # Telling a crash from damage
//!
//! Every record is fsynced before it is acknowledged and only one record is written at a
//! time, so a crash can leave at most one record cut short, at the very end, and it is at
//! most one record long ([`RECORD_HEADER_BYTES`] + [`MAX_RECORD_BYTES`]). [`decode`] calls
//! the bytes after the last whole record a *torn tail* when they can be that: fewer than 8
//! bytes; a length that runs past the end of the file; a last record whose checksum fails
//! (or whose length is over the limit) and that ends exactly at the end of the file; or a
//! run of zero bytes to the end (the file grew but its data never reached the disk). A torn
//! tail was never acknowledged, and opening the journal for writing cuts it off.
//!
//! Everything else that is wrong is [`Corrupt`], and is never repaired automatically: a
//! failing checksum or an over-long length with records after it, a would-be torn tail
//! longer than one record, or a record whose checksum holds but whose content is
//! impossible (an unknown tag, a short body, a settled record with a payload or for a seq
//! never appended, a seq appended twice or out of order), which means a bug or damage.
//!
//! The length field is not covered by the checksum, so damage to the length of one of the
//! last records can look like a torn tail; the cap on a torn tail's size bounds what such a
//! misreading can drop.
//!
//! # Space and sequence numbers
//!
//! An append is refused once the file, plus the settled record each pending payload will
//! need, would pass [`MAX_JOURNAL_BYTES`], so settling never runs out of room. Settled
//! records are compacted away when the journal is opened for writing and when an append
//! would not fit otherwise, and settling the last pending payload empties the file. Seqs
//! start at 1 in an empty file and keep increasing while the journal is open; a reopened
//! journal continues after the largest seq in the file, so one emptied by settling starts
//! again at 1.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The most bytes the journal file may hold, so that a long database outage fills a known
/// amount of disk and then refuses new payloads instead of filling the disk.
pub const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The largest record body (tag, seq and payload), so that a damaged length field cannot
/// make a reader allocate or skip gigabytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The size of a record's header: the body's length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;

/// The bytes of a body before its payload: the tag and the seq.
const BODY_PREFIX_BYTES: usize = 9;

/// The largest payload an append takes: what is left of [`MAX_RECORD_BYTES`] after the tag
/// and the seq.
pub const MAX_PAYLOAD_BYTES: usize = MAX_RECORD_BYTES - BODY_PREFIX_BYTES;

/// The most bytes a crash mid-append can leave behind: one whole record.
const MAX_TORN_TAIL_BYTES: usize = RECORD_HEADER_BYTES + MAX_RECORD_BYTES;

/// The size of a settled record, reserved in the file for each pending payload.
const SETTLED_RECORD_BYTES: u64 = (RECORD_HEADER_BYTES + BODY_PREFIX_BYTES) as u64;

/// The tag of an appended record.
const TAG_APPENDED: u8 = 1;

/// The tag of a settled record.
const TAG_SETTLED: u8 = 2;

/// One record of the journal, as the codec sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A payload was stored and is waiting to be applied.
    Appended {
        /// Its sequence number, which names it when it is settled.
        seq: u64,
        /// The opaque bytes the caller stored.
        payload: Vec<u8>,
    },
    /// The payload appended under `seq` was applied and needs no replay.
    Settled {
        /// The seq of the appended record this settles.
        seq: u64,
    },
}

/// Encodes one record, header and body, as it is written to the file. A payload longer
/// than [`MAX_PAYLOAD_BYTES`] gives bytes that [`decode`] refuses; the journal never writes
/// one.
pub fn encode(record: &Record) -> Vec<u8> {
    match record {
        Record::Appended { seq, payload } => encode_parts(TAG_APPENDED, *seq, payload),
        Record::Settled { seq } => encode_parts(TAG_SETTLED, *seq, &[]),
    }
}

/// Encodes a record from its parts, so that appending need not copy the payload into a
/// [`Record`] first.
fn encode_parts(tag: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    let body_len = BODY_PREFIX_BYTES.saturating_add(payload.len());
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    let seq = seq.to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[tag]);
    hasher.update(&seq);
    hasher.update(payload);
    let crc = hasher.finalize();
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES.saturating_add(body_len));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(&seq);
    out.extend_from_slice(payload);
    out
}

/// What [`decode`] found in a journal's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every whole, valid record, in file order, settled ones included.
    pub records: Vec<Record>,
    /// Bytes of whole, valid records from the start: where the next record goes once a
    /// torn tail is cut off.
    pub valid_bytes: u64,
    /// Bytes after them that are a torn last record (0 if none): a crash mid-append, never
    /// acknowledged, safe to cut off.
    pub torn_tail_bytes: u64,
}

/// Damage to acknowledged data, or a record that no correct writer produces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record at byte {offset}: {reason}")]
pub struct Corrupt {
    /// Where the bad record's header starts, so an operator can find it in the file.
    pub offset: u64,
    /// What is wrong with it, in plain words.
    pub reason: String,
}

/// Reads a journal's bytes: its records, and any torn tail after them. Never panics; see
/// the module documentation for what is torn and what is [`Corrupt`].
pub fn decode(bytes: &[u8]) -> Result<Scan, Corrupt> {
    let mut records = Vec::new();
    let mut ledger = Ledger::default();
    let mut rest = bytes;
    let mut offset: u64 = 0;
    // Each pass either consumes a header and its body or ends the loop.
    while !rest.is_empty() {
        let corrupt = |reason: String| Corrupt { offset, reason };
        match next_record(rest) {
            Next::Whole { body, after } => {
                match parse_body(body).and_then(|record| ledger.admit(record)) {
                    Ok(record) => records.push(record),
                    Err(_) if is_torn_zeros(rest) => break,
                    Err(reason) => return Err(corrupt(reason)),
                }
                offset = offset.saturating_add(to_u64(rest.len().saturating_sub(after.len())));
                rest = after;
            }
            Next::Torn { otherwise } => {
                if rest.len() > MAX_TORN_TAIL_BYTES {
                    return Err(corrupt(otherwise));
                }
                break;
            }
            Next::Bad(reason) => return Err(corrupt(reason)),
        }
    }
    Ok(Scan {
        records,
        valid_bytes: offset,
        torn_tail_bytes: to_u64(rest.len()),
    })
}

/// What the bytes at some offset hold.
enum Next<'a> {
    /// A record whose checksum holds.
    Whole {
        /// Its body.
        body: &'a [u8],
        /// The bytes after it.
        after: &'a [u8],
    },
    /// A record cut short at the end of the file, if the bytes are few enough.
    Torn {
        /// What is wrong if they are too many to be a torn record.
        otherwise: String,
    },
    /// Damage.
    Bad(String),
}

/// Reads the header at the start of `bytes` and checks the body against it.
fn next_record(bytes: &[u8]) -> Next<'_> {
    let Some((header, after_header)) = bytes.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Next::Torn {
            otherwise: format!("{} bytes are too few for a record header", bytes.len()),
        };
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let stored_crc = u32::from_le_bytes([c0, c1, c2, c3]);
    let over_limit = format!("length {len} is over the {MAX_RECORD_BYTES}-byte record limit");
    let body_len = usize::try_from(len).unwrap_or(usize::MAX);
    let Some((body, after)) = after_header.split_at_checked(body_len) else {
        let otherwise = if body_len > MAX_RECORD_BYTES {
            over_limit
        } else {
            format!("length {len} runs past the end of the file")
        };
        return Next::Torn { otherwise };
    };
    let ends_file = after.is_empty();
    if body_len > MAX_RECORD_BYTES {
        return if ends_file {
            Next::Torn {
                otherwise: over_limit,
            }
        } else {
            Next::Bad(over_limit)
        };
    }
    let crc = crc32fast::hash(body);
    if crc != stored_crc {
        let mismatch =
            format!("checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})");
        return if ends_file {
            Next::Torn {
                otherwise: mismatch,
            }
        } else {
            Next::Bad(mismatch)
        };
    }
    Next::Whole { body, after }
}

/// Whether `rest` is zeros that a crash can leave: the file grew, its data did not land.
fn is_torn_zeros(rest: &[u8]) -> bool {
    rest.len() <= MAX_TORN_TAIL_BYTES && rest.iter().all(|&byte| byte == 0)
}

/// Reads a body whose checksum holds.
fn parse_body(body: &[u8]) -> Result<Record, String> {
    let short = || {
        format!(
            "body of {} bytes is shorter than the {BODY_PREFIX_BYTES}-byte minimum (a tag and a seq)",
            body.len()
        )
    };
    let (&tag, after_tag) = body.split_first().ok_or_else(short)?;
    let (&seq, payload) = after_tag.split_first_chunk::<8>().ok_or_else(short)?;
    let seq = u64::from_le_bytes(seq);
    match tag {
        TAG_APPENDED => Ok(Record::Appended {
            seq,
            payload: payload.to_vec(),
        }),
        TAG_SETTLED if payload.is_empty() => Ok(Record::Settled { seq }),
        TAG_SETTLED => Err(format!(
            "the settled record for seq {seq} carries {} payload bytes; settled records have none",
            payload.len()
        )),
        other => Err(format!("unknown tag {other} (1 is appended, 2 is settled)")),
    }
}

/// The seqs seen so far in a scan, to refuse records no correct writer produces.
#[derive(Debug, Default)]
struct Ledger {
    /// The last appended seq: the next must be larger.
    last_appended: Option<u64>,
    /// Appended and not yet settled.
    pending: BTreeSet<u64>,
    /// Appended and settled.
    settled: BTreeSet<u64>,
}

impl Ledger {
    /// Takes `record` in if it fits what came before it.
    fn admit(&mut self, record: Record) -> Result<Record, String> {
        match record {
            Record::Appended { seq, .. } => {
                if let Some(last) = self.last_appended.filter(|&last| seq <= last) {
                    let seen = self.pending.contains(&seq) || self.settled.contains(&seq);
                    return Err(if seen {
                        format!("seq {seq} is appended twice")
                    } else {
                        format!(
                            "seq {seq} is appended after seq {last}; appended seqs must increase"
                        )
                    });
                }
                self.last_appended = Some(seq);
                self.pending.insert(seq);
            }
            Record::Settled { seq } => {
                if self.pending.remove(&seq) {
                    self.settled.insert(seq);
                } else if self.settled.contains(&seq) {
                    return Err(format!("seq {seq} is settled twice"));
                } else {
                    return Err(format!("settles seq {seq}, which was never appended"));
                }
            }
        }
        Ok(record)
    }
}

/// What a decoded file holds, as the journal needs it.
#[derive(Debug, Default)]
struct Contents {
    /// Appended and not settled, by seq.
    pending: BTreeMap<u64, Vec<u8>>,
    /// How many settled records there are: compaction reclaims them.
    settled_records: usize,
    /// The largest seq in the file.
    max_seq: Option<u64>,
}

impl Contents {
    /// Sums up the records of a successful [`decode`].
    fn of(records: Vec<Record>) -> Contents {
        let mut contents = Contents::default();
        for record in records {
            match record {
                Record::Appended { seq, payload } => {
                    contents.max_seq = contents.max_seq.max(Some(seq));
                    contents.pending.insert(seq, payload);
                }
                Record::Settled { seq } => {
                    contents.pending.remove(&seq);
                    contents.settled_records = contents.settled_records.saturating_add(1);
                }
            }
        }
        contents
    }
}

/// Whether a journal may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The service: appends, settles, cuts torn tails off and compacts.
    ReadWrite,
    /// Inspection: reads what is there and changes nothing, not even a torn tail.
    ReadOnly,
}

/// The intake journal file. Shared by many tasks behind an `Arc`; its methods block on
/// disk I/O, so async callers run them in `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub struct Journal {
    /// Where the file is, named in every error so the operator knows which file.
    path: PathBuf,
    /// Whether this journal may write.
    mode: Mode,
    /// The most bytes the file may hold: [`MAX_JOURNAL_BYTES`], smaller only in tests.
    limit_bytes: u64,
    /// The file and what is known about it, behind one lock: one write at a time.
    state: Mutex<State>,
}

/// A journal's file and what is known about it.
#[derive(Debug)]
struct State {
    /// The open file, locked against other writers; `None` when read-only.
    file: Option<File>,
    /// The file's length: where the next record goes.
    len: u64,
    /// The seq the next append gets; `None` once every seq is used.
    next_seq: Option<u64>,
    /// Appended and not settled.
    pending: BTreeSet<u64>,
    /// Settled records in the file, which compaction would reclaim.
    settled_records: usize,
    /// A failed write could not be undone, so the file may hold bytes past `len`; further
    /// records would be written before them and read back as damage, so writing stops.
    wedged: bool,
}

/// A journal just opened, with what it holds.
#[derive(Debug)]
pub struct Opened {
    /// The journal, ready for appends (in [`Mode::ReadWrite`]).
    pub journal: Journal,
    /// Appended but not settled, in seq order: what must still be applied.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// Bytes of a torn last record found (and, in [`Mode::ReadWrite`], cut off), so the
    /// caller can report a crash mid-append.
    pub torn_tail_bytes: u64,
}

/// Why the journal cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The operating system refused a read, write, sync or lock.
    #[error("cannot use the intake journal {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file holds damage or impossible records; nothing was changed.
    #[error(
        "the intake journal {path} is damaged: {corrupt}; it was left as it is. Inspect it, \
         and once its records are dealt with, move the file aside to start with an empty journal"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where and what the damage is.
        corrupt: Corrupt,
    },
    /// Appending would pass the journal's bound; the payload was not stored.
    #[error("the intake journal is full ({limit_bytes} bytes of alerts not yet applied)")]
    Full {
        /// The bound that was reached.
        limit_bytes: u64,
    },
    /// The payload is larger than a record may be; it was not stored.
    #[error(
        "a payload of {bytes} bytes is too large for the intake journal (at most {max} bytes); \
         it was not stored",
        max = MAX_PAYLOAD_BYTES
    )]
    TooLarge {
        /// The payload's size.
        bytes: usize,
    },
    /// A write was asked of a journal opened with [`Mode::ReadOnly`].
    #[error("the intake journal {path} was opened read-only")]
    ReadOnly {
        /// The journal's file.
        path: PathBuf,
    },
}

impl Journal {
    /// Opens the journal at `path` and reads what it holds. In [`Mode::ReadWrite`] it
    /// creates the file (and its directory) if missing, locks it against other writers,
    /// cuts off a torn tail and compacts settled records away. In [`Mode::ReadOnly`] a
    /// missing file is an empty journal and nothing is created or changed. A damaged file
    /// is refused with [`JournalError::Corrupt`] and left untouched.
    pub fn open(path: &Path, mode: Mode) -> Result<Opened, JournalError> {
        Journal::open_with_limit(path, mode, MAX_JOURNAL_BYTES)
    }

    /// [`Journal::open`] with a bound on the file's size, so tests can reach it.
    fn open_with_limit(path: &Path, mode: Mode, limit_bytes: u64) -> Result<Opened, JournalError> {
        let file = match mode {
            Mode::ReadOnly => match File::open(path) {
                Ok(file) => Some(file),
                Err(source) if source.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(io_error(path, source)),
            },
            Mode::ReadWrite => Some(open_for_writing(path)?),
        };
        let bytes = match &file {
            Some(file) => read_whole(path, file, limit_bytes)?,
            None => Vec::new(),
        };
        let scan = decode(&bytes).map_err(|corrupt| JournalError::Corrupt {
            path: path.to_path_buf(),
            corrupt,
        })?;
        let torn_tail_bytes = scan.torn_tail_bytes;
        let valid_bytes = scan.valid_bytes;
        let contents = Contents::of(scan.records);
        let mut len = to_u64(bytes.len());
        let mut settled_records = contents.settled_records;
        let file = match (mode, file) {
            (Mode::ReadWrite, Some(mut file)) => {
                if torn_tail_bytes > 0 {
                    file.set_len(valid_bytes)
                        .and_then(|()| file.sync_data())
                        .map_err(|source| io_error(path, source))?;
                    len = valid_bytes;
                }
                if settled_records > 0 {
                    let (compacted, compacted_len) = compact_into_place(path, &contents.pending)?;
                    file = compacted;
                    len = compacted_len;
                    settled_records = 0;
                    sync_dir(parent_dir(path))?;
                }
                Some(file)
            }
            _ => None,
        };
        let next_seq = match contents.max_seq {
            None => Some(1),
            Some(max) => max.checked_add(1),
        };
        let journal = Journal {
            path: path.to_path_buf(),
            mode,
            limit_bytes,
            state: Mutex::new(State {
                file,
                len,
                next_seq,
                pending: contents.pending.keys().copied().collect(),
                settled_records,
                wedged: false,
            }),
        };
        Ok(Opened {
            journal,
            pending: contents.pending.into_iter().collect(),
            torn_tail_bytes,
        })
    }

    /// Stores `payload` durably and returns its seq: the record is written and synced to
    /// disk before this returns, so an acknowledgement after it survives a crash.
    pub fn append(&self, payload: &[u8]) -> Result<u64, JournalError> {
        self.check_read_write()?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(JournalError::TooLarge {
                bytes: payload.len(),
            });
        }
        let mut state = self.lock();
        self.check_not_wedged(&state)?;
        let Some(seq) = state.next_seq else {
            return Err(self.io(io::Error::other(
                "every sequence number is used; once its records are applied, move the file \
                 aside to start with an empty journal",
            )));
        };
        let record = encode_parts(TAG_APPENDED, seq, payload);
        let record_bytes = to_u64(record.len());
        if !fits(
            state.len,
            state.pending.len(),
            record_bytes,
            self.limit_bytes,
        ) {
            if state.settled_records > 0 {
                self.compact(&mut state)?;
            }
            if !fits(
                state.len,
                state.pending.len(),
                record_bytes,
                self.limit_bytes,
            ) {
                return Err(JournalError::Full {
                    limit_bytes: self.limit_bytes,
                });
            }
        }
        self.write_at_end(&mut state, &record)?;
        state.pending.insert(seq);
        state.next_seq = seq.checked_add(1);
        Ok(seq)
    }

    /// Records that the payload appended under `seq` was applied, durably, so it is not
    /// replayed. Settling the last pending payload empties the file instead. An unknown or
    /// already settled seq is a no-op.
    pub fn settle(&self, seq: u64) -> Result<(), JournalError> {
        self.check_read_write()?;
        let mut state = self.lock();
        if !state.pending.contains(&seq) {
            return Ok(());
        }
        if state.pending.len() == 1 {
            self.file(&state)?
                .set_len(0)
                .map_err(|source| self.io(source))?;
            // The file is empty now whatever the sync says; a retry finds nothing to do.
            state.len = 0;
            state.pending.clear();
            state.settled_records = 0;
            state.wedged = false;
            return self
                .file(&state)?
                .sync_data()
                .map_err(|source| self.io(source));
        }
        self.check_not_wedged(&state)?;
        let record = encode_parts(TAG_SETTLED, seq, &[]);
        self.write_at_end(&mut state, &record)?;
        state.pending.remove(&seq);
        state.settled_records = state.settled_records.saturating_add(1);
        Ok(())
    }

    /// How many payloads are appended and not settled.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    /// The file's current length in bytes.
    pub fn bytes(&self) -> u64 {
        self.lock().len
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Locks the state; a panic elsewhere while holding it leaves it consistent, because
    /// every change to it follows the file's change.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses writes to a read-only journal.
    fn check_read_write(&self) -> Result<(), JournalError> {
        match self.mode {
            Mode::ReadWrite => Ok(()),
            Mode::ReadOnly => Err(JournalError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    /// Refuses writes after a failed write that could not be undone.
    fn check_not_wedged(&self, state: &State) -> Result<(), JournalError> {
        if state.wedged {
            return Err(self.io(io::Error::other(
                "an earlier write to it failed and could not be undone; reopen the journal \
                 (restart the service) before writing to it again",
            )));
        }
        Ok(())
    }

    /// The open file of a read-write journal.
    fn file<'s>(&self, state: &'s State) -> Result<&'s File, JournalError> {
        state.file.as_ref().ok_or_else(|| JournalError::ReadOnly {
            path: self.path.clone(),
        })
    }

    /// Writes `record` at the end of the file and syncs it. On failure it cuts the file
    /// back, so no half record stays behind for later records to bury mid-file.
    fn write_at_end(&self, state: &mut State, record: &[u8]) -> Result<(), JournalError> {
        let file = self.file(state)?;
        let at = state.len;
        match file
            .write_all_at(record, at)
            .and_then(|()| file.sync_data())
        {
            Ok(()) => {
                state.len = at.saturating_add(to_u64(record.len()));
                Ok(())
            }
            Err(source) => {
                if file.set_len(at).and_then(|()| file.sync_data()).is_err() {
                    state.wedged = true;
                }
                Err(self.io(source))
            }
        }
    }

    /// Rewrites the file with only its pending records, to reclaim settled ones.
    fn compact(&self, state: &mut State) -> Result<(), JournalError> {
        let file = self.file(state)?;
        let mut bytes = vec![0; usize::try_from(state.len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|source| self.io(source))?;
        let scan = decode(&bytes).map_err(|corrupt| JournalError::Corrupt {
            path: self.path.clone(),
            corrupt,
        })?;
        let contents = Contents::of(scan.records);
        let (compacted, len) = compact_into_place(&self.path, &contents.pending)?;
        state.file = Some(compacted);
        state.len = len;
        state.settled_records = 0;
        if let Err(error) = sync_dir(parent_dir(&self.path)) {
            // The rename may not survive a crash, and records written to the new file
            // would vanish with it.
            state.wedged = true;
            return Err(error);
        }
        Ok(())
    }

    /// An I/O error about this journal's file.
    fn io(&self, source: io::Error) -> JournalError {
        io_error(&self.path, source)
    }
}

/// Whether a record of `record_bytes` fits in a file of `len` bytes holding `pending`
/// payloads, leaving room for the settled record each of them (and the new one) will need.
fn fits(len: u64, pending: usize, record_bytes: u64, limit_bytes: u64) -> bool {
    let settled_room = SETTLED_RECORD_BYTES.saturating_mul(to_u64(pending).saturating_add(1));
    len.saturating_add(record_bytes)
        .saturating_add(settled_room)
        <= limit_bytes
}

/// Opens (creating if missing) the journal file for writing, locked against other writers.
/// A new file and any new directory are made durable before records go into them.
fn open_for_writing(path: &Path) -> Result<File, JournalError> {
    create_dirs(parent_dir(path))?;
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => {
            sync_dir(parent_dir(path))?;
            file
        }
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| io_error(path, source))?,
        Err(source) => return Err(io_error(path, source)),
    };
    lock_exclusive(path, &file)?;
    Ok(file)
}

/// Takes the lock that keeps a second writer (another process) off the file.
fn lock_exclusive(path: &Path, file: &File) -> Result<(), JournalError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(io_error(
            path,
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another writer has it open; stop that process, or give this one a journal \
                 of its own",
            ),
        )),
        // A file system without locks still gets a journal, only without this guard.
        Err(TryLockError::Error(source)) if source.kind() == io::ErrorKind::Unsupported => Ok(()),
        Err(TryLockError::Error(source)) => Err(io_error(path, source)),
    }
}

/// Reads the whole file, refusing one over the journal's bound as damage rather than
/// reading an arbitrarily large file into memory.
fn read_whole(path: &Path, file: &File, limit_bytes: u64) -> Result<Vec<u8>, JournalError> {
    let mut bytes = Vec::new();
    file.take(limit_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| io_error(path, source))?;
    if to_u64(bytes.len()) > limit_bytes {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            corrupt: Corrupt {
                offset: limit_bytes,
                reason: format!(
                    "the file is longer than the {limit_bytes}-byte journal limit, which no \
                     journal reaches"
                ),
            },
        });
    }
    Ok(bytes)
}

/// Writes `pending` as appended records to `<path>.compact`, synced and locked, and renames
/// it over `path`. Returns the new file and its length; the caller syncs the directory.
fn compact_into_place(
    path: &Path,
    pending: &BTreeMap<u64, Vec<u8>>,
) -> Result<(File, u64), JournalError> {
    let temporary = compact_path(path);
    let mut bytes = Vec::new();
    for (&seq, payload) in pending {
        bytes.extend_from_slice(&encode_parts(TAG_APPENDED, seq, payload));
    }
    let written = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|source| io_error(&temporary, source))
        .and_then(|file| {
            lock_exclusive(&temporary, &file)?;
            file.write_all_at(&bytes, 0)
                .and_then(|()| file.sync_all())
                .map_err(|source| io_error(&temporary, source))?;
            Ok(file)
        })
        .and_then(|file| {
            fs::rename(&temporary, path).map_err(|source| io_error(path, source))?;
            Ok(file)
        });
    match written {
        Ok(file) => Ok((file, to_u64(bytes.len()))),
        Err(error) => {
            // The original is intact; the half-made copy only takes space.
            let _ = fs::remove_file(&temporary);
            Err(error)
        }
    }
}

/// Where compaction writes its copy before renaming it over the journal.
fn compact_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".compact");
    PathBuf::from(name)
}

/// The directory holding `path`, `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents, syncing each new entry so it survives a crash.
fn create_dirs(dir: &Path) -> Result<(), JournalError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    for created in missing.iter().rev() {
        sync_dir(parent_dir(created))?;
    }
    Ok(())
}

/// Syncs a directory, so that entries created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| io_error(dir, source))
}

/// An I/O error about `path`.
fn io_error(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A byte count as `u64`, which holds any `usize` on the platforms vigil runs on.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn appended(seq: u64, payload: &str) -> Record {
        Record::Appended {
            seq,
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn settled(seq: u64) -> Record {
        Record::Settled { seq }
    }

    fn file_of(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(encode).collect()
    }

    /// A record with a correct header around an arbitrary body.
    fn with_header(body: &[u8]) -> Vec<u8> {
        let mut out = header(u32::try_from(body.len()).unwrap(), crc32fast::hash(body));
        out.extend_from_slice(body);
        out
    }

    fn header(len: u32, crc: u32) -> Vec<u8> {
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn render(result: &Result<Scan, Corrupt>) -> String {
        match result {
            Err(corrupt) => format!("corrupt: {corrupt}"),
            Ok(scan) => {
                let mut out = String::new();
                for record in &scan.records {
                    match record {
                        Record::Appended { seq, payload } => write!(
                            out,
                            "appended {seq} {:?}; ",
                            String::from_utf8_lossy(payload)
                        )
                        .unwrap(),
                        Record::Settled { seq } => write!(out, "settled {seq}; ").unwrap(),
                    }
                }
                write!(
                    out,
                    "valid {}, torn {}",
                    scan.valid_bytes, scan.torn_tail_bytes
                )
                .unwrap();
                out
            }
        }
    }

    #[track_caller]
    fn check(bytes: &[u8], expected: &str) {
        assert_eq!(render(&decode(bytes)), expected);
    }

    #[test]
    fn decode_roundtrips_records() {
        check(&[], "valid 0, torn 0");
        check(
            &file_of(&[
                appended(1, "a"),
                appended(2, "bc"),
                settled(1),
                appended(5, ""),
            ]),
            r#"appended 1 "a"; appended 2 "bc"; settled 1; appended 5 ""; valid 71, torn 0"#,
        );
        check(
            &file_of(&[appended(0, "zero"), appended(u64::MAX, "max"), settled(0)]),
            r#"appended 0 "zero"; appended 18446744073709551615 "max"; settled 0; valid 58, torn 0"#,
        );
        let records = vec![appended(3, "x"), appended(4, "yz"), settled(4), settled(3)];
        assert_eq!(decode(&file_of(&records)).unwrap().records, records);
    }

    #[test]
    fn decode_cut_anywhere_in_the_last_record_is_a_torn_tail() {
        let kept = [appended(1, "first"), appended(2, "second")];
        let prefix = file_of(&kept);
        for last in [appended(3, "third payload"), settled(2)] {
            let whole = cat(&[&prefix, &encode(&last)]);
            for cut in prefix.len()..whole.len() {
                assert_eq!(
                    decode(&whole[..cut]),
                    Ok(Scan {
                        records: kept.to_vec(),
                        valid_bytes: to_u64(prefix.len()),
                        torn_tail_bytes: to_u64(cut - prefix.len()),
                    }),
                    "cut at byte {cut}"
                );
            }
        }
    }

    #[test]
    fn decode_flipped_byte_in_a_middle_record_is_corrupt_at_that_record() {
        let first = encode(&appended(1, "first"));
        let middle = encode(&appended(2, "middle"));
        let last = encode(&appended(3, "last"));
        let whole = cat(&[&first, &middle, &last]);
        // The crc and the body; a damaged length is covered by the garbage-length cases.
        for at in first.len() + 4..first.len() + middle.len() {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x5a;
            let corrupt = decode(&bytes).unwrap_err();
            assert_eq!(corrupt.offset, to_u64(first.len()), "flip at byte {at}");
            assert!(
                corrupt.reason.starts_with("checksum mismatch"),
                "flip at byte {at}: {corrupt}"
            );
        }
    }

    #[test]
    fn decode_flipped_byte_in_the_last_record_is_a_torn_tail() {
        let kept = [appended(1, "first"), appended(2, "middle")];
        let prefix = file_of(&kept);
        let last = encode(&appended(3, "last"));
        let whole = cat(&[&prefix, &last]);
        for at in prefix.len() + 4..whole.len() {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x5a;
            assert_eq!(
                decode(&bytes),
                Ok(Scan {
                    records: kept.to_vec(),
                    valid_bytes: to_u64(prefix.len()),
                    torn_tail_bytes: to_u64(last.len()),
                }),
                "flip at byte {at}"
            );
        }
    }

    #[test]
    fn decode_garbage_lengths() {
        let one = encode(&appended(1, "a"));
        let two = encode(&appended(2, "b"));
        let over = u32::try_from(MAX_RECORD_BYTES + 1).unwrap();
        let over_body = vec![0xab; MAX_RECORD_BYTES + 1];
        check(
            &cat(&[&one, &[1, 2, 3]]),
            r#"appended 1 "a"; valid 18, torn 3"#,
        );
        check(
            &cat(&[&one, &header(100, 0), &[7; 10]]),
            r#"appended 1 "a"; valid 18, torn 18"#,
        );
        check(
            &cat(&[&one, &header(u32::MAX, 0)]),
            r#"appended 1 "a"; valid 18, torn 8"#,
        );
        check(
            &cat(&[&one, &header(over, 0), &[7; 100]]),
            r#"appended 1 "a"; valid 18, torn 108"#,
        );
        check(
            &cat(&[&one, &header(over, 0), &over_body, &two]),
            "corrupt: record at byte 18: length 65537 is over the 65536-byte record limit",
        );
        // Ends the file exactly, but is longer than any record a crash can leave.
        check(
            &cat(&[&one, &header(over, 0), &over_body]),
            "corrupt: record at byte 18: length 65537 is over the 65536-byte record limit",
        );
        check(
            &cat(&[&one, &header(u32::MAX, 0), &over_body]),
            "corrupt: record at byte 18: length 4294967295 is over the 65536-byte record limit",
        );
        check(
            &cat(&[&one, &header(0, 0), &two]),
            "corrupt: record at byte 18: body of 0 bytes is shorter than the 9-byte minimum (a tag and a seq)",
        );
        check(
            &cat(&[&one, &header(5, 0), &[0; 5], &two]),
            "corrupt: record at byte 18: checksum mismatch (stored 0x00000000, computed 0xc622f71d)",
        );
        check(
            &cat(&[&one, &[0; 40]]),
            r#"appended 1 "a"; valid 18, torn 40"#,
        );
        check(&[0; 3], "valid 0, torn 3");
    }

    #[test]
    fn decode_impossible_records_are_corrupt() {
        let one = encode(&appended(1, "a"));
        check(
            &file_of(&[appended(1, "a"), settled(7)]),
            "corrupt: record at byte 18: settles seq 7, which was never appended",
        );
        check(
            &file_of(&[settled(1), appended(1, "a")]),
            "corrupt: record at byte 0: settles seq 1, which was never appended",
        );
        check(
            &file_of(&[appended(1, "a"), settled(1), settled(1)]),
            "corrupt: record at byte 35: seq 1 is settled twice",
        );
        check(
            &file_of(&[appended(1, "a"), appended(1, "b")]),
            "corrupt: record at byte 18: seq 1 is appended twice",
        );
        check(
            &file_of(&[appended(5, "a"), appended(3, "b")]),
            "corrupt: record at byte 18: seq 3 is appended after seq 5; appended seqs must increase",
        );
        check(
            &cat(&[&one, &with_header(&[3, 1, 0, 0, 0, 0, 0, 0, 0])]),
            "corrupt: record at byte 18: unknown tag 3 (1 is appended, 2 is settled)",
        );
        check(
            &cat(&[&one, &with_header(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 9])]),
            "corrupt: record at byte 18: the settled record for seq 1 carries 1 payload bytes; settled records have none",
        );
        check(
            &cat(&[&one, &with_header(&[1, 2, 0])]),
            "corrupt: record at byte 18: body of 3 bytes is shorter than the 9-byte minimum (a tag and a seq)",
        );
        // The last record too: its checksum holds, so it is not torn.
        check(
            &with_header(&[9; 12]),
            "corrupt: record at byte 0: unknown tag 9 (1 is appended, 2 is settled)",
        );
    }

    #[track_caller]
    fn check_fits(len: u64, pending: usize, record_bytes: u64, limit_bytes: u64, expected: bool) {
        assert_eq!(fits(len, pending, record_bytes, limit_bytes), expected);
    }

    #[test]
    fn fits_leaves_room_for_every_settled_record() {
        check_fits(0, 0, 27, 44, true);
        check_fits(0, 0, 27, 43, false);
        check_fits(81, 3, 27, 176, true);
        check_fits(81, 3, 27, 175, false);
        check_fits(u64::MAX, usize::MAX, u64::MAX, MAX_JOURNAL_BYTES, false);
        check_fits(0, 0, to_u64(MAX_TORN_TAIL_BYTES), MAX_JOURNAL_BYTES, true);
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("vigil-journal-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pending(items: &[(u64, &str)]) -> Vec<(u64, Vec<u8>)> {
        items
            .iter()
            .map(|&(seq, payload)| (seq, payload.as_bytes().to_vec()))
            .collect()
    }

    fn open_rw(path: &Path) -> Opened {
        Journal::open(path, Mode::ReadWrite).unwrap()
    }

    #[test]
    fn journal_keeps_exactly_the_unsettled_records_in_order_across_reopen() {
        let dir = TempDir::new();
        let path = dir.join("new/dirs/intake.journal");
        let opened = open_rw(&path);
        assert_eq!((opened.pending, opened.torn_tail_bytes), (vec![], 0));
        let journal = opened.journal;
        assert_eq!(journal.path(), path);
        let seqs: Vec<u64> = ["a", "b", "c", "d"]
            .iter()
            .map(|payload| journal.append(payload.as_bytes()).unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        journal.settle(2).unwrap();
        journal.settle(4).unwrap();
        journal.settle(4).unwrap();
        journal.settle(99).unwrap();
        assert_eq!(journal.pending_count(), 2);
        assert_eq!(journal.bytes(), 4 * 18 + 2 * 17);
        drop(journal);

        let opened = open_rw(&path);
        assert_eq!(opened.pending, pending(&[(1, "a"), (3, "c")]));
        assert_eq!(opened.torn_tail_bytes, 0);
        let journal = opened.journal;
        // Compacted: only the two pending records are left.
        assert_eq!(journal.bytes(), 2 * 18);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * 18);
        assert!(!compact_path(&path).exists());
        assert_eq!(journal.append(b"e").unwrap(), 5);
        drop(journal);

        let opened = Journal::open(&path, Mode::ReadOnly).unwrap();
        assert_eq!(opened.pending, pending(&[(1, "a"), (3, "c"), (5, "e")]));
        assert_eq!(opened.journal.pending_count(), 3);
    }

    #[test]
    fn reopen_cuts_a_torn_tail_off_and_appends_after_the_good_records() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let journal = open_rw(&path).journal;
        journal.append(b"one").unwrap();
        journal.append(b"two").unwrap();
        drop(journal);
        let torn = encode(&appended(3, "three"));
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&torn[..10]);
        fs::write(&path, &bytes).unwrap();

        let opened = open_rw(&path);
        assert_eq!(opened.pending, pending(&[(1, "one"), (2, "two")]));
        assert_eq!(opened.torn_tail_bytes, 10);
        assert_eq!(opened.journal.bytes(), 40);
        assert_eq!(fs::metadata(&path).unwrap().len(), 40);
        assert_eq!(opened.journal.append(b"four").unwrap(), 3);
        drop(opened);

        let opened = open_rw(&path);
        assert_eq!(
            opened.pending,
            pending(&[(1, "one"), (2, "two"), (3, "four")])
        );
        assert_eq!(opened.torn_tail_bytes, 0);
    }

    #[test]
    fn read_only_reports_a_torn_tail_and_leaves_it() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let bytes = cat(&[&encode(&appended(1, "one")), &[0xee; 5]]);
        fs::write(&path, &bytes).unwrap();
        let opened = Journal::open(&path, Mode::ReadOnly).unwrap();
        assert_eq!(opened.pending, pending(&[(1, "one")]));
        assert_eq!(opened.torn_tail_bytes, 5);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_damaged_file_is_refused_and_left_as_it_is() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let mut bytes = file_of(&[appended(1, "one"), appended(2, "two"), appended(3, "six")]);
        bytes[20 + 12] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        for mode in [Mode::ReadWrite, Mode::ReadOnly] {
            let error = Journal::open(&path, mode).unwrap_err();
            let JournalError::Corrupt {
                path: reported,
                corrupt,
            } = &error
            else {
                panic!("{error}");
            };
            assert_eq!(reported, &path);
            assert_eq!(corrupt.offset, 20);
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("move the file aside"), "{message}");
            assert_eq!(fs::read(&path).unwrap(), bytes);
            assert!(!compact_path(&path).exists());
        }
    }

    #[test]
    fn append_is_refused_when_the_journal_would_pass_its_bound() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        // Each 10-byte payload is a 27-byte record plus 17 bytes kept for its settlement.
        let limit = 3 * (27 + 17);
        let journal = Journal::open_with_limit(&path, Mode::ReadWrite, limit)
            .unwrap()
            .journal;
        for expected in 1..=3 {
            assert_eq!(journal.append(b"0123456789").unwrap(), expected);
        }
        let full = journal.append(b"0123456789").unwrap_err();
        assert!(
            matches!(full, JournalError::Full { limit_bytes } if limit_bytes == limit),
            "{full}"
        );
        assert_eq!(journal.bytes(), 81);
        // Settling still has room; the append after it compacts the settled record away.
        journal.settle(1).unwrap();
        assert_eq!(journal.bytes(), 98);
        assert_eq!(journal.append(b"0123456789").unwrap(), 4);
        assert_eq!(journal.bytes(), 81);
        assert!(journal.bytes() <= limit);
        drop(journal);
        let opened = open_rw(&path);
        let seqs: Vec<u64> = opened.pending.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
    }

    #[test]
    fn append_refuses_a_payload_over_the_record_limit() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let journal = open_rw(&path).journal;
        let error = journal.append(&vec![7; MAX_PAYLOAD_BYTES + 1]).unwrap_err();
        assert!(
            matches!(error, JournalError::TooLarge { bytes } if bytes == MAX_PAYLOAD_BYTES + 1),
            "{error}"
        );
        assert_eq!(journal.bytes(), 0);
        assert_eq!(journal.append(&vec![7; MAX_PAYLOAD_BYTES]).unwrap(), 1);
        drop(journal);
        let opened = open_rw(&path);
        assert_eq!(opened.pending, vec![(1, vec![7; MAX_PAYLOAD_BYTES])]);
    }

    #[test]
    fn settling_everything_empties_the_file_and_seqs_keep_increasing() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let journal = open_rw(&path).journal;
        assert_eq!(journal.append(b"a").unwrap(), 1);
        assert_eq!(journal.append(b"b").unwrap(), 2);
        journal.settle(1).unwrap();
        journal.settle(2).unwrap();
        assert_eq!(journal.pending_count(), 0);
        assert_eq!(journal.bytes(), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(journal.append(b"c").unwrap(), 3);
        drop(journal);
        let opened = open_rw(&path);
        assert_eq!(opened.pending, pending(&[(3, "c")]));
        assert_eq!(opened.journal.append(b"d").unwrap(), 4);
    }

    #[test]
    fn read_only_open_of_a_missing_file_is_empty_and_creates_nothing() {
        let dir = TempDir::new();
        let path = dir.join("absent/intake.journal");
        let opened = Journal::open(&path, Mode::ReadOnly).unwrap();
        assert_eq!((opened.pending.len(), opened.torn_tail_bytes), (0, 0));
        let journal = opened.journal;
        assert_eq!(journal.bytes(), 0);
        assert!(!dir.join("absent").exists());
        for error in [
            journal.append(b"a").map(|_| ()).unwrap_err(),
            journal.settle(1).unwrap_err(),
        ] {
            assert!(
                matches!(&error, JournalError::ReadOnly { path: reported } if reported == &path),
                "{error}"
            );
        }
        assert!(!dir.join("absent").exists());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_has_the_journal() {
        let dir = TempDir::new();
        let path = dir.join("intake.journal");
        let first = open_rw(&path);
        let error = Journal::open(&path, Mode::ReadWrite).unwrap_err();
        assert!(
            matches!(&error, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock),
            "{error}"
        );
        // A reader is not a writer.
        Journal::open(&path, Mode::ReadOnly).unwrap();
        drop(first);
        open_rw(&path);
    }

    #[test]
    fn journal_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Journal>();
        let dir = TempDir::new();
        let journal = std::sync::Arc::new(open_rw(&dir.join("intake.journal")).journal);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let seq = journal.append(b"x").unwrap();
                        journal.settle(seq).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(journal.pending_count(), 0);
        assert_eq!(journal.append(b"y").unwrap(), 41);
    }
}
