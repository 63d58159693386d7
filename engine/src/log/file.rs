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
use glommio::io::Directory;
use glommio::task::JoinHandle;

use super::recover::Recovery;
use super::segment::{segment_file_name, Appender, Chunk, SegmentMeta};
use super::{Durability, LogConfig, LogError, LogSeq, Record};

pub(super) use super::segment_file::SegmentFile;
pub use super::segment_file::BLOCK_BYTES;

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
    /// How long each fdatasync of a segment took.
    pub fsync_latency: super::latency::LatencyHistogram,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) appender: Appender,
    pub(super) config: LogConfig,
    pub(super) dir: PathBuf,
    /// Sticky: after an IO error every append and wait fails with it.
    error: Option<LogError>,
    /// The device refused a write (ENOSPC/EDQUOT): the committer retries it until space
    /// returns; nothing fails meanwhile, durability just waits.
    device_full: bool,
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
            device_full: false,
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

    /// True while the device is full (ENOSPC/EDQUOT) and the committer waits to write again
    /// (see [`DEVICE_FULL_RETRY_MAX`]). Appends are still taken; they become durable once
    /// space returns.
    pub fn device_full(&self) -> bool {
        self.inner.borrow().device_full
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

/// First wait before writing again after the device was full; it doubles up to
/// [`DEVICE_FULL_RETRY_MAX`].
const DEVICE_FULL_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between two attempts to write while the device is full.
pub const DEVICE_FULL_RETRY_MAX: Duration = Duration::from_secs(1);

/// While the device is full (ENOSPC/EDQUOT) the committer waits and tries again, so the
/// log recovers without a restart once space is freed. `result` is one attempt's outcome:
/// `Ok(true)` means done, `Ok(false)` means the attempt should be retried (after this waited
/// `wait`, which doubles). At shutdown (or a simulated crash) it gives up with the error.
async fn device_full_retry(
    inner: &Rc<RefCell<Inner>>,
    result: Result<(), LogError>,
    wait: &mut Duration,
) -> Result<bool, LogError> {
    match result {
        Ok(()) => {
            let mut i = inner.borrow_mut();
            if std::mem::take(&mut i.device_full) {
                tracing::warn!(shard = i.config.shard, "log device has space again");
            }
            Ok(true)
        }
        Err(e) if e.is_disk_full() => {
            {
                let mut i = inner.borrow_mut();
                if i.closing || i.aborted {
                    return Err(e);
                }
                if !std::mem::replace(&mut i.device_full, true) {
                    tracing::warn!(
                        shard = i.config.shard,
                        "{e}: the log waits for space (QoS 1/2 that needs logging is refused \
                         meanwhile)"
                    );
                }
            }
            glommio::timer::sleep(*wait).await;
            *wait = (*wait * 2).min(DEVICE_FULL_RETRY_MAX);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Writes one chunk (rolling to its segment first) and syncs it if `sync`. May be retried:
/// a failed attempt leaves the file where it was before.
async fn write_chunk(
    inner: &Rc<RefCell<Inner>>,
    current: &mut Option<SegmentFile>,
    chunk: &Chunk,
    sync: bool,
) -> Result<(), LogError> {
    if current.as_ref().map(|f| f.base) != Some(chunk.segment) {
        roll(inner, current, chunk.segment).await?;
    }
    let file = current.as_mut().expect("rolled");
    assert_eq!(file.len_bytes, chunk.offset_bytes, "chunks arrive in order");
    let mark = file.mark();
    if !chunk.bytes.is_empty() {
        // (Empty: the previous segment was sealed early, `seal_active`.)
        file.write(&chunk.bytes).await?;
    }
    if sync {
        let started = Instant::now();
        if let Err(e) = file.sync().await {
            file.reset(mark);
            return Err(e);
        }
        let us = started.elapsed().as_micros() as u64;
        inner.borrow_mut().stats.fsync_latency.record(us);
    }
    Ok(())
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
                let sync = mode != Durability::None || inner.borrow().sync_requested;
                let mut wait = DEVICE_FULL_RETRY_MIN;
                loop {
                    let r = write_chunk(inner, current, &chunk, sync).await;
                    if device_full_retry(inner, r, &mut wait).await? {
                        break;
                    }
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
                    let mut wait = DEVICE_FULL_RETRY_MIN;
                    while !device_full_retry(inner, file.sync().await, &mut wait).await? {}
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
    if let Some(old) = current.as_ref() {
        // Finished before it is taken: if this fails, a retry finds it again.
        old.finish().await?;
        current.take().expect("checked").close().await?;
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
