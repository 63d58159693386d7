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

mod admin;
pub mod config;
mod link;
mod side;
mod tls;
pub mod topics;
mod ws;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use admin::BridgeAdmin;
pub use config::BridgeConfig;

use crate::core::shard::BridgeCounters;

/// The running bridges of a broker: those of the configuration, and those added or removed
/// at run time (`POST`/`DELETE /api/v1/bridges`). Dropping it stops them.
#[derive(Debug)]
pub struct Bridges {
    /// This broker's plain MQTT listener, which bridges connect to (`None`: no plain
    /// listener, so no bridge can run).
    local: Option<SocketAddr>,
    running: Vec<Running>,
}

/// One running bridge.
#[derive(Debug)]
struct Running {
    cfg: Arc<BridgeConfig>,
    counters: Arc<BridgeCounters>,
    stop: Arc<AtomicBool>,
    /// Dropped to wake the bridge while it waits to reconnect.
    wake: Option<mpsc::Sender<()>>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks the thread to stop: it notices within one poll (250 ms); blocking reads and
    /// writes end at once (its sockets are shut down).
    fn signal_stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake = None;
        for sock in self.sockets.lock().expect("bridge sockets").drain(..) {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a bridge could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// A bridge of that name (or with that local client id) runs already.
    Exists(String),
    /// [`config::BRIDGES_MAX`] bridges run already, or the broker has no plain listener.
    Refused(String),
}

impl Bridges {
    /// Starts every bridge of `configs`, with `counters` (one each, same order); `local` is
    /// this broker's plain MQTT listener.
    pub fn start(
        configs: &[BridgeConfig],
        local: Option<SocketAddr>,
        counters: &[Arc<BridgeCounters>],
    ) -> Bridges {
        let mut out = Bridges { local, running: Vec::new() };
        if let Some(local) = local {
            for (cfg, c) in configs.iter().zip(counters) {
                out.running.push(spawn(Arc::new(cfg.clone()), local, c.clone()));
            }
        }
        out
    }

    /// Starts one more bridge; returns its counters.
    pub fn add(&mut self, cfg: BridgeConfig) -> Result<Arc<BridgeCounters>, AddError> {
        let Some(local) = self.local else {
            return Err(AddError::Refused(
                "this broker has no plain mqtt:// listener for bridges to connect to".into(),
            ));
        };
        if let Some(r) = self
            .running
            .iter()
            .find(|r| r.cfg.name == cfg.name || r.cfg.local_client_id == cfg.local_client_id)
        {
            return Err(AddError::Exists(format!(
                "bridge {:?} runs already (name or local_client_id {:?})",
                r.cfg.name, r.cfg.local_client_id
            )));
        }
        if self.running.len() >= config::BRIDGES_MAX {
            return Err(AddError::Refused(format!("at most {} bridges", config::BRIDGES_MAX)));
        }
        let counters = Arc::new(BridgeCounters {
            name: cfg.name.clone(),
            local_client_id: cfg.local_client_id.clone(),
            ..BridgeCounters::default()
        });
        tracing::info!("bridge {}: added", cfg.name);
        self.running.push(spawn(Arc::new(cfg), local, counters.clone()));
        Ok(counters)
    }

    /// Stops the bridge `name` and forgets it; returns its configuration, and a handle that
    /// waits for its thread (one poll, 250 ms, while relaying; while connecting, up to the
    /// connect timeout, 10 s). Its local session stays, as a persistent session does when its
    /// client leaves.
    pub fn remove(&mut self, name: &str) -> Option<(Arc<BridgeConfig>, impl FnOnce())> {
        let i = self.running.iter().position(|r| r.cfg.name == name)?;
        let mut r = self.running.remove(i);
        r.signal_stop();
        tracing::info!("bridge {name}: removed");
        Some((r.cfg.clone(), move || r.join()))
    }

    /// The running bridges, in the order they were started.
    pub fn list(&self) -> Vec<(Arc<BridgeConfig>, Arc<BridgeCounters>)> {
        self.running.iter().map(|r| (r.cfg.clone(), r.counters.clone())).collect()
    }

    /// Their counters (what `$SYS` reports), same order.
    pub fn counters(&self) -> Vec<Arc<BridgeCounters>> {
        self.running.iter().map(|r| r.counters.clone()).collect()
    }

    /// Stops every bridge and waits for its threads.
    pub fn stop(&mut self) {
        for r in &mut self.running {
            r.signal_stop();
        }
        for r in &mut self.running {
            r.join();
        }
        self.running.clear();
    }
}

impl Drop for Bridges {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(cfg: Arc<BridgeConfig>, local: SocketAddr, counters: Arc<BridgeCounters>) -> Running {
    let sockets = Arc::new(Mutex::new(Vec::new()));
    let (wake, woken) = mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (cfg, counters, stop, sockets) =
            (cfg.clone(), counters.clone(), stop.clone(), sockets.clone());
        std::thread::Builder::new()
            .name(format!("bridge-{}", cfg.name))
            .spawn(move || run(cfg, local, counters, &stop, &sockets, &woken))
            .expect("spawning a bridge thread")
    };
    Running { cfg, counters, stop, wake: Some(wake), sockets, thread: Some(thread) }
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
