//! Recovery time of a log holding 1,000,000 stored small messages (64 B payloads), each queued
//! for one of 1,000 sessions. Ignored by default (it writes ~300 MB); run with
//! `cargo test --release -p shardmq-engine --test log_recovery -- --ignored --nocapture`.

use std::fs;
use std::time::Instant;

use glommio::{LocalExecutorBuilder, Placement};
use shardmq_engine::log::file::open_recovered;
use shardmq_engine::log::record::{MessageQueued, MessageStored, SessionCreated};
use shardmq_engine::log::recover::recover;
use shardmq_engine::log::{Durability, LogConfig, LogSeq, Record};

const MESSAGES: u64 = 1_000_000;
const SESSIONS: u64 = 1_000;

#[test]
#[ignore = "writes ~300 MB; a measurement, run on demand"]
fn recover_one_million_stored_messages() {
    let dir = std::env::temp_dir().join(format!("shardmq-log-recovery-1m-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut c = LogConfig::new(&dir, 0);
    c.durability = Durability::None;
    c.disk_cap_bytes = 8 << 30;
    let c2 = c.clone();
    let started = Instant::now();
    let ex = LocalExecutorBuilder::new(Placement::Unbound).io_memory(512 << 10).make().unwrap();
    let records = ex.run(async move {
        let (log, _) = open_recovered(&c2).unwrap();
        for s in 0..SESSIONS {
            let r: Record = SessionCreated {
                client_id: format!("client-{s}"),
                expiry_secs: 3600,
                clean: false,
            }
            .into();
            log.append(&r).unwrap();
        }
        let mut last = LogSeq(0);
        for m in 1..=MESSAGES {
            let batch: [Record; 2] = [
                MessageStored {
                    msg_id: m,
                    topic: format!("sensors/{}/temp", m % 100),
                    payload: vec![b'x'; 64],
                    qos: 1,
                    retain: false,
                    properties: vec![],
                    received_at_ms: 1_700_000_000_000 + m,
                }
                .into(),
                MessageQueued {
                    client_id: format!("client-{}", m % SESSIONS),
                    msg_id: m,
                    group: String::new(),
                }
                .into(),
            ];
            last = log.append_batch(&batch).unwrap();
            if m % 4096 == 0 {
                // Let the committer keep up (bounded memory).
                glommio::yield_if_needed().await;
                futures_lite::future::yield_now().await;
            }
        }
        log.close().await.unwrap();
        last.0
    });
    let write_secs = started.elapsed().as_secs_f64();
    let bytes: u64 =
        fs::read_dir(c.shard_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();

    let started = Instant::now();
    let rec = recover(&c).unwrap();
    let recover_secs = started.elapsed().as_secs_f64();
    assert_eq!(rec.records, records);
    assert_eq!(rec.state.messages().len() as u64, MESSAGES);
    assert_eq!(rec.state.sessions().len() as u64, SESSIONS);
    println!(
        "log recovery: {MESSAGES} messages, {records} records, {:.1} MB in {} segments: written in {write_secs:.2} s, \
         recovered in {recover_secs:.2} s ({:.2} M records/s, {:.0} MB/s)",
        bytes as f64 / 1e6,
        rec.segments.len(),
        records as f64 / recover_secs / 1e6,
        bytes as f64 / recover_secs / 1e6,
    );
    fs::remove_dir_all(&dir).unwrap();
}
