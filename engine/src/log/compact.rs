//! Compaction: rewrite the sealed segments as one segment of live state (see "Compaction" in
//! the [module documentation](super)). Runs on the shard's executor beside the committer: it
//! only reads sealed segments, so appends go on meanwhile.

use std::path::PathBuf;

use super::file::{sync_dir_async, LogWriter, SegmentFile};
use super::record::{self, Checkpoint};
use super::recover::COMPACT_SUFFIX;
use super::replay::{Damage, ScanOptions, Scanner};
use super::segment::{segment_file_name, SegmentMeta};
use super::state::LogState;
use super::{LogError, LogSeq, Record, FLUSH_BYTES_MAX};

/// What [`LogWriter::compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// Nothing was rewritten, for this reason.
    Skipped(&'static str),
    /// The sealed segments were replaced by one compacted segment.
    Done(CompactionReport),
}

/// Sizes before and after a compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments replaced.
    pub segments_replaced: usize,
    /// Records in them.
    pub records_before: u64,
    /// Their bytes.
    pub bytes_before: u64,
    /// Records in the compacted segment (checkpoint included).
    pub records_after: u64,
    /// Its bytes.
    pub bytes_after: u64,
    /// Its name.
    pub segment: SegmentMeta,
}

/// Records folded between two chances for the shard's other tasks to run: a segment holds
/// tens of thousands of small records, and the executor must not stall for all of them.
const FOLD_YIELD_RECORDS: usize = 1024;

/// Reads a whole sealed segment: direct IO, or buffered IO with `buffered` or where the file
/// system refuses `O_DIRECT` (the writer's fallback, `SegmentFile::create`).
async fn read_segment(
    path: &std::path::Path,
    len_bytes: usize,
    buffered: bool,
) -> Result<glommio::io::ReadResult, LogError> {
    let err = |e: glommio::GlommioError<()>| LogError::io(path, &e.into());
    if !buffered {
        match glommio::io::DmaFile::open(path).await {
            Ok(file) => {
                let bytes = file.read_at(0, len_bytes).await.map_err(err)?;
                file.close().await.map_err(err)?;
                return Ok(bytes);
            }
            Err(e) => {
                let e: std::io::Error = e.into();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(LogError::io(path, &e));
                }
            }
        }
    }
    let file = glommio::io::BufferedFile::open(path).await.map_err(err)?;
    let bytes = file.read_at(0, len_bytes).await.map_err(err)?;
    file.close().await.map_err(err)?;
    Ok(bytes)
}

/// Reads the sealed segments `segments` (in order) and folds them into a state.
async fn fold(
    dir: &std::path::Path,
    segments: &[SegmentMeta],
    body_max_bytes: usize,
    buffered: bool,
) -> Result<LogState, LogError> {
    let mut state = LogState::default();
    let mut folded = 0usize;
    for seg in segments {
        let path = dir.join(segment_file_name(seg.base));
        let bytes = read_segment(&path, seg.len_bytes as usize, buffered).await?;
        if bytes.len() as u64 != seg.len_bytes {
            return Err(LogError::Inconsistent {
                path,
                offset: bytes.len() as u64,
                reason: format!("sealed segment shorter than its {} bytes", seg.len_bytes),
            });
        }
        let options = ScanOptions {
            body_max_bytes,
            last_segment: false,
            torn_window_bytes: 0,
            skip_damaged: false,
        };
        for item in Scanner::new(&bytes, seg.base, options) {
            let s = item.map_err(|e| match e.damage {
                Damage::Frame(reason) => {
                    LogError::Corrupt { path: path.clone(), offset: e.offset, reason }
                }
                d => LogError::Inconsistent {
                    path: path.clone(),
                    offset: e.offset,
                    reason: d.to_string(),
                },
            })?;
            state.apply_owned(s.record).map_err(|e| LogError::Inconsistent {
                path: path.clone(),
                offset: s.offset,
                reason: e.to_string(),
            })?;
            folded += 1;
            if folded.is_multiple_of(FOLD_YIELD_RECORDS) {
                glommio::yield_if_needed().await;
            }
        }
        glommio::yield_if_needed().await;
    }
    state.prune();
    Ok(state)
}

/// Writes `records` (seqs from `base`) to `path` and seals the file.
async fn write_segment(
    path: PathBuf,
    base: LogSeq,
    records: impl Iterator<Item = Record>,
    body_max_bytes: usize,
    buffered: bool,
) -> Result<(u64, u64), LogError> {
    let mut file = SegmentFile::create(path, base, buffered).await?;
    let mut buf = Vec::with_capacity(FLUSH_BYTES_MAX + 4096);
    let mut seq = base;
    for r in records {
        if let Err(e) = record::encode_into(&mut buf, seq, &r, false, body_max_bytes) {
            unreachable!("a record read back from the log no longer fits: {e}");
        }
        seq = seq.next();
        if buf.len() >= FLUSH_BYTES_MAX {
            file.write(&buf).await?;
            buf.clear();
            glommio::yield_if_needed().await;
        }
    }
    if !buf.is_empty() {
        file.write(&buf).await?;
    }
    let len = file.len_bytes;
    file.seal().await?;
    Ok((seq.0 - base.0, len))
}

impl LogWriter {
    /// True when the sealed segments have grown past twice the live state written by the last
    /// compaction plus one segment, or the log uses half its disk cap.
    pub fn compaction_due(&self) -> bool {
        let i = self.inner.borrow();
        let sealed_bytes: u64 = i.appender.sealed().map(|s| s.len_bytes).sum();
        let half_full = i.appender.disk_bytes() * 2 >= i.config.disk_cap_bytes;
        !i.compacting
            && sealed_bytes > i.compacted_bytes
            && (sealed_bytes >= 2 * i.compacted_bytes + i.config.segment_size_bytes || half_full)
    }

    /// Rewrites the sealed segments as one segment of live state. Appends may continue while
    /// it runs. An error leaves the old segments in place (and the log usable).
    pub async fn compact(&self) -> Result<Compaction, LogError> {
        let (dir, segments, end_seq, body_max_bytes) = {
            let mut i = self.inner.borrow_mut();
            if i.compacting {
                return Ok(Compaction::Skipped("a compaction is running"));
            }
            // Only segments the committer has sealed on disk.
            let mut bases: Vec<LogSeq> = i.appender.sealed().map(|s| s.base).collect();
            bases.push(i.appender.active().base);
            let n = (0..bases.len() - 1)
                .take_while(|&k| bases[k + 1].0 - 1 <= i.sealed_through.0)
                .count();
            if n == 0 {
                return Ok(Compaction::Skipped("no sealed segment"));
            }
            i.compacting = true;
            let segments: Vec<SegmentMeta> = i.appender.sealed().take(n).copied().collect();
            (i.dir.clone(), segments, bases[n], i.config.record_size_max_bytes as usize)
        };
        let result = self.compact_segments(&dir, &segments, end_seq, body_max_bytes).await;
        let mut i = self.inner.borrow_mut();
        i.compacting = false;
        let bytes_before: u64 = segments.iter().map(|s| s.len_bytes).sum();
        match &result {
            Ok(Compaction::Done(r)) => {
                i.appender.on_compacted(&segments, Some(r.segment));
                i.compacted_bytes = r.bytes_after;
                i.stats.compactions += 1;
            }
            // Nothing dead: not due again until the sealed segments grow.
            Ok(Compaction::Skipped(_)) => i.compacted_bytes = bytes_before,
            Err(_) => {}
        }
        result
    }

    async fn compact_segments(
        &self,
        dir: &std::path::Path,
        segments: &[SegmentMeta],
        end_seq: LogSeq,
        body_max_bytes: usize,
    ) -> Result<Compaction, LogError> {
        let records_before = end_seq.0 - segments[0].base.0;
        let buffered = self.inner.borrow().config.buffered_io;
        let state = fold(dir, segments, body_max_bytes, buffered).await?;
        let live_records = state.snapshot_len();
        if live_records + 1 >= records_before {
            return Ok(Compaction::Skipped("nothing dead"));
        }
        // The checkpoint and the snapshot take the seqs just below end_seq.
        let base = LogSeq(end_seq.0 - live_records - 1);
        let name = segment_file_name(base);
        let tmp = dir.join(format!("{}{COMPACT_SUFFIX}", name.trim_end_matches(".log")));
        let checkpoint = Record::Checkpoint(Checkpoint { end_seq: end_seq.0, live_records });
        let records = std::iter::once(checkpoint).chain(state.snapshot());
        let written = write_segment(tmp.clone(), base, records, body_max_bytes, buffered).await;
        if written.is_err() {
            // E.g. the device is full: a partial copy would only take more of it.
            let _ = std::fs::remove_file(&tmp);
        }
        let (records_after, bytes_after) = written?;
        debug_assert_eq!(records_after, live_records + 1);
        let io = |p: &std::path::Path, e: std::io::Error| LogError::io(p, &e);
        std::fs::rename(&tmp, dir.join(&name)).map_err(|e| io(&tmp, e))?;
        sync_dir_async(dir).await?;
        // From here on the checkpoint is in charge; the old segments are obsolete.
        for seg in segments {
            if seg.base != base {
                let path = dir.join(segment_file_name(seg.base));
                std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
            }
        }
        sync_dir_async(dir).await?;
        let segment = SegmentMeta { base, len_bytes: bytes_after };
        tracing::info!(
            segments = segments.len(),
            records_before,
            records_after,
            bytes_after,
            "log compacted"
        );
        Ok(Compaction::Done(CompactionReport {
            segments_replaced: segments.len(),
            records_before,
            bytes_before: segments.iter().map(|s| s.len_bytes).sum(),
            records_after,
            bytes_after,
            segment,
        }))
    }
}
