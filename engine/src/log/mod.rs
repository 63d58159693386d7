//! The per-shard append-only log: what it stores, how it is laid out on disk, how it is
//! recovered and compacted.
//!
//! Shard-local: each shard owns exactly one log, in `{data_dir}/shard-{N}/`, and only that
//! shard's executor touches it. Nothing here is shared between shards.
//!
//! # Layers
//!
//! - Sans-IO core (no glommio, no files, no clock): [`record`] (record kinds, frame codec,
//!   validation), [`segment`] (the [`segment::Appender`]: sequence numbers, appended /
//!   flushed / synced watermarks, segment roll, the disk cap), [`replay`] (segment bytes →
//!   records, torn tail vs corruption), [`state`] (records folded into live state, and the
//!   snapshot that compaction writes), [`ack`] (acknowledgements released in append order).
//! - Thin io: [`file`] (the [`file::LogWriter`]: glommio direct-IO writes, group commit,
//!   durability waits), [`compact`] (compaction on the shard's executor) and [`recover`]
//!   (start-up: read every segment with buffered std reads, truncate a torn tail, rebuild the
//!   [`state::LogState`]). Only `file` and `compact` import glommio: they are this module's
//!   part of the io layer (a tidy rule should allow glommio in exactly those two files).
//! - `workload`: seeded generators of consistent record batches for tests (compiled only for
//!   tests and with the `test-support` feature).
//!
//! What the engine calls: [`file::open_recovered`] at shard start (→ writer + recovered
//! state), [`file::LogWriter::append_batch`] (→ seq), [`file::LogWriter::durable_seq`] /
//! [`file::LogWriter::wait_durable`] with an [`ack::AckQueue`] to release PUBACK/PUBREC in
//! order, [`file::LogWriter::compaction_due`] / [`file::LogWriter::compact`] from a timer, and
//! [`file::LogWriter::close`] at shutdown. [`LogError::is_disk_full`] maps to reason 0x97.
//!
//! # Segments
//!
//! A shard's log is a sequence of segment files `{data_dir}/shard-{N}/{base:020}.log`, where
//! `base` is the [`LogSeq`] of the segment's first record (zero-padded to 20 digits so names
//! sort like numbers). Records are numbered 1, 2, 3, … without gaps across segments: segment
//! `k + 1` starts right after the last record of segment `k`. The writer rolls to a new segment
//! when the next batch would make the active one larger than `segment_size_bytes`, and always
//! starts a new segment when it opens (it never appends to a file written before a restart).
//! A batch ([`file::LogWriter::append_batch`]) never straddles two segments.
//!
//! Files ending in `.log.compact` are unfinished compaction output and are deleted on start.
//!
//! # Frame layout
//!
//! Every record is one frame. Frames start at offsets that are multiples of 8 within their
//! segment, so the rkyv body behind the 24-byte header is 8-aligned in any 8-aligned read
//! buffer and can be validated in place. All integers are little-endian.
//!
//! ```text
//! offset size  field
//!  0     1     magic 0xB5 (never 0: zero bytes are padding, never a record)
//!  1     1     format version (1)
//!  2     1     record kind (1..=16, see record::Record)
//!  3     1     flags: bit 0 = "batch continues" (set on every frame of a batch but the
//!                last); other bits 0
//!  4     4     body_len: bytes of rkyv body (≤ record_size_max_bytes)
//!  8     8     seq: the record's LogSeq
//! 16     4     crc32c(body)
//! 20     4     crc32c(bytes 0..20) — the header checksum, covering the body checksum too
//! 24     n     body: the rkyv archive of the kind's struct (rkyv 0.8, little-endian, aligned)
//! 24+n   0..7  zero padding to a multiple of 8
//! ```
//!
//! A batch is atomic on recovery: replay yields a batch's records only once its last frame
//! (flag bit 0 clear) has been read, so a crash never leaves half a batch (say an
//! `Acknowledged` without its `PubrelPending`).
//!
//! The body is validated with rkyv's `bytecheck` before use, and every record is checked
//! against [`record::Record::validate`] both before it is written (a failure is an engine bug
//! and panics) and after it is read back (a failure is corruption).
//!
//! # Durability
//!
//! [`Durability::Sync`] (default) acknowledges a record once an `fdatasync` covering it has
//! completed; [`Durability::Batch`] waits up to `interval_ms` to let more records share that
//! fsync; [`Durability::None`] acknowledges at append and syncs only when a segment is sealed or
//! the log is closed. Group commit: one fsync covers every record appended before it started.
//! Durability is a prefix: "durable up to seq N" ([`file::LogWriter::durable_seq`]), so
//! releasing acknowledgements in seq order ([`ack::AckQueue`]) releases them in append order.
//! A batch always goes whole into one write, so durability always ends at a batch boundary.
//!
//! The writer syncs after every write of at most [`FLUSH_BYTES_MAX`] bytes, so after a power
//! loss only the last write can be half on disk: that bounds the torn window. In `none` mode
//! several unsynced writes can be lost at once, and a power loss may leave damage before the
//! window, which recovery reports as corruption (`skip_damaged` gets past it). A process
//! crash (`kill -9`) loses nothing that was written: completed direct-IO writes are on the
//! device.
//!
//! # Recovery rules
//!
//! 1. List `*.log`; delete `*.log.compact`. If several segments begin with a `Checkpoint`
//!    record, the one with the highest `end_seq` wins and every other segment with a base
//!    below that `end_seq` is obsolete and deleted (an interrupted compaction).
//! 2. Replay the remaining segments in order. A segment must start at its file name's seq and
//!    seqs must be contiguous, else start-up stops naming the file.
//! 3. Zero bytes after the last record of a segment are padding (direct IO writes whole
//!    4 KiB blocks) and are truncated.
//! 4. A damaged frame (short, bad checksum, bad body, wrong seq, or the data ending inside a
//!    batch) in the *last* segment that lies within the last `torn_window_bytes` of the file
//!    is a **torn tail**: the segment is truncated at that frame (at the start of its batch),
//!    with a warning (it held records that were never acknowledged: the writer
//!    syncs after every flush of at most that many bytes). Anywhere else it is
//!    **corruption**: start-up stops with an error naming the file and the byte offset, unless
//!    `skip_damaged` is set, in which case the damaged bytes up to the next valid frame are
//!    skipped with a warning.
//!    A segment left without any complete batch is removed.
//! 5. The records are folded into a [`state::LogState`]; a record that does not fit the state
//!    (e.g. a message queued for an unknown session) stops start-up like corruption.
//!
//! # Compaction
//!
//! Compaction rewrites the sealed segments (every segment but the active one, records below
//! `end_seq`) as one segment holding only live state: a `Checkpoint { end_seq }` record, then
//! a snapshot of the state ([`state::LogState::snapshot`]): live messages, sessions with their
//! subscriptions, queues, in-flight and QoS 2 state, and retained topics. Its records take the
//! seqs just below `end_seq`, so the log stays contiguous. Each live item comes from a distinct
//! record it replaces, so the snapshot always fits; when nothing is dead compaction is skipped.
//! Steps: write `{base:020}.log.compact`, fdatasync it, rename it to `{base:020}.log`,
//! fsync the directory, delete the obsolete segments. A crash at any step leaves either the
//! old segments or the checkpoint segment in charge (recovery rule 1). The active segment is
//! never touched, so appends continue while compaction runs. Disk use after compaction is the
//! live state plus the active segment.
//!
//! Records that refer to each other (a `MessageStored` and its `MessageQueued`s or
//! `RetainedSet`) must be appended in one batch: a stored message that no session and no
//! retained topic refers to at the end of the sealed segments is dropped by compaction.

pub mod ack;
pub mod compact;
pub mod file;
pub mod latency;
pub mod perm;
pub mod record;
pub mod recover;
pub mod replay;
pub mod segment;
mod segment_file;
pub mod settings;
pub mod state;
#[cfg(any(test, feature = "test-support"))]
pub mod workload;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use record::Record;

/// A record's sequence number in its shard's log: 1 for the first record ever, then +1 per
/// record, across segments and compactions. `LogSeq(0)` means "no record".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LogSeq(pub u64);

impl LogSeq {
    /// The seq after this one.
    pub fn next(self) -> LogSeq {
        LogSeq(self.0 + 1)
    }
}

impl fmt::Display for LogSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

/// When an appended record counts as durable (and so may be acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After an fdatasync that covers it. The default.
    #[default]
    Sync,
    /// After an fdatasync issued at most `interval_ms` after the first unsynced append.
    Batch { interval_ms: u32 },
    /// At once; data is written in the background and synced when a segment is sealed.
    None,
}

impl FromStr for Durability {
    type Err = String;

    /// Parses `sync`, `batch:<ms>` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Durability::Sync),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("batch:").map(str::parse::<u32>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Batch { interval_ms: ms }),
                _ => Err(format!("durability {s:?}: expected sync, batch:<ms> (ms ≥ 1) or none")),
            },
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Sync => f.write_str("sync"),
            Durability::Batch { interval_ms } => write!(f, "batch:{interval_ms}"),
            Durability::None => f.write_str("none"),
        }
    }
}

/// Bytes the writer hands to one write + fdatasync at most (a larger single record is written
/// whole). It bounds how much of a segment's tail a crash can leave half-written.
pub const FLUSH_BYTES_MAX: usize = 1 << 20;

/// Configuration of one shard's log. Checked by [`LogConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The broker's data directory; this shard's log lives in `shard-{shard}/` under it.
    pub data_dir: PathBuf,
    /// The owning shard's index.
    pub shard: u16,
    /// A segment is rolled when the next batch would make it larger than this.
    pub segment_size_bytes: u64,
    /// Appends fail with [`LogError::DiskFull`] once segments would exceed this (MQTT 0x97).
    pub disk_cap_bytes: u64,
    /// The largest record body (rkyv bytes). Must cover the largest message the broker takes.
    pub record_size_max_bytes: u32,
    /// When appended records become durable.
    pub durability: Durability,
    /// Skip damaged records found during recovery (with a warning) instead of stopping.
    pub skip_damaged: bool,
    /// Write with buffered IO instead of `O_DIRECT` (also chosen automatically, with a
    /// warning, when the file system refuses `O_DIRECT`).
    pub buffered_io: bool,
}

impl LogConfig {
    /// A configuration with the defaults: 64 MiB segments, 1 GiB cap, 1 MiB records, `sync`.
    pub fn new(data_dir: impl Into<PathBuf>, shard: u16) -> LogConfig {
        LogConfig {
            data_dir: data_dir.into(),
            shard,
            segment_size_bytes: 64 << 20,
            disk_cap_bytes: 1 << 30,
            record_size_max_bytes: 1 << 20,
            durability: Durability::Sync,
            skip_damaged: false,
            buffered_io: false,
        }
    }

    /// This shard's log directory.
    pub fn shard_dir(&self) -> PathBuf {
        self.data_dir.join(format!("shard-{}", self.shard))
    }

    /// Where a crash can leave a torn tail: the last this many bytes of the last segment.
    pub fn torn_window_bytes(&self) -> u64 {
        FLUSH_BYTES_MAX.max(self.record_size_max_bytes as usize) as u64 + 2 * 4096
    }

    /// Checks the relations between the limits.
    pub fn validate(&self) -> Result<(), String> {
        let frame_max =
            record::align_frame(record::HEADER_BYTES + self.record_size_max_bytes as usize);
        if self.segment_size_bytes < frame_max as u64 {
            return Err(format!(
                "log: segment_size_bytes ({}) must hold the largest record ({frame_max} bytes)",
                self.segment_size_bytes
            ));
        }
        if self.disk_cap_bytes < 2 * self.segment_size_bytes {
            return Err(format!(
                "log: disk_cap_bytes ({}) must be at least two segments ({})",
                self.disk_cap_bytes,
                2 * self.segment_size_bytes
            ));
        }
        Ok(())
    }
}

/// Errors of the log, by boundary: the engine maps [`LogError::DiskFull`] to reason code 0x97
/// (quota exceeded) and treats the others as fatal for the shard's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The disk cap is reached or the device is full (ENOSPC/EDQUOT).
    #[error("log disk full: {0}")]
    DiskFull(String),
    /// A record is larger than `record_size_max_bytes`.
    #[error("record of {len_bytes} bytes exceeds record_size_max_bytes ({max_bytes})")]
    RecordTooLarge { len_bytes: usize, max_bytes: usize },
    /// Damaged bytes before the tail (or in a sealed segment).
    #[error("{}: corrupt record at byte offset {offset}: {reason}", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: record::RecordError },
    /// Valid records that do not fit together (seq gap, reference to unknown state).
    #[error("{}: inconsistent log at byte offset {offset}: {reason}", path.display())]
    Inconsistent { path: PathBuf, offset: u64, reason: String },
    /// Any other IO failure. The writer stops accepting appends after one.
    #[error("log io error on {}: {message}", path.display())]
    Io { path: PathBuf, kind: std::io::ErrorKind, message: String },
    /// The configuration breaks a rule of [`LogConfig::validate`].
    #[error("{0}")]
    Config(String),
    /// The writer was closed.
    #[error("log is closed")]
    Closed,
}

impl LogError {
    /// Wraps an IO error on `path`; ENOSPC and EDQUOT become [`LogError::DiskFull`].
    pub fn io(path: impl Into<PathBuf>, e: &std::io::Error) -> LogError {
        let path = path.into();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                LogError::DiskFull(format!("{}: {e}", path.display()))
            }
            _ => LogError::Io { path, kind: e.kind(), message: e.to_string() },
        }
    }

    /// True for the error the engine answers with reason code 0x97 (quota exceeded).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::DiskFull(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        for s in ["sync", "none", "batch:5"] {
            assert_eq!(s.parse::<Durability>().unwrap().to_string(), s);
        }
        for bad in ["", "batch:", "batch:0", "batch:x", "fsync"] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_relations_are_checked() {
        let mut c = LogConfig::new("/tmp/x", 0);
        assert!(c.validate().is_ok());
        c.segment_size_bytes = 1024;
        assert!(c.validate().unwrap_err().contains("segment_size_bytes"));
        c = LogConfig::new("/tmp/x", 0);
        c.disk_cap_bytes = c.segment_size_bytes;
        assert!(c.validate().unwrap_err().contains("disk_cap_bytes"));
        assert_eq!(c.shard_dir(), PathBuf::from("/tmp/x/shard-0"));
    }

    #[test]
    fn enospc_is_disk_full() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(LogError::io("/x", &e).is_disk_full());
        let e = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!LogError::io("/x", &e).is_disk_full());
    }
}
