//! The join measurement of `shardmq-bench cluster`: nodes 1 and 2 form a cluster; clients on
//! node 1 subscribe N distinct filters (1,000 per connection, pipelined, each SUBACK waiting
//! for node 2 to hold the route); then node 3 starts, seeded with the others. Measured from
//! node 3's spawn: when it accepts MQTT connections, when it sees both others alive with
//! links up (and they see it), and when its `routes_remote` counter holds node 1's N routes
//! (`GET /api/v1/cluster`, polled every 10 ms). The subscribers stay connected throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use shardmq_codec::{ProtocolVersion, QoS};

use crate::broker::BrokerOptions;
use crate::cluster::{cluster_addrs, start_node, view_is, wait_view, Node};
use crate::wire;

/// Filters per subscribing connection (under the broker's default of 1,024 per session).
const FILTERS_PER_CONN: u32 = 1000;
/// SUBSCRIBEs written before their SUBACKs are read.
const PIPELINE: u32 = 250;
/// Longest wait for any one phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// One join measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinRun {
    /// Which repetition.
    pub repeat: u32,
    /// Distinct filters on node 1.
    pub subscriptions: u32,
    /// Time to subscribe them all (every SUBACK), seconds.
    pub subscribe_secs: f64,
    /// Node 3's spawn to accepting MQTT connections, seconds.
    pub start_secs: f64,
    /// Node 3's spawn to every node seeing the three alive with links up, seconds.
    pub view_secs: f64,
    /// Node 3's spawn to node 3 holding every route of node 1, seconds.
    pub routes_secs: f64,
}

/// Runs one join measurement with `subscriptions` filters.
pub fn run(subscriptions: u32, base: &BrokerOptions) -> Result<JoinRun> {
    let addrs = cluster_addrs(3)?;
    let mut nodes: Vec<Node> = Vec::new();
    let result = (|| {
        nodes.push(start_node(1, &addrs, base)?);
        nodes.push(start_node(2, &addrs, base)?);
        wait_view(&mut nodes, &[1, 2], PHASE_TIMEOUT)?;
        let t = Instant::now();
        let _subscribers = subscribe_many(nodes[0].broker.addr, subscriptions)?;
        let subscribe_secs = t.elapsed().as_secs_f64();
        wait_routes(&nodes[1], subscriptions)?;
        let spawned = Instant::now();
        nodes.push(start_node(3, &addrs, base)?);
        let start_secs = spawned.elapsed().as_secs_f64();
        let (mut view, mut routes) = (None, None);
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while view.is_none() || routes.is_none() {
            let st = nodes[2].status()?;
            if view.is_none() && view_is(&st, 3, &[1, 2, 3]) {
                wait_view(&mut nodes[..2], &[1, 2, 3], PHASE_TIMEOUT)?;
                view = Some(spawned.elapsed().as_secs_f64());
            }
            let held = st["counters"]["routes_remote"].as_u64().unwrap_or(0);
            if routes.is_none() && held >= u64::from(subscriptions) {
                routes = Some(spawned.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("node 3 did not converge within {PHASE_TIMEOUT:?}: {st}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(JoinRun {
            repeat: 0,
            subscriptions,
            subscribe_secs,
            start_secs,
            view_secs: view.unwrap_or_default(),
            routes_secs: routes.unwrap_or_default(),
        })
    })();
    for n in &mut nodes {
        n.broker.stop();
    }
    result
}

/// Until `node` holds at least `n` routes of its peers.
fn wait_routes(node: &Node, n: u32) -> Result<()> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while node.counter("routes_remote")? < u64::from(n) {
        if Instant::now() > deadline {
            bail!("{} holds {} routes, not {n}", node.broker.name, node.counter("routes_remote")?);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Subscribes `n` distinct filters on `broker` over as many connections as needed; returns
/// the connections (the subscriptions last as long as they do).
fn subscribe_many(broker: SocketAddr, n: u32) -> Result<Vec<TcpStream>> {
    let v = ProtocolVersion::V3_1_1;
    let run = std::process::id();
    let mut conns = Vec::new();
    let mut left = n;
    let mut c = 0u32;
    while left > 0 {
        let here = left.min(FILTERS_PER_CONN);
        let mut s = TcpStream::connect(broker).context("subscriber connection")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = Vec::new();
        s.write_all(&wire::connect(&format!("shardmq-bench-join-{run}-{c}"), v, 0)?)?;
        let connack = read_frames(&mut s, &mut buf, 1)?;
        if connack[0] != 0x20 {
            bail!("expected CONNACK, got packet type {:#x}", connack[0] >> 4);
        }
        let mut done = 0;
        while done < here {
            let batch = PIPELINE.min(here - done);
            let mut out = Vec::new();
            for i in done..done + batch {
                let filter = format!("shardmq-bench/join/{run}/{c}/{i}");
                out.extend(wire::subscribe(i as u16 + 1, &filter, QoS::AtMostOnce, v)?);
            }
            s.write_all(&out)?;
            for byte0 in read_frames(&mut s, &mut buf, batch as usize)? {
                if byte0 != 0x90 {
                    bail!("expected SUBACK, got packet type {:#x}", byte0 >> 4);
                }
            }
            done += batch;
        }
        conns.push(s);
        left -= here;
        c += 1;
    }
    Ok(conns)
}

/// Reads `count` whole frames; returns their first bytes (type and flags).
fn read_frames(s: &mut TcpStream, buf: &mut Vec<u8>, count: usize) -> Result<Vec<u8>> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut got = Vec::with_capacity(count);
    let mut chunk = [0u8; 65536];
    while got.len() < count {
        if let Some((len, _)) = wire::split_frame(buf).map_err(|e| anyhow!("{e}"))? {
            got.push(buf[0]);
            buf.drain(..len);
            continue;
        }
        if Instant::now() > deadline {
            bail!("{} of {count} packets within {PHASE_TIMEOUT:?}", got.len());
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("closed by the broker after {} of {count} packets", got.len()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// The join table: each run, then medians and spreads.
pub fn table(runs: &[JoinRun]) -> String {
    let mut out = String::from(
        "\njoin (node 3 joins nodes 1 and 2; times from its spawn):\n\
         run  subscriptions  subscribe_s  start_s  view_s  routes_s\n",
    );
    for r in runs {
        out.push_str(&format!(
            "{:>3}  {:>13}  {:>11.2}  {:>7.2}  {:>6.2}  {:>8.2}\n",
            r.repeat + 1,
            r.subscriptions,
            r.subscribe_secs,
            r.start_secs,
            r.view_secs,
            r.routes_secs
        ));
    }
    for (name, f) in [
        ("view_s", (|r: &JoinRun| r.view_secs) as fn(&JoinRun) -> f64),
        ("routes_s", |r: &JoinRun| r.routes_secs),
    ] {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (v.first(), v.last()) {
            out.push_str(&format!(
                "median {name} {:.2} (spread {lo:.2} to {hi:.2}, {} runs)\n",
                v[v.len() / 2],
                v.len()
            ));
        }
    }
    out
}
