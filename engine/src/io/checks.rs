//! Start-up checks run before any shard is spawned, so that a machine that cannot run the
//! broker gets one clear line naming the fix instead of a panic from inside glommio.

use crate::config::Config;

/// glommio refuses to create an executor when RLIMIT_MEMLOCK is below this
/// (`MIN_MEMLOCK_LIMIT` in glommio's reactor).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

/// Runs every check; the error is one line naming the fix.
pub fn preflight(config: &Config) -> Result<(), String> {
    probe_io_uring()?;
    check_memlock(config, memlock_limit_bytes())
}

/// Creates (and closes) a tiny io_uring with the raw `io_uring_setup` syscall.
pub fn probe_io_uring() -> Result<(), String> {
    // The kernel's `struct io_uring_params` is 120 bytes; zeroed means "defaults".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes exactly `sizeof(struct io_uring_params)` bytes
    // of `params`, which is that large and lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: `fd` is the ring descriptor the kernel just gave us and nothing else owns it.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_owned());
    let why = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring support (needs Linux >= 5.8 built \
                               with CONFIG_IO_URING)"
            .to_owned(),
        Some(libc::EPERM) | Some(libc::EACCES) => match disabled.as_deref() {
            Some("2") => "io_uring is disabled by the sysctl kernel.io_uring_disabled=2; set it \
                          to 0 (sysctl -w kernel.io_uring_disabled=0)"
                .to_owned(),
            Some("1") => "io_uring is restricted by kernel.io_uring_disabled=1; add this user to \
                          the group in kernel.io_uring_group or set the sysctl to 0"
                .to_owned(),
            _ => "io_uring is blocked, most likely by a seccomp filter (Docker/containerd \
                  default profile): run with a profile that allows io_uring_setup, \
                  io_uring_enter and io_uring_register (e.g. --security-opt \
                  seccomp=unconfined)"
                .to_owned(),
        },
        Some(libc::ENOMEM) => "the kernel could not allocate an io_uring (check ulimit -l and \
                               memory limits)"
            .to_owned(),
        _ => format!("io_uring_setup failed: {err}"),
    };
    Err(format!("io_uring is unavailable: {why}"))
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit_bytes() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` into the valid pointer we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Rings per shard that register `io_memory` (glommio's main, latency and poll rings).
const RINGS_PER_SHARD: u64 = 3;
/// Allowance per shard for the rings themselves (small at the default ring depth).
const RING_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Locked memory the broker needs: glommio registers each shard's `io_memory` with each of
/// its three io_uring rings, and the kernel charges RLIMIT_MEMLOCK (per user) for the pinned
/// pages of every registration (the binary keeps `io_memory` out of huge pages, see
/// [`super::alloc`]); glommio refuses to start below 512 KiB.
pub fn memlock_needed_bytes(config: &Config) -> u64 {
    let io_memory = (config.io_memory_bytes.max(64 * 1024) as u64 + 4095) & !4095;
    let per_shard = RINGS_PER_SHARD * io_memory + RING_OVERHEAD_BYTES;
    (u64::from(config.shards) * per_shard).max(GLOMMIO_MEMLOCK_MIN_BYTES)
}

/// Checks RLIMIT_MEMLOCK against what the shards will lock.
pub fn check_memlock(config: &Config, limit_bytes: u64) -> Result<(), String> {
    let needed = memlock_needed_bytes(config);
    if limit_bytes >= needed {
        return Ok(());
    }
    Err(format!(
        "locked-memory limit too low: RLIMIT_MEMLOCK is {} KiB but {} shard(s) with \
         io_memory_kib={} need {} KiB; raise it (ulimit -l {}, or memlock in \
         /etc/security/limits.conf / LimitMEMLOCK= in systemd), or lower --shards / \
         --io-memory-kib",
        limit_bytes / 1024,
        config.shards,
        config.io_memory_bytes / 1024,
        needed / 1024,
        needed.div_ceil(1024),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_check_names_the_fix() {
        let mut c = Config::local(2);
        c.io_memory_bytes = 256 * 1024;
        assert!(check_memlock(&c, 8 * 1024 * 1024).is_ok());
        assert!(check_memlock(&c, u64::MAX).is_ok());
        let e = check_memlock(&c, 64 * 1024).unwrap_err();
        assert!(e.contains("ulimit -l") && e.contains("--shards"), "{e}");
        c.shards = 8;
        assert!(check_memlock(&c, 8 * 1024 * 1024).is_ok(), "8 shards fit a normal user's 8 MiB");
        c.shards = 16;
        assert!(check_memlock(&c, 8 * 1024 * 1024).is_err());
    }

    #[test]
    fn io_uring_works_here() {
        // The machines this project runs on support io_uring; if this fails, so does the
        // broker, with the same message.
        probe_io_uring().unwrap();
    }
}
