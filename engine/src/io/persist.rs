//! The io side of persistence: one shard's log writer, the batches the core produces
//! appended to it, durability reported back to the core, compaction on a timer, and the
//! start-up checks of the data directory.
//!
//! Every call into the core is followed by [`ShardIo::drain`], which takes the core's batch
//! ([`ShardCore::drain_log`]) and appends it here ([`LogIo::append`]). The *watcher* task
//! waits for the last appended record to be durable (group commit: one fdatasync covers
//! every batch appended before it started) and tells the core which tickets are durable
//! ([`ShardCore::handle_log_durable`]), which releases the acknowledgements waiting for them.
//!
//! Disk use: past three quarters of the shard's cap the core refuses every new message
//! record — QoS 1/2 PUBLISHes, copies for persistent sessions routed from other shards,
//! retained messages (`core/persist/ack.rs`); the rest is headroom for the records that
//! shrink the log: acknowledgements, releases, session ends, retained clears. Past the soft
//! cap with nothing to compact, the active segment is sealed so that compaction can fold
//! what was appended to it. A batch refused at the cap itself is kept and retried, in
//! order, after compaction freed space. When the device itself is full (ENOSPC/EDQUOT, e.g.
//! a cap larger than the disk), the writer keeps what was appended and retries the write
//! until space returns (`log/file.rs`); meanwhile the core refuses what needs logging, and
//! nothing appended fails, so no message that was delivered is answered 0x97. A record too
//! large fails only its batch; any other IO error stops the writer for good: what waits
//! fails, and QoS 1/2 PUBLISHes that need logging are refused until a restart.
//!
//! Shard-local: one [`LogIo`] per shard, in its [`ShardIo`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use crate::config::Config;
use crate::core::persist::LogBatch;
use crate::core::shard::ShardCore;
use crate::log::compact::Compaction;
use crate::log::file::LogWriter;
use crate::log::{perm, LogConfig, LogError, LogSeq};

use super::shard::ShardIo;
use super::signal::WakerSlot;

/// How often the compaction task checks whether compaction is due (and retries batches
/// refused at the cap).
const COMPACTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Most checks between two early seals of the active segment while the log stays past its
/// soft cap (each seal makes the next compaction read every sealed segment).
const SEAL_BACKOFF_CHECKS_MAX: u32 = 8;

/// The log of one shard, as the io layer drives it. Shard-local.
#[derive(Debug)]
pub(crate) struct LogIo {
    /// `None` once closed at shutdown.
    writer: RefCell<Option<Rc<LogWriter>>>,
    /// The shard's disk cap.
    cap_bytes: u64,
    /// Appended tickets not yet reported durable, with the seq that makes each durable.
    pending: RefCell<VecDeque<(u64, LogSeq)>>,
    /// Batches refused at the cap: retried in order before anything later is appended.
    stalled: RefCell<VecDeque<LogBatch>>,
    /// The writer failed: nothing will be durable any more.
    dead: Cell<bool>,
    watcher: WakerSlot,
    /// Checks between early seals (doubles while they free nothing), and checks left.
    seal_backoff: Cell<u32>,
    seal_wait: Cell<u32>,
}

impl LogIo {
    pub(crate) fn new(writer: LogWriter, config: &LogConfig) -> LogIo {
        LogIo {
            writer: RefCell::new(Some(Rc::new(writer))),
            cap_bytes: config.disk_cap_bytes,
            pending: RefCell::new(VecDeque::new()),
            stalled: RefCell::new(VecDeque::new()),
            dead: Cell::new(false),
            watcher: WakerSlot::default(),
            seal_backoff: Cell::new(0),
            seal_wait: Cell::new(0),
        }
    }

    /// The writer's counters and the log's size on disk (`None` once closed).
    pub(crate) fn stats(&self) -> Option<(crate::log::file::LogStats, u64)> {
        self.writer().map(|w| (w.stats(), w.disk_bytes()))
    }

    fn writer(&self) -> Option<Rc<LogWriter>> {
        self.writer.borrow().clone()
    }

    /// Appends the core's batch (or queues it behind batches refused at the cap).
    pub(crate) fn append(&self, batch: LogBatch, core: &mut ShardCore) {
        if !self.stalled.borrow().is_empty() {
            self.stalled.borrow_mut().push_back(batch);
            return;
        }
        if let Err(batch) = self.append_one(batch, core) {
            self.stalled.borrow_mut().push_back(batch);
        }
    }

    /// Appends one batch; gives it back if the cap refused it.
    fn append_one(&self, batch: LogBatch, core: &mut ShardCore) -> Result<(), LogBatch> {
        let Some(writer) = self.writer().filter(|_| !self.dead.get()) else {
            core.handle_log_failed(batch.ticket);
            self.pending.borrow_mut().push_back((batch.ticket, LogSeq(0)));
            return Ok(());
        };
        let seq = if batch.records.is_empty() {
            Ok(writer.appended_seq())
        } else {
            writer.append_batch(&batch.records)
        };
        match seq {
            Ok(seq) => {
                self.pending.borrow_mut().push_back((batch.ticket, seq));
                self.watcher.wake();
                Ok(())
            }
            Err(e) if e.is_disk_full() && writer.failure().is_none() => {
                tracing::warn!("{e}: refusing QoS 1/2 PUBLISH until compaction frees space");
                core.set_log_full(true);
                Err(batch)
            }
            Err(e @ LogError::RecordTooLarge { .. }) => {
                // Nothing of the batch was appended and the log is intact: only this batch
                // fails (what waits for it gets 0x97). The record limit covers the largest
                // message (`PersistConfig::record_size_max_bytes`), so this is a bug.
                tracing::error!(ticket = batch.ticket, "log append refused a batch: {e}");
                core.handle_log_failed(batch.ticket);
                // Reported in order, once what was appended before it is durable.
                self.pending.borrow_mut().push_back((batch.ticket, writer.appended_seq()));
                self.watcher.wake();
                Ok(())
            }
            Err(e) => {
                tracing::error!("log append failed: {e}; QoS 1/2 PUBLISH refused until restart");
                self.dead.set(true);
                core.handle_log_failed(batch.ticket);
                self.pending.borrow_mut().push_back((batch.ticket, LogSeq(0)));
                Ok(())
            }
        }
    }

    /// Tells the core which tickets are durable (or failed), and whether the log is full.
    pub(crate) fn report(&self, core: &mut ShardCore, now: Instant) {
        let Some(writer) = self.writer() else { return };
        let durable = writer.durable_seq();
        let dead = self.dead.get();
        let mut last = None;
        {
            let mut pending = self.pending.borrow_mut();
            while let Some(&(ticket, seq)) = pending.front() {
                if !dead && seq > durable {
                    break;
                }
                if dead && seq > durable {
                    core.handle_log_failed(ticket);
                }
                pending.pop_front();
                last = Some(ticket);
            }
        }
        let full = dead || self.near_cap(&writer) || writer.device_full();
        if full != core.log_full() {
            if full && writer.device_full() {
                tracing::warn!("log device full: QoS 1/2 PUBLISH that needs logging refused");
            } else if full {
                tracing::warn!(
                    disk_bytes = writer.disk_bytes(),
                    cap_bytes = self.cap_bytes,
                    "log nearly full: QoS 1/2 PUBLISH that needs logging refused"
                );
            }
            core.set_log_full(full);
        }
        if let Some(ticket) = last {
            core.handle_log_durable(ticket, now);
        }
    }

    /// True past three quarters of the cap, or with batches refused at the cap.
    fn near_cap(&self, writer: &LogWriter) -> bool {
        !self.stalled.borrow().is_empty()
            || writer.disk_bytes().saturating_mul(4) >= self.cap_bytes.saturating_mul(3)
    }

    /// Retries batches refused at the cap, in order.
    fn retry_stalled(&self, core: &mut ShardCore) {
        loop {
            let Some(batch) = self.stalled.borrow_mut().pop_front() else { return };
            if let Err(batch) = self.append_one(batch, core) {
                self.stalled.borrow_mut().push_front(batch);
                return;
            }
        }
    }

    /// Syncs and closes the log (clean shutdown).
    pub(crate) async fn close(&self) {
        let Some(writer) = self.writer.borrow_mut().take() else { return };
        let result = match Rc::try_unwrap(writer) {
            Ok(w) => w.close().await,
            // A compaction still holds it: sync what was appended; the rest is a crash's.
            Err(w) => w.sync().await.map(drop),
        };
        if let Err(e) = result {
            tracing::error!("closing the log: {e}");
        }
    }
}

/// Waits for appended records to become durable and reports them to the core. One task
/// per shard with a log.
pub(crate) async fn watcher_task(shard: Rc<ShardIo>, log: Rc<LogIo>) {
    loop {
        let target = std::future::poll_fn(|cx| {
            if shard.stop.is_fired() {
                return Poll::Ready(None);
            }
            match log.pending.borrow().back() {
                Some(&(_, seq)) if !log.dead.get() => Poll::Ready(Some(seq)),
                _ => {
                    log.watcher.set(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await;
        let Some(target) = target else { return };
        let Some(writer) = log.writer() else { return };
        if let Err(e) = writer.wait_durable(target).await {
            tracing::error!("log failed: {e}; QoS 1/2 PUBLISH refused until restart");
            log.dead.set(true);
        }
        shard.with_core(|core, now| log.report(core, now));
    }
}

/// Compacts the log when it is due, and retries batches refused at the cap. One task per
/// shard with a log.
pub(crate) async fn compaction_task(shard: Rc<ShardIo>, log: Rc<LogIo>) {
    loop {
        if shard.stop.unless_fired(Timer::new(COMPACTION_CHECK_INTERVAL)).await.is_none() {
            return;
        }
        let Some(writer) = log.writer() else { return };
        if !log.near_cap(&writer) {
            log.seal_backoff.set(0);
            log.seal_wait.set(0);
        }
        if writer.compaction_due() {
            match writer.compact().await {
                Ok(Compaction::Done(_)) => log.seal_backoff.set(0),
                Ok(Compaction::Skipped(_)) => {}
                Err(e) => tracing::error!("log compaction failed (the old segments stay): {e}"),
            }
        } else if log.near_cap(&writer) && log.seal_wait.get() > 0 {
            log.seal_wait.set(log.seal_wait.get() - 1);
        } else if log.near_cap(&writer) {
            // Past the soft cap (or stalled at the cap) with nothing to compact: what was
            // appended since (acknowledgements, session ends) is in the active segment,
            // which compaction does not read. Seal it; the next check compacts.
            writer.seal_active();
            let backoff = (log.seal_backoff.get() * 2).clamp(1, SEAL_BACKOFF_CHECKS_MAX);
            log.seal_backoff.set(backoff);
            log.seal_wait.set(backoff);
        }
        drop(writer);
        shard.with_core(|core, now| {
            log.retry_stalled(core);
            log.report(core, now);
        });
    }
}

/// Checks the data directory before any shard starts: creates it, and refuses one written
/// with another shard count (sessions are homed by a hash modulo the shard count). Returns
/// each shard's log configuration (`None` everywhere with `--in-memory`).
pub(crate) fn prepare_data_dir(config: &Config) -> Result<Vec<Option<LogConfig>>, String> {
    let n = config.shards;
    let packet_max = config.limits.packet_size_max_bytes;
    // A PUBLISH using a Topic Alias is stored with its resolved topic.
    let topic_max = config.limits.topic_length_max_bytes;
    let mut persist = config.persist.clone();
    // Checked before anything is created.
    for i in 0..n {
        persist.shard_log_config(i, n, packet_max, topic_max)?;
    }
    if let Some(dir) = &persist.data_dir {
        perm::create_dir_all(dir)
            .map_err(|e| format!("--data-dir {}: cannot create it: {e}", dir.display()))?;
        if let Ok(bits @ 1..) = perm::open_to_others(dir) {
            tracing::warn!(
                "--data-dir {} is open to other users (mode bits {bits:03o} for group/other) \
                 and its logs hold message payloads: chmod 700 it",
                dir.display()
            );
        }
        // Absolute: glommio opens directories relative to no directory.
        let abs =
            std::fs::canonicalize(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
        check_shard_count(&abs, n)?;
        warn_if_cap_exceeds_free_space(&abs, persist.data_max_bytes);
        persist.data_dir = Some(abs);
    }
    (0..n).map(|i| persist.shard_log_config(i, n, packet_max, topic_max)).collect()
}

/// The `shards` file of a data directory records the shard count that wrote it.
fn check_shard_count(dir: &Path, n: u16) -> Result<(), String> {
    let marker = dir.join("shards");
    match std::fs::read_to_string(&marker) {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(m) if m == n => Ok(()),
            Ok(m) => Err(format!(
                "--data-dir {}: written by a broker with {m} shards, this one has {n} \
                 (start with --shards {m}, or use another data directory)",
                dir.display()
            )),
            Err(_) => Err(format!("{}: not a shard count: {text:?}", marker.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let busy = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
            if busy && !dir.join("shard-0").exists() {
                tracing::warn!("--data-dir {} is not empty; using it anyway", dir.display());
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(perm::FILE_MODE)
                .open(&marker)
                .and_then(|mut f| f.write_all(format!("{n}\n").as_bytes()))
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| format!("{}: {e}", marker.display()))
        }
        Err(e) => Err(format!("{}: {e}", marker.display())),
    }
}

/// Warns when `--data-max-mib` (`cap_bytes`, for the whole broker) is more than the file
/// system of `dir` can give: the logs already there plus its free space (statvfs). The broker
/// still starts: a full device is survived (the log waits for space, and QoS 1/2 that
/// needs logging is refused meanwhile), but the cap should be what the disk can hold.
// `fsblkcnt_t` and `c_ulong` are `u64` here but not on every target.
#[allow(clippy::useless_conversion)]
fn warn_if_cap_exceeds_free_space(dir: &Path, cap_bytes: u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return };
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid out-pointer, both live for
    // the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return;
    }
    let free_bytes = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    let used_bytes = dir_bytes(dir, 2);
    if cap_bytes > free_bytes.saturating_add(used_bytes) {
        let mib = |b: u64| b / (1024 * 1024);
        tracing::warn!(
            "--data-max-mib {} is more than {} can hold ({} MiB free + {} MiB of logs): when \
             the disk fills, QoS 1/2 PUBLISHes that need logging are refused until space \
             returns; set --data-max-mib to at most the space the broker may use",
            mib(cap_bytes),
            dir.display(),
            mib(free_bytes),
            mib(used_bytes)
        );
    }
}

/// Bytes of the files under `dir`, `depth` levels deep at most.
fn dir_bytes(dir: &Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(p, m)| {
            if m.is_file() {
                m.len()
            } else if m.is_dir() && depth > 0 {
                dir_bytes(&p, depth - 1)
            } else {
                0
            }
        })
        .sum()
}
