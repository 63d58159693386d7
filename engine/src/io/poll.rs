//! poll(2) on two sockets, for threads outside the shards that block (the bridges'
//! relays, `crate::bridge`): the only `unsafe` they need lives here, in the io layer.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until `a` or `b` is readable (or closed), at most `timeout`; returns which. When
/// `a_ready` or `b_ready` is already true (bytes are buffered above the socket, e.g.
/// decrypted TLS), returns at once without polling.
pub(crate) fn readable2(
    a: RawFd,
    b: RawFd,
    a_ready: bool,
    b_ready: bool,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    if a_ready || b_ready {
        return Ok((a_ready, b_ready));
    }
    let mut fds = [
        libc::pollfd { fd: a, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: b, events: libc::POLLIN, revents: 0 },
    ];
    let timeout_ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid, writable array of two `pollfd` for the whole call, and its
    // length is passed as 2.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok((false, false)) } else { Err(e) };
    }
    let ready = |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}
