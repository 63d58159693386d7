//! One segment file being written: direct IO (or buffered IO where the file system refuses
//! `O_DIRECT`), block-aligned writes that rewrite the partial last block, fdatasync, sealing.
//! Used by the writer's committer task (`file.rs`) and by compaction (`compact.rs`).

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use super::{LogError, LogSeq};

/// Direct-IO block size used for every write (at least the device's logical block size).
pub const BLOCK_BYTES: u64 = 4096;

/// The open file behind a [`SegmentFile`]: direct IO, or buffered IO where the file system
/// refuses `O_DIRECT` (tmpfs before Linux 6.6 answers `EINVAL`).
#[derive(Debug)]
enum Backend {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

/// A segment file being written with direct IO (or buffered IO, see [`Backend`]).
///
/// Shard-local: owned by the committer task (or a compaction) of one shard.
#[derive(Debug)]
pub(super) struct SegmentFile {
    pub(super) base: LogSeq,
    pub(super) path: PathBuf,
    file: Backend,
    /// Logical length: bytes of frames written.
    pub(super) len_bytes: u64,
    /// The bytes of the last partial block (`len_bytes % BLOCK_BYTES` of them).
    tail: Vec<u8>,
}

impl SegmentFile {
    /// Creates (or truncates) the segment file `path`. With `buffered`, or when the file
    /// system refuses `O_DIRECT`, the file is written with buffered IO instead (same bytes on
    /// disk; fdatasync still makes them durable).
    pub(super) async fn create(
        path: PathBuf,
        base: LogSeq,
        buffered: bool,
    ) -> Result<SegmentFile, LogError> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true).mode(super::perm::FILE_MODE);
        let file = if buffered {
            None
        } else {
            match opts.dma_open(&path).await {
                Ok(f) => Some(f),
                Err(e) => {
                    let e: std::io::Error = e.into();
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(LogError::io(&path, &e));
                    }
                    warn_buffered_once(&path);
                    None
                }
            }
        };
        let file = match file {
            Some(f) => {
                assert!(f.alignment() <= BLOCK_BYTES, "device blocks larger than {BLOCK_BYTES}");
                Backend::Direct(f)
            }
            None => Backend::Buffered(
                opts.buffered_open(&path).await.map_err(|e| LogError::io(&path, &e.into()))?,
            ),
        };
        Ok(SegmentFile { base, path, file, len_bytes: 0, tail: Vec::new() })
    }

    fn err(&self) -> impl FnOnce(glommio::GlommioError<()>) -> LogError + '_ {
        move |e| LogError::io(&self.path, &e.into())
    }

    /// Writes `bytes` at the logical end: the partial last block and `bytes`, zero-padded to a
    /// whole block, in one aligned write.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let start = self.len_bytes - self.tail.len() as u64;
        debug_assert_eq!(start % BLOCK_BYTES, 0);
        let data_len = self.tail.len() + bytes.len();
        let buf_len = (data_len as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let new_tail_len = (data_len as u64 % BLOCK_BYTES) as usize;
        let fill = |dst: &mut [u8], tail: &[u8]| {
            dst[..tail.len()].copy_from_slice(tail);
            dst[tail.len()..data_len].copy_from_slice(bytes);
            dst[data_len..].fill(0);
            dst[data_len - new_tail_len..data_len].to_vec()
        };
        let (written, new_tail) = match &self.file {
            Backend::Direct(f) => {
                let mut buf = f.alloc_dma_buffer(buf_len as usize);
                let new_tail = fill(buf.as_bytes_mut(), &self.tail);
                (f.write_at(buf, start).await.map_err(self.err())?, new_tail)
            }
            Backend::Buffered(f) => {
                let mut buf = vec![0u8; buf_len as usize];
                let new_tail = fill(&mut buf, &self.tail);
                (f.write_at(buf, start).await.map_err(self.err())?, new_tail)
            }
        };
        if (written as u64) < buf_len {
            let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(LogError::io(&self.path, &e));
        }
        self.len_bytes += bytes.len() as u64;
        self.tail = new_tail;
        Ok(())
    }

    /// fdatasync.
    pub(super) async fn sync(&self) -> Result<(), LogError> {
        match &self.file {
            Backend::Direct(f) => f.fdatasync().await.map_err(self.err()),
            Backend::Buffered(f) => f.fdatasync().await.map_err(self.err()),
        }
    }

    /// The logical end and tail, to go back to if the write after it must be redone.
    pub(super) fn mark(&self) -> (u64, Vec<u8>) {
        (self.len_bytes, self.tail.clone())
    }

    /// Goes back to `mark` (a write whose fdatasync failed is written again: after a failed
    /// fdatasync the kernel may have dropped the dirty pages).
    pub(super) fn reset(&mut self, mark: (u64, Vec<u8>)) {
        (self.len_bytes, self.tail) = mark;
    }

    /// Cuts the zero padding off and syncs (may be retried).
    pub(super) async fn finish(&self) -> Result<(), LogError> {
        match &self.file {
            Backend::Direct(f) => f.truncate(self.len_bytes).await.map_err(self.err())?,
            Backend::Buffered(f) => f.truncate(self.len_bytes).await.map_err(self.err())?,
        }
        self.sync().await
    }

    /// Cuts the zero padding off, syncs, and closes.
    pub(super) async fn seal(self) -> Result<(), LogError> {
        self.finish().await?;
        self.close().await
    }

    pub(super) async fn close(self) -> Result<(), LogError> {
        let path = self.path;
        let closed = match self.file {
            Backend::Direct(f) => f.close().await,
            Backend::Buffered(f) => f.close().await,
        };
        closed.map_err(|e| LogError::io(&path, &e.into()))
    }
}

/// Warns (once per process) that a data directory's file system refuses direct IO.
fn warn_buffered_once(path: &Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "{}: the file system refuses O_DIRECT (tmpfs?); the log uses buffered IO \
             (still fdatasync'ed)",
            path.display()
        );
    });
}
