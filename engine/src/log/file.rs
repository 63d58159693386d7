//! The log writer: glommio direct-IO writes of the [`Appender`]'s chunks, group commit, and
//! durability waits. The thin io half of the log (with [`super::compact`]).
//!
//! One committer task per writer takes one chunk (≤ [`super::FLUSH_BYTES_MAX`] bytes: everything
//! appended since the previous round), writes it, and issues one fdatasync for it: every
//! record in the chunk shares that fsync (group commit). Then it advances "durable up to seq N"
//! and wakes the waiters. While a round is in flight, appends keep accumulating in the next
//! chunk.
//!
//! O_DIRECT needs aligned writes: a segment's last partial 4 KiB block is kept in memory and
//! rewritten, zero-padded, with the next chunk. A sealed segment is truncated to its logical
//! length, so only the active segment has zero padding after its last frame.

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::poll_fn;
use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};
use glommio::task::JoinHandle;

use super::recover::Recovery;
use super::segment::{segment_file_name, Appender, Chunk, SegmentMeta};
use super::{Durability, LogConfig, LogError, LogSeq, Record};

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
        opts.write(true).create(true).truncate(true);
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

    /// Cuts the zero padding off, syncs, and closes.
    pub(super) async fn seal(self) -> Result<(), LogError> {
        match &self.file {
            Backend::Direct(f) => f.truncate(self.len_bytes).await.map_err(self.err())?,
            Backend::Buffered(f) => f.truncate(self.len_bytes).await.map_err(self.err())?,
        }
        self.sync().await?;
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

/// Counters of one writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Chunks written (one write each).
    pub writes: u64,
    /// fdatasyncs completed on segment files.
    pub fsyncs: u64,
    /// Bytes of frames written.
    pub bytes_written: u64,
    /// Compactions that rewrote segments.
    pub compactions: u64,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) appender: Appender,
    pub(super) config: LogConfig,
    pub(super) dir: PathBuf,
    /// Sticky: after an IO error every append and wait fails with it.
    error: Option<LogError>,
    closing: bool,
    aborted: bool,
    sync_requested: bool,
    first_pending_at: Option<Instant>,
    committer: Option<Waker>,
    waiters: Vec<(LogSeq, Waker)>,
    /// Seq of the last record of the last segment the committer sealed on disk.
    pub(super) sealed_through: LogSeq,
    pub(super) compacting: bool,
    /// Size of the segment written by the last compaction (the live state's size then).
    pub(super) compacted_bytes: u64,
    pub(super) stats: LogStats,
}

impl Inner {
    fn durable(&self) -> LogSeq {
        self.appender.durable(self.config.durability)
    }

    fn wake_waiters(&mut self) {
        let durable = self.durable();
        let failed = self.error.is_some();
        self.waiters.retain(|(seq, waker)| {
            let done = failed || *seq <= durable;
            if done {
                waker.wake_by_ref();
            }
            !done
        });
    }

    fn fail(&mut self, e: LogError) {
        tracing::error!(error = %e, "log writer failed; no further appends");
        self.error.get_or_insert(e);
        self.wake_waiters();
    }
}

/// The writer of one shard's log: append records, learn when they are durable, compact.
///
/// Shard-local: create it on the shard that owns the log, inside its glommio executor; it
/// spawns the committer task there. Dropping it without [`LogWriter::close`] behaves like a
/// crash (nothing more is written or synced).
#[derive(Debug)]
pub struct LogWriter {
    pub(super) inner: Rc<RefCell<Inner>>,
    task: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Opens the writer after [`super::recover::recover`]: appends go to a new segment based at
    /// `recovery.next_seq`.
    pub fn open(config: &LogConfig, recovery: &Recovery) -> LogWriter {
        let appender = Appender::new(config, recovery.segments.clone(), recovery.next_seq);
        let inner = Rc::new(RefCell::new(Inner {
            appender,
            config: config.clone(),
            dir: config.shard_dir(),
            error: None,
            closing: false,
            aborted: false,
            sync_requested: false,
            first_pending_at: None,
            committer: None,
            waiters: Vec::new(),
            sealed_through: LogSeq(recovery.next_seq.0 - 1),
            compacting: false,
            compacted_bytes: recovery.segments.first().map_or(0, |s| s.len_bytes),
            stats: LogStats::default(),
        }));
        let task = glommio::spawn_local(committer(inner.clone())).detach();
        LogWriter { inner, task: Some(task) }
    }

    /// Appends one record; see [`LogWriter::append_batch`].
    pub fn append(&self, record: &Record) -> Result<LogSeq, LogError> {
        self.append_batch(std::slice::from_ref(record))
    }

    /// Appends records as one batch (consecutive seqs, one segment) and returns the seq of
    /// the last. Returns at once: wait with [`LogWriter::wait_durable`] or poll
    /// [`LogWriter::durable_seq`]. [`LogError::DiskFull`] means the cap or the device is full
    /// (MQTT 0x97); nothing of the batch was appended then.
    ///
    /// # Panics
    /// If the batch is empty or a record breaks a field rule (an engine bug).
    pub fn append_batch(&self, records: &[Record]) -> Result<LogSeq, LogError> {
        let mut inner = self.inner.borrow_mut();
        if let Some(e) = &inner.error {
            return Err(e.clone());
        }
        if inner.closing {
            return Err(LogError::Closed);
        }
        let was_idle = !inner.appender.has_pending();
        let seq = inner.appender.append(records)?;
        if was_idle {
            inner.first_pending_at = Some(Instant::now());
        }
        if let Some(w) = inner.committer.take() {
            w.wake();
        }
        Ok(seq)
    }

    /// The writer's sticky error, if an IO error stopped it (appends and waits fail with it).
    /// A [`LogError::DiskFull`] from [`LogWriter::append_batch`] with no sticky error is the
    /// cap: the batch may be retried once space is freed.
    pub fn failure(&self) -> Option<LogError> {
        self.inner.borrow().error.clone()
    }

    /// The last appended seq.
    pub fn appended_seq(&self) -> LogSeq {
        self.inner.borrow().appender.appended()
    }

    /// The last seq that may be acknowledged under the configured durability: every record up
    /// to it is durable (synced, or for `none`, appended).
    pub fn durable_seq(&self) -> LogSeq {
        self.inner.borrow().durable()
    }

    /// The last seq covered by a completed fdatasync, whatever the durability mode.
    pub fn synced_seq(&self) -> LogSeq {
        self.inner.borrow().appender.synced()
    }

    /// Resolves once `seq` is durable (see [`LogWriter::durable_seq`]), or with the writer's
    /// error.
    pub fn wait_durable(
        &self,
        seq: LogSeq,
    ) -> impl Future<Output = Result<(), LogError>> + 'static {
        let inner = self.inner.clone();
        poll_fn(move |cx| {
            let mut i = inner.borrow_mut();
            if let Some(e) = &i.error {
                return Poll::Ready(Err(e.clone()));
            }
            if i.durable() >= seq {
                return Poll::Ready(Ok(()));
            }
            i.waiters.push((seq, cx.waker().clone()));
            Poll::Pending
        })
    }

    /// Writes and fdatasyncs everything appended so far, whatever the durability mode.
    pub async fn sync(&self) -> Result<LogSeq, LogError> {
        let target = {
            let mut i = self.inner.borrow_mut();
            i.sync_requested = true;
            if let Some(w) = i.committer.take() {
                w.wake();
            }
            i.appender.appended()
        };
        let inner = self.inner.clone();
        poll_fn(move |cx| {
            let mut i = inner.borrow_mut();
            if let Some(e) = &i.error {
                return Poll::Ready(Err(e.clone()));
            }
            if i.appender.synced() >= target {
                return Poll::Ready(Ok(target));
            }
            i.waiters.push((target, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Seals the active segment if it holds anything (see [`Appender::seal_active`]): the
    /// next compaction can then fold it.
    pub fn seal_active(&self) {
        let mut i = self.inner.borrow_mut();
        if i.error.is_some() || i.closing {
            return;
        }
        let was_idle = !i.appender.has_pending();
        i.appender.seal_active();
        if was_idle && i.appender.has_pending() {
            i.first_pending_at = Some(Instant::now());
        }
        if let Some(w) = i.committer.take() {
            w.wake();
        }
    }

    /// Bytes of frames in all segments (what `disk_cap_bytes` limits).
    pub fn disk_bytes(&self) -> u64 {
        self.inner.borrow().appender.disk_bytes()
    }

    /// Segments on disk or being written, oldest first (sealed, then the active one).
    pub fn segments(&self) -> Vec<SegmentMeta> {
        let i = self.inner.borrow();
        let mut v: Vec<_> = i.appender.sealed().copied().collect();
        v.push(i.appender.active());
        v
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.inner.borrow().stats
    }

    /// Writes and syncs everything, truncates the active segment's padding, and stops the
    /// committer. Appends fail with [`LogError::Closed`] afterwards.
    pub async fn close(mut self) -> Result<(), LogError> {
        {
            let mut i = self.inner.borrow_mut();
            i.closing = true;
            if let Some(w) = i.committer.take() {
                w.wake();
            }
        }
        if let Some(task) = self.task.take() {
            task.await;
        }
        let i = self.inner.borrow();
        match &i.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl LogWriter {
    /// Stops like a crash: nothing more is written, synced or truncated (the active segment
    /// keeps its zero padding). Waits for the committer's in-flight IO to finish, so tests can
    /// damage the files and recover in the same process.
    pub async fn abandon(mut self) {
        {
            let mut i = self.inner.borrow_mut();
            i.aborted = true;
            if let Some(w) = i.committer.take() {
                w.wake();
            }
        }
        if let Some(task) = self.task.take() {
            task.await;
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.task.is_some() {
            let mut i = self.inner.borrow_mut();
            i.aborted = true;
            if let Some(w) = i.committer.take() {
                w.wake();
            }
        }
    }
}

/// What the committer does next.
enum Step {
    Write(Chunk),
    Sync,
    Close,
    Abort,
}

/// Waits for work; in `batch` mode, waits out the batch interval first.
async fn next_step(inner: &Rc<RefCell<Inner>>) -> Step {
    poll_fn(|cx| {
        let mut i = inner.borrow_mut();
        if i.aborted || i.error.is_some() {
            return Poll::Ready(());
        }
        if i.appender.has_pending() || i.closing || i.sync_requested {
            return Poll::Ready(());
        }
        i.committer = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    let wait = {
        let i = inner.borrow();
        match (i.config.durability, i.first_pending_at) {
            (Durability::Batch { interval_ms }, Some(at)) if !i.closing && !i.sync_requested => (at
                + Duration::from_millis(interval_ms.into()))
            .checked_duration_since(Instant::now()),
            _ => None,
        }
    };
    if let Some(d) = wait {
        glommio::timer::sleep(d).await;
    }
    let mut i = inner.borrow_mut();
    if i.aborted || i.error.is_some() {
        return Step::Abort;
    }
    if let Some(chunk) = i.appender.take_chunk() {
        i.first_pending_at = if i.appender.has_pending() { Some(Instant::now()) } else { None };
        return Step::Write(chunk);
    }
    if i.sync_requested {
        i.sync_requested = false;
        return Step::Sync;
    }
    if i.closing {
        return Step::Close;
    }
    Step::Sync
}

async fn committer(inner: Rc<RefCell<Inner>>) {
    let mut current: Option<SegmentFile> = None;
    if let Err(e) = commit_loop(&inner, &mut current).await {
        inner.borrow_mut().fail(e);
    }
    // On abort (a simulated crash) the file is dropped as it is: padded, maybe unsynced.
}

async fn commit_loop(
    inner: &Rc<RefCell<Inner>>,
    current: &mut Option<SegmentFile>,
) -> Result<(), LogError> {
    loop {
        let step = next_step(inner).await;
        let mode = inner.borrow().config.durability;
        match step {
            Step::Abort => return Ok(()),
            Step::Write(chunk) => {
                if current.as_ref().map(|f| f.base) != Some(chunk.segment) {
                    roll(inner, current, chunk.segment).await?;
                }
                let file = current.as_mut().expect("rolled");
                assert_eq!(file.len_bytes, chunk.offset_bytes, "chunks arrive in order");
                if !chunk.bytes.is_empty() {
                    // (Empty: the previous segment was sealed early, `seal_active`.)
                    file.write(&chunk.bytes).await?;
                }
                let sync = mode != Durability::None || inner.borrow().sync_requested;
                if sync {
                    file.sync().await?;
                }
                let mut i = inner.borrow_mut();
                i.stats.writes += 1;
                i.stats.bytes_written += chunk.bytes.len() as u64;
                i.appender.on_flushed(chunk.last_seq);
                if sync {
                    i.stats.fsyncs += 1;
                    i.appender.on_synced(chunk.last_seq);
                }
                i.appender.recycle(chunk.bytes);
                i.wake_waiters();
            }
            Step::Sync => {
                if let Some(file) = current.as_ref() {
                    file.sync().await?;
                }
                let mut i = inner.borrow_mut();
                let flushed = i.appender.flushed();
                i.stats.fsyncs += 1;
                i.appender.on_synced(flushed);
                i.wake_waiters();
            }
            Step::Close => {
                if let Some(file) = current.take() {
                    file.seal().await?;
                }
                let mut i = inner.borrow_mut();
                let flushed = i.appender.flushed();
                i.appender.on_synced(flushed);
                i.wake_waiters();
                return Ok(());
            }
        }
    }
}

/// Seals the current segment and creates the one based at `base`.
async fn roll(
    inner: &Rc<RefCell<Inner>>,
    current: &mut Option<SegmentFile>,
    base: LogSeq,
) -> Result<(), LogError> {
    if let Some(old) = current.take() {
        old.seal().await?;
        let mut i = inner.borrow_mut();
        let flushed = i.appender.flushed();
        i.appender.on_synced(flushed);
        i.sealed_through = flushed;
        i.stats.fsyncs += 1;
        i.wake_waiters();
    }
    let dir = inner.borrow().dir.clone();
    let buffered = inner.borrow().config.buffered_io;
    let file = SegmentFile::create(dir.join(segment_file_name(base)), base, buffered).await?;
    // The new file's directory entry must be durable before its records count as synced.
    sync_dir_async(&dir).await?;
    *current = Some(file);
    Ok(())
}

/// Fsyncs a directory without blocking the executor.
pub(super) async fn sync_dir_async(dir: &Path) -> Result<(), LogError> {
    let err = |e: glommio::GlommioError<()>| LogError::io(dir, &e.into());
    let d = Directory::open(dir).await.map_err(err)?;
    d.sync().await.map_err(err)?;
    d.close().await.map_err(err)
}

/// Recovers the log of `config` and opens its writer: the usual start-up of a shard's log.
pub fn open_recovered(config: &LogConfig) -> Result<(LogWriter, Recovery), LogError> {
    let recovery = super::recover::recover(config)?;
    for w in &recovery.warnings {
        tracing::warn!(shard = config.shard, "{w}");
    }
    Ok((LogWriter::open(config, &recovery), recovery))
}

/// The path of segment `base` of `config`'s shard.
pub fn segment_path(config: &LogConfig, base: LogSeq) -> PathBuf {
    config.shard_dir().join(segment_file_name(base))
}
