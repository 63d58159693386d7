//! The running parts of one scenario (load threads in this process, or worker processes
//! for connection counts beyond one process's file limit) and the live progress line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::load::{Control, Part, PartResult, Schedule};
use crate::sys::{monotonic_ns, self_cpu_us};
use crate::worker::RemotePart;

/// A part of the load: threads here or a worker process.
#[derive(Debug)]
pub(crate) enum Handle {
    Local(Part),
    Remote(RemotePart),
}

impl Handle {
    pub(crate) fn ctl(&self) -> &Arc<Control> {
        match self {
            Handle::Local(p) => &p.ctl,
            Handle::Remote(r) => &r.ctl,
        }
    }

    pub(crate) fn threads(&self) -> usize {
        match self {
            Handle::Local(p) => p.thread_count(),
            Handle::Remote(r) => r.threads,
        }
    }

    pub(crate) fn set_schedule(&mut self, s: &Schedule) -> Result<()> {
        match self {
            Handle::Local(p) => {
                let _ = p.ctl.schedule.set(*s);
                Ok(())
            }
            Handle::Remote(r) => r.set_schedule(s),
        }
    }

    pub(crate) fn join(self, timeout: Duration) -> Result<PartResult> {
        match self {
            Handle::Local(p) => p.join(),
            Handle::Remote(r) => r.join(timeout),
        }
    }
}

pub(crate) fn sum(handles: &[Handle], f: impl Fn(&Control) -> u64) -> u64 {
    handles.iter().map(|h| f(h.ctl())).sum()
}

/// The live progress line on stderr.
pub(crate) struct Progress {
    quiet: bool,
    label: String,
    last_print_ns: u64,
    last_received: u64,
    last_ns: u64,
    last_cpu_us: u64,
}

impl Progress {
    pub(crate) fn new(label: String, quiet: bool) -> Progress {
        let now = monotonic_ns();
        Progress {
            quiet,
            label,
            last_print_ns: 0,
            last_received: 0,
            last_ns: now,
            last_cpu_us: self_cpu_us(),
        }
    }

    pub(crate) fn tick(&mut self, phase: &str, handles: &[Handle], total_conns: usize) {
        let now = monotonic_ns();
        if self.quiet || now - self.last_print_ns < 250_000_000 {
            return;
        }
        self.last_print_ns = now;
        let connected = sum(handles, |c| c.connected.load(Relaxed));
        let failed = sum(handles, |c| c.failed.load(Relaxed));
        let sent = sum(handles, |c| c.sent.load(Relaxed));
        let received = sum(handles, |c| c.received.load(Relaxed));
        let cpu = self_cpu_us();
        let dt = (now - self.last_ns).max(1) as f64;
        let rate = (received - self.last_received.min(received)) as f64 * 1e9 / dt;
        let cpu_pct = (cpu - self.last_cpu_us.min(cpu)) as f64 * 1e5 / dt;
        self.last_received = received;
        self.last_ns = now;
        self.last_cpu_us = cpu;
        eprint!(
            "\r\x1b[K{} | {phase} | conns {connected}/{total_conns}{} | sent {sent} | recv {received} ({:.0}/s) | harness cpu {cpu_pct:.0}%",
            self.label,
            if failed > 0 { format!(" ({failed} failed)") } else { String::new() },
            rate,
        );
    }

    pub(crate) fn done(&self) {
        if !self.quiet {
            eprint!("\r\x1b[K");
        }
    }
}
