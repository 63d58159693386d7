//! Replay: segment bytes → records, telling a torn tail from corruption. Sans-IO.
//!
//! The rules are those of the [module documentation](super) ("Recovery rules"): zero bytes
//! after the last frame are padding; a damaged frame in the last segment within the torn
//! window is a torn tail (truncate there); any other damaged frame is corruption (an error,
//! or skipped up to the next valid frame when `skip_damaged` is set).

use std::fmt;

use super::record::{self, Checkpoint, RecordError, FRAME_ALIGN_BYTES, FRAME_MAGIC, HEADER_BYTES};
use super::{LogSeq, Record};

/// How to scan one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Largest record body accepted.
    pub body_max_bytes: usize,
    /// True for the last segment of the log: the only one that can have a torn tail.
    pub last_segment: bool,
    /// Damage within this many bytes of the end of the last segment is a torn tail.
    pub torn_window_bytes: u64,
    /// Skip damaged bytes up to the next valid frame instead of failing.
    pub skip_damaged: bool,
}

/// What is wrong with the bytes at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The frame or its record does not decode.
    Frame(RecordError),
    /// A valid frame with an unexpected seq.
    Seq { expected: LogSeq, found: LogSeq },
    /// The data ends inside a batch (its last frame is missing).
    IncompleteBatch,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Frame(e) => e.fmt(f),
            Damage::Seq { expected, found } => write!(f, "expected {expected}, found {found}"),
            Damage::IncompleteBatch => f.write_str("batch without its last record"),
        }
    }
}

/// Damage that stops the replay: corruption before the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset of the damaged frame in its segment.
    pub offset: u64,
    /// What is wrong.
    pub damage: Damage,
}

/// A record read from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Byte offset of its frame in the segment.
    pub offset: u64,
    /// Its seq.
    pub seq: LogSeq,
    /// The record, validated.
    pub record: Record,
}

/// Damaged bytes that were skipped (`skip_damaged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Where the damage starts.
    pub offset: u64,
    /// How many bytes were skipped.
    pub len_bytes: u64,
    /// What was wrong with the first frame.
    pub damage: Damage,
}

/// A torn tail: the segment must be truncated at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn frame starts (the truncation point).
    pub offset: u64,
    /// What was wrong with it.
    pub damage: Damage,
    /// True if valid frames follow the damage (a crash lost a block in the middle of the
    /// last unsynced write): they are discarded too.
    pub valid_frames_after: bool,
}

/// The result of a whole scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanSummary {
    /// Bytes of valid frames (and skipped damage): the segment's length after truncation.
    pub valid_len_bytes: u64,
    /// Valid records read.
    pub records: u64,
    /// Seq of the last valid record (always the end of a batch).
    pub last_seq: Option<LogSeq>,
    /// Set if the segment ends in a torn tail.
    pub torn: Option<TornTail>,
    /// Damage skipped because of `skip_damaged`.
    pub skipped: Vec<Skipped>,
    /// Zero bytes after the last frame (padding of the last direct-IO block).
    pub padding_bytes: u64,
}

/// An iterator over the records of one segment's bytes. Records are released a whole batch
/// at a time: a batch cut short by the end of the data or by damage is never yielded. Yields
/// `Err` at most once, then stops. `bytes` should be 8-aligned in memory (bodies are then
/// validated in place; they are copied otherwise).
#[derive(Debug)]
pub struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    expected: LogSeq,
    options: ScanOptions,
    summary: ScanSummary,
    /// Records of the batch being read (its last frame not seen yet).
    batch: Vec<Scanned>,
    /// Where that batch starts.
    batch_start: usize,
    /// Complete batch records not yet yielded.
    ready: std::collections::VecDeque<Scanned>,
    done: bool,
}

impl<'a> Scanner<'a> {
    /// Scans `bytes`, the content of the segment whose name says it starts at `base`.
    pub fn new(bytes: &'a [u8], base: LogSeq, options: ScanOptions) -> Scanner<'a> {
        Scanner {
            bytes,
            pos: 0,
            expected: base,
            options,
            summary: ScanSummary::default(),
            batch: Vec::new(),
            batch_start: 0,
            ready: Default::default(),
            done: false,
        }
    }

    /// What the scan found so far; complete once the iterator returned `None`.
    pub fn summary(&self) -> &ScanSummary {
        &self.summary
    }

    /// Consumes the scanner, running it to the end, and returns the summary.
    pub fn finish(mut self) -> Result<ScanSummary, ScanError> {
        for item in self.by_ref() {
            item?;
        }
        Ok(self.summary)
    }

    fn frame_at(&self, pos: usize) -> Result<(Scanned, usize, bool), Damage> {
        let (frame, record) = record::decode(&self.bytes[pos..], self.options.body_max_bytes)
            .map_err(Damage::Frame)?;
        Ok((
            Scanned { offset: pos as u64, seq: frame.seq, record },
            frame.frame_bytes,
            frame.continues,
        ))
    }

    /// The next offset after `pos` where a valid frame starts.
    fn next_valid(&self, pos: usize) -> Option<(usize, LogSeq)> {
        let mut q = pos + FRAME_ALIGN_BYTES;
        while q + HEADER_BYTES <= self.bytes.len() {
            if self.bytes[q] == FRAME_MAGIC {
                if let Ok((s, _, _)) = self.frame_at(q) {
                    return Some((q, s.seq));
                }
            }
            q += FRAME_ALIGN_BYTES;
        }
        None
    }

    /// Stops the scan with everything up to `valid_len` accepted.
    fn end(&mut self, valid_len: usize) {
        self.summary.valid_len_bytes = valid_len as u64;
        self.done = true;
    }

    /// Handles damage found at `self.pos` (or an unfinished batch at the end, `pos == len`):
    /// torn tail, skip, or error. A batch in progress is dropped with the damage.
    fn damaged(&mut self, damage: Damage) -> Option<Result<Scanned, ScanError>> {
        let pos = self.pos;
        let cut = if self.batch.is_empty() { pos } else { self.batch_start };
        self.batch.clear();
        let len = self.bytes.len() as u64;
        let next = if pos < self.bytes.len() { self.next_valid(pos) } else { None };
        let in_window = pos as u64 + self.options.torn_window_bytes >= len;
        if self.options.last_segment && in_window {
            let valid_frames_after = next.is_some();
            self.summary.torn = Some(TornTail { offset: cut as u64, damage, valid_frames_after });
            self.end(cut);
            return None;
        }
        if !self.options.skip_damaged {
            self.done = true;
            return Some(Err(ScanError { offset: pos as u64, damage }));
        }
        let (to, seq) = match next {
            Some(n) => n,
            None => {
                // Nothing valid follows: skip to the end (and truncate the last segment there).
                let len_bytes = len - cut as u64;
                self.summary.skipped.push(Skipped { offset: cut as u64, len_bytes, damage });
                self.end(if self.options.last_segment { cut } else { self.bytes.len() });
                return None;
            }
        };
        let len_bytes = (to - cut) as u64;
        self.summary.skipped.push(Skipped { offset: cut as u64, len_bytes, damage });
        self.pos = to;
        self.expected = seq;
        self.next()
    }
}

impl Iterator for Scanner<'_> {
    type Item = Result<Scanned, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Some(Ok(s));
            }
            if self.done {
                return None;
            }
            let pos = self.pos;
            let at_end = pos == self.bytes.len()
                || (self.bytes[pos] == 0 && self.bytes[pos..].iter().all(|&b| b == 0));
            if at_end {
                if !self.batch.is_empty() {
                    return self.damaged(Damage::IncompleteBatch);
                }
                self.summary.padding_bytes = (self.bytes.len() - pos) as u64;
                self.end(pos);
                return None;
            }
            match self.frame_at(pos) {
                Ok((s, frame_bytes, continues)) if s.seq == self.expected => {
                    if self.batch.is_empty() {
                        self.batch_start = pos;
                    }
                    self.pos = pos + frame_bytes;
                    self.expected = s.seq.next();
                    self.batch.push(s);
                    if !continues {
                        self.summary.records += self.batch.len() as u64;
                        self.summary.last_seq = self.batch.last().map(|s| s.seq);
                        self.summary.valid_len_bytes = self.pos as u64;
                        self.ready.extend(self.batch.drain(..));
                    }
                }
                Ok((s, _, _)) => {
                    return self.damaged(Damage::Seq { expected: self.expected, found: s.seq })
                }
                Err(damage) => return self.damaged(damage),
            }
        }
    }
}

/// The checkpoint a segment starts with, if it is a compacted segment.
pub fn leading_checkpoint(bytes: &[u8], body_max_bytes: usize) -> Option<(LogSeq, Checkpoint)> {
    match record::decode(bytes, body_max_bytes) {
        Ok((frame, Record::Checkpoint(c))) => Some((frame.seq, c)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
