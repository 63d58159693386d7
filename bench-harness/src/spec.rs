//! What a scenario is: its kind, its parameters (count, QoS, pace, timing) and the
//! connection list a run opens ([`build_spec`]).
//!
//! | scenario | connections | what it shows |
//! |---|---|---|
//! | `fanout` | 1 publisher → N subscribers of one topic | routing one message to many sessions |
//! | `fanin` | N publishers (one topic each) → 1 subscriber on `+` | wildcard matching, one hot session |
//! | `p2p` | N pairs, one topic per pair | the per-message path at QoS 1 / 2 |
//! | `shared` | 1 publisher → `$share/g/...` group of N | shared subscriptions: each message once |
//! | `conn` | N idle connections (worker processes, many source addresses) | connect rate, memory per connection |
//! | `retained` | N retained topics, then one `#` subscriber | retained store and wildcard replay |
//!
//! Every scenario that publishes has three paces ([`Pace`]): max rate (closed loop: a
//! window of messages in flight end to end, the best case), a fixed rate per publisher (open
//! loop: where latency means something, and at low rates every delivery is its own send), and
//! flood (open loop, unthrottled: the publisher writes as fast as TCP accepts, no window).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::load::{ConnSpec, LoadSpec, Role};
use crate::sys::monotonic_ns;

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 1 → N.
    Fanout,
    /// N → 1 on a wildcard.
    Fanin,
    /// N pairs.
    P2p,
    /// 1 → a shared-subscription group.
    Shared,
    /// A connection storm.
    Conn,
    /// Retained topics, then `#`.
    Retained,
}

impl Kind {
    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Fanin => "fanin",
            Kind::P2p => "p2p",
            Kind::Shared => "shared",
            Kind::Conn => "conn",
            Kind::Retained => "retained",
        }
    }
}

/// A scenario's parameters; `count` is subscribers, publishers, pairs, members, connections
/// or topics depending on the kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Which scenario.
    pub kind: Kind,
    /// Subscribers (fanout), publishers (fanin), pairs (p2p), members (shared),
    /// connections (conn) or topics (retained).
    pub count: u32,
    /// QoS of PUBLISH and SUBSCRIBE.
    pub qos: u8,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Messages per second per publisher; 0 means max rate (or flood, see `flood`).
    pub rate: f64,
    /// Flood: publishers write as fast as TCP accepts, no window (`rate` is then 0).
    #[serde(default)]
    pub flood: bool,
    /// At most this many messages per publisher.
    pub messages: u64,
    /// Warm-up before the measured window.
    pub warmup_secs: f64,
    /// The measured window.
    pub duration_secs: f64,
    /// Longest wait for stragglers after the window.
    pub drain_secs: f64,
    /// Max rate: end-to-end window per publisher in messages (0: automatic).
    pub window: u64,
    /// QoS 1/2: unacknowledged PUBLISHes per publisher.
    pub inflight: u32,
    /// Worker processes (conn; 0: one per 7,500 connections).
    pub workers: u32,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... (0: the kernel's choice).
    pub source_ips: u32,
    /// Connections per thread in the handshake at once.
    pub connect_concurrency: usize,
    /// conn: how long the connections idle before the broker's memory is read.
    pub settle_secs: f64,
    /// shardmq with several shards: which shards the subscribers' sessions live on.
    #[serde(default)]
    pub placement: Option<Placement>,
}

/// Where the subscribers' sessions live on a shardmq with several shards. shardmq homes a
/// session on the shard `FNV-1a(client id) % shards` (`ShardCore::home_shard`), so choosing
/// client ids chooses shards; other brokers see ordinary client ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Local or spread.
    pub mode: PlacementMode,
    /// The broker's shard count.
    pub shards: u16,
}

/// See [`Placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// Every subscriber on the first publisher's home shard: no message crosses shards.
    Local,
    /// Subscriber `i` on shard `i % shards`: every message crosses to every other shard.
    Spread,
}

impl PlacementMode {
    /// Parses `local` or `spread`.
    pub fn parse(s: &str) -> Result<PlacementMode, String> {
        match s {
            "local" => Ok(PlacementMode::Local),
            "spread" => Ok(PlacementMode::Spread),
            _ => Err(format!("--placement {s:?}: `local` or `spread`")),
        }
    }

    /// `local` or `spread`.
    pub fn name(self) -> &'static str {
        match self {
            PlacementMode::Local => "local",
            PlacementMode::Spread => "spread",
        }
    }
}

/// shardmq's home shard of a client id: FNV-1a of its bytes modulo the shard count. The
/// same function as `ShardCore::home_shard` in engine/src/core/shard.rs (stable: the log
/// depends on it), repeated here so that the harness needs no engine.
pub fn home_shard(client_id: &[u8], shards: u16) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u16
}

/// The first client id `{base}` or `{base}-{k}` whose home shard is `shard`.
fn id_on_shard(base: String, shard: u16, shards: u16) -> String {
    if home_shard(base.as_bytes(), shards) == shard {
        return base;
    }
    (0u32..)
        .map(|k| format!("{base}-{k}"))
        .find(|id| home_shard(id.as_bytes(), shards) == shard)
        .expect("FNV-1a reaches every residue")
}

impl Params {
    /// Defaults for `kind` with `count`.
    pub fn new(kind: Kind, count: u32) -> Params {
        Params {
            kind,
            count,
            qos: if kind == Kind::Retained { 1 } else { 0 },
            payload_bytes: 64,
            rate: 0.0,
            flood: false,
            messages: 10_000_000,
            warmup_secs: 1.0,
            // conn: how long every connection is held open.
            duration_secs: if kind == Kind::Conn { 2.0 } else { 5.0 },
            drain_secs: 5.0,
            window: 0,
            inflight: 64,
            workers: 0,
            source_ips: if kind == Kind::Conn { 4 } else { 0 },
            connect_concurrency: 256,
            // Longer than any broker's idle housekeeping: shardmq puts a connection that
            // read nothing for 1–2 s to sleep and returns the freed pages at the next
            // one-second sweep (`engine/src/io/idle.rs`): up to ~3 s.
            settle_secs: 5.0,
            placement: None,
        }
    }

    /// The publishers' pace.
    pub fn pace(&self) -> Pace {
        match (self.flood, self.rate > 0.0) {
            (true, _) => Pace::Flood,
            (false, true) => Pace::Fixed(self.rate),
            (false, false) => Pace::Max,
        }
    }

    /// A one-line description, e.g. `fanout 1→1000 qos0 64B max-rate`.
    pub fn label(&self) -> String {
        let n = self.count;
        let shape = match self.kind {
            Kind::Fanout => format!("fanout 1→{n}"),
            Kind::Fanin => format!("fanin {n}→1"),
            Kind::P2p => format!("p2p {n} pairs"),
            Kind::Shared => format!("shared 1→group of {n}"),
            Kind::Conn => return format!("conn {n} connections"),
            Kind::Retained => format!("retained {n} topics then #"),
        };
        let rate = match self.pace() {
            Pace::Fixed(r) => format!("{r}/s per publisher"),
            Pace::Max => "max-rate".into(),
            Pace::Flood => "flood".into(),
        };
        if self.kind == Kind::Retained {
            return format!("{shape} qos{} {}B", self.qos, self.payload_bytes);
        }
        let placed = match self.placement {
            Some(pl) => format!(" {} over {} shards", pl.mode.name(), pl.shards),
            None => String::new(),
        };
        format!("{shape} qos{} {}B {rate}{placed}", self.qos, self.payload_bytes)
    }
}

/// How publishers pace themselves (`--rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: as fast as an end-to-end window of messages in flight allows (`max`, `0`).
    Max,
    /// Open loop: this many messages per second per publisher.
    Fixed(f64),
    /// Open loop, unthrottled: write as fast as TCP accepts, no window (`flood`).
    Flood,
}

impl Pace {
    /// Parses `max`, `0`, `flood` or a positive number of messages per second.
    pub fn parse(s: &str) -> Result<Pace, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "max" => Ok(Pace::Max),
            "flood" => Ok(Pace::Flood),
            v => match v.parse::<f64>() {
                Ok(0.0) => Ok(Pace::Max),
                Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(Pace::Fixed(r)),
                _ => Err(format!(
                    "--rate {s:?}: `max` (or 0), `flood`, or messages per second in (0, 1e7]"
                )),
            },
        }
    }

    /// Sets `p.rate` and `p.flood`.
    pub fn apply(self, p: &mut Params) {
        (p.rate, p.flood) = match self {
            Pace::Max => (0.0, false),
            Pace::Fixed(r) => (r, false),
            Pace::Flood => (0.0, true),
        };
    }
}

/// Settings shared by every run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// MQTT protocol level.
    pub mqtt_version: u8,
    /// Reactor threads per process.
    pub threads: usize,
    /// CPUs for the harness threads.
    pub harness_cpus: Vec<usize>,
    /// No progress line.
    pub quiet: bool,
}

/// Connections per worker process: well under the 20,000 open files of one process.
pub const CONNS_PER_WORKER_MAX: u32 = 7_500;

fn nonce() -> String {
    format!("{:x}{:x}", std::process::id(), monotonic_ns() & 0xFFFF_FFFF)
}

/// Builds the connection list for `p`.
pub fn build_spec(p: &Params, broker: std::net::SocketAddr, s: &Settings) -> Result<LoadSpec> {
    if p.count == 0 {
        bail!("{}: the count must be at least 1", p.kind.name());
    }
    let run = nonce();
    let prefix = format!("shardmq-bench/{run}");
    let plain_cid = |role: &str, i: u32| format!("bench-{run}-{role}{i}");
    // With a placement, subscribers' ids are chosen for their home shard (publishers keep
    // theirs: the first publisher's shard is where `local` puts everyone).
    let cid = |role: &str, i: u32| match p.placement {
        Some(pl) if role == "s" && pl.shards > 1 => {
            let shard = match pl.mode {
                PlacementMode::Local => home_shard(plain_cid("p", 0).as_bytes(), pl.shards),
                PlacementMode::Spread => (i % u32::from(pl.shards)) as u16,
            };
            id_on_shard(plain_cid(role, i), shard, pl.shards)
        }
        _ => plain_cid(role, i),
    };
    let sub =
        |group: u32, filter: String, deferred: bool| Role::Subscriber { group, filter, deferred };
    let publisher = |id: u32, topic: String| Role::Publisher {
        id,
        topic,
        retain: false,
        topic_per_message: false,
    };
    let mut conns = Vec::new();
    let (publishers, groups): (u32, u64) = match p.kind {
        Kind::Fanout => {
            let topic = format!("{prefix}/fanout");
            for i in 0..p.count {
                conns.push((cid("s", i), sub(i, topic.clone(), false)));
            }
            conns.push((cid("p", 0), publisher(0, topic)));
            (1, u64::from(p.count))
        }
        Kind::Fanin => {
            conns.push((cid("s", 0), sub(0, format!("{prefix}/fanin/+"), false)));
            for i in 0..p.count {
                conns.push((cid("p", i), publisher(i, format!("{prefix}/fanin/{i}"))));
            }
            (p.count, 1)
        }
        Kind::P2p => {
            for i in 0..p.count {
                conns.push((cid("s", i), sub(i, format!("{prefix}/p2p/{i}"), false)));
            }
            for i in 0..p.count {
                conns.push((cid("p", i), publisher(i, format!("{prefix}/p2p/{i}"))));
            }
            (p.count, 1)
        }
        Kind::Shared => {
            let topic = format!("{prefix}/shared");
            for i in 0..p.count {
                conns.push((cid("s", i), sub(0, format!("$share/g/{topic}"), false)));
            }
            conns.push((cid("p", 0), publisher(0, topic)));
            (1, 1)
        }
        Kind::Conn => {
            for i in 0..p.count {
                conns.push((cid("c", i), Role::Idle));
            }
            (0, 0)
        }
        Kind::Retained => {
            let topic = format!("{prefix}/retained");
            conns.push((cid("s", 0), sub(0, format!("{topic}/#"), true)));
            conns.push((
                cid("p", 0),
                Role::Publisher { id: 0, topic, retain: true, topic_per_message: true },
            ));
            (1, 1)
        }
    };
    let conns = conns
        .into_iter()
        .enumerate()
        .map(|(i, (client_id, role))| ConnSpec {
            client_id,
            source_ip: (p.source_ips > 0)
                .then(|| Ipv4Addr::new(127, 0, 0, 2 + (i as u32 % p.source_ips.min(250)) as u8)),
            role,
        })
        .collect();
    let messages = if p.kind == Kind::Retained { u64::from(p.count) } else { p.messages.max(1) };
    let window = match (p.kind, p.window) {
        // Nobody receives while the retained topics are published: no end-to-end window.
        (Kind::Retained, _) => u64::MAX,
        // Automatic: about 20,000 deliveries in flight over all publishers, at least 8 each.
        (_, 0) => (20_000 / (groups.max(1) * u64::from(publishers.max(1)))).max(8),
        (_, w) => w,
    };
    Ok(LoadSpec {
        broker,
        subscriber_broker: None,
        subscriber_brokers: Vec::new(),
        transport: Default::default(),
        mqtt_version: s.mqtt_version,
        qos: p.qos,
        payload_bytes: p.payload_bytes,
        rate_per_publisher: if p.kind == Kind::Retained { 0.0 } else { p.rate },
        flood: p.flood && p.kind != Kind::Retained,
        messages_per_publisher: messages,
        window_messages: window,
        inflight_max: p.inflight.clamp(1, 30_000),
        groups_per_publisher: groups,
        publishers_total: publishers,
        keep_alive_secs: 60,
        connect_concurrency: p.connect_concurrency.max(1),
        ordered: p.kind != Kind::Retained,
        quiet_ms: 500,
        threads: s.threads.max(1),
        harness_cpus: s.harness_cpus.clone(),
        conns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces() {
        assert_eq!(Pace::parse("max"), Ok(Pace::Max));
        assert_eq!(Pace::parse("0"), Ok(Pace::Max));
        assert_eq!(Pace::parse("Flood"), Ok(Pace::Flood));
        assert_eq!(Pace::parse("20"), Ok(Pace::Fixed(20.0)));
        for bad in ["-1", "fast", "inf", "NaN", "1e9"] {
            assert!(Pace::parse(bad).is_err(), "{bad}");
        }
        let mut p = Params::new(Kind::Fanout, 1000);
        Pace::Flood.apply(&mut p);
        assert_eq!(p.label(), "fanout 1→1000 qos0 64B flood");
        Pace::Fixed(20.0).apply(&mut p);
        assert_eq!((p.pace(), p.flood), (Pace::Fixed(20.0), false));
        assert_eq!(p.label(), "fanout 1→1000 qos0 64B 20/s per publisher");
    }

    #[test]
    fn placement_picks_home_shards() {
        // Known values of FNV-1a: "" is the offset basis.
        assert_eq!(home_shard(b"", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as u16);
        assert_eq!(home_shard(b"anything", 1), 0);
        let s = Settings { mqtt_version: 4, threads: 1, harness_cpus: Vec::new(), quiet: true };
        let addr = "127.0.0.1:1".parse().unwrap();
        for shards in [2u16, 3, 8] {
            let mut p = Params::new(Kind::Fanout, 40);
            p.placement = Some(Placement { mode: PlacementMode::Local, shards });
            let spec = build_spec(&p, addr, &s).unwrap();
            let (subs, publ): (Vec<_>, Vec<_>) =
                spec.conns.iter().partition(|c| matches!(c.role, Role::Subscriber { .. }));
            let home = home_shard(publ[0].client_id.as_bytes(), shards);
            assert!(subs.iter().all(|c| home_shard(c.client_id.as_bytes(), shards) == home));

            p.placement = Some(Placement { mode: PlacementMode::Spread, shards });
            let spec = build_spec(&p, addr, &s).unwrap();
            let mut per_shard = vec![0u32; usize::from(shards)];
            for c in spec.conns.iter().filter(|c| matches!(c.role, Role::Subscriber { .. })) {
                per_shard[usize::from(home_shard(c.client_id.as_bytes(), shards))] += 1;
            }
            let even = 40 / u32::from(shards);
            assert!(per_shard.iter().all(|&n| n == even || n == even + 1), "{per_shard:?}");
            assert!(p.label().ends_with(&format!("spread over {shards} shards")), "{}", p.label());
        }
    }

    #[test]
    fn same_home_shard_as_the_broker() {
        for i in 0..200u32 {
            let id = format!("bench-x-s{i}");
            for shards in [2u16, 5] {
                assert_eq!(
                    home_shard(id.as_bytes(), shards),
                    shardmq_engine::core::shard::ShardCore::home_shard(id.as_bytes(), shards).0,
                );
            }
        }
    }
}
