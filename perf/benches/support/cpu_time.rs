//! A criterion clock that counts the calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! so that other processes on a busy machine (builds, other benches) do not inflate results
//! the way they inflate wall time: the code under test is single-threaded and does no IO, so
//! on an idle machine the two agree. Included by the benches with `#[path]`.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;

/// The calling thread's CPU time, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported by
    // every Linux this runs on; clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanoseconds like criterion's wall-clock formatter does.
struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical_ns: f64,
        t: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iter, binary) = match *t {
            Throughput::Bytes(n) => (n as f64, true),
            Throughput::BytesDecimal(n) => (n as f64, false),
            Throughput::Elements(n) => (n as f64, false),
        };
        // Per-second rate, then a unit for the typical value.
        values.iter_mut().for_each(|v| *v = per_iter * 1e9 / *v);
        let typical = per_iter * 1e9 / typical_ns;
        let is_elems = matches!(t, Throughput::Elements(_));
        let base = if binary { 1024.0 } else { 1000.0 };
        let (div, unit) = match typical {
            x if x < base => (1.0, if is_elems { "elem/s" } else { "B/s" }),
            x if x < base * base => (
                base,
                if is_elems {
                    "Kelem/s"
                } else if binary {
                    "KiB/s"
                } else {
                    "KB/s"
                },
            ),
            x if x < base * base * base => (
                base * base,
                if is_elems {
                    "Melem/s"
                } else if binary {
                    "MiB/s"
                } else {
                    "MB/s"
                },
            ),
            _ => (
                base * base * base,
                if is_elems {
                    "Gelem/s"
                } else if binary {
                    "GiB/s"
                } else {
                    "GB/s"
                },
            ),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
