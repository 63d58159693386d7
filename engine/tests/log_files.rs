//! The per-shard log on real files: the glommio writer inside a `LocalExecutor`, damage done
//! with std::fs, then recovery.

use std::fs;
use std::future::Future;
use std::path::PathBuf;

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_engine::log::compact::Compaction;
use shardmq_engine::log::file::{open_recovered, segment_path, LogWriter};
use shardmq_engine::log::record::SessionEnded;
use shardmq_engine::log::recover::recover;
use shardmq_engine::log::state::LogState;
use shardmq_engine::log::workload::Workload;
use shardmq_engine::log::{Durability, LogConfig, LogError, LogSeq, Record};

fn run<T>(f: impl Future<Output = T> + 'static) -> T {
    // Small io_memory, as the broker uses (memlock limit for non-root users).
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(512 << 10).make().unwrap().run(f)
}

fn config(name: &str) -> LogConfig {
    let dir = std::env::temp_dir().join(format!("shardmq-log-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut c = LogConfig::new(dir, 3);
    c.segment_size_bytes = 64 << 10;
    c.record_size_max_bytes = 16 << 10;
    c.disk_cap_bytes = 64 << 20;
    c
}

fn segment_files(c: &LogConfig) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(c.shard_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn pruned(s: &LogState) -> LogState {
    let mut s = s.clone();
    s.prune();
    s
}

/// Appends `batches` batches of workload `w` and waits until they are durable.
async fn write_batches(log: &LogWriter, w: &mut Workload, batches: usize) -> LogSeq {
    let mut last = LogSeq(0);
    for _ in 0..batches {
        last = log.append_batch(&w.next_batch()).unwrap();
    }
    log.wait_durable(last).await.unwrap();
    last
}

#[test]
fn write_close_recover_round_trip() {
    let c = config("round-trip");
    let c2 = c.clone();
    let (state, last, stats) = run(async move {
        let (log, rec) = open_recovered(&c2).unwrap();
        assert_eq!((rec.next_seq, rec.records), (LogSeq(1), 0));
        let mut w = Workload::new(1, 20, 200);
        let last = write_batches(&log, &mut w, 3000).await;
        let stats = log.stats();
        log.close().await.unwrap();
        (pruned(w.state()), last, stats)
    });
    assert!(stats.fsyncs < last.0, "group commit: {} fsyncs for {} records", stats.fsyncs, last.0);
    let files = segment_files(&c);
    assert!(files.len() > 3, "segments rolled: {files:?}");
    for f in &files {
        assert!(f.to_str().unwrap().ends_with(".log"));
        assert!(fs::metadata(f).unwrap().len() <= c.segment_size_bytes);
    }
    let rec = recover(&c).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.next_seq, last.next());
    assert_eq!(rec.state, state);
    assert_eq!(rec.records, last.0);
    // A restart continues in a new segment named after the next seq.
    let c2 = c.clone();
    run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let seq = log.append(&SessionEnded { client_id: "x".into() }.into()).unwrap();
        assert_eq!(seq, last.next());
        log.close().await.unwrap();
    });
}

/// The buffered-IO fallback (used where the file system refuses `O_DIRECT`, e.g. tmpfs before
/// Linux 6.6) writes the same bytes: a crash keeps the padded last block, recovery reads
/// everything back.
#[test]
fn buffered_io_writes_the_same_log() {
    let mut c = config("buffered");
    c.buffered_io = true;
    let c2 = c.clone();
    let (state, last) = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(2, 10, 100);
        let last = write_batches(&log, &mut w, 500).await;
        // Dropped without close: a crash.
        log.abandon().await;
        (pruned(w.state()), last)
    });
    let rec = recover(&c).unwrap();
    assert_eq!(rec.next_seq, last.next());
    assert_eq!(rec.state, state);
    for f in segment_files(&c) {
        let len = fs::metadata(&f).unwrap().len();
        assert!(len <= c.segment_size_bytes, "{}: {len} bytes", f.display());
    }
}

/// Crash (drop without close, so the last block keeps its zero padding), then cut the last
/// segment inside a frame: recovery truncates the torn tail and keeps every synced record.
#[test]
fn torn_tail_on_a_real_file_is_truncated() {
    let c = config("torn");
    let c2 = c.clone();
    let (synced, w) = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(2, 8, 100);
        let synced = write_batches(&log, &mut w, 200).await;
        log.abandon().await;
        (synced, w)
    });
    let last = segment_files(&c).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    assert_eq!(len % 4096, 0, "direct IO leaves the last block padded");
    let rec = recover(&c).unwrap();
    assert_eq!(rec.next_seq, synced.next(), "padding is not damage");
    assert_eq!(rec.state, pruned(w.state()));
    let valid = fs::metadata(&last).unwrap().len();
    assert!(valid < len, "padding truncated");

    // Append a record that never becomes durable, then cut it in half.
    let c2 = c.clone();
    let extra = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let big: Record = shardmq_engine::log::record::SessionCreated {
            client_id: "late".repeat(100),
            expiry_secs: 1,
            clean: true,
        }
        .into();
        let seq = log.append(&big).unwrap();
        log.sync().await.unwrap();
        log.abandon().await;
        seq
    });
    let newest = segment_files(&c).pop().unwrap();
    assert_eq!(newest, segment_path(&c, extra));
    let f = fs::OpenOptions::new().write(true).open(&newest).unwrap();
    f.set_len(200).unwrap();
    drop(f);
    let rec = recover(&c).unwrap();
    assert_eq!(rec.next_seq, extra, "the cut record is gone, nothing else");
    assert!(rec.warnings.iter().any(|w| w.contains("no complete record")), "{:?}", rec.warnings);
    assert_eq!(rec.state, pruned(w.state()));
}

#[test]
fn corruption_before_the_tail_stops_recovery_or_is_skipped() {
    let mut c = config("corrupt");
    let c2 = c.clone();
    run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(3, 8, 300);
        write_batches(&log, &mut w, 2000).await;
        log.close().await.unwrap();
    });
    let first = segment_files(&c)[0].clone();
    let mut bytes = fs::read(&first).unwrap();
    bytes[5000] ^= 0x10;
    fs::write(&first, &bytes).unwrap();
    match recover(&c) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, first);
            assert!(offset <= 5000 && offset + 2048 > 5000, "offset {offset}");
            let msg = LogError::Corrupt {
                path,
                offset,
                reason: shardmq_engine::log::record::RecordError::BodyCrc,
            }
            .to_string();
            assert!(
                msg.contains("00000000000000000001.log") && msg.contains("byte offset"),
                "{msg}"
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // The operator's way out: skip the damaged records (state may then be inconsistent, so
    // this log's workload only damages a record the state tolerates or reports it).
    c.skip_damaged = true;
    match recover(&c) {
        Ok(rec) => {
            assert!(rec.warnings.iter().any(|w| w.contains("skipped")), "{:?}", rec.warnings)
        }
        Err(LogError::Inconsistent { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn durability_modes() {
    for mode in [Durability::Sync, Durability::Batch { interval_ms: 30 }, Durability::None] {
        let mut c = config(&format!("mode-{}", mode.to_string().replace(':', "-")));
        c.durability = mode;
        run(async move {
            let (log, _) = open_recovered(&c).unwrap();
            let mut last = LogSeq(0);
            for i in 0..100 {
                last = log.append(&SessionEnded { client_id: format!("c{i}") }.into()).unwrap();
            }
            match mode {
                Durability::None => assert_eq!(log.durable_seq(), last),
                _ => assert!(log.durable_seq() < last),
            }
            log.wait_durable(last).await.unwrap();
            if mode != Durability::None {
                assert!(log.synced_seq() >= last);
                assert!(log.stats().fsyncs <= 3, "one group commit: {:?}", log.stats());
            }
            assert_eq!(log.sync().await.unwrap(), last);
            assert_eq!(log.synced_seq(), last);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn the_disk_cap_is_a_distinct_error() {
    let mut c = config("cap");
    c.segment_size_bytes = 16 << 10;
    c.record_size_max_bytes = 4 << 10;
    c.disk_cap_bytes = 32 << 10;
    run(async move {
        let (log, _) = open_recovered(&c).unwrap();
        let mut err = None;
        for i in 0..10_000 {
            match log.append(&SessionEnded { client_id: format!("client-{i}") }.into()) {
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("cap reached");
        assert!(err.is_disk_full(), "{err}");
        assert!(log.disk_bytes() <= 32 << 10);
        // The log still works for what fits.
        log.sync().await.unwrap();
        log.close().await.unwrap();
    });
}

fn churn(log: &LogWriter, w: &mut Workload, batches: usize) -> LogSeq {
    let mut last = LogSeq(0);
    for _ in 0..batches {
        last = log.append_batch(&w.next_batch()).unwrap();
    }
    last
}

#[test]
fn compaction_keeps_live_state_and_bounds_disk_use() {
    let c = config("compact");
    let c2 = c.clone();
    let (state, before, after) = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(4, 6, 400);
        let mut before = 0;
        let mut after = 0;
        for _round in 0..6 {
            let last = churn(&log, &mut w, 1500);
            log.wait_durable(last).await.unwrap();
            before = before.max(log.disk_bytes());
            if log.compaction_due() {
                match log.compact().await.unwrap() {
                    Compaction::Done(r) => assert!(r.bytes_after < r.bytes_before, "{r:?}"),
                    Compaction::Skipped(why) => panic!("skipped: {why}"),
                }
            }
            after = log.disk_bytes();
        }
        assert!(log.stats().compactions >= 2);
        log.close().await.unwrap();
        (pruned(w.state()), before, after)
    });
    assert!(after < before, "disk use {before} → {after}");
    let rec = recover(&c).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.state, state);
}

/// A crash in the middle of a compaction: after the compacted segment was renamed into place
/// but before the old segments were deleted; and before the rename.
#[test]
fn interrupted_compactions_recover() {
    let c = config("compact-crash");
    let c2 = c.clone();
    let (state, kept) = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(5, 6, 300);
        let last = churn(&log, &mut w, 3000);
        log.wait_durable(last).await.unwrap();
        // Keep copies of the sealed segments as they were before compaction.
        let kept: Vec<(PathBuf, Vec<u8>)> = log.segments()[..log.segments().len() - 1]
            .iter()
            .map(|s| {
                let p = segment_path(&c2, s.base);
                let b = fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        assert!(matches!(log.compact().await.unwrap(), Compaction::Done(_)));
        log.close().await.unwrap();
        (pruned(w.state()), kept)
    });
    let compacted: Vec<PathBuf> = segment_files(&c);
    // Put the old segments back beside the compacted one: as if deletion never happened.
    for (p, b) in &kept {
        if !p.exists() {
            fs::write(p, b).unwrap();
        }
    }
    let rec = recover(&c).unwrap();
    assert_eq!(rec.state, state);
    assert!(rec.warnings.iter().any(|w| w.contains("obsolete")), "{:?}", rec.warnings);
    assert_eq!(segment_files(&c), compacted);
    // Unfinished output (crash before the rename) is removed; the segments stay in charge.
    let leftover = c.shard_dir().join("00000000000000000002.log.compact");
    fs::write(&leftover, b"partial").unwrap();
    let rec = recover(&c).unwrap();
    assert_eq!(rec.state, state);
    assert!(!leftover.exists());
}

#[test]
fn recovery_refuses_a_gap_between_segments() {
    let c = config("gap");
    let c2 = c.clone();
    run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(6, 6, 300);
        let last = churn(&log, &mut w, 2000);
        log.wait_durable(last).await.unwrap();
        log.close().await.unwrap();
    });
    let files = segment_files(&c);
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).unwrap();
    let err = recover(&c).unwrap_err();
    assert!(matches!(err, LogError::Inconsistent { .. }), "{err}");
    assert!(err.to_string().contains(&*files[2].file_name().unwrap().to_string_lossy()), "{err}");
}

/// The log near its cap with everything in the active segment: compaction reads only sealed
/// segments, so the writer seals the active one early (`seal_active`); compaction then
/// folds it — with the buffered-IO fallback too (its reads
/// use the same fallback as the writer's writes).
#[test]
fn an_early_sealed_active_segment_is_compacted_with_buffered_io() {
    let mut c = config("seal-active");
    c.buffered_io = true;
    c.segment_size_bytes = 4 << 20;
    let c2 = c.clone();
    let state = run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        let mut w = Workload::new(5, 6, 100);
        let last = churn(&log, &mut w, 500);
        log.wait_durable(last).await.unwrap();
        assert_eq!(log.segments().len(), 1, "everything is in the active segment");
        assert!(matches!(log.compact().await.unwrap(), Compaction::Skipped(_)));
        log.seal_active();
        // Written behind the seal: once durable, the old segment is sealed on disk.
        let last = churn(&log, &mut w, 1);
        log.wait_durable(last).await.unwrap();
        assert_eq!(log.segments().len(), 2);
        let before = log.disk_bytes();
        match log.compact().await.unwrap() {
            Compaction::Done(r) => assert!(r.bytes_after < r.bytes_before, "{r:?}"),
            Compaction::Skipped(why) => panic!("skipped: {why}"),
        }
        assert!(log.disk_bytes() < before);
        // Appends go on in the new segment.
        let last = churn(&log, &mut w, 10);
        log.wait_durable(last).await.unwrap();
        log.close().await.unwrap();
        pruned(w.state())
    });
    let rec = recover(&c).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.state, state);
}
