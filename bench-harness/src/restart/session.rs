//! A blocking MQTT client for the one resumed session, and the data directory's size.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shardmq_codec::ProtocolVersion;

use crate::wire::{self, kind};

/// A blocking MQTT client: the resumed session (no load generator needed for one socket).
pub(super) struct Session {
    pub(super) stream: TcpStream,
    pub(super) rx: Vec<u8>,
    pub(super) v5: bool,
}

impl Session {
    /// Connects with a persistent session and waits for CONNACK; returns it with the
    /// Session Present flag.
    pub(super) fn connect(
        addr: SocketAddr,
        id: &str,
        version: ProtocolVersion,
    ) -> Result<(Session, bool)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut s = Session { stream, rx: Vec::new(), v5: version.is_v5() };
        s.stream.write_all(&wire::connect_session(id, version, 60, true)?)?;
        let (frame, _) = s.next_frame(Duration::from_secs(120))?.context("no CONNACK")?;
        let p = wire::decode_frame(&frame, version)?;
        wire::check_connack(&p)?;
        Ok((s, wire::session_present(&p)))
    }

    /// Subscribes `filter` at QoS 1 and waits for SUBACK.
    pub(super) fn subscribe(&mut self, filter: &str, version: ProtocolVersion) -> Result<()> {
        self.stream.write_all(&wire::subscribe(1, filter, wire::qos(1)?, version)?)?;
        loop {
            let (frame, _) = self.next_frame(Duration::from_secs(30))?.context("no SUBACK")?;
            if frame[0] >> 4 == kind::SUBACK {
                return wire::check_suback(&wire::decode_frame(&frame, version)?);
            }
        }
    }

    /// The next whole frame (and its body offset), or `None` after `quiet` without bytes.
    fn next_frame(&mut self, quiet: Duration) -> Result<Option<(Vec<u8>, usize)>> {
        loop {
            if let Some((len, body)) = wire::split_frame(&self.rx).map_err(|e| anyhow!(e))? {
                let frame: Vec<u8> = self.rx.drain(..len).collect();
                return Ok(Some((frame, body)));
            }
            if !self.fill(quiet)? {
                return Ok(None);
            }
        }
    }

    /// Reads what is available into `rx`; false after `quiet` without bytes.
    pub(super) fn fill(&mut self, quiet: Duration) -> Result<bool> {
        self.stream.set_read_timeout(Some(quiet))?;
        let mut buf = [0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => bail!("closed by the broker"),
            Ok(n) => {
                self.rx.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn disconnect(mut self) {
        let _ = self.stream.write_all(&wire::DISCONNECT);
    }
}

/// Bytes under `dir`: (allocated on disk, sum of lengths).
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = fs::read_dir(dir) else { return total };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (a, b) = dir_bytes(&e.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + m.blocks() * 512, total.1 + m.len());
        }
    }
    total
}
