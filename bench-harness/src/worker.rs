//! Worker processes: the harness re-executes itself (`shardmq-bench worker`) to hold more
//! connections than one process may have files open (20,000 here).
//!
//! The protocol is JSON lines. Parent → worker stdin: a [`LoadSpec`], then later a
//! [`Schedule`]. Worker → parent stdout: [`WorkerMsg::Progress`] every 200 ms, then one
//! [`WorkerMsg::Result`]. A worker whose stdin closes early aborts its part and exits.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::load::{Control, LoadSpec, Part, PartResult, Schedule};
use crate::sys::{monotonic_ns, self_cpu_us};

/// A line from a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Counters so far.
    Progress {
        /// Connections through the handshake.
        connected: u64,
        /// Connections that failed.
        failed: u64,
        /// Threads done with setup.
        setup_threads_done: usize,
        /// PUBLISHes written.
        sent: u64,
        /// PUBLISHes received.
        received: u64,
    },
    /// The part's result.
    Result(Box<PartResult>),
    /// The part failed.
    Error(String),
}

/// Runs the worker side: reads the spec from stdin, runs, reports on stdout.
pub fn run_worker() -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let spec_line = lines.next().context("worker: no spec on stdin")??;
    let spec: LoadSpec = serde_json::from_str(&spec_line).context("worker: bad spec")?;
    let part = Part::start(spec)?;
    let ctl = Arc::clone(&part.ctl);

    // Progress reporter.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let reporter = {
        let ctl = Arc::clone(&ctl);
        std::thread::spawn(move || loop {
            emit(&progress(&ctl));
            if stop_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return;
            }
        })
    };

    // The schedule (or EOF: the parent gave up).
    let schedule: Schedule = match lines.next() {
        Some(Ok(line)) => serde_json::from_str(&line).context("worker: bad schedule")?,
        _ => {
            ctl.abort.store(true, Relaxed);
            let _ = part.join();
            bail!("worker: stdin closed before the schedule");
        }
    };
    let _ = ctl.schedule.set(schedule);
    sleep_until(schedule.measure_start_ns, &ctl);
    let cpu0 = self_cpu_us();
    sleep_until(schedule.measure_end_ns, &ctl);
    let cpu1 = self_cpu_us();
    let result = part.join();
    let _ = stop_tx.send(());
    let _ = reporter.join();
    match result {
        Ok(mut r) => {
            r.cpu_us_window = cpu1.saturating_sub(cpu0);
            emit(&WorkerMsg::Result(Box::new(r)));
        }
        Err(e) => emit(&WorkerMsg::Error(format!("{e:#}"))),
    }
    Ok(())
}

fn progress(ctl: &Control) -> WorkerMsg {
    WorkerMsg::Progress {
        connected: ctl.connected.load(Relaxed),
        failed: ctl.failed.load(Relaxed),
        setup_threads_done: ctl.setup_threads_done.load(Relaxed),
        sent: ctl.sent.load(Relaxed),
        received: ctl.received.load(Relaxed),
    }
}

fn emit(msg: &WorkerMsg) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(msg) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Sleeps until `ns` or until every thread of the part finished.
pub fn sleep_until(ns: u64, ctl: &Control) {
    loop {
        let now = monotonic_ns();
        if now >= ns || ctl.abort.load(Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_nanos((ns - now).min(5_000_000)));
    }
}

/// The parent's handle on one worker process. Its [`Control`] mirrors the worker's counters.
#[derive(Debug)]
pub struct RemotePart {
    /// Mirror of the worker's counters.
    pub ctl: Arc<Control>,
    /// Reactor threads in the worker.
    pub threads: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    result: mpsc::Receiver<Result<PartResult>>,
}

impl RemotePart {
    /// Starts `current_exe worker` and sends it `spec`.
    pub fn start(spec: &LoadSpec) -> Result<RemotePart> {
        let exe = std::env::current_exe().context("locating the harness executable")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
        stdin.flush()?;
        let ctl = Arc::new(Control::new(0));
        let (tx, rx) = mpsc::channel();
        let mirror = Arc::clone(&ctl);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(WorkerMsg::Progress {
                        connected,
                        failed,
                        setup_threads_done,
                        sent,
                        received,
                    }) => {
                        mirror.connected.store(connected, Relaxed);
                        mirror.failed.store(failed, Relaxed);
                        mirror.setup_threads_done.store(setup_threads_done, Relaxed);
                        mirror.sent.store(sent, Relaxed);
                        mirror.received.store(received, Relaxed);
                    }
                    Ok(WorkerMsg::Result(r)) => {
                        sent = true;
                        let _ = tx.send(Ok(*r));
                    }
                    Ok(WorkerMsg::Error(e)) => {
                        sent = true;
                        let _ = tx.send(Err(anyhow!("worker: {e}")));
                    }
                    Err(e) => {
                        sent = true;
                        let _ = tx.send(Err(anyhow!("worker: unreadable line {line:?}: {e}")));
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(anyhow!("worker exited without a result")));
            }
            mirror.finished_threads.fetch_add(1, Relaxed);
        });
        Ok(RemotePart { ctl, threads: spec.threads.max(1), child, stdin: Some(stdin), result: rx })
    }

    /// Sends the schedule.
    pub fn set_schedule(&mut self, s: &Schedule) -> Result<()> {
        let _ = self.ctl.schedule.set(*s);
        let stdin = self.stdin.as_mut().context("worker stdin closed")?;
        writeln!(stdin, "{}", serde_json::to_string(s)?)?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the result (at most `timeout`).
    pub fn join(mut self, timeout: Duration) -> Result<PartResult> {
        let r =
            self.result.recv_timeout(timeout).unwrap_or_else(|_| Err(anyhow!("worker timed out")));
        self.stdin.take();
        if r.is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        r
    }
}

impl Drop for RemotePart {
    fn drop(&mut self) {
        // Closing stdin makes a waiting worker abort; a worker still running is killed.
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}
