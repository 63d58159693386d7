//! Fan-out micro-benchmarks: one shard's core delivering a QoS 0 PUBLISH (64 B payload) to
//! 1,000 subscribers of one topic, as `shardmq-bench fanout --subscribers 1000` drives the
//! broker, without sockets: the core's own CPU per delivered message (match, per-subscriber
//! checks, the frame copy into each connection's `TxQueue`) and the writer's `consume`.
//!
//! Each iteration publishes [`BATCH`] messages, then empties every queue that asked to be
//! flushed, so each coalescing buffer holds several frames per "write" as in the broker
//! under load. Throughput is in delivered messages.
//!
//! Clock: the calling thread's CPU time, as in the codec benches (`support/cpu_time.rs`);
//! `SHARDMQ_BENCH_CLOCK=wall` switches to criterion's wall clock.
//!
//! Run: `cargo bench -p shardmq-perf --bench deliver -- --warm-up-time 1 --measurement-time 3`;
//! smoke test: `cargo bench -p shardmq-perf --bench deliver -- --test`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput};
use shardmq_codec::{
    ByteStr, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, RetainHandling,
    Subscribe, SubscriptionOptions,
};
use shardmq_engine::core::auth::AuthConfig;
use shardmq_engine::core::hash::HashKeys;
use shardmq_engine::core::ids::{ConnId, ShardId};
use shardmq_engine::core::limits::Limits;
use shardmq_engine::core::shard::{CoreConfig, GlobalStats, IoAction, ShardCore};
use shardmq_engine::core::ConnInfo;

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::ThreadCpuTime;

/// Subscribers of the one topic.
const SUBSCRIBER_COUNT: usize = 1000;

/// Messages published between two drains of the subscribers' queues.
const BATCH: usize = 16;

const TOPIC: &str = "bench/fanout/topic";

/// A one-shard core with `SUBSCRIBER_COUNT` subscribers of `TOPIC` at QoS 0 and one
/// publisher, all speaking `version`; every queue drained.
fn setup(version: ProtocolVersion) -> (ShardCore, ConnId, Instant) {
    let now = Instant::now();
    let config = CoreConfig {
        limits: Limits::default(),
        shard_count: 1,
        sys_interval_secs: 10,
        stats: Arc::new(GlobalStats::new(1)),
        started_at: now,
        auth: AuthConfig::default(),
        fault_panic_topic: None,
        hash_keys: HashKeys::from_seed(1),
        cluster: None,
    };
    let mut core = ShardCore::new(ShardId(0), config);
    let connect = |core: &mut ShardCore, id: String| {
        let conn = core.open_connection(ConnInfo::default(), now).expect("connection slot");
        let c = Connect {
            protocol: version,
            clean_start: true,
            keep_alive_secs: 0,
            client_id: ByteStr::from(id.as_str()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        core.handle_packet(conn, Packet::Connect(Box::new(c)), now);
        conn
    };
    for i in 0..SUBSCRIBER_COUNT {
        let conn = connect(&mut core, format!("sub-{i}"));
        let opts = SubscriptionOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        };
        let sub = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![(ByteStr::from(TOPIC), opts)],
            properties: None,
        };
        core.handle_packet(conn, Packet::Subscribe(sub), now);
    }
    let publisher = connect(&mut core, "pub".to_owned());
    drain(&mut core);
    (core, publisher, now)
}

/// Empties every queue that asked to be flushed, as the writer does once the socket took it
/// all.
fn drain(core: &mut ShardCore) -> usize {
    let mut n_bytes = 0;
    while let Some(action) = core.poll_action() {
        let (IoAction::Flush(conn) | IoAction::Close(conn)) = action;
        if let Some(tx) = core.tx(conn) {
            n_bytes += tx.len_bytes();
            tx.consume(tx.len_bytes());
        }
    }
    n_bytes
}

fn fanout_benches<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements((SUBSCRIBER_COUNT * BATCH) as u64));
    let payload = Bytes::from(vec![0x5a; 64]);
    for (name, version) in [
        ("qos0_1000_subs_v311", ProtocolVersion::V3_1_1),
        ("qos0_1000_subs_v5", ProtocolVersion::V5),
    ] {
        let (mut core, publisher, now) = setup(version);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteStr::from(TOPIC),
            packet_id: None,
            payload: payload.clone(),
            properties: None,
        };
        core.handle_packet(publisher, Packet::Publish(publish.clone()), now);
        let frame_bytes = 2 + 2 + TOPIC.len() + usize::from(version == ProtocolVersion::V5) + 64;
        assert_eq!(drain(&mut core), SUBSCRIBER_COUNT * frame_bytes, "every subscriber got it");
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    core.handle_packet(publisher, Packet::Publish(publish.clone()), now);
                }
                // Every message reached every subscriber (nothing dropped or sent twice).
                assert_eq!(black_box(drain(&mut core)), BATCH * SUBSCRIBER_COUNT * frame_bytes);
            })
        });
    }
    group.finish();
}

fn main() {
    if std::env::var("SHARDMQ_BENCH_CLOCK").as_deref() == Ok("wall") {
        let mut c = Criterion::default().configure_from_args();
        fanout_benches(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().with_measurement(ThreadCpuTime).configure_from_args();
        fanout_benches(&mut c);
        c.final_summary();
    }
}
