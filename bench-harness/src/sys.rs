//! The clock and resource usage: `CLOCK_MONOTONIC`, `getrusage`, `/proc/PID/{stat,status}`.
//!
//! Timestamps are nanoseconds of `CLOCK_MONOTONIC`, which is system-wide, so a timestamp taken
//! in one process (a publisher) can be compared with one taken in another (a worker).

use std::fs;
use std::io;

use nix::sys::resource::{getrusage, UsageWho};
use nix::time::{clock_gettime, ClockId};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    // `clock_gettime(CLOCK_MONOTONIC)` cannot fail on Linux with a valid clock id.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// User + system CPU time of this whole process (every thread), in microseconds.
pub fn self_cpu_us() -> u64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t =
                |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0,
    }
}

/// Clock ticks per second, the unit of `utime`/`stime` in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => 100,
    }
}

/// User + system CPU time of process `pid` (all its threads, including exited ones), in
/// microseconds, from fields 14 and 15 of `/proc/PID/stat`. The resolution is one clock tick
/// (usually 10 ms), so measured windows should be seconds long.
pub fn proc_cpu_us(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks * 1_000_000 / clock_ticks_per_sec())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the
    // last ')'. What follows starts at field 3 (state), so utime (14) is index 11.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn proc_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status"))
}

/// A `kB` field of `/proc/PID/status`, e.g. `VmHWM:` (peak RSS), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, field).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("no {field} in /proc/PID/status"))
    })
}

fn parse_status_rss_kib(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmRSS:")
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Time the threads of process `pid` spent runnable but waiting for a CPU so far, ns: the
/// second field of `/proc/PID/task/*/schedstat`, summed (threads that exited are not counted).
/// High when other processes compete for the CPUs a broker or the harness is pinned to.
pub fn proc_run_delay_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += text.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total)
}

/// CPU time used by everything on the machine so far (every CPU; busy = all but idle and
/// iowait), µs, from the first line of `/proc/stat`.
pub fn system_busy_us() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat_busy_ticks(&stat).map(|t| t * 1_000_000 / clock_ticks_per_sec())
}

fn parse_proc_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let busy = v.iter().take(8).sum::<u64>().checked_sub(*v.get(3)? + *v.get(4)?)?;
    Some(busy)
}

/// Raises this process's open-file soft limit to its hard limit (inherited by the brokers and
/// workers it starts); returns the new soft limit.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// This process's open-file soft limit.
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|l| l.0)
        .unwrap_or(1024)
}

/// Number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The CPUs this process may run on (its affinity mask), sorted.
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Writes CPUs as a list with ranges (`0-3,6`), the form `--cpus` and `taskset -c` take.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if end > start { format!("{start}-{end}") } else { start.to_string() });
        i += 1;
    }
    parts.join(",")
}

/// The engine's CPU-list parser (`0,2,4-7`), compiled from its one source file: the harness
/// does not depend on the engine crate.
#[path = "../../engine/src/cpu_list.rs"]
mod cpu_list;

/// Parses a CPU list such as `0`, `0,2` or `0-3,6` (the engine's parser); for the harness an
/// empty list means "none given" and parses to no CPUs.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    cpu_list::parse_cpu_list(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 6]), "0-3,6");
        assert_eq!(format_cpu_list(&[1]), "1");
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(
            parse_cpu_list(&format_cpu_list(&[0, 2, 4, 5, 6])).unwrap(),
            vec![0, 2, 4, 5, 6]
        );
    }

    #[test]
    fn stat_with_spaces_in_comm() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss_kib(status), Some(5120));
        assert_eq!(parse_status_kib(status, "VmPeak:"), Some(100));
    }

    #[test]
    fn proc_stat_busy() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_proc_stat_busy_ticks(stat), Some(161));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(proc_status_kib(pid, "VmHWM:").unwrap() >= proc_rss_kib(pid).unwrap() / 2);
        proc_cpu_us(pid).unwrap();
        assert!(proc_run_delay_ns(pid).is_some());
        assert!(monotonic_ns() > 0);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
    }
}
