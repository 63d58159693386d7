//! Start-up recovery: read every segment of a shard's log with buffered std reads, apply the
//! recovery rules of the [module documentation](super), truncate a torn tail, and rebuild the
//! [`LogState`]. Blocking: call it before the shard's executor serves traffic.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::replay::{leading_checkpoint, ScanOptions, Scanner};
use super::segment::{parse_segment_file_name, segment_file_name, SegmentMeta};
use super::state::LogState;
use super::{LogConfig, LogError, LogSeq, Record};

/// Suffix of unfinished compaction output.
pub const COMPACT_SUFFIX: &str = ".log.compact";

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The live state: hand it to the engine core.
    pub state: LogState,
    /// The seq the writer continues with.
    pub next_seq: LogSeq,
    /// The segments left on disk, oldest first (the writer's sealed segments).
    pub segments: Vec<SegmentMeta>,
    /// One line per torn tail truncated, damage skipped, or leftover file removed.
    pub warnings: Vec<String>,
    /// Records replayed.
    pub records: u64,
    /// Bytes of segments read.
    pub bytes_read: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |e| LogError::io(path, &e)
}

/// Reads a whole file into an aligned buffer (so rkyv bodies are validated in place).
fn read_aligned(path: &Path, len_max: Option<usize>) -> Result<AlignedVec<16>, LogError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len() as usize;
    let len = len_max.map_or(len, |m| m.min(len));
    let mut buf = AlignedVec::<16>::with_capacity(len);
    buf.resize(len, 0);
    f.read_exact(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Truncates `path` to `len` bytes and syncs it.
fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let f = fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn remove(path: &Path) -> Result<(), LogError> {
    fs::remove_file(path).map_err(io_err(path))
}

/// Fsyncs a directory, making renames, creations and deletions in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Lists the segment files of `dir` (sorted by base), deleting unfinished compaction output.
fn list_segments(
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<(LogSeq, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(COMPACT_SUFFIX) {
            warnings
                .push(format!("{}: removed unfinished compaction output", entry.path().display()));
            remove(&entry.path())?;
        } else if let Some(base) = parse_segment_file_name(name) {
            segments.push((base, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Recovers the log of `config.shard` under `config.data_dir` (creating the directory if
/// missing): see the recovery rules in the [module documentation](super).
pub fn recover(config: &LogConfig) -> Result<Recovery, LogError> {
    config.validate().map_err(LogError::Config)?;
    let dir = config.shard_dir();
    super::perm::create_dir_all(&dir).map_err(io_err(&dir))?;
    let body_max_bytes = config.record_size_max_bytes as usize;
    let mut out = Recovery { next_seq: LogSeq(1), ..Recovery::default() };
    let mut segments = list_segments(&dir, &mut out.warnings)?;
    let mut changed = !out.warnings.is_empty();

    // Rule 1: the checkpoint with the highest end_seq makes older segments obsolete.
    let mut checkpoint: Option<(LogSeq, u64)> = None;
    for (base, path) in &segments {
        let head = read_aligned(path, Some(4096))?;
        if let Some((seq, cp)) = leading_checkpoint(&head, body_max_bytes) {
            let newer = match checkpoint {
                Some((_, end)) => cp.end_seq > end,
                None => true,
            };
            if seq == *base && newer {
                checkpoint = Some((*base, cp.end_seq));
            }
        }
    }
    if let Some((cp_base, end_seq)) = checkpoint {
        for (base, path) in &segments {
            if base.0 < end_seq && *base != cp_base {
                out.warnings
                    .push(format!("{}: obsolete after compaction, removed", path.display()));
                remove(path)?;
                changed = true;
            }
        }
        segments.retain(|(base, _)| base.0 >= end_seq || *base == cp_base);
    }

    // Rules 2-5: replay in order.
    let last_index = segments.len().saturating_sub(1);
    let mut expected: Option<LogSeq> = None;
    for (i, (base, path)) in segments.iter().enumerate() {
        if let Some(e) = expected {
            if *base != e {
                return Err(LogError::Inconsistent {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("segment starts at {base}, the previous one ended before {e}"),
                });
            }
        }
        let bytes = read_aligned(path, None)?;
        out.bytes_read += bytes.len() as u64;
        let options = ScanOptions {
            body_max_bytes,
            last_segment: i == last_index,
            torn_window_bytes: config.torn_window_bytes(),
            skip_damaged: config.skip_damaged,
        };
        let mut scanner = Scanner::new(&bytes, *base, options);
        let mut checkpoint_of_segment = None;
        for item in scanner.by_ref() {
            let s = item.map_err(|e| match e.damage {
                super::replay::Damage::Frame(reason) => {
                    LogError::Corrupt { path: path.clone(), offset: e.offset, reason }
                }
                damage => LogError::Inconsistent {
                    path: path.clone(),
                    offset: e.offset,
                    reason: damage.to_string(),
                },
            })?;
            if let (Record::Checkpoint(cp), 0) = (&s.record, s.offset) {
                checkpoint_of_segment = Some(cp.clone());
            }
            out.state.apply_owned(s.record).map_err(|e| LogError::Inconsistent {
                path: path.clone(),
                offset: s.offset,
                reason: format!("{} does not fit the state: {e}", s.seq),
            })?;
            out.records += 1;
        }
        let summary = scanner.summary().clone();
        if let Some(cp) = checkpoint_of_segment {
            let want_last = LogSeq(cp.end_seq - 1);
            if summary.records != cp.live_records + 1 || summary.last_seq != Some(want_last) {
                return Err(LogError::Inconsistent {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "compacted segment holds {} records up to {:?}, its checkpoint says {} up to {want_last}",
                        summary.records, summary.last_seq, cp.live_records + 1
                    ),
                });
            }
        }
        if let Some(t) = summary.torn {
            out.warnings.push(format!(
                "{}: torn tail at byte offset {} ({}){}, truncated",
                path.display(),
                t.offset,
                t.damage,
                if t.valid_frames_after { "; valid-looking frames after it discarded" } else { "" }
            ));
        }
        for s in &summary.skipped {
            out.warnings.push(format!(
                "{}: skipped {} damaged bytes at offset {} ({})",
                path.display(),
                s.len_bytes,
                s.offset,
                s.damage
            ));
        }
        let Some(last_seq) = summary.last_seq else {
            // No record at all (a segment created just before a crash): remove it.
            out.warnings.push(format!("{}: no complete record, removed", path.display()));
            remove(path)?;
            changed = true;
            continue;
        };
        if summary.valid_len_bytes < bytes.len() as u64 {
            truncate(path, summary.valid_len_bytes)?;
            changed = true;
        }
        out.segments.push(SegmentMeta { base: *base, len_bytes: summary.valid_len_bytes });
        expected = Some(last_seq.next());
        out.next_seq = last_seq.next();
    }
    out.state.prune();
    if changed {
        sync_dir(&dir)?;
    }
    debug_assert!(out.segments.iter().all(|s| dir.join(segment_file_name(s.base)).exists()));
    Ok(out)
}
