//! The load generator: MQTT connections on non-blocking sockets, thousands per thread.
//!
//! Each thread runs one `mio` reactor over its share of the connections ([`ConnSpec`]s of a
//! [`LoadSpec`]). A thread reads every readable socket into one 64 KiB buffer (a short read
//! ends the batch: with edge-triggered epoll a new arrival raises a new event), parses whole
//! frames in place and keeps only a partial tail per connection. Outgoing bytes are queued
//! per connection and written once per reactor turn, so a publisher sends many PUBLISHes and a
//! subscriber many acknowledgements per `write`.
//!
//! Phases, driven by the coordinator through [`Control`]:
//! 1. setup: connect (bounded concurrency), CONNECT/CONNACK, SUBSCRIBE/SUBACK;
//! 2. publish from `start_ns` to `measure_end_ns` (warm-up, then the measured window),
//!    at a fixed rate (open loop), as fast as an end-to-end window allows (max rate, closed
//!    loop) or as fast as the socket accepts (flood: open loop, unthrottled);
//! 3. drain: until every expected message arrived, nothing arrived for `quiet_ms`, or
//!    `drain_end_ns`; then DISCONNECT and close. A part without publishers (a worker process
//!    holding only subscribers) cannot know what was sent: it ends once the window is over
//!    and nothing arrived for `quiet_ms`.
//!
//! Deferred subscribers (the retained scenario) SUBSCRIBE only once every publisher is done.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::track::{histogram_add_pairs, histogram_to_pairs, new_histogram, Pair};

mod conn;
mod link;
mod publisher;
mod reactor;
mod subscriber;

use reactor::Reactor;

/// What one connection does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Role {
    /// Publishes to `topic` (or `topic/{seq}` when `topic_per_message`).
    Publisher {
        /// Unique in the run, `0..publishers_total`.
        id: u32,
        /// Topic name.
        topic: String,
        /// RETAIN flag.
        retain: bool,
        /// Publish message `seq` to `{topic}/{seq}` (the retained scenario).
        topic_per_message: bool,
    },
    /// Subscribes to `filter`.
    Subscriber {
        /// Delivery group (see [`crate::track`]).
        group: u32,
        /// Topic filter, possibly `$share/...`.
        filter: String,
        /// SUBSCRIBE only once every publisher is done.
        deferred: bool,
    },
    /// Connects and stays idle (the connection scenario).
    Idle,
}

/// One connection to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSpec {
    /// MQTT client identifier, unique in the run.
    pub client_id: String,
    /// Source address to bind before connecting (a 127.0.0.x), or the kernel's choice.
    pub source_ip: Option<Ipv4Addr>,
    /// What the connection does.
    pub role: Role,
}

/// Everything a load part needs; serialised to worker processes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Broker address.
    pub broker: SocketAddr,
    /// Where subscribers connect instead (the remote end of a bridge), if elsewhere.
    #[serde(default)]
    pub subscriber_broker: Option<SocketAddr>,
    /// Subscribers spread over these instead, by delivery group, round robin (a cluster's
    /// nodes); empty: not spread.
    #[serde(default)]
    pub subscriber_brokers: Vec<SocketAddr>,
    /// How the connections reach the broker (TCP, TLS, WebSocket, WebSocket over TLS).
    #[serde(default)]
    pub transport: crate::transport::ClientTransport,
    /// MQTT protocol level: 3, 4 (3.1.1) or 5.
    pub mqtt_version: u8,
    /// QoS of PUBLISH and SUBSCRIBE.
    pub qos: u8,
    /// Payload size, at least [`crate::payload::HEADER_BYTES`].
    pub payload_bytes: usize,
    /// Messages per second per publisher; 0 means max rate (or flood).
    pub rate_per_publisher: f64,
    /// Flood: with `rate_per_publisher` 0, no end-to-end window either: publishers write as
    /// fast as the socket accepts (open loop, unthrottled).
    #[serde(default)]
    pub flood: bool,
    /// At most this many messages per publisher.
    pub messages_per_publisher: u64,
    /// Max rate only: messages per publisher sent but not yet received by the subscribers
    /// (averaged over the groups that should receive them).
    pub window_messages: u64,
    /// QoS 1/2: unacknowledged PUBLISHes per publisher.
    pub inflight_max: u32,
    /// Groups each publisher's messages should reach.
    pub groups_per_publisher: u64,
    /// Publishers in the whole run (ids are `0..publishers_total`).
    pub publishers_total: u32,
    /// CONNECT keep alive.
    pub keep_alive_secs: u16,
    /// Connections per thread in the TCP or MQTT handshake at once.
    pub connect_concurrency: usize,
    /// Whether the broker owes per-publisher order (false for retained messages).
    pub ordered: bool,
    /// Drain ends after this long without any new message.
    pub quiet_ms: u64,
    /// Reactor threads.
    pub threads: usize,
    /// CPUs to pin the reactor threads to (round robin); empty: no pinning.
    pub harness_cpus: Vec<usize>,
    /// The connections.
    pub conns: Vec<ConnSpec>,
}

/// When things happen, in ns of `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Schedule {
    /// Publishing starts (warm-up).
    pub start_ns: u64,
    /// The measured window starts.
    pub measure_start_ns: u64,
    /// The measured window ends and publishers stop.
    pub measure_end_ns: u64,
    /// Hard end of the drain.
    pub drain_end_ns: u64,
}

/// Shared between the coordinator and the reactor threads of one process (or mirrored from
/// a worker's progress lines). Counters are updated in batches, once per reactor turn.
#[derive(Debug, Default)]
pub struct Control {
    /// Set once by the coordinator when every part is set up.
    pub schedule: OnceLock<Schedule>,
    /// Stop now (an error elsewhere).
    pub abort: AtomicBool,
    /// Connections through CONNACK (and SUBACK unless deferred).
    pub connected: AtomicU64,
    /// Connections that failed.
    pub failed: AtomicU64,
    /// Threads whose every connection is connected or failed.
    pub setup_threads_done: AtomicUsize,
    /// PUBLISHes written.
    pub sent: AtomicU64,
    /// PUBLISHes received.
    pub received: AtomicU64,
    /// PUBLISHes received that were new to their (publisher, subscriber) stream.
    pub received_new: AtomicU64,
    /// Publishers done (stopped, acknowledged, and for QoS 0 answered a PINGREQ).
    pub publishers_done: AtomicU64,
    /// Final message counts of the publishers that are done.
    pub sent_final: AtomicU64,
    /// Receipts per publisher id (the max-rate window).
    pub delivered_by_publisher: Vec<AtomicU64>,
    /// When the first deferred SUBSCRIBE was written (0: not yet).
    pub deferred_subscribe_ns: AtomicU64,
    /// Last time anything was received or a deferred SUBSCRIBE was sent.
    pub last_progress_ns: AtomicU64,
    /// Threads that finished.
    pub finished_threads: AtomicUsize,
}

impl Control {
    /// A control block for `publishers_total` publishers.
    pub fn new(publishers_total: u32) -> Control {
        Control {
            delivered_by_publisher: (0..publishers_total).map(|_| AtomicU64::new(0)).collect(),
            ..Control::default()
        }
    }
}

/// What a part (a set of threads in one process) measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartResult {
    /// Connections through the handshake.
    pub connected: u64,
    /// Connections that failed.
    pub failed: u64,
    /// The first few errors.
    pub errors: Vec<String>,
    /// First connect attempt, ns.
    pub setup_first_ns: u64,
    /// Last connection ready, ns.
    pub setup_last_ns: u64,
    /// (publisher id, messages sent).
    pub sent_by_publisher: Vec<(u32, u64)>,
    /// Every (publisher, subscriber) stream.
    pub pairs: Vec<Pair>,
    /// Latency histogram (ns) as (value, count).
    pub latency_ns: Vec<(u64, u64)>,
    /// First receipt, ns (0: none).
    pub first_receipt_ns: u64,
    /// Last receipt, ns.
    pub last_receipt_ns: u64,
    /// Max rate: times a stalled window was written off (messages presumed lost).
    pub window_write_offs: u64,
    /// Fixed rate: worst delay of a send behind its schedule, in the measured window, ns.
    pub publish_lag_ns_max: u64,
    /// Connections the broker closed during the run.
    pub closed_by_broker: u64,
    /// This process's CPU time in the measured window, µs (filled by the part's owner).
    pub cpu_us_window: u64,
    /// Reactor threads.
    pub threads: usize,
}

impl PartResult {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: PartResult) {
        let min_nz = |a: u64, b: u64| match (a, b) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.connected += other.connected;
        self.failed += other.failed;
        self.errors.extend(other.errors);
        self.errors.truncate(8);
        self.setup_first_ns = min_nz(self.setup_first_ns, other.setup_first_ns);
        self.setup_last_ns = self.setup_last_ns.max(other.setup_last_ns);
        self.sent_by_publisher.extend(other.sent_by_publisher);
        self.pairs.extend(other.pairs);
        let mut h = new_histogram();
        histogram_add_pairs(&mut h, &self.latency_ns);
        histogram_add_pairs(&mut h, &other.latency_ns);
        self.latency_ns = histogram_to_pairs(&h);
        self.first_receipt_ns = min_nz(self.first_receipt_ns, other.first_receipt_ns);
        self.last_receipt_ns = self.last_receipt_ns.max(other.last_receipt_ns);
        self.window_write_offs += other.window_write_offs;
        self.publish_lag_ns_max = self.publish_lag_ns_max.max(other.publish_lag_ns_max);
        self.closed_by_broker += other.closed_by_broker;
        self.cpu_us_window += other.cpu_us_window;
        self.threads += other.threads;
    }
}

/// A running part: reactor threads in this process.
#[derive(Debug)]
pub struct Part {
    /// The shared control block.
    pub ctl: Arc<Control>,
    threads: Vec<JoinHandle<Result<PartResult>>>,
}

impl Part {
    /// Starts `spec.threads` reactor threads over `spec.conns`.
    pub fn start(spec: LoadSpec) -> Result<Part> {
        let spec = Arc::new(spec);
        let ctl = Arc::new(Control::new(spec.publishers_total));
        let threads = spec.threads.max(1);
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let mine: Vec<usize> = (t..spec.conns.len()).step_by(threads).collect();
            let (spec, ctl) = (Arc::clone(&spec), Arc::clone(&ctl));
            let cpu = (!spec.harness_cpus.is_empty())
                .then(|| spec.harness_cpus[t % spec.harness_cpus.len()]);
            let h = std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    if let Some(id) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    let r = Reactor::new(&spec, &ctl, mine).and_then(|mut r| r.run());
                    if r.is_err() {
                        ctl.abort.store(true, Relaxed);
                    }
                    ctl.finished_threads.fetch_add(1, Relaxed);
                    r
                })
                .context("spawning a load thread")?;
            handles.push(h);
        }
        Ok(Part { ctl, threads: handles })
    }

    /// Number of reactor threads.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Waits for every thread and merges their results.
    pub fn join(self) -> Result<PartResult> {
        let mut out = PartResult::default();
        let mut first_err = None;
        for h in self.threads {
            match h.join() {
                Ok(Ok(r)) => out.merge(r),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow!("a load thread panicked"))),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::monotonic_ns;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A "broker" that answers CONNECT with CONNACK and then reads and discards everything:
    /// nothing is ever delivered, so a closed-loop publisher stalls at its window.
    fn sink_broker() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
        addr
    }

    /// Messages one publisher sends in 300 ms to a broker that delivers nothing.
    fn sent_in_300ms(flood: bool) -> u64 {
        let spec = LoadSpec {
            broker: sink_broker(),
            subscriber_broker: None,
            subscriber_brokers: Vec::new(),
            transport: Default::default(),
            mqtt_version: 4,
            qos: 0,
            payload_bytes: 64,
            rate_per_publisher: 0.0,
            flood,
            messages_per_publisher: 10_000_000,
            window_messages: 8,
            inflight_max: 64,
            groups_per_publisher: 1,
            publishers_total: 1,
            keep_alive_secs: 60,
            connect_concurrency: 1,
            ordered: true,
            quiet_ms: 100,
            threads: 1,
            harness_cpus: Vec::new(),
            conns: vec![ConnSpec {
                client_id: "p".into(),
                source_ip: None,
                role: Role::Publisher {
                    id: 0,
                    topic: "t".into(),
                    retain: false,
                    topic_per_message: false,
                },
            }],
        };
        let part = Part::start(spec).unwrap();
        while part.ctl.setup_threads_done.load(Relaxed) < 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let start_ns = monotonic_ns();
        let end_ns = start_ns + 300_000_000;
        let _ = part.ctl.schedule.set(Schedule {
            start_ns,
            measure_start_ns: start_ns,
            measure_end_ns: end_ns,
            drain_end_ns: end_ns + 100_000_000,
        });
        let r = part.join().unwrap();
        assert_eq!(r.connected, 1, "{:?}", r.errors);
        r.sent_by_publisher.iter().map(|&(_, n)| n).sum()
    }

    #[test]
    fn max_rate_waits_for_its_window_and_flood_does_not() {
        // Closed loop: the window (8) and nothing more, since nothing is received and the
        // window is written off only after a second.
        assert_eq!(sent_in_300ms(false), 8);
        // Open loop: as fast as the socket takes, far past any window.
        let flood = sent_in_300ms(true);
        assert!(flood > 1000, "flood sent only {flood}");
    }
}
