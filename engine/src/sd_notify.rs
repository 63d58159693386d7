//! systemd readiness (`Type=notify`): when `$NOTIFY_SOCKET` is set, one datagram saying
//! `READY=1` once every listener is open, `STOPPING=1` when shutdown begins. Nothing happens
//! without the variable. See sd_notify(3); no library needed for two datagrams.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one. Errors are
/// returned for the caller to log; the broker runs on either way.
pub fn notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("shardmq-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The only test in this binary that touches the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::notify("READY=1").unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
