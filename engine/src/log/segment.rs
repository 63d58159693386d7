//! The appender: the sans-IO state of a shard's log writer, after redpanda's
//! `segment_appender`. It assigns sequence numbers, encodes records into pending chunks, rolls
//! segments, enforces the disk cap, and tracks three watermarks:
//!
//! - **appended**: encoded into memory (a pending [`Chunk`]); lost on a crash.
//! - **flushed**: written to the segment file by the io layer; survives a process crash but
//!   not a power loss.
//! - **synced**: covered by a completed fdatasync; survives both.
//!
//! `appended ≥ flushed ≥ synced` always holds. The io layer ([`super::file`]) takes chunks in
//! order ([`Appender::take_chunk`]), writes them, and reports back
//! ([`Appender::on_flushed`], [`Appender::on_synced`]).

use std::collections::VecDeque;

use super::record::{self, RecordError, FRAME_ALIGN_BYTES};
use super::{Durability, LogConfig, LogError, LogSeq, Record, FLUSH_BYTES_MAX};

/// The file name of the segment whose first record is `base`.
pub fn segment_file_name(base: LogSeq) -> String {
    format!("{:020}.log", base.0)
}

/// The base seq of a segment file name, if `name` is one.
pub fn parse_segment_file_name(name: &str) -> Option<LogSeq> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogSeq)
}

/// A segment on disk (or being written), as the appender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Seq of its first record; also its name.
    pub base: LogSeq,
    /// Bytes of frames in it (its logical length).
    pub len_bytes: u64,
}

/// Encoded frames waiting to be written: contiguous bytes of one segment.
#[derive(Debug)]
pub struct Chunk {
    /// The segment they belong to. A chunk of a new segment means the previous one is sealed.
    pub segment: LogSeq,
    /// Where in the segment the first byte goes.
    pub offset_bytes: u64,
    /// Whole frames.
    pub bytes: Vec<u8>,
    /// Seq of the last frame in `bytes`.
    pub last_seq: LogSeq,
}

/// The sans-IO part of a shard's log writer.
///
/// Shard-local: owned by the shard's [`super::file::LogWriter`].
#[derive(Debug)]
pub struct Appender {
    segment_size_bytes: u64,
    disk_cap_bytes: u64,
    body_max_bytes: usize,
    /// Sealed segments, oldest first. They are only removed by compaction.
    sealed: VecDeque<SegmentMeta>,
    /// The segment appends go to. `len_bytes == 0` means it does not exist on disk yet.
    active: SegmentMeta,
    /// Appended, not yet taken by the io layer. At most one chunk per segment, except that a
    /// chunk is closed at [`FLUSH_BYTES_MAX`].
    pending: VecDeque<Chunk>,
    /// A buffer to reuse for the next chunk.
    spare: Vec<u8>,
    next_seq: LogSeq,
    flushed: LogSeq,
    synced: LogSeq,
}

impl Appender {
    /// An appender continuing a recovered log whose segments are `sealed` (oldest first) and
    /// whose next record is `next_seq`. It writes into a new segment based at `next_seq`.
    pub fn new(config: &LogConfig, sealed: Vec<SegmentMeta>, next_seq: LogSeq) -> Appender {
        assert!(next_seq.0 >= 1, "seqs start at 1");
        if let Some(last) = sealed.last() {
            assert!(last.base < next_seq, "sealed segments lie below next_seq");
        }
        Appender {
            segment_size_bytes: config.segment_size_bytes,
            disk_cap_bytes: config.disk_cap_bytes,
            body_max_bytes: config.record_size_max_bytes as usize,
            sealed: sealed.into(),
            active: SegmentMeta { base: next_seq, len_bytes: 0 },
            pending: VecDeque::new(),
            spare: Vec::new(),
            next_seq,
            flushed: LogSeq(next_seq.0 - 1),
            synced: LogSeq(next_seq.0 - 1),
        }
    }

    /// Appends `records` as one batch: consecutive seqs, in one segment. Returns the seq of
    /// the last one. On error nothing is appended.
    ///
    /// # Panics
    /// If `records` is empty or a record breaks a field rule (an engine bug).
    pub fn append(&mut self, records: &[Record]) -> Result<LogSeq, LogError> {
        assert!(!records.is_empty(), "empty batch");
        let fresh = self.open_chunk();
        let body_max_bytes = self.body_max_bytes;
        let chunk = self.pending.back_mut().expect("chunk was opened");
        let start = chunk.bytes.len();
        let mut seq = self.next_seq;
        let mut result = Ok(());
        for (i, r) in records.iter().enumerate() {
            let continues = i + 1 < records.len();
            if let Err(e) = record::encode_into(&mut chunk.bytes, seq, r, continues, body_max_bytes)
            {
                let RecordError::TooLarge { len_bytes, max_bytes } = e else {
                    unreachable!("encode_into fails only with TooLarge")
                };
                result = Err(LogError::RecordTooLarge { len_bytes, max_bytes });
                break;
            }
            seq = seq.next();
        }
        let batch_bytes = (chunk.bytes.len() - start) as u64;
        let disk_bytes = self.disk_bytes();
        if result.is_ok() && disk_bytes + batch_bytes > self.disk_cap_bytes {
            result = Err(LogError::DiskFull(format!(
                "log cap reached: {disk_bytes} + {batch_bytes} bytes > disk_cap_bytes {}",
                self.disk_cap_bytes
            )));
        }
        if let Err(e) = result {
            self.undo_chunk(start, fresh);
            return Err(e);
        }
        if self.active.len_bytes > 0
            && self.active.len_bytes + batch_bytes > self.segment_size_bytes
        {
            // Roll: the batch starts the next segment.
            let chunk = self.pending.back_mut().expect("chunk was opened");
            let bytes = chunk.bytes.split_off(start);
            if fresh {
                self.undo_chunk(0, true);
            }
            self.sealed.push_back(self.active);
            self.active = SegmentMeta { base: self.next_seq, len_bytes: 0 };
            self.pending.push_back(Chunk {
                segment: self.active.base,
                offset_bytes: 0,
                bytes,
                last_seq: LogSeq(0),
            });
        }
        let last = LogSeq(seq.0 - 1);
        self.pending.back_mut().expect("chunk was opened").last_seq = last;
        self.active.len_bytes += batch_bytes;
        self.next_seq = seq;
        Ok(last)
    }

    /// Cuts the last chunk back to `len` bytes, and drops it if this batch opened it.
    fn undo_chunk(&mut self, len: usize, fresh: bool) {
        let chunk = self.pending.back_mut().expect("chunk was opened");
        chunk.bytes.truncate(len);
        if fresh {
            let empty = self.pending.pop_back().expect("chunk was opened");
            self.spare = empty.bytes;
        }
    }

    /// Makes sure the last pending chunk can take the next batch: it must belong to the
    /// active segment and not be full. Returns true if a new chunk was opened.
    fn open_chunk(&mut self) -> bool {
        let reuse = matches!(self.pending.back(),
            Some(c) if c.segment == self.active.base && c.bytes.len() < FLUSH_BYTES_MAX);
        if !reuse {
            let mut bytes = std::mem::take(&mut self.spare);
            bytes.clear();
            self.pending.push_back(Chunk {
                segment: self.active.base,
                offset_bytes: self.active.len_bytes,
                bytes,
                last_seq: LogSeq(0),
            });
        }
        debug_assert_eq!(self.pending.back().map(|c| c.bytes.len() % FRAME_ALIGN_BYTES), Some(0));
        !reuse
    }

    /// The oldest chunk not yet handed to the io layer.
    pub fn take_chunk(&mut self) -> Option<Chunk> {
        self.pending.pop_front()
    }

    /// True if some appended bytes have not been taken by the io layer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Gives a written chunk's buffer back for reuse.
    pub fn recycle(&mut self, mut bytes: Vec<u8>) {
        if bytes.capacity() > self.spare.capacity() && bytes.capacity() <= 2 * FLUSH_BYTES_MAX {
            bytes.clear();
            self.spare = bytes;
        }
    }

    /// The io layer wrote every chunk up to and including seq `upto`.
    pub fn on_flushed(&mut self, upto: LogSeq) {
        assert!(upto >= self.flushed && upto < self.next_seq, "flushed {upto} out of order");
        self.flushed = upto;
    }

    /// An fdatasync covering every flushed record up to `upto` completed.
    pub fn on_synced(&mut self, upto: LogSeq) {
        assert!(upto >= self.synced && upto <= self.flushed, "synced {upto} beyond flushed");
        self.synced = upto;
    }

    /// Seq of the last appended record (`LogSeq(0)` if none ever).
    pub fn appended(&self) -> LogSeq {
        LogSeq(self.next_seq.0 - 1)
    }

    /// Seq of the last record written to its file.
    pub fn flushed(&self) -> LogSeq {
        self.flushed
    }

    /// Seq of the last record covered by a completed fdatasync.
    pub fn synced(&self) -> LogSeq {
        self.synced
    }

    /// Seq of the last record that may be acknowledged under `mode`.
    pub fn durable(&self, mode: Durability) -> LogSeq {
        match mode {
            Durability::Sync | Durability::Batch { .. } => self.synced,
            Durability::None => self.appended(),
        }
    }

    /// The seq the next appended record gets.
    pub fn next_seq(&self) -> LogSeq {
        self.next_seq
    }

    /// Sealed segments, oldest first.
    pub fn sealed(&self) -> impl ExactSizeIterator<Item = &SegmentMeta> {
        self.sealed.iter()
    }

    /// The segment appends go to.
    pub fn active(&self) -> SegmentMeta {
        self.active
    }

    /// Ends the active segment now, if it holds anything: later appends go to a new one.
    /// Compaction reads only sealed segments, so at the cap this lets it fold the records
    /// that free space (acknowledgements) appended since. The empty chunk of the new
    /// segment makes the io layer seal the old file without waiting for the next append.
    pub fn seal_active(&mut self) {
        if self.active.len_bytes == 0 {
            return;
        }
        self.sealed.push_back(self.active);
        self.active = SegmentMeta { base: self.next_seq, len_bytes: 0 };
        let last_seq = LogSeq(self.next_seq.0 - 1);
        let chunk =
            Chunk { segment: self.active.base, offset_bytes: 0, bytes: Vec::new(), last_seq };
        self.pending.push_back(chunk);
    }

    /// Bytes of frames in all segments, counting appended frames (what the cap limits).
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.len_bytes).sum::<u64>() + self.active.len_bytes
    }

    /// Compaction replaced the oldest `replaced` sealed segments by `compacted` (none if the
    /// compacted segment ended up empty).
    ///
    /// # Panics
    /// If `replaced` is not a prefix of the sealed segments.
    pub fn on_compacted(&mut self, replaced: &[SegmentMeta], compacted: Option<SegmentMeta>) {
        for (i, r) in replaced.iter().enumerate() {
            assert_eq!(self.sealed.get(i), Some(r), "compaction replaced unknown segments");
        }
        self.sealed.drain(..replaced.len());
        if let Some(c) = compacted {
            self.sealed.push_front(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{SessionCreated, SessionEnded};

    fn config(segment: u64, cap: u64) -> LogConfig {
        let mut c = LogConfig::new("/nonexistent", 0);
        c.segment_size_bytes = segment;
        c.disk_cap_bytes = cap;
        c.record_size_max_bytes = 200;
        c
    }

    fn rec(i: usize) -> Record {
        SessionEnded { client_id: format!("client-{i:04}") }.into()
    }

    fn frame_len() -> u64 {
        let mut v = Vec::new();
        record::encode_into(&mut v, LogSeq(1), &rec(0), false, 200).unwrap() as u64
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(LogSeq(42)), "00000000000000000042.log");
        assert_eq!(parse_segment_file_name("00000000000000000042.log"), Some(LogSeq(42)));
        for bad in ["42.log", "0000000000000000004x.log", "00000000000000000042.log.compact"] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    /// An early seal ends the active segment at once (an empty chunk of the next segment
    /// tells the io layer to roll); an empty active segment is not sealed.
    #[test]
    fn seal_active_starts_a_new_segment() {
        let mut a = Appender::new(&config(1 << 20, 1 << 30), vec![], LogSeq(1));
        a.seal_active();
        assert_eq!(a.sealed().len(), 0, "nothing to seal");
        a.append(&[rec(1), rec(2)]).unwrap();
        a.seal_active();
        assert_eq!(
            a.sealed().copied().collect::<Vec<_>>(),
            [SegmentMeta { base: LogSeq(1), len_bytes: 2 * frame_len() }]
        );
        assert_eq!(a.active(), SegmentMeta { base: LogSeq(3), len_bytes: 0 });
        let _ = a.take_chunk().unwrap();
        let roll = a.take_chunk().unwrap();
        assert_eq!((roll.segment, roll.offset_bytes, roll.last_seq), (LogSeq(3), 0, LogSeq(2)));
        assert!(roll.bytes.is_empty());
        a.append(&[rec(3)]).unwrap();
        let c = a.take_chunk().unwrap();
        assert_eq!((c.segment, c.offset_bytes, c.last_seq), (LogSeq(3), 0, LogSeq(3)));
        assert_eq!(a.disk_bytes(), 3 * frame_len());
    }

    #[test]
    fn seqs_watermarks_and_chunks() {
        let mut a = Appender::new(&config(1 << 20, 1 << 30), vec![], LogSeq(1));
        assert_eq!(a.appended(), LogSeq(0));
        assert_eq!(a.append(&[rec(1), rec(2)]).unwrap(), LogSeq(2));
        assert_eq!(a.append(&[rec(3)]).unwrap(), LogSeq(3));
        assert_eq!((a.flushed(), a.synced()), (LogSeq(0), LogSeq(0)));
        assert_eq!(a.durable(Durability::None), LogSeq(3));
        assert_eq!(a.durable(Durability::Sync), LogSeq(0));
        let c = a.take_chunk().unwrap();
        assert_eq!((c.segment, c.offset_bytes, c.last_seq), (LogSeq(1), 0, LogSeq(3)));
        assert_eq!(c.bytes.len() as u64, 3 * frame_len());
        assert!(a.take_chunk().is_none());
        a.recycle(c.bytes);
        a.on_flushed(LogSeq(3));
        a.on_synced(LogSeq(3));
        assert_eq!(a.durable(Durability::Batch { interval_ms: 1 }), LogSeq(3));
        a.append(&[rec(4)]).unwrap();
        let c = a.take_chunk().unwrap();
        assert_eq!((c.offset_bytes, c.last_seq), (3 * frame_len(), LogSeq(4)));
    }

    #[test]
    fn rolls_between_batches_never_inside_one() {
        let f = frame_len();
        let mut a = Appender::new(&config(3 * f, 1 << 30), vec![], LogSeq(10));
        a.append(&[rec(1), rec(2)]).unwrap();
        a.append(&[rec(3), rec(4)]).unwrap(); // 4 frames > 3: rolls
        a.append(&[rec(5)]).unwrap();
        let c1 = a.take_chunk().unwrap();
        let c2 = a.take_chunk().unwrap();
        assert_eq!(
            (c1.segment, c1.bytes.len() as u64, c1.last_seq),
            (LogSeq(10), 2 * f, LogSeq(11))
        );
        assert_eq!((c2.segment, c2.offset_bytes, c2.last_seq), (LogSeq(12), 0, LogSeq(14)));
        assert_eq!(
            a.sealed().copied().collect::<Vec<_>>(),
            [SegmentMeta { base: LogSeq(10), len_bytes: 2 * f }]
        );
        assert_eq!(a.active(), SegmentMeta { base: LogSeq(12), len_bytes: 3 * f });
        // A batch larger than a segment still goes whole into a fresh segment.
        a.append(&[rec(6), rec(7), rec(8), rec(9)]).unwrap();
        assert_eq!(a.active(), SegmentMeta { base: LogSeq(15), len_bytes: 4 * f });
    }

    #[test]
    fn cap_and_size_errors_append_nothing() {
        let f = frame_len();
        let mut a = Appender::new(&config(1 << 20, 2 * f), vec![], LogSeq(1));
        a.append(&[rec(1)]).unwrap();
        let err = a.append(&[rec(2), rec(3)]).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        let big: Record =
            SessionCreated { client_id: "x".repeat(300), expiry_secs: 0, clean: true }.into();
        assert!(matches!(a.append(&[rec(2), big]), Err(LogError::RecordTooLarge { .. })));
        assert_eq!(a.appended(), LogSeq(1));
        a.append(&[rec(2)]).unwrap();
        assert_eq!(a.disk_bytes(), 2 * f);
        let c = a.take_chunk().unwrap();
        assert_eq!(c.bytes.len() as u64, 2 * f);
    }

    #[test]
    fn chunks_are_bounded() {
        let mut a = Appender::new(&config(64 << 20, 1 << 30), vec![], LogSeq(1));
        let n = FLUSH_BYTES_MAX / frame_len() as usize + 10;
        for i in 0..n {
            a.append(&[rec(i)]).unwrap();
        }
        let c = a.take_chunk().unwrap();
        assert!(c.bytes.len() >= FLUSH_BYTES_MAX && c.bytes.len() < FLUSH_BYTES_MAX + 100);
        let c2 = a.take_chunk().unwrap();
        assert_eq!(c2.offset_bytes, c.bytes.len() as u64);
        assert_eq!(c2.last_seq, LogSeq(n as u64));
    }

    #[test]
    fn compaction_replaces_a_prefix() {
        let f = frame_len();
        let mut a = Appender::new(&config(f, 1 << 30), vec![], LogSeq(1));
        for i in 0..4 {
            a.append(&[rec(i)]).unwrap();
        }
        let sealed: Vec<_> = a.sealed().copied().collect();
        assert_eq!(sealed.len(), 3);
        let c = SegmentMeta { base: LogSeq(2), len_bytes: 2 * f };
        a.on_compacted(&sealed, Some(c));
        assert_eq!(a.sealed().copied().collect::<Vec<_>>(), [c]);
        assert_eq!(a.disk_bytes(), 3 * f);
    }

    #[test]
    #[should_panic(expected = "synced")]
    fn syncing_beyond_flushed_is_a_bug() {
        let mut a = Appender::new(&config(1 << 20, 1 << 30), vec![], LogSeq(1));
        a.append(&[rec(1)]).unwrap();
        a.on_synced(LogSeq(1));
    }
}
