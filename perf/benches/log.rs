//! Per-shard log benchmarks: append throughput with group commit of 1, 16 and 256 records
//! per fsync (durability `sync`: each group is appended, then awaited until durable), and
//! replay throughput (scan + validate + fold into the state model) from memory and from files.
//! Records are `MessageStored` with 64 B payloads.
//!
//! Smoke mode (each benchmark once, as a test): `cargo bench -p shardmq-perf --bench log -- --test`.
//! Full run: `cargo bench -p shardmq-perf --bench log -- --warm-up-time 1 --measurement-time 5`.
//! The log directory is under `$TMPDIR` (the machine's disk, not tmpfs: O_DIRECT).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_engine::log::file::open_recovered;
use shardmq_engine::log::record::{self, MessageQueued, MessageStored, SessionCreated};
use shardmq_engine::log::recover::recover;
use shardmq_engine::log::replay::{ScanOptions, Scanner};
use shardmq_engine::log::state::LogState;
use shardmq_engine::log::{Durability, LogConfig, LogSeq, Record};

const GROUPS: [u64; 3] = [1, 16, 256];
const REPLAY_MESSAGES: u64 = 100_000;

fn message(msg_id: u64) -> Record {
    MessageStored {
        msg_id,
        topic: "sensors/building-1/floor-2/temperature".into(),
        payload: vec![b'x'; 64],
        qos: 1,
        retain: false,
        properties: vec![],
        received_at_ms: 1_700_000_000_000,
    }
    .into()
}

fn config(name: &str) -> LogConfig {
    let dir = std::env::temp_dir().join(format!("shardmq-bench-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = LogConfig::new(dir, 0);
    c.disk_cap_bytes = 64 << 30;
    c.durability = Durability::Sync;
    c
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append_sync");
    for group in GROUPS {
        g.throughput(Throughput::Elements(group));
        g.bench_function(format!("group_{group}_per_fsync"), |b| {
            b.iter_custom(|iters| {
                let cfg = config(&format!("append-{group}"));
                let dir = cfg.data_dir.clone();
                let ex = LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(512 << 10)
                    .make()
                    .unwrap();
                let elapsed = ex.run(async move {
                    let (log, _) = open_recovered(&cfg).unwrap();
                    let batch: Vec<Record> = (0..group).map(message).collect();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut last = LogSeq(0);
                        for r in &batch {
                            last = log.append(r).unwrap();
                        }
                        log.wait_durable(last).await.unwrap();
                    }
                    let elapsed = started.elapsed();
                    log.close().await.unwrap();
                    elapsed
                });
                let _ = std::fs::remove_dir_all(dir);
                elapsed
            })
        });
    }
    g.finish();
}

/// A segment's bytes: one session, then `n` messages each queued for it.
fn segment_bytes(n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    let s: Record = SessionCreated { client_id: "c".into(), expiry_secs: 60, clean: false }.into();
    record::encode_into(&mut v, LogSeq(1), &s, false, 1 << 20).unwrap();
    for m in 1..=n {
        record::encode_into(&mut v, LogSeq(2 * m), &message(m), true, 1 << 20).unwrap();
        let q: Record =
            MessageQueued { client_id: "c".into(), msg_id: m, group: String::new() }.into();
        record::encode_into(&mut v, LogSeq(2 * m + 1), &q, false, 1 << 20).unwrap();
    }
    v
}

fn replay(c: &mut Criterion) {
    let bytes = segment_bytes(REPLAY_MESSAGES);
    let records = 1 + 2 * REPLAY_MESSAGES;
    let mut g = c.benchmark_group("log_replay");
    g.throughput(Throughput::Elements(records));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    g.bench_function("scan_fold_memory", |b| {
        b.iter(|| {
            let options = ScanOptions {
                body_max_bytes: 1 << 20,
                last_segment: true,
                torn_window_bytes: 1 << 20,
                skip_damaged: false,
            };
            let mut state = LogState::default();
            for item in Scanner::new(&bytes, LogSeq(1), options) {
                state.apply_owned(item.unwrap().record).unwrap();
            }
            black_box(state.messages().len())
        })
    });
    // From files: the writer's real segments, read back by `recover`.
    let cfg = config("replay");
    let cfg2 = cfg.clone();
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(512 << 10).make().unwrap().run(
        async move {
            let (log, _) = open_recovered(&cfg2).unwrap();
            log.append(
                &SessionCreated { client_id: "c".into(), expiry_secs: 60, clean: false }.into(),
            )
            .unwrap();
            for m in 1..=REPLAY_MESSAGES {
                let q: Record =
                    MessageQueued { client_id: "c".into(), msg_id: m, group: String::new() }.into();
                log.append_batch(&[message(m), q]).unwrap();
            }
            log.close().await.unwrap();
        },
    );
    g.bench_function("recover_files", |b| {
        b.iter(|| {
            let rec = recover(&cfg).unwrap();
            assert_eq!(rec.records, records);
            black_box(rec.state.messages().len())
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
