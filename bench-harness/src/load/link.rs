//! The client side of TLS and WebSocket for one connection, between the socket and the
//! connection's MQTT bytes:
//!
//! ```text
//! MQTT bytes (conn.tx / frames parsed in place) ─ [WebSocket] ─ [TLS] ─ socket
//! ```
//!
//! A plain TCP connection has no [`Link`] (the reactor reads and writes its socket directly).
//! TLS is rustls's client connection over the non-blocking socket: `read_tls` /
//! `process_new_packets` / `reader` in, `writer` / `write_tls` out; what the connection queues
//! before the handshake is done waits in rustls. WebSocket (RFC 6455) is written here: the
//! upgrade request (`GET /mqtt`, subprotocol `mqtt`), a check of the answer (101, the
//! `Sec-WebSocket-Accept` hash, the subprotocol), masked binary frames out (§5.3, one frame per
//! flush of queued MQTT bytes), and server frames in, unframed in place in the read buffer
//! (server frames are unmasked, §5.1); a ping is answered, a close ends the connection.
//!
//! Thread-local: one per connection, owned by its reactor thread.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use mio::net::TcpStream;
use sha1::{Digest, Sha1};

use crate::transport::{ClientTransport, WsFault, SERVER_NAME, WS_PATH};

/// Masked WebSocket bytes waiting for the layer below, at most, before more MQTT bytes are
/// framed (the rest waits in the connection's queue, so publishers feel the back-pressure).
const STAGED_MAX_BYTES: usize = 64 * 1024;
/// The largest WebSocket frame written.
const FRAME_MAX_BYTES: usize = 64 * 1024;
/// The longest upgrade answer read.
const HANDSHAKE_MAX_BYTES: usize = 8 * 1024;
/// RFC 6455 §1.3.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The client's WebSocket state.
#[derive(Debug)]
struct WsClient {
    /// The `Sec-WebSocket-Key` sent (base64).
    key: String,
    /// The upgrade answer was checked.
    open: bool,
    /// The answer, gathered until its blank line.
    answer: Vec<u8>,
    /// A frame header being gathered.
    header: [u8; 10],
    header_len: usize,
    /// Payload bytes left in the current server frame.
    left: u64,
    /// The current frame's opcode.
    opcode: u8,
    /// A control frame's payload.
    control: Vec<u8>,
    /// Mask keys (xorshift; RFC 6455 wants them unpredictable to intermediaries, which a
    /// loopback benchmark does not have).
    rng: u64,
    fault: Option<WsFault>,
}

/// One connection's transport layers above TCP. Thread-local.
pub(super) struct Link {
    tls: Option<Box<rustls::ClientConnection>>,
    ws: Option<WsClient>,
    /// Bytes for the layer below WebSocket (TLS or the socket), from `staged_pos`.
    staged: Vec<u8>,
    staged_pos: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws)
            .field("staged", &(self.staged.len() - self.staged_pos))
            .finish()
    }
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Link {
    /// The layers `t` asks for towards `to` (`None` for plain TCP). `tls`: the client
    /// configuration (one per reactor thread) when `t` is a TLS transport.
    pub(super) fn new(
        t: &ClientTransport,
        tls: Option<&Arc<rustls::ClientConfig>>,
        to: SocketAddr,
    ) -> io::Result<Option<Link>> {
        let (kind, fault) = (t.kind, t.fault);
        if !kind.tls() && !kind.ws() {
            return Ok(None);
        }
        let tls = match (kind.tls(), tls) {
            (false, _) => None,
            (true, None) => {
                return Err(other("TLS transport without a client configuration".into()))
            }
            (true, Some(config)) => {
                let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
                    .map_err(|e| other(e.to_string()))?;
                let c = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| other(e.to_string()))?;
                Some(Box::new(c))
            }
        };
        let mut link = Link { tls, ws: None, staged: Vec::new(), staged_pos: 0 };
        if kind.ws() {
            let mut seed = [0u8; 16];
            getrandom::getrandom(&mut seed).map_err(|e| other(e.to_string()))?;
            let key = base64::engine::general_purpose::STANDARD.encode(seed);
            let rng = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1;
            let protocol = match fault {
                Some(WsFault::WrongSubprotocol) => "xmpp",
                _ => "mqtt",
            };
            // RFC 6455 §4.1; MQTT 5.0 §6.0: subprotocol `mqtt`.
            let request = format!(
                "GET {WS_PATH} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
                port = to.port()
            );
            link.staged.extend_from_slice(request.as_bytes());
            link.ws = Some(WsClient {
                key,
                open: false,
                answer: Vec::new(),
                header: [0; 10],
                header_len: 0,
                left: 0,
                opcode: 0,
                control: Vec::new(),
                rng,
                fault,
            });
        }
        Ok(Some(link))
    }

    /// Takes MQTT bytes from the front of `app` for sending; returns how many (0 while a
    /// handshake is under way or the layers below hold enough).
    pub(super) fn accept(&mut self, app: &[u8]) -> usize {
        if app.is_empty() {
            return 0;
        }
        match &mut self.ws {
            Some(ws) => {
                if !ws.open || self.staged.len() - self.staged_pos >= STAGED_MAX_BYTES {
                    return 0;
                }
                let n = app.len().min(FRAME_MAX_BYTES);
                ws.frame(&app[..n], &mut self.staged);
                n
            }
            None => {
                let t = self.tls.as_mut().expect("a link has TLS or WebSocket");
                // rustls buffers at most 64 KiB (its default limit) and says how much it took.
                t.writer().write(app).unwrap_or(0)
            }
        }
    }

    /// Something is waiting for the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.staged_pos < self.staged.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes what the layers hold to the socket; `Ok(())` also when the socket is full (a
    /// writable edge comes back here).
    pub(super) fn write_out(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if let Some(t) = self.tls.as_mut() {
            if self.staged_pos < self.staged.len() {
                let n = t.writer().write(&self.staged[self.staged_pos..]).unwrap_or(0);
                self.staged_pos += n;
            }
            while t.wants_write() {
                match t.write_tls(stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            while self.staged_pos < self.staged.len() {
                match stream.write(&self.staged[self.staged_pos..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.staged_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.staged_pos == self.staged.len() {
            self.staged.clear();
            self.staged_pos = 0;
        }
        Ok(())
    }

    /// Reads MQTT bytes into `buf`, like `Read::read`: `Ok(0)` at the end of the stream,
    /// `WouldBlock` once the socket is drained. Handshake bytes and control frames are handled
    /// here (answers are queued: check [`Link::wants_write`]).
    pub(super) fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.read_below_ws(stream, buf)?;
            if n == 0 {
                return Ok(0);
            }
            let Some(ws) = self.ws.as_mut() else { return Ok(n) };
            let m = ws.ingest(buf, n, &mut self.staged)?;
            if m > 0 {
                return Ok(m);
            }
        }
    }

    /// Plaintext from TLS, or the socket's bytes.
    fn read_below_ws(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let Some(t) = self.tls.as_mut() else { return stream.read(buf) };
        loop {
            match t.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify, the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match t.read_tls(stream) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(e) = t.process_new_packets() {
                        // Send the alert rustls queued, then fail.
                        let _ = t.write_tls(stream);
                        return Err(other(format!("TLS: {e}")));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl WsClient {
    /// Appends one masked, final binary frame carrying `payload` (§5.2, §5.3).
    fn frame(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let len = payload.len();
        let masked = if self.fault == Some(WsFault::Unmasked) { 0 } else { 0x80 };
        out.push(0x82);
        if len < 126 {
            out.push(masked | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(masked | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(masked | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked == 0 {
            out.extend_from_slice(payload);
            return;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_ne_bytes();
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        // Eight bytes at a time: the mask repeats every four bytes (byte i ^ mask[i % 4]).
        let m8 = u64::from_ne_bytes([
            mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
        ]);
        let body = &mut out[start..];
        let mut chunks = body.chunks_exact_mut(8);
        for c in &mut chunks {
            let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m8;
            c.copy_from_slice(&v.to_ne_bytes());
        }
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }

    /// Takes `buf[..n]` from the server: the upgrade answer, then frames, whose binary
    /// payload is moved to the front of `buf`. Returns the MQTT bytes there. A ping's pong
    /// goes to `out`.
    fn ingest(&mut self, buf: &mut [u8], n: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        let mut r = 0;
        if !self.open {
            let before = self.answer.len();
            self.answer.extend_from_slice(&buf[..n]);
            let Some(end) = find_blank_line(&self.answer) else {
                if self.answer.len() > HANDSHAKE_MAX_BYTES {
                    return Err(other("WebSocket: upgrade answer too long".into()));
                }
                return Ok(0);
            };
            self.check_answer(&self.answer[..end])?;
            self.open = true;
            r = end - before;
            self.answer = Vec::new();
        }
        let mut w = 0;
        while r < n {
            if self.left > 0 {
                let k = (n - r).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                if matches!(self.opcode, 0x0 | 0x2) {
                    buf.copy_within(r..r + k, w);
                    w += k;
                } else {
                    self.control.extend_from_slice(&buf[r..r + k]);
                }
                r += k;
                self.left -= k as u64;
                if self.left == 0 {
                    self.end_frame(out)?;
                }
                continue;
            }
            self.header[self.header_len] = buf[r];
            self.header_len += 1;
            r += 1;
            let h = &self.header[..self.header_len];
            if h.len() < 2 {
                continue;
            }
            if h[1] & 0x80 != 0 {
                return Err(other("WebSocket: masked frame from the server (§5.1)".into()));
            }
            let ext = match h[1] & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if h.len() < 2 + ext {
                continue;
            }
            let len = match ext {
                0 => u64::from(h[1] & 0x7F),
                2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                _ => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            };
            self.opcode = h[0] & 0x0F;
            self.header_len = 0;
            match self.opcode {
                0x0 | 0x2 => {}
                0x8..=0xA if len <= 125 => self.control.clear(),
                op => return Err(other(format!("WebSocket: unexpected frame (opcode {op})"))),
            }
            self.left = len;
            if len == 0 {
                self.end_frame(out)?;
            }
        }
        Ok(w)
    }

    /// A whole frame was read: answers a ping, fails on a close.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.opcode {
            0x9 => {
                // §5.5.3: a pong with the ping's payload, masked like every client frame.
                let payload = std::mem::take(&mut self.control);
                let mut frame = Vec::with_capacity(payload.len() + 6);
                self.frame(&payload, &mut frame);
                frame[0] = 0x80 | 0xA;
                out.extend_from_slice(&frame);
                Ok(())
            }
            0x8 => {
                let code = match self.control.get(..2) {
                    Some(c) => u16::from_be_bytes([c[0], c[1]]).to_string(),
                    None => "without a code".into(),
                };
                Err(other(format!("WebSocket close from the broker ({code})")))
            }
            _ => Ok(()),
        }
    }

    /// Checks the upgrade answer: 101, the accept hash of our key, subprotocol `mqtt`.
    fn check_answer(&self, answer: &[u8]) -> io::Result<()> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let status = resp.parse(answer).map_err(|e| other(format!("WebSocket answer: {e}")))?;
        if status.is_partial() {
            return Err(other("WebSocket answer: incomplete".into()));
        }
        if resp.code != Some(101) {
            let first = String::from_utf8_lossy(answer);
            let first = first.lines().next().unwrap_or_default().to_string();
            return Err(other(format!("WebSocket upgrade refused: {first}")));
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let mut sha = Sha1::new();
        sha.update(self.key.as_bytes());
        sha.update(WS_GUID.as_bytes());
        let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        if header("sec-websocket-accept").as_deref() != Some(expected.as_str()) {
            return Err(other(format!(
                "WebSocket answer: Sec-WebSocket-Accept {:?}, not {expected}",
                header("sec-websocket-accept")
            )));
        }
        match header("sec-websocket-protocol") {
            Some(p) if p.eq_ignore_ascii_case("mqtt") => Ok(()),
            other_p => Err(other(format!("WebSocket answer: subprotocol {other_p:?}, not mqtt"))),
        }
    }
}

/// The end of an HTTP head (after `\r\n\r\n`).
fn find_blank_line(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> WsClient {
        WsClient {
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            open: true,
            answer: Vec::new(),
            header: [0; 10],
            header_len: 0,
            left: 0,
            opcode: 0,
            control: Vec::new(),
            rng: 0x1234_5678_9abc_def1,
            fault: None,
        }
    }

    #[test]
    fn frames_are_masked_and_unmask_back() {
        let mut c = client();
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        c.frame(&payload, &mut out);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 126, "masked, 16-bit length");
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 300);
        let mask = [out[4], out[5], out[6], out[7]];
        let back: Vec<u8> = out[8..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(back, payload);
    }

    #[test]
    fn server_frames_are_unframed_in_place_across_reads() {
        let mut c = client();
        // Two binary frames (5 and 3 bytes) and a ping, split at awkward places.
        let mut wire = vec![0x82, 5, 1, 2, 3, 4, 5, 0x89, 1, 0x77, 0x02, 3, 6, 7, 8];
        let mut out = Vec::new();
        let n1 = 4;
        let got = c.ingest(&mut wire[..n1], n1, &mut out).unwrap();
        assert_eq!(got, 2);
        let mut rest = wire[n1..].to_vec();
        let n = rest.len();
        let got2 = c.ingest(&mut rest, n, &mut out).unwrap();
        assert_eq!(&rest[..got2], &[3, 4, 5, 6, 7, 8]);
        assert_eq!(out[0], 0x8A, "pong");
        assert_eq!(out[1], 0x80 | 1, "masked, one byte");
        assert_eq!(out[6] ^ out[2], 0x77, "the ping's payload");
        wire.clear();
        let mut close = vec![0x88, 2, 0x03, 0xE8];
        assert!(c.ingest(&mut close, 4, &mut out).is_err(), "a close ends the stream");
    }

    #[test]
    fn the_upgrade_answer_is_checked() {
        let c = client();
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        c.check_answer(ok.as_bytes()).unwrap();
        let no_proto = ok.replace("Sec-WebSocket-Protocol: mqtt\r\n", "");
        assert!(c.check_answer(no_proto.as_bytes()).is_err());
        let bad_hash = ok.replace("s3pP", "AAAA");
        assert!(c.check_answer(bad_hash.as_bytes()).is_err());
        let refused = "HTTP/1.1 400 Bad Request\r\n\r\n";
        assert!(c.check_answer(refused.as_bytes()).is_err());
    }
}
