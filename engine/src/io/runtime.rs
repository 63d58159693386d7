//! One shard's life: create its executor, join the mesh, bind its listeners (`listen.rs`),
//! run the accept, timer and mesh tasks, and shut down gracefully when the broker-wide stop
//! flag is raised.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{TcpListener, UnixStream};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};

use crate::core::ids::ShardId;
use crate::core::mesh::MeshMsg;
use crate::core::shard::{CoreConfig, ShardCore};

use super::listen::Listener;
use super::mesh::{receive_task, retry_task, MeshIo};
use super::persist;
use super::shard::ShardIo;
use crate::log::file::open_recovered;
use crate::log::LogConfig;

/// The longest the timer task sleeps without asking the core for its next deadline (a
/// safety net: the timer is woken early whenever the core's next deadline moves closer).
const TICK_MAX: Duration = Duration::from_secs(5);
/// How long a shard waits for its connections to flush and close on shutdown.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(3);

/// Everything a shard thread needs to start.
#[derive(Debug)]
pub(crate) struct ShardStart {
    pub(crate) index: u16,
    pub(crate) placement_cpu: Option<usize>,
    pub(crate) io_memory_bytes: usize,
    pub(crate) ring_depth: usize,
    pub(crate) listen: Vec<super::listen::Listener>,
    pub(crate) core_config: CoreConfig,
    pub(crate) mesh: Option<MeshBuilder<MeshMsg, Full>>,
    /// This shard's log (`None` with `--in-memory`).
    pub(crate) log_config: Option<LogConfig>,
    /// This shard's end of a socket pair: EOF on it means "shut down".
    pub(crate) stop: OwnedFd,
    /// This shard's end of the control plane.
    pub(crate) control: super::control::ControlEnd,
    /// The node's cluster runtime (`None` for a single node).
    pub(crate) cluster: Option<super::cluster::ClusterLine>,
    /// Told once the executor exists (or could not be made).
    pub(crate) made: mpsc::Sender<Result<(), String>>,
    /// Told once the shard accepts on every listener (or failed to start).
    pub(crate) ready: mpsc::Sender<Result<u16, String>>,
}

/// The body of shard thread `start.index`.
pub(crate) fn shard_thread(start: ShardStart) -> Result<(), String> {
    let placement = match start.placement_cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let made = LocalExecutorBuilder::new(placement)
        .io_memory(start.io_memory_bytes)
        .ring_depth(start.ring_depth)
        .make();
    let ex = match made {
        Ok(ex) => {
            let _ = start.made.send(Ok(()));
            ex
        }
        Err(e) => {
            let msg = format!("shard {}: cannot create its executor: {e}", start.index);
            let _ = start.made.send(Err(msg.clone()));
            return Err(msg);
        }
    };
    ex.run(shard_main(start))
}

/// Reports a start-up failure if the shard stops before it is ready.
struct ReadyGuard {
    index: u16,
    tx: Option<mpsc::Sender<Result<u16, String>>>,
}

impl ReadyGuard {
    fn done(&mut self, r: Result<u16, String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(r);
        }
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        let index = self.index;
        self.done(Err(format!("shard {index} stopped during start-up")));
    }
}

/// Completes when the broker asks the shards to stop (the other end of `stop` is closed).
async fn stop_requested(stop: &mut UnixStream) {
    let mut byte = [0u8; 1];
    // Any outcome (EOF, a byte, an error) means the broker handle is gone or stopping.
    let _ = stop.read(&mut byte).await;
}

async fn shard_main(start: ShardStart) -> Result<(), String> {
    let index = start.index;
    // SAFETY: `start.stop` is an open socket we own; ownership moves to the stream.
    let mut stop = unsafe { UnixStream::from_raw_fd(start.stop.into_raw_fd()) };
    let mut guard = ReadyGuard { index, tx: Some(start.ready.clone()) };
    let fail = |guard: &mut ReadyGuard, msg: String| {
        guard.done(Err(msg.clone()));
        Err(msg)
    };

    let mut mesh_halves = None;
    if let Some(builder) = start.mesh {
        let joined = future::or(async { Some(builder.join().await) }, async {
            stop_requested(&mut stop).await;
            None
        })
        .await;
        match joined {
            None => return Ok(()),
            Some(Err(e)) => {
                return fail(&mut guard, format!("shard {index}: cannot join the mesh: {e}"))
            }
            Some(Ok((senders, receivers))) => {
                if senders.peer_id() != usize::from(index) {
                    return fail(
                        &mut guard,
                        format!(
                            "shard {index}: mesh position {} differs from the shard index \
                             (executors were not created in order)",
                            senders.peer_id()
                        ),
                    );
                }
                mesh_halves = Some((senders, receivers));
            }
        }
    }

    let mut core = ShardCore::new(ShardId(index), start.core_config);
    let log = match &start.log_config {
        Some(config) => match recover(&mut core, config) {
            Ok(log) => Some(log),
            Err(msg) => return fail(&mut guard, msg),
        },
        None => None,
    };
    let shard = match ShardIo::new(core) {
        Ok(shard) => Rc::new(shard),
        Err(e) => {
            return fail(
                &mut guard,
                format!("shard {index}: cannot create its epoll instance: {e}"),
            )
        }
    };

    // This shard's own TLS server configurations (session cache, ticket keys).
    let mut tls_configs = Vec::with_capacity(start.listen.len());
    for l in &start.listen {
        let index = usize::from(l.index);
        if tls_configs.len() <= index {
            tls_configs.resize(index + 1, None);
        }
        if let Some(material) = &l.tls {
            match material.server_config() {
                Ok(c) => tls_configs[index] = Some(c),
                Err(e) => return fail(&mut guard, format!("{}: {e}", l.addr)),
            }
        }
    }
    *shard.tls_configs.borrow_mut() = tls_configs;
    if let Some(line) = start.cluster {
        shard.cluster.set(line).expect("cluster line set once");
    }
    let mut listeners = Vec::with_capacity(start.listen.len());
    for l in start.listen {
        match super::listen::listener(l.addr) {
            // SAFETY: a bound, listening socket we own; ownership moves to the listener.
            Ok(fd) => listeners.push((unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }, l)),
            Err(e) => return fail(&mut guard, format!("cannot listen on {}: {e}", l.addr)),
        }
    }

    if let Some((senders, receivers)) = mesh_halves {
        let n = senders.nr_consumers();
        let mesh = Rc::new(MeshIo::new(senders));
        shard.mesh.set(mesh.clone()).expect("mesh set once");
        let receivers = Rc::new(receivers);
        for peer in (0..n).filter(|&p| p != usize::from(index)) {
            glommio::spawn_local(receive_task(shard.clone(), receivers.clone(), peer)).detach();
            glommio::spawn_local(retry_task(shard.clone(), mesh.clone(), peer)).detach();
        }
    }
    if let Some(log) = log {
        let log = Rc::new(log);
        shard.log.set(log.clone()).expect("log set once");
        glommio::spawn_local(persist::watcher_task(shard.clone(), log.clone())).detach();
        glommio::spawn_local(persist::compaction_task(shard.clone(), log)).detach();
        // Serve clients only once every other shard has applied this shard's recovered
        // routing entries and retained replicas (a durability round trip behind them).
        shard.with_core(|core, _| core.persist_barrier());
        while !shard.core.borrow().persist_settled() {
            let stopped = future::or(
                async {
                    Timer::new(Duration::from_millis(1)).await;
                    false
                },
                async {
                    stop_requested(&mut stop).await;
                    true
                },
            )
            .await;
            if stopped {
                return Ok(());
            }
        }
    }
    glommio::spawn_local(timer_task(shard.clone())).detach();
    glommio::spawn_local(super::flush::flush_task(shard.clone())).detach();
    glommio::spawn_local(super::idle::idle_task(shard.clone())).detach();
    glommio::spawn_local(super::control::control_task(shard.clone(), start.control)).detach();
    for (socket, l) in listeners {
        glommio::spawn_local(accept_task(shard.clone(), socket, l)).detach();
    }
    guard.done(Ok(index));

    stop_requested(&mut stop).await;

    shard.begin_shutdown();
    let deadline = Instant::now() + SHUTDOWN_DRAIN_MAX;
    while shard.conn_count() > 0 && Instant::now() < deadline {
        Timer::new(Duration::from_millis(10)).await;
    }
    if let Some(log) = shard.log.get() {
        log.close().await;
    }
    Ok(())
}

/// Replays the shard's log and rebuilds its core (blocking reads: nothing is served yet).
fn recover(core: &mut ShardCore, config: &LogConfig) -> Result<persist::LogIo, String> {
    let started = Instant::now();
    core.enable_persistence();
    // One wall-clock reading per shard: the log's times (offline sessions' deadlines, when
    // messages arrived) are this plus the monotonic clock, so a clock step later on does not
    // move them, and recovery subtracts the downtime from expiry intervals.
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    core.set_wall_clock(unix_ms, started);
    let (writer, recovery) = open_recovered(config).map_err(|e| {
        format!(
            "shard {}: cannot recover its log: {e} (--log-skip-damaged skips damage)",
            config.shard
        )
    })?;
    let restored = core.restore_from_log(&recovery.state, Instant::now())?;
    tracing::info!(
        shard = config.shard,
        records = recovery.records,
        bytes = recovery.bytes_read,
        sessions = restored.sessions,
        messages = restored.messages,
        retained = restored.retained,
        ms = started.elapsed().as_millis() as u64,
        "log recovered"
    );
    Ok(persist::LogIo::new(writer, config))
}

/// Accepts connections on one listener until shutdown.
async fn accept_task(shard: Rc<ShardIo>, listener: TcpListener, config: Listener) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        match shard.stop.unless_fired(listener.accept()).await {
            None => return,
            Some(Ok(stream)) => super::greet::spawn_accepted(&shard, stream, &config),
            Some(Err(e)) => {
                // Typically EMFILE/ENFILE: back off briefly rather than spin.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!("{}: accept failed: {e}", shard.id);
                    last_error_log = Some(Instant::now());
                }
                Timer::new(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Calls the core's `handle_tick` whenever its next deadline passes, and expires
/// connections that did not send their first packet in time. Sleeps until the next deadline;
/// [`ShardIo::drain`] wakes it early when a closer deadline appears.
async fn timer_task(shard: Rc<ShardIo>) {
    loop {
        let now = Instant::now();
        let next = shard.core.borrow().next_deadline();
        if next.is_some_and(|d| d <= now) {
            shard.with_core(|core, now| core.handle_tick(now));
        }
        let next_connect = shard.sweep_connect_deadlines(now);
        let now = Instant::now();
        let next = [shard.core.borrow().next_deadline(), next_connect].into_iter().flatten().min();
        let wait = match next {
            Some(d) => d.saturating_duration_since(now).clamp(Duration::from_millis(1), TICK_MAX),
            None => TICK_MAX,
        };
        shard.timer_planned(now + wait);
        let sleep = future::or(Timer::new(wait), async {
            shard.timer_kicked().await;
            now
        });
        if shard.stop.unless_fired(sleep).await.is_none() {
            return;
        }
    }
}
