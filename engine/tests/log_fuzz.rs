//! An operation fuzzer of the log on real files against an in-memory model: random append /
//! wait / sync / crash / recover / compact sequences, seeded.
//!
//! The model is the list of every appended record. A crash drops the writer without closing
//! it, then cuts the last segment at a random point past the synced offset (and sometimes
//! flips a byte there, a torn write). Recovery must then hold every record up to the last
//! *synced* seq, nothing beyond the last *appended* one, and end at a batch boundary; its
//! state must equal the model's records folded up to that point. Acknowledgements pushed to an
//! [`AckQueue`] must come out in append order and only once durable.

use std::fs;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_engine::log::ack::AckQueue;
use shardmq_engine::log::file::{open_recovered, segment_path, LogWriter};
use shardmq_engine::log::record::{self, Record};
use shardmq_engine::log::replay::{ScanOptions, Scanner};
use shardmq_engine::log::state::LogState;
use shardmq_engine::log::workload::{Rng, Workload};
use shardmq_engine::log::{Durability, LogConfig, LogSeq};

const CLIENTS: u64 = 10;
const PAYLOAD_MAX: u64 = 300;

struct Model {
    /// Every record the log holds or may hold, by seq - 1.
    records: Vec<Record>,
    /// Seqs that end a batch.
    batch_ends: std::collections::BTreeSet<u64>,
    next_msg_id: u64,
}

impl Model {
    fn state_upto(&self, last: u64) -> LogState {
        let mut s = LogState::default();
        for r in &self.records[..last as usize] {
            s.apply(r).unwrap();
        }
        s.prune();
        s
    }
}

/// Byte offset just past the frame with seq `seq` in the segment at `path` (0 if none).
fn offset_after(path: &std::path::Path, base: LogSeq, seq: LogSeq, c: &LogConfig) -> u64 {
    let Ok(bytes) = fs::read(path) else { return 0 };
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let options = ScanOptions {
        body_max_bytes: c.record_size_max_bytes as usize,
        last_segment: true,
        torn_window_bytes: u64::MAX / 2,
        skip_damaged: false,
    };
    let mut end = 0;
    for item in Scanner::new(&aligned, base, options) {
        let s = item.unwrap();
        if s.seq <= seq {
            let (f, _) =
                record::decode(&aligned[s.offset as usize..], options.body_max_bytes).unwrap();
            end = s.offset + f.frame_bytes as u64;
        }
    }
    end
}

async fn fuzz(seed: u64, ops: usize, c: LogConfig, flip_bytes: bool) -> (u64, u64, u64) {
    let mut rng = Rng::new(seed);
    let (mut log, rec) = open_recovered(&c).unwrap();
    assert_eq!(rec.next_seq, LogSeq(1));
    let mut model = Model { records: Vec::new(), batch_ends: Default::default(), next_msg_id: 1 };
    let mut w = Workload::new(seed, CLIENTS, PAYLOAD_MAX);
    let mut acks: AckQueue<u64> = AckQueue::default();
    let mut last_released = 0u64;
    let (mut crashes, mut compactions) = (0, 0);

    let release = |log: &LogWriter, acks: &mut AckQueue<u64>, last_released: &mut u64| {
        let durable = log.durable_seq();
        if c.durability != Durability::None {
            assert!(durable <= log.synced_seq());
        }
        for seq in acks.release(durable) {
            assert!(seq > *last_released, "acks out of order: {seq} after {last_released}");
            assert!(seq <= durable.0);
            *last_released = seq;
        }
    };

    for _ in 0..ops {
        match rng.below(100) {
            0..=59 => {
                let batch = w.next_batch();
                let last = log.append_batch(&batch).unwrap();
                assert_eq!(last.0 as usize, model.records.len() + batch.len());
                model.records.extend(batch);
                model.batch_ends.insert(last.0);
                model.next_msg_id = w.next_msg_id();
                acks.push(last, last.0);
            }
            60..=69 => {
                let target = log.appended_seq();
                log.wait_durable(target).await.unwrap();
                assert!(log.durable_seq() >= target);
            }
            70..=74 => {
                let target = log.sync().await.unwrap();
                assert!(log.synced_seq() >= target);
            }
            75..=88 => glommio::timer::sleep(Duration::from_micros(rng.below(1500))).await,
            89..=91 => {
                if let Ok(shardmq_engine::log::compact::Compaction::Done(_)) = log.compact().await {
                    compactions += 1;
                }
            }
            92..=93 => {
                // Clean restart: everything appended survives.
                let appended = log.appended_seq();
                log.close().await.unwrap();
                let (l, rec) = open_recovered(&c).unwrap();
                assert_eq!(
                    rec.next_seq,
                    appended.next(),
                    "seed {seed}: clean restart lost records"
                );
                assert_eq!(rec.state, model.state_upto(appended.0), "seed {seed}");
                log = l;
            }
            _ => {
                // Crash.
                crashes += 1;
                release(&log, &mut acks, &mut last_released);
                let synced = log.synced_seq();
                let appended = log.appended_seq();
                let active = *log.segments().last().unwrap();
                log.abandon().await;
                let path = segment_path(&c, active.base);
                if let Ok(meta) = fs::metadata(&path) {
                    let from = offset_after(&path, active.base, synced, &c);
                    let len = meta.len();
                    assert!(from <= len);
                    let cut = from + rng.below(len - from + 1);
                    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(cut).unwrap();
                    drop(f);
                    if flip_bytes && cut > from && rng.chance(40) {
                        let mut b = fs::read(&path).unwrap();
                        let at = (from + rng.below(cut - from)) as usize;
                        b[at] ^= 1 << rng.below(8);
                        fs::write(&path, &b).unwrap();
                    }
                }
                let (l, rec) = open_recovered(&c)
                    .unwrap_or_else(|e| panic!("seed {seed}: recovery after crash failed: {e}"));
                let last = rec.next_seq.0 - 1;
                assert!(last >= synced.0, "seed {seed}: lost synced records: {last} < {synced}");
                assert!(last <= appended.0, "seed {seed}: recovered more than appended");
                assert!(last == 0 || model.batch_ends.contains(&last), "seed {seed}: half a batch");
                assert_eq!(rec.state, model.state_upto(last), "seed {seed}: state after crash");
                model.records.truncate(last as usize);
                model.batch_ends.retain(|&e| e <= last);
                // Acks of lost records were never released (they were not durable), except
                // in `none` mode, which acknowledges at append.
                if c.durability != Durability::None {
                    assert!(last_released <= last, "seed {seed}: released an ack that was lost");
                }
                last_released = last_released.min(last);
                acks = AckQueue::default();
                w = Workload::resume(
                    rng.next_u64(),
                    CLIENTS,
                    PAYLOAD_MAX,
                    rec.state,
                    model.next_msg_id,
                );
                log = l;
            }
        }
        release(&log, &mut acks, &mut last_released);
    }
    let appended = log.appended_seq();
    log.close().await.unwrap();
    let (l, rec) = open_recovered(&c).unwrap();
    assert_eq!(rec.next_seq, appended.next());
    assert_eq!(rec.state, model.state_upto(appended.0));
    l.close().await.unwrap();
    (appended.0, crashes, compactions)
}

fn run_seed(seed: u64, ops: usize, durability: Durability, flip_bytes: bool) {
    let dir = std::env::temp_dir().join(format!("shardmq-log-fuzz-{seed}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut c = LogConfig::new(&dir, 0);
    c.segment_size_bytes = 32 << 10;
    c.record_size_max_bytes = 4 << 10;
    c.disk_cap_bytes = 256 << 20;
    c.durability = durability;
    let ex = LocalExecutorBuilder::new(Placement::Unbound).io_memory(512 << 10).make().unwrap();
    let (records, crashes, compactions) = ex.run(fuzz(seed, ops, c, flip_bytes));
    eprintln!(
        "seed {seed} {durability}: {records} records, {crashes} crashes, {compactions} compactions"
    );
    assert!(
        crashes > 0 && compactions > 0,
        "seed {seed}: the fuzzer must exercise crashes and compactions"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_sync_mode() {
    for seed in 1..=3 {
        run_seed(seed, 3000, Durability::Sync, true);
    }
}

#[test]
fn fuzz_batch_mode() {
    run_seed(11, 3000, Durability::Batch { interval_ms: 1 }, true);
}

#[test]
fn fuzz_none_mode() {
    // `none` syncs only on seal/close: a crash may lose anything unsynced, but never more.
    run_seed(21, 3000, Durability::None, false);
}
