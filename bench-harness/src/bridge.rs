//! `shardmq-bench bridge`: an edge broker bridging `shardmq-bench/#` out to a remote
//! Mosquitto. A publisher on the edge sends at a fixed rate; its subscriber is on the remote,
//! so every message crosses the bridge. The edge is shardmq (a `[[bridge]]` table) or
//! Mosquitto (a `connection`), configured alike (persistent remote session, the bridge bit,
//! QoS as given), and the figures are the edge's: broker CPU per forwarded message, the rate
//! and the end-to-end latency, with loss and duplicates checked as in every scenario.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use shardmq_codec::{encode, ByteStr, Packet, ProtocolVersion, Publish, QoS};

use crate::broker::{Broker, BrokerKind, BrokerOptions, BrokerSpec};
use crate::report::{RunResult, ScenarioReport};
use crate::scenario::{self, Kind, Pace, Params, Settings};
use crate::wire;

/// What `bridge` runs.
#[derive(Debug, Clone)]
pub struct BridgeParams {
    /// QoS of the PUBLISHes, the subscription and the bridge's topic rule.
    pub qos: u8,
    /// Messages per second.
    pub rate: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Warm-up.
    pub warmup_secs: f64,
    /// Measured window.
    pub duration_secs: f64,
    /// Runs per edge broker, the brokers taking turns.
    pub repeat: u32,
}

/// Runs every edge in `edges` `p.repeat` times, interleaved, each against a fresh remote
/// Mosquitto pinned to `remote_cpus`.
pub fn run(
    p: &BridgeParams,
    edges: &[BrokerSpec],
    base: &BrokerOptions,
    remote_cpus: &str,
    settings: &Settings,
) -> Result<ScenarioReport> {
    let mut params = Params::new(Kind::P2p, 1);
    params.qos = p.qos;
    params.payload_bytes = p.payload_bytes;
    Pace::Fixed(p.rate).apply(&mut params);
    params.warmup_secs = p.warmup_secs;
    params.duration_secs = p.duration_secs;
    let mut sr = ScenarioReport {
        scenario: "bridge".into(),
        label: format!("bridge to mosquitto: {}", params.label()),
        params: params.clone(),
        results: Vec::new(),
    };
    for round in 0..p.repeat {
        for edge in edges {
            let name = edge.name();
            let r = run_one(p, &params, edge, base, remote_cpus, settings)
                .unwrap_or_else(|e| RunResult::failed(&name, format!("{e:#}")));
            let mut r = r;
            r.repeat = round;
            if let Some(e) = &r.error {
                eprintln!("{name} run {}: {e}", round + 1);
            }
            sr.results.push(r);
        }
    }
    Ok(sr)
}

fn run_one(
    p: &BridgeParams,
    params: &Params,
    edge: &BrokerSpec,
    base: &BrokerOptions,
    remote_cpus: &str,
    settings: &Settings,
) -> Result<RunResult> {
    if edge.kind == BrokerKind::Rumqttd {
        bail!("rumqttd has no bridge");
    }
    let mut remote_opts = base.clone();
    remote_opts.cpus = remote_cpus.to_string();
    remote_opts.bridge_to = None;
    let mut remote = Broker::start(BrokerKind::Mosquitto, &remote_opts)?;
    let mut opts = base.clone();
    edge.apply(&mut opts);
    opts.bridge_to = Some((remote.addr, p.qos));
    let started = Broker::start(edge.kind, &opts);
    let mut b = match started {
        Ok(b) => b,
        Err(e) => {
            remote.stop();
            return Err(e);
        }
    };
    b.name = edge.name();
    let result = wait_bridge(b.addr, remote.addr, Duration::from_secs(20)).and_then(|()| {
        b.subscribers_at = Some(remote.addr);
        scenario::run(params, &mut b, settings)
    });
    b.stop();
    remote.stop();
    result
}

/// Publishes probes on the edge until one reaches a subscriber on the remote: the bridge is
/// up and subscribed.
pub fn wait_bridge(edge: SocketAddr, remote: SocketAddr, timeout: Duration) -> Result<()> {
    let v = ProtocolVersion::V3_1_1;
    let deadline = Instant::now() + timeout;
    let (mut sub_buf, mut pub_buf) = (Vec::new(), Vec::new());
    let mut sub = TcpStream::connect(remote).context("probe subscriber")?;
    sub.set_read_timeout(Some(Duration::from_millis(200)))?;
    sub.write_all(&wire::connect("shardmq-bench-probe-sub", v, 30)?)?;
    wire::check_connack(&read_packet_buf(&mut sub, &mut sub_buf, v, deadline)?)?;
    sub.write_all(&wire::subscribe(1, "shardmq-bench/probe", QoS::AtMostOnce, v)?)?;
    wire::check_suback(&read_packet_buf(&mut sub, &mut sub_buf, v, deadline)?)?;
    let mut publ = TcpStream::connect(edge).context("probe publisher")?;
    publ.set_read_timeout(Some(Duration::from_millis(200)))?;
    publ.write_all(&wire::connect("shardmq-bench-probe-pub", v, 30)?)?;
    wire::check_connack(&read_packet_buf(&mut publ, &mut pub_buf, v, deadline)?)?;
    let mut probe = BytesMut::new();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteStr::from("shardmq-bench/probe"),
        packet_id: None,
        payload: Bytes::from_static(b"probe"),
        properties: None,
    });
    encode(&packet, v, &mut probe).map_err(|e| anyhow!("{e}"))?;
    loop {
        if Instant::now() > deadline {
            bail!("the bridge did not come up within {timeout:?}");
        }
        publ.write_all(&probe)?;
        match read_packet_buf(
            &mut sub,
            &mut sub_buf,
            v,
            Instant::now() + Duration::from_millis(300),
        ) {
            Ok(Packet::Publish(_)) => break,
            _ => continue,
        }
    }
    let _ = sub.write_all(&wire::DISCONNECT);
    let _ = publ.write_all(&wire::DISCONNECT);
    Ok(())
}

/// Reads one packet (blocking, with the socket's read timeout) before `deadline`; bytes after
/// it stay in `buf` for the next call.
fn read_packet_buf(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    v: ProtocolVersion,
    deadline: Instant,
) -> Result<Packet> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((total, _)) = wire::split_frame(buf).map_err(|e| anyhow!("{e}"))? {
            let p = wire::decode_frame(&buf[..total], v);
            buf.drain(..total);
            return p;
        }
        if Instant::now() > deadline {
            bail!("no packet in time");
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("closed"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
