//! WebSocket to a bridge's remote broker (`ws://` and `wss://` addresses; MQTT 5.0 §6,
//! RFC 6455): the opening handshake as a client, then every write goes out as one masked
//! binary frame and what the remote sends is deframed (`io/transport/ws.rs`, client side)
//! into the MQTT byte stream the relay decodes.

use std::io::{self, Read, Write};

use base64::Engine as _;
use bytes::BytesMut;

use super::tls::Stream;
use crate::io::transport::ws::{client_binary_frame, Deframer};
use crate::io::transport::ws_handshake::accept_key;

/// Largest handshake response read.
const RESPONSE_MAX_BYTES: usize = 8 * 1024;
/// Longest the whole handshake response may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A WebSocket connection over a plain or TLS stream.
pub(crate) struct WsStream {
    inner: Stream,
    deframer: Deframer,
    /// Binary payload deframed and not yet read.
    pending: BytesMut,
    /// Control answers (pong, close) to write.
    replies: Vec<u8>,
    /// The remote closed (or broke) the WebSocket: reads end.
    closed: bool,
}

impl WsStream {
    /// Runs the opening handshake (§4.1) for `host` and `path` over `inner`, asking for the
    /// `mqtt` subprotocol; frames up to `frame_max_bytes` are accepted afterwards.
    pub(crate) fn connect(
        mut inner: Stream,
        host: &str,
        path: &str,
        frame_max_bytes: u64,
    ) -> Result<WsStream, String> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| e.to_string())?;
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        inner
            .write_all(request.as_bytes())
            .and_then(|()| inner.flush())
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // Each read waits at most the socket's timeout; the whole answer, this long.
        let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let end = loop {
            if std::time::Instant::now() > deadline {
                return Err("WebSocket: no handshake answer in time".into());
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > RESPONSE_MAX_BYTES {
                return Err("WebSocket: handshake response too long".into());
            }
            match inner.read(&mut chunk) {
                Ok(0) => return Err("WebSocket: closed during the handshake".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("WebSocket handshake: {e}")),
            }
        };
        check_response(&buf[..end], &accept_key(&key))?;
        let mut ws = WsStream {
            inner,
            deframer: Deframer::new_client(frame_max_bytes),
            pending: BytesMut::new(),
            replies: Vec::new(),
            closed: false,
        };
        // Frames that came with the response.
        ws.deframe(&buf[end..])?;
        Ok(ws)
    }

    /// The stream under the WebSocket.
    pub(crate) fn inner(&self) -> &Stream {
        &self.inner
    }

    /// Deframed bytes (or TLS plaintext) wait to be read.
    pub(crate) fn buffered(&mut self) -> bool {
        !self.pending.is_empty() || self.closed || self.inner.buffered()
    }

    /// Deframes `raw`, answering control frames at once.
    fn deframe(&mut self, raw: &[u8]) -> Result<(), String> {
        let r = self.deframer.feed(raw, &mut self.pending, &mut self.replies);
        if !self.replies.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            let _ = self.inner.write_all(&replies).and_then(|()| self.inner.flush());
        }
        if let Err(closed) = r {
            self.closed = true;
            if let Some(why) = closed.reason {
                return Err(format!("WebSocket: {why} (close {})", closed.code));
            }
        }
        Ok(())
    }
}

/// Checks the server's answer (§4.2.2; the client's six checks of §4.1).
fn check_response(head: &[u8], accept: &str) -> Result<(), String> {
    let text = std::str::from_utf8(head).map_err(|_| "WebSocket: response not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("WebSocket: the remote answered {status:?}"));
    }
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if !header("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err("WebSocket: no `Upgrade: websocket` in the response".into());
    }
    let upgrade = |v: String| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !header("Connection").is_some_and(upgrade) {
        return Err("WebSocket: no `Connection: Upgrade` in the response".into());
    }
    // We asked for no extension: one in the answer fails the connection (§4.1).
    if header("Sec-WebSocket-Extensions").is_some() {
        return Err("WebSocket: the remote chose an extension we did not ask for".into());
    }
    if header("Sec-WebSocket-Accept").as_deref() != Some(accept) {
        return Err("WebSocket: wrong Sec-WebSocket-Accept".into());
    }
    // MQTT 5.0 §6: the server picks the `mqtt` subprotocol.
    if header("Sec-WebSocket-Protocol").as_deref() != Some("mqtt") {
        return Err("WebSocket: the remote did not select the mqtt subprotocol".into());
    }
    Ok(())
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.closed {
                return Ok(0);
            }
            let mut raw = [0u8; 16 * 1024];
            let n = self.inner.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.deframe(&raw[..n]).map_err(io::Error::other)?;
            if self.pending.is_empty() && !self.closed {
                // Only a control frame or part of a header: nothing for the caller yet.
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

impl Write for WsStream {
    /// Sends `buf` as one binary frame [MQTT-6.0.0-1].
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut frame = Vec::with_capacity(buf.len() + 14);
        client_binary_frame(buf, &mut frame);
        self.inner.write_all(&frame)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_checked() {
        let accept = accept_key("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 §1.3's example");
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        assert_eq!(check_response(ok.as_bytes(), &accept), Ok(()));
        let e = check_response(ok.replace("mqtt", "mqttv3.1").as_bytes(), &accept).unwrap_err();
        assert!(e.contains("subprotocol"), "{e}");
        let e = check_response(ok.replace("s3pP", "AAAA").as_bytes(), &accept).unwrap_err();
        assert!(e.contains("Accept"), "{e}");
        let e =
            check_response(ok.replace("Connection: Upgrade", "Connection: x").as_bytes(), &accept)
                .unwrap_err();
        assert!(e.contains("Connection"), "{e}");
        let ext =
            ok.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        assert!(check_response(ext.as_bytes(), &accept).unwrap_err().contains("extension"));
        let e = check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", &accept).unwrap_err();
        assert!(e.contains("404"), "{e}");
    }
}
