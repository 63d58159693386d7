//! Starting, pinning, measuring and stopping the brokers under test.
//!
//! Every broker is started on a free loopback port with the same CPU set (`taskset -c`), and
//! measured from outside: CPU time from `/proc/PID/stat` (utime + stime), memory from
//! `/proc/PID/status` (VmRSS, and VmHWM for the peak). A broker that is already running (`--broker-addr`) is measured
//! only if its pid is given.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bins::{find_in_path, workspace_target};
use crate::sys;
use crate::transport::{self as tp, ClientTransport, Transport};

pub use crate::bins::{find_mosquitto, find_rumqttd, find_shardmq};
use crate::durability::shardmq_durability_args;
pub use crate::durability::{BrokerSpec, BATCH_MS_DEFAULT, MOSQUITTO_AUTOSAVE_SECS};

/// The brokers the harness knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// `target/{release,debug}/shardmq`.
    Shardmq,
    /// Mosquitto from Debian's packages.
    Mosquitto,
    /// rumqttd from crates.io (see `scripts/install-peers.sh`).
    Rumqttd,
}

impl BrokerKind {
    /// Parses a broker name.
    pub fn parse(s: &str) -> Result<BrokerKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shardmq" => Ok(BrokerKind::Shardmq),
            "mosquitto" => Ok(BrokerKind::Mosquitto),
            "rumqttd" => Ok(BrokerKind::Rumqttd),
            other => bail!("unknown broker {other:?} (shardmq, mosquitto, rumqttd)"),
        }
    }

    /// The broker's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Shardmq => "shardmq",
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Rumqttd => "rumqttd",
        }
    }
}

/// Where the binaries are and how to run them.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// CPU list for every broker (`taskset -c`); empty: not pinned.
    pub cpus: String,
    /// Explicit shardmq binary.
    pub shardmq_bin: Option<PathBuf>,
    /// Explicit mosquitto binary.
    pub mosquitto_bin: Option<PathBuf>,
    /// Explicit rumqttd binary.
    pub rumqttd_bin: Option<PathBuf>,
    /// shardmq's durability mode: `sync`, `batch:<ms>`, `none` (passed as `--durability`, with
    /// a fresh `--data-dir` per run) or `in-memory` (`--in-memory`). Unset: `sync`, the
    /// broker's default, stated as such. A build without the log ignores an unset mode.
    pub shardmq_durability: Option<String>,
    /// shardmq `[limits]` keys written to a TOML file passed with `--config`.
    pub shardmq_limits: Vec<(String, u64)>,
    /// Mosquitto with `persistence true` (a snapshot every `autosave_interval`, 1800 s, and
    /// at a clean exit) instead of `persistence false`.
    pub mosquitto_persistence: bool,
    /// Extra arguments for shardmq.
    pub shardmq_args: Vec<String>,
    /// MQTT protocol level the run uses (rumqttd has one listener per version).
    pub mqtt_version: u8,
    /// Messages a subscriber may have queued in the broker (Mosquitto's max_queued_messages).
    pub queued_messages_max: u64,
    /// Connections the broker must accept.
    pub connections_max: u64,
    /// How long start-up (recovery included) may take; 0: 15 s.
    pub start_timeout_secs: u64,
    /// A bridge to this broker (its address) forwarding `shardmq-bench/#` out at this QoS
    /// (shardmq: a `[[bridge]]` table; Mosquitto: a `connection`); rumqttd has none.
    pub bridge_to: Option<(SocketAddr, u8)>,
    /// The transport the broker's listener serves (TLS ones with the run's test CA).
    pub transport: Transport,
}

impl BrokerOptions {
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(if self.start_timeout_secs == 0 { 15 } else { self.start_timeout_secs })
    }
}

/// A broker under test: started by the harness, or already running.
#[derive(Debug)]
pub struct Broker {
    /// Name in reports.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its pid when known (CPU and RSS are measured only then).
    pub pid: Option<u32>,
    /// Durability mode as reported.
    pub durability: String,
    /// The command line that started it.
    pub command: String,
    /// Where subscribers connect when not here (the remote end of a bridge).
    pub subscribers_at: Option<SocketAddr>,
    /// Subscribers spread round robin over these instead (the nodes of a cluster).
    pub subscribers_spread: Vec<SocketAddr>,
    /// Other processes measured with this one (a cluster's other nodes): CPU and RSS add up.
    pub extra_pids: Vec<u32>,
    /// How clients reach it: its listener's transport (and the CA to trust).
    pub client: ClientTransport,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

/// A free TCP port on 127.0.0.1 (bound and released; the broker binds it right after).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Where brokers' run directories (logs, configuration, data) go: `SHARDMQ_BENCH_TMPDIR`, else
/// `target/bench-tmp` of the workspace when it exists, else the system temp dir. Not `/tmp` by
/// default: it may be tmpfs, where `O_DIRECT` fails and an fsync costs nothing.
pub fn run_dir_base() -> PathBuf {
    if let Some(d) = std::env::var_os("SHARDMQ_BENCH_TMPDIR") {
        return PathBuf::from(d);
    }
    let target = workspace_target();
    if target.is_dir() {
        return target.join("bench-tmp");
    }
    std::env::temp_dir()
}

fn temp_dir(name: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = run_dir_base().join(format!(
        "shardmq-bench-{}-{}-{}",
        std::process::id(),
        name,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn pinned(cpus: &str, program: &Path) -> Command {
    if !cpus.is_empty() && find_in_path("taskset").is_some() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpus).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn command_line(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

impl Broker {
    /// A broker that is already running at `addr` (its pid, if given, for CPU and RSS).
    pub fn external(addr: SocketAddr, pid: Option<u32>) -> Broker {
        Broker {
            name: "external".into(),
            addr,
            pid,
            durability: "unknown".into(),
            command: String::new(),
            subscribers_at: None,
            subscribers_spread: Vec::new(),
            extra_pids: Vec::new(),
            client: ClientTransport::default(),
            child: None,
            dir: None,
        }
    }

    /// Starts `kind` pinned to `opts.cpus` in a fresh run directory and waits until it
    /// accepts connections.
    pub fn start(kind: BrokerKind, opts: &BrokerOptions) -> Result<Broker> {
        Broker::start_in(kind, opts, temp_dir(kind.name())?)
    }

    /// Starts `kind` in run directory `dir` (its data directory is `dir/data`).
    fn start_in(kind: BrokerKind, opts: &BrokerOptions, dir: PathBuf) -> Result<Broker> {
        match kind {
            BrokerKind::Shardmq => Broker::start_shardmq(opts, dir),
            BrokerKind::Mosquitto => Broker::start_mosquitto(opts, dir),
            BrokerKind::Rumqttd => Broker::start_rumqttd(opts, dir),
        }
    }

    /// Stops the broker (SIGKILL when `kill`, else SIGTERM and a wait for its exit) and starts
    /// it again on the same run and data directory, on a new port. Returns when it accepts
    /// connections.
    pub fn restart(&mut self, kind: BrokerKind, opts: &BrokerOptions, kill: bool) -> Result<()> {
        self.halt(kill)?;
        let dir = self.dir.take().ok_or_else(|| anyhow!("{} was not started here", self.name))?;
        let name = std::mem::take(&mut self.name);
        *self = Broker::start_in(kind, opts, dir)?;
        self.name = name;
        Ok(())
    }

    /// Stops the process and keeps the run directory: SIGKILL when `kill`, else SIGTERM and a
    /// wait of up to 120 s for a clean exit (Mosquitto writes its database then).
    pub fn halt(&mut self, kill: bool) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, if kill { Signal::SIGKILL } else { Signal::SIGTERM });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                if !kill && !status.success() {
                    bail!("{} exited with {status} on SIGTERM{}", self.name, self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within 120 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The broker's data directory (persistent state), when started here.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("data"))
    }

    fn start_shardmq(opts: &BrokerOptions, dir: PathBuf) -> Result<Broker> {
        let bin = find_shardmq(opts.shardmq_bin.as_deref()).ok_or_else(|| {
            anyhow!("no shardmq binary (build it: cargo build --release -p shardmq-engine)")
        })?;
        let port = free_port()?;
        let cpus = sys::parse_cpu_list(&opts.cpus).map_err(|e| anyhow!(e))?;
        let mut cmd = pinned(&opts.cpus, &bin);
        let client = tp::listener_args(opts.transport, port, &dir, &mut cmd)?;
        if cpus.is_empty() {
            cmd.arg("--no-pin");
        } else {
            cmd.arg("--shards").arg(cpus.len().to_string()).arg("--cpus").arg(&opts.cpus);
        }
        let durability = shardmq_durability_args(&bin, opts, &dir, &mut cmd)?;
        if !opts.shardmq_limits.is_empty() || opts.bridge_to.is_some() {
            let mut toml = String::from("[limits]\n");
            for (k, v) in &opts.shardmq_limits {
                toml.push_str(&format!("{k} = {v}\n"));
            }
            if let Some((to, qos)) = opts.bridge_to {
                toml.push_str(&format!(
                    "[[bridge]]\nname = \"bench\"\naddress = \"mqtt://{to}\"\n\
                     topics = [\"shardmq-bench/# out {qos}\"]\nreconnect_min_secs = 1\n\
                     inflight_max = 1000\n"
                ));
            }
            let conf = dir.join("shardmq.toml");
            fs::write(&conf, toml)?;
            cmd.arg("--config").arg(conf);
        }
        cmd.args(&opts.shardmq_args);
        cmd.current_dir(&dir);
        let command = command_line(&cmd);
        let log = fs::File::create(dir.join("stderr.log"))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().with_context(|| format!("starting {command}"))?;
        // Read stdout for the "listening on ADDR" line; keep draining it afterwards so the
        // broker never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let log_path = dir.join("stdout.log");
        std::thread::spawn(move || {
            let mut out = fs::File::create(log_path).ok();
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(out) = out.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(out, "{line}");
                }
                // A prefix match: `http listening on` (an --http listener) is not MQTT's.
                if let Some(rest) = line.strip_prefix("listening on ") {
                    if let (Some(a), Some(tx)) = (tp::listening_addr(rest), tx.take()) {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let mut b = Broker {
            name: "shardmq".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: Some(child.id()),
            durability,
            command,
            subscribers_at: None,
            subscribers_spread: Vec::new(),
            extra_pids: Vec::new(),
            client,
            child: Some(child),
            dir: Some(dir),
        };
        let start_timeout = opts.start_timeout();
        let deadline = Instant::now() + start_timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    b.addr = addr;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: still fine if the port answers.
                    if b.wait_port(Duration::from_millis(200)).is_ok() {
                        break;
                    }
                }
            }
            b.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "shardmq did not print 'listening on ADDR' within {start_timeout:?}{}",
                    b.log_tail()
                );
            }
        }
        b.wait_port(opts.start_timeout())?;
        Ok(b)
    }

    fn start_mosquitto(opts: &BrokerOptions, dir: PathBuf) -> Result<Broker> {
        let bin = find_mosquitto(opts.mosquitto_bin.as_deref())
            .ok_or_else(|| anyhow!("no mosquitto binary (run scripts/install-peers.sh)"))?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        let (persistence, durability) = if opts.mosquitto_persistence {
            let data = dir.join("data");
            fs::create_dir_all(&data)?;
            // Started as root, Mosquitto switches to user `mosquitto`, which may not write
            // in our run directory: stay root then.
            let user = if nix::unistd::geteuid().is_root() { "user root\n" } else { "" };
            (
                format!(
                    "persistence true\npersistence_location {}/\nautosave_interval {}\n{user}",
                    data.display(),
                    MOSQUITTO_AUTOSAVE_SECS
                ),
                format!(
                    "snapshot every {MOSQUITTO_AUTOSAVE_SECS} s and at exit (persistence true)"
                ),
            )
        } else {
            ("persistence false\n".to_string(), "none (persistence false)".to_string())
        };
        // A benchmark configuration: anonymous, queues deep enough that a fast burst is not
        // dropped, Nagle off like the other brokers; in memory unless persistence is asked for.
        let (listener, client) = tp::mosquitto_listener(opts.transport, port, &dir)?;
        let text = format!(
            "{listener}\
             allow_anonymous true\n\
             {persistence}\
             max_queued_messages {queued}\n\
             max_queued_bytes 0\n\
             max_inflight_messages 1000\n\
             max_connections -1\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n",
            queued = opts.queued_messages_max.max(1000),
        );
        let mut text = text;
        if let Some((to, qos)) = opts.bridge_to {
            // The same bridge as shardmq's: persistent at the remote, the bridge bit, out only.
            text.push_str(&format!(
                "connection bench\naddress {to}\ntopic shardmq-bench/# out {qos}\n\
                 cleansession false\ntry_private true\nrestart_timeout 1 2\n"
            ));
        }
        fs::write(&conf, text)?;
        let mut cmd = pinned(&opts.cpus, &bin);
        cmd.arg("-c").arg(&conf);
        let mut b = Broker::spawn("mosquitto", cmd, dir, &durability, port)?;
        b.client = client;
        b.wait_port(opts.start_timeout())?;
        Ok(b)
    }

    fn start_rumqttd(opts: &BrokerOptions, dir: PathBuf) -> Result<Broker> {
        let bin = find_rumqttd(opts.rumqttd_bin.as_deref())
            .ok_or_else(|| anyhow!("no rumqttd binary (run scripts/install-peers.sh)"))?;
        let (p4, p5) = (free_port()?, free_port()?);
        let conf = dir.join("rumqttd.toml");
        let conns = opts.connections_max.max(1000) + 100;
        // Generous limits so that the broker, not its configuration, is measured:
        // no accept delay, large segments, wide inflight windows, 1 MiB payloads.
        let (tls, client) = tp::rumqttd_tls(opts.transport, &dir)?;
        // WebSocket: the listener of the run's protocol level is a `[ws.1]` one.
        let listener = |section: &str, name: &str, port: u16| {
            let section =
                if opts.transport.ws() && name.starts_with("v4") { "ws" } else { section };
            format!(
                "[{section}.1]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n{tls}\
                 next_connection_delay_ms = 0\n\
                 [{section}.1.connections]\nconnection_timeout_ms = 60000\n\
                 max_payload_size = 1048576\nmax_inflight_count = 1000\ndynamic_filters = true\n\n"
            )
        };
        let text = format!(
            "id = 0\n\n[router]\nid = 0\nmax_connections = {conns}\n\
             max_outgoing_packet_count = 1000\nmax_segment_size = 104857600\n\
             max_segment_count = 10\n\n{}{}",
            listener("v4", "v4-1", p4),
            listener("v5", "v5-1", p5),
        );
        fs::write(&conf, text)?;
        let mut cmd = pinned(&opts.cpus, &bin);
        cmd.arg("-c").arg(&conf);
        cmd.env("RUST_LOG", "error");
        let port = if opts.mqtt_version == 5 { p5 } else { p4 };
        let mut b = Broker::spawn("rumqttd", cmd, dir, "none (in memory)", port)?;
        b.client = client;
        b.wait_port(opts.start_timeout())?;
        Ok(b)
    }

    fn spawn(
        name: &str,
        mut cmd: Command,
        dir: PathBuf,
        durability: &str,
        port: u16,
    ) -> Result<Broker> {
        let command = command_line(&cmd);
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout.log"))?)
            .stderr(fs::File::create(dir.join("stderr.log"))?);
        let child = cmd.spawn().with_context(|| format!("starting {command}"))?;
        Ok(Broker {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: Some(child.id()),
            durability: durability.into(),
            command,
            subscribers_at: None,
            subscribers_spread: Vec::new(),
            extra_pids: Vec::new(),
            client: ClientTransport::default(),
            child: Some(child),
            dir: Some(dir),
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{} exited during start-up ({status}){}", self.name, self.log_tail());
            }
        }
        Ok(())
    }

    /// Waits until the broker accepts a TCP connection.
    fn wait_port(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} does not accept connections on {}{}",
                    self.name,
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the broker's logs, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else { return String::new() };
        let mut out = String::new();
        for f in ["stdout.log", "stderr.log"] {
            let mut text = String::new();
            if let Ok(mut file) = fs::File::open(dir.join(f)) {
                let _ = file.read_to_string(&mut text);
            }
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(10)..] {
                out.push_str("\n  ");
                out.push_str(f);
                out.push_str(": ");
                out.push_str(l);
            }
        }
        out
    }

    /// CPU time so far, µs, of the broker and its `extra_pids` (None when a pid is unknown
    /// or gone).
    pub fn cpu_us(&self) -> Option<u64> {
        self.sum(|p| sys::proc_cpu_us(p).ok())
    }

    /// Resident memory, KiB (with `extra_pids`).
    pub fn rss_kib(&self) -> Option<u64> {
        self.sum(|p| sys::proc_rss_kib(p).ok())
    }

    fn sum(&self, f: impl Fn(u32) -> Option<u64>) -> Option<u64> {
        let mut total = f(self.pid?)?;
        for &p in &self.extra_pids {
            total += f(p)?;
        }
        Some(total)
    }

    /// Highest resident memory since the process started (`VmHWM`), KiB.
    pub fn rss_peak_kib(&self) -> Option<u64> {
        self.sum(|p| sys::proc_status_kib(p, "VmHWM:").ok())
    }

    /// Whether a started broker is still running (an external one is assumed to be).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stops a started broker: SIGTERM, then SIGKILL after 3 s. Removes its temp dir.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("SHARDMQ_BENCH_KEEP_LOGS").is_none() {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
