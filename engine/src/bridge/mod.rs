//! Bridges to other brokers (`[[bridge]]` tables): each bridge is a thread pair that holds a
//! persistent session at this broker and one at a remote broker, and relays what the topic
//! rules select between them (`link.rs`). See README "Bridges" and ARCHITECTURE "Bridges".
//!
//! The local side is an ordinary MQTT 5.0 client session of this broker, connected over
//! loopback to the first plain `mqtt://` listener: it subscribes through the routing index
//! like any client, lives on the shard its client id hashes to, and its queue of QoS 1/2
//! messages is in that shard's log — bounded by the session limits
//! (`session_queue_messages_max`, `session_queue_full`) like any session's.
//!
//! Not in the shards: each bridge is a plain thread polling its two sockets, outside the
//! thread-per-core executors, because a bridge carries one connection pair, not fan-out.

pub mod config;
mod link;
mod side;
mod tls;
pub mod topics;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::BridgeConfig;

use crate::core::shard::BridgeCounters;

/// The running bridges of a broker. Dropping it stops them.
#[derive(Debug)]
pub struct Bridges {
    stop: Arc<AtomicBool>,
    /// Dropped to wake bridges waiting to reconnect (one per bridge).
    wake: Vec<mpsc::Sender<()>>,
    sockets: Vec<Arc<Mutex<Vec<TcpStream>>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Bridges {
    /// Starts every bridge; `local` is this broker's plain MQTT listener.
    pub fn start(
        configs: &[BridgeConfig],
        local: SocketAddr,
        counters: &[Arc<BridgeCounters>],
    ) -> Bridges {
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = Bridges {
            stop: stop.clone(),
            wake: Vec::new(),
            sockets: Vec::new(),
            threads: Vec::new(),
        };
        for (cfg, c) in configs.iter().zip(counters) {
            let sockets = Arc::new(Mutex::new(Vec::new()));
            out.sockets.push(sockets.clone());
            let (wake, woken) = mpsc::channel::<()>();
            out.wake.push(wake);
            let (cfg, c, stop) = (Arc::new(cfg.clone()), c.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("bridge-{}", cfg.name))
                .spawn(move || run(cfg, local, c, &stop, &sockets, &woken))
                .expect("spawning a bridge thread");
            out.threads.push(t);
        }
        out
    }

    /// Stops every bridge and waits for its threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.clear();
        for s in &self.sockets {
            for sock in s.lock().expect("bridge sockets").drain(..) {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Bridges {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One bridge: connect, relay, and on failure wait (exponential back-off with jitter) and
/// try the next address.
fn run(
    cfg: Arc<BridgeConfig>,
    local: SocketAddr,
    counters: Arc<BridgeCounters>,
    stop: &AtomicBool,
    sockets: &Mutex<Vec<TcpStream>>,
    woken: &mpsc::Receiver<()>,
) {
    let mut delay = cfg.reconnect_min;
    let mut attempt: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let addr = &cfg.addresses[(attempt as usize) % cfg.addresses.len()];
        attempt += 1;
        let started = Instant::now();
        let client_tls = match cfg.tls.as_ref().map(tls::ClientTls::load).transpose() {
            Ok(t) => t,
            Err(e) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("bridge {}: TLS files: {e}", cfg.name);
                None
            }
        };
        let connected = if cfg.tls.is_some() && client_tls.is_none() {
            Err(None)
        } else {
            link::Link::connect(
                cfg.clone(),
                local,
                addr,
                client_tls.as_ref(),
                counters.clone(),
                sockets,
                stop,
            )
            .map_err(Some)
        };
        match connected {
            Ok(l) => {
                tracing::info!("bridge {}: connected to {addr}", cfg.name);
                let why = l.run(stop);
                sockets.lock().expect("bridge sockets").clear();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tracing::warn!("bridge {}: link to {addr} ended: {why}", cfg.name);
                // A link that held for a while starts the back-off again, from the first
                // address (the primary, as Mosquitto's default `round_robin false`).
                if started.elapsed() > cfg.reconnect_max {
                    delay = cfg.reconnect_min;
                    attempt = 0;
                }
            }
            Err(None) => {} // the TLS files, counted and logged above
            Err(Some(e)) => {
                sockets.lock().expect("bridge sockets").clear();
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("bridge {}: {e}", cfg.name);
            }
        }
        let wait = jitter(delay, attempt ^ name_seed(&cfg.name));
        delay = (delay * 2).min(cfg.reconnect_max);
        match woken.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break, // the broker is stopping
        }
    }
}

/// A number from the bridge's name, so bridges failing together do not retry in step.
fn name_seed(name: &str) -> u64 {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `d` ± 25 %, varied per attempt (so that many bridges do not reconnect in step).
fn jitter(d: Duration, attempt: u64) -> Duration {
    let seed = (attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id())) >> 33;
    let permille = 750 + seed % 501; // 750..=1250
    d * u32::try_from(permille).unwrap_or(1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for a in 0..100 {
            let j = jitter(Duration::from_secs(4), a);
            assert!(j >= Duration::from_secs(3) && j <= Duration::from_secs(5), "{j:?}");
        }
    }
}
