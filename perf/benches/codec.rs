//! Codec micro-benchmarks: decode and encode of PUBLISH (16 B, 64 B, 1 KiB, 64 KiB payloads),
//! CONNECT and SUBSCRIBE, for MQTT 3.1.1 and 5.0, side by side with the peer codec
//! `mqttbytes` 0.6 (its `v4` and `v5` modules) on the same input bytes, in the same
//! criterion group.
//!
//! Both codecs see exactly the same wire bytes (built once with our encoder and checked to
//! decode to the same content in mqttbytes), and encode the same packet content into a
//! reused buffer. One iteration decodes (or encodes) a batch of the same packet back to back,
//! as the IO layer sees a read buffer (or builds a write batch): up to 256 packets, 256 KiB;
//! throughput is in packets (`Throughput::Elements`). Our extra `shardmq_header` function is the engine's fan-out path
//! (`encode_publish_header`: everything but the payload, which is shared, not copied).
//!
//! Clock: the calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) by default, so that
//! other processes on this 2-core machine (builds, other benches) do not inflate the result:
//! the code under test is single-threaded and does no IO, so on an idle machine CPU time and
//! wall time agree. `SHARDMQ_BENCH_CLOCK=wall` switches to criterion's wall clock.
//!
//! Smoke mode (each benchmark once, as a test; CI runs it):
//! `cargo bench -p shardmq-perf --bench codec -- --test`.
//! Full run, as in `perf/notes/2026-11-23-codec.md`:
//! `cargo bench -p shardmq-perf --bench codec -- --warm-up-time 1 --measurement-time 3`.

use bytes::{Bytes, BytesMut};
use criterion::measurement::Measurement;
use criterion::{black_box, BatchSize, BenchmarkGroup, Criterion, Throughput};
use mqttbytes::{v4, v5};
use shardmq_codec as sq;
use sq::{ByteStr, Packet, PacketId, ProtocolVersion, QoS};

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::ThreadCpuTime;

const PAYLOAD_SIZES_BYTES: [usize; 4] = [16, 64, 1024, 64 * 1024];
const PACKET_SIZE_MAX_BYTES: usize = 1024 * 1024;
const TOPIC: &str = "sensors/building-1/floor-2/temperature";

/// The peer's decoded form of the same bytes.
enum Peer {
    V4(v4::Packet),
    V5(v5::Packet),
}

impl Peer {
    fn read(wire: &[u8], version: ProtocolVersion) -> Peer {
        let mut buf = BytesMut::from(wire);
        let p = if version.is_v5() {
            Peer::V5(v5::read(&mut buf, PACKET_SIZE_MAX_BYTES).expect("mqttbytes v5 decodes it"))
        } else {
            Peer::V4(v4::read(&mut buf, PACKET_SIZE_MAX_BYTES).expect("mqttbytes v4 decodes it"))
        };
        assert!(buf.is_empty(), "mqttbytes left bytes over");
        p
    }

    fn write(&self, out: &mut BytesMut) {
        let r = match self {
            Peer::V4(v4::Packet::Publish(p)) => p.write(out),
            Peer::V4(v4::Packet::Connect(p)) => p.write(out),
            Peer::V4(v4::Packet::Subscribe(p)) => p.write(out),
            Peer::V5(v5::Packet::Publish(p)) => p.write(out),
            Peer::V5(v5::Packet::Connect(p)) => p.write(out),
            Peer::V5(v5::Packet::Subscribe(p)) => p.write(out),
            _ => unreachable!("not benchmarked"),
        };
        r.expect("mqttbytes encodes it");
    }

    /// Topic and payload of a PUBLISH, to check both codecs read the same content.
    fn publish_content(&self) -> Option<(&str, &Bytes)> {
        match self {
            Peer::V4(v4::Packet::Publish(p)) => Some((&p.topic, &p.payload)),
            Peer::V5(v5::Packet::Publish(p)) => Some((&p.topic, &p.payload)),
            _ => None,
        }
    }
}

struct Case {
    /// Criterion's parameter label, e.g. "64B".
    label: String,
    version: ProtocolVersion,
    packet: Packet,
    wire: Vec<u8>,
    peer: Peer,
}

impl Case {
    fn new(label: impl Into<String>, version: ProtocolVersion, packet: Packet) -> Case {
        let mut out = BytesMut::new();
        sq::encode(&packet, version, &mut out).expect("we encode it");
        let wire = out.to_vec();
        // Both codecs must read the same content from the same bytes.
        let mut buf = BytesMut::from(&wire[..]);
        let ours = sq::decode(&mut buf, &limits(), version)
            .expect("we decode it")
            .expect("a whole packet");
        assert_eq!(ours, packet, "decode(encode(p)) == p");
        let peer = Peer::read(&wire, version);
        if let (Packet::Publish(p), Some((topic, payload))) = (&packet, peer.publish_content()) {
            assert_eq!((&*p.topic, &p.payload), (topic, payload));
        }
        // And encode the same bytes (so the encode comparison is like for like).
        let mut theirs = BytesMut::new();
        peer.write(&mut theirs);
        assert_eq!(theirs.len(), wire.len(), "both encodings have the same size");
        Case { label: label.into(), version, packet, wire, peer }
    }
}

fn limits() -> sq::Limits {
    sq::Limits { packet_size_max_bytes: PACKET_SIZE_MAX_BYTES as u32 }
}

fn publish(payload_bytes: usize) -> Packet {
    Packet::Publish(sq::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteStr::from(TOPIC),
        packet_id: PacketId::new(42),
        payload: Bytes::from(vec![0xAB; payload_bytes]),
        properties: None,
    })
}

fn connect(version: ProtocolVersion) -> Packet {
    let mut properties = sq::Properties::default();
    if version.is_v5() {
        properties.session_expiry_interval_secs = Some(3600);
        properties.receive_maximum = Some(100);
        properties.topic_alias_maximum = Some(16);
    }
    Packet::Connect(Box::new(sq::Connect {
        protocol: version,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: ByteStr::from("bench-client-000001"),
        will: Some(sq::Will {
            topic: ByteStr::from("clients/bench-client-000001/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: sq::Properties::default(),
        }),
        username: Some(ByteStr::from("bench-user")),
        password: Some(Bytes::from_static(b"bench-password")),
        properties,
    }))
}

fn subscribe(version: ProtocolVersion) -> Packet {
    let opts = |qos| sq::SubscriptionOptions { qos, ..Default::default() };
    let properties = version.is_v5().then(|| {
        Box::new(sq::Properties { subscription_identifiers: vec![5], ..Default::default() })
    });
    Packet::Subscribe(sq::Subscribe {
        packet_id: PacketId::new(7).unwrap(),
        filters: vec![
            (ByteStr::from("sensors/+/temperature"), opts(QoS::AtLeastOnce)),
            (ByteStr::from("alerts/#"), opts(QoS::ExactlyOnce)),
            (ByteStr::from("devices/+/status/+"), opts(QoS::AtMostOnce)),
        ],
        properties,
    })
}

/// Packets per iteration: a read buffer (or a write batch) of several packets, as the IO
/// layer sees them, so per-packet costs are not drowned by per-iteration overhead.
fn batch_len(c: &Case) -> usize {
    (256 * 1024 / c.wire.len()).clamp(1, 256)
}

fn decode_pair<M: Measurement>(g: &mut BenchmarkGroup<'_, M>, c: &Case) {
    let k = batch_len(c);
    let stream = c.wire.repeat(k);
    g.throughput(Throughput::Elements(k as u64));
    let limits = limits();
    g.bench_with_input(criterion::BenchmarkId::new("shardmq", &c.label), c, |b, c| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                while let Some(p) = sq::decode(buf, &limits, c.version).unwrap() {
                    black_box(p);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_with_input(criterion::BenchmarkId::new("mqttbytes", &c.label), c, |b, c| {
        let v5 = c.version.is_v5();
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                while !buf.is_empty() {
                    if v5 {
                        black_box(v5::read(buf, PACKET_SIZE_MAX_BYTES).unwrap());
                    } else {
                        black_box(v4::read(buf, PACKET_SIZE_MAX_BYTES).unwrap());
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
}

fn encode_pair<M: Measurement>(g: &mut BenchmarkGroup<'_, M>, c: &Case) {
    let k = batch_len(c);
    g.throughput(Throughput::Elements(k as u64));
    g.bench_with_input(criterion::BenchmarkId::new("shardmq", &c.label), c, |b, c| {
        let mut out = BytesMut::with_capacity(k * c.wire.len());
        b.iter(|| {
            out.clear();
            for _ in 0..k {
                sq::encode(black_box(&c.packet), c.version, &mut out).unwrap();
            }
        })
    });
    if let Packet::Publish(p) = &c.packet {
        // The engine's fan-out path: the header once per layout, the payload `Bytes` shared.
        g.bench_with_input(criterion::BenchmarkId::new("shardmq_header", &c.label), c, |b, c| {
            let mut out = BytesMut::with_capacity(k * c.wire.len());
            b.iter(|| {
                out.clear();
                for _ in 0..k {
                    let at = sq::encode_publish_header(black_box(p), c.version, &mut out);
                    black_box((at.unwrap(), p.payload.clone()));
                }
            })
        });
    }
    g.bench_with_input(criterion::BenchmarkId::new("mqttbytes", &c.label), c, |b, c| {
        let mut out = BytesMut::with_capacity(k * c.wire.len());
        b.iter(|| {
            out.clear();
            for _ in 0..k {
                black_box(&c.peer).write(&mut out);
            }
        })
    });
}

fn version_tag(v: ProtocolVersion) -> &'static str {
    if v.is_v5() {
        "v5"
    } else {
        "v311"
    }
}

fn benches<M: Measurement>(cr: &mut Criterion<M>) {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let tag = version_tag(version);
        let publishes: Vec<Case> = PAYLOAD_SIZES_BYTES
            .iter()
            .map(|&n| {
                let label = if n >= 1024 { format!("{}KiB", n / 1024) } else { format!("{n}B") };
                Case::new(label, version, publish(n))
            })
            .collect();
        let others = [
            Case::new("connect", version, connect(version)),
            Case::new("subscribe", version, subscribe(version)),
        ];

        for c in publishes.iter().chain(&others) {
            eprintln!(
                "codec bench case {tag}/{}: {} wire bytes, {} packets per iteration",
                c.label,
                c.wire.len(),
                batch_len(c)
            );
        }
        let mut g = cr.benchmark_group(format!("decode_publish_{tag}"));
        for c in &publishes {
            decode_pair(&mut g, c);
        }
        g.finish();
        let mut g = cr.benchmark_group(format!("encode_publish_{tag}"));
        for c in &publishes {
            encode_pair(&mut g, c);
        }
        g.finish();
        let mut g = cr.benchmark_group(format!("decode_control_{tag}"));
        for c in &others {
            decode_pair(&mut g, c);
        }
        g.finish();
        let mut g = cr.benchmark_group(format!("encode_control_{tag}"));
        for c in &others {
            encode_pair(&mut g, c);
        }
        g.finish();
    }
}

fn main() {
    if std::env::var("SHARDMQ_BENCH_CLOCK").as_deref() == Ok("wall") {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().with_measurement(ThreadCpuTime).configure_from_args();
        benches(&mut c);
        c.final_summary();
    }
}
