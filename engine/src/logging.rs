//! The process's log: `tracing` events to standard error (text or JSON lines), a filter that a
//! reload can change ([`set_level`]), and a bounded in-memory ring of the most recent lines for
//! the admin API (`GET /api/v1/logs`).
//!
//! Process-wide: set up once by the binary ([`init`]); every thread logs through it. The ring
//! takes a mutex for each line written, like standard error's own lock: logging is not on the
//! message path (connection events at `info` are off by default).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// Lines the ring keeps.
pub const RING_LINES_MAX: usize = 1000;
/// Bytes of one line the ring keeps (the rest is cut).
pub const RING_LINE_BYTES_MAX: usize = 2048;

/// glommio logs an error when it probes a device for polled IO and the device says no
/// (virtio disks); it then uses the ordinary ring: harmless, so it is silenced unless the
/// filter names glommio itself.
const QUIET_GLOMMIO: &str = "glommio::reactor=off";

/// One line of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the process's log (1 for the first line), for `?since=`.
    pub seq: u64,
    /// The line as written to standard error, without the newline.
    pub text: String,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring { lines: VecDeque::new(), next_seq: 0 });

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The filter for a `--log-level` value (already checked by the configuration).
pub fn filter_for(level: &str) -> EnvFilter {
    let directives = if level.contains("glommio") {
        level.to_owned()
    } else {
        format!("{level},{QUIET_GLOMMIO}")
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("warn"))
}

/// Installs the process's subscriber. Call once, before anything logs; later calls do
/// nothing.
pub fn init(level: &str, format: LogFormat) {
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter_for(level));
    // Colours only for a person at a terminal, never in files or the journal.
    let ansi = std::io::stderr().is_terminal();
    let text = (format == LogFormat::Text)
        .then(|| fmt::layer().with_ansi(ansi).with_writer(std::io::stderr));
    let json =
        (format == LogFormat::Json).then(|| fmt::layer().json().with_writer(std::io::stderr));
    let ring = fmt::layer().with_ansi(false).with_writer(|| RingWriter(Vec::new()));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(ring)
        .try_init()
        .is_ok();
    if installed {
        let _ = FILTER.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
    }
}

/// Changes the filter (a reload). `Err` when [`init`] was not called (tests that build a
/// broker in-process) or the subscriber is gone.
pub fn set_level(level: &str) -> Result<(), String> {
    match FILTER.get() {
        Some(set) => set(filter_for(level)),
        None => Err("the log filter is not reloadable in this process".into()),
    }
}

/// The ring's lines after `since` (a `seq`), oldest first, at most `limit`.
pub fn recent(since: u64, limit: usize) -> Vec<LogLine> {
    let ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.lines.iter().filter(|l| l.seq > since).take(limit).cloned().collect()
}

fn push_line(text: &str) {
    let mut end = text.len().min(RING_LINE_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.next_seq += 1;
    let seq = ring.next_seq;
    if ring.lines.len() == RING_LINES_MAX {
        ring.lines.pop_front();
    }
    ring.lines.push_back(LogLine { seq, text: text[..end].to_owned() });
}

/// Collects one formatted event (the fmt layer writes each event whole, then drops the
/// writer) and pushes its lines into the ring.
struct RingWriter(Vec<u8>);

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        for line in text.lines().filter(|l| !l.is_empty()) {
            push_line(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_paged_by_seq() {
        let base = RING.lock().unwrap().next_seq;
        for i in 0..RING_LINES_MAX + 5 {
            let mut w = RingWriter(Vec::new());
            writeln!(w, "line {i}").unwrap();
        }
        let all = recent(base, usize::MAX);
        assert!(all.len() <= RING_LINES_MAX);
        assert_eq!(all.last().unwrap().text, format!("line {}", RING_LINES_MAX + 4));
        let after = recent(all[all.len() - 3].seq, 10);
        assert_eq!(after.len(), 2);
        assert_eq!(recent(base, 3).len(), 3);
        let long = "é".repeat(RING_LINE_BYTES_MAX);
        push_line(&long);
        assert!(recent(0, usize::MAX).last().unwrap().text.len() <= RING_LINE_BYTES_MAX);
    }

    #[test]
    fn glommio_probe_errors_stay_quiet() {
        assert!(filter_for("info").to_string().contains(QUIET_GLOMMIO));
        assert!(!filter_for("glommio=debug").to_string().contains(QUIET_GLOMMIO));
    }
}
