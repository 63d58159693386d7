//! Transports between the socket and the codec: TLS (rustls, driven sans-IO) and WebSocket
//! framing (`ws.rs`, `ws_handshake.rs`), stacked as the listener says:
//!
//! ```text
//! socket ─► [TLS] ─► [WebSocket] ─► MQTT bytes (codec)
//! ```
//!
//! A plain `mqtt://` connection has no [`TransportState`] at all (its [`super::shard::ConnSlot`]
//! holds `None`), so the fast path is untouched: the shard's writer sends the shared frame
//! bytes straight from the core's queue. Any other connection reads through
//! [`TransportState::ingest`] (raw bytes in, MQTT bytes out, handshake and control answers
//! queued). A TLS one writes through [`TransportState::wrap`] (a batch of queued MQTT frames
//! in, one WebSocket frame if any and as few TLS records as the batch needs out: records of up
//! to 16 KiB, not one per MQTT frame), then sends [`TransportState::out`]. A plain WebSocket
//! one, once upgraded, is sent like TCP, straight from the core's queue, with one more gather
//! slice in front: a batch's frame header ([`TransportState::ws_direct`]).
//!
//! Shard-local: one per connection, owned by its slot (or by its greeting task before that),
//! moved whole to another shard with the socket when the connection is handed off (it is
//! `Send`: rustls's connection is).

pub(crate) mod proxy;
pub(crate) mod tls;
pub(crate) mod ws;
pub(crate) mod ws_handshake;

use std::io::{IoSlice, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::{ServerConfig, ServerConnection};

use self::ws::Deframer;
use self::ws_handshake::{Answer, WsSettings};

/// MQTT bytes wrapped per call of [`TransportState::wrap`] at most: four full TLS records
/// (16 KiB each), and one WebSocket frame.
pub(crate) const WRAP_BATCH_BYTES: usize = 64 * 1024;

/// Where the WebSocket layer is.
#[derive(Debug)]
enum WsLayer {
    /// No WebSocket on this listener.
    None,
    /// Gathering the HTTP upgrade request.
    Handshake { request: Vec<u8>, settings: Arc<WsSettings>, frame_max_bytes: u64 },
    /// Upgraded: frames.
    Open(Deframer),
}

/// How [`TransportState::ingest`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ingest {
    /// Fine; MQTT bytes (if any) were appended.
    Ok,
    /// The client ended the stream cleanly (TLS close_notify).
    Eof,
    /// The connection must close once [`TransportState::out`] is written (an alert, an
    /// HTTP error or a close frame is in it).
    Close(Closing),
}

/// Why a connection closes at the transport level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    /// The layer that refused.
    pub(crate) stage: Stage,
    /// Why, for the log; `None` for a close the client asked for (a WebSocket close frame).
    pub(crate) reason: Option<String>,
}

impl std::fmt::Display for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.stage, self.reason.as_deref().unwrap_or("closed by the client"))
    }
}

impl std::error::Error for Closing {}

/// The layer a [`Closing`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The TLS handshake (certificate problems land here).
    TlsHandshake,
    /// TLS after the handshake.
    Tls,
    /// The WebSocket upgrade request.
    WsHandshake,
    /// WebSocket framing.
    Ws,
}

/// One connection's transport layers and the bytes they owe the socket. Shard-local.
pub(crate) struct TransportState {
    tls: Option<ServerConnection>,
    ws: WsLayer,
    /// Bytes for the socket (TLS records, WebSocket frames, HTTP answers), from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Plain bytes read out of TLS (reused between reads).
    plain: Vec<u8>,
    /// Answers of the WebSocket layer (pong, close) waiting to go through TLS.
    reply: Vec<u8>,
    /// Stop reading: a close is under way.
    closing: bool,
}

impl std::fmt::Debug for TransportState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportState")
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws)
            .field("out", &(self.out.len() - self.out_pos))
            .finish()
    }
}

impl TransportState {
    /// A new connection's layers: TLS with `tls`, WebSocket with `ws` (data frames up to
    /// `frame_max_bytes`).
    pub(crate) fn new(
        tls: Option<Arc<ServerConfig>>,
        ws: Option<Arc<WsSettings>>,
        frame_max_bytes: u64,
    ) -> Result<TransportState, String> {
        let tls = match tls {
            Some(config) => {
                let mut c = ServerConnection::new(config).map_err(|e| e.to_string())?;
                // What is written is bounded by the caller (`WRAP_BATCH_BYTES` per wrap,
                // drained into `out` at once).
                c.set_buffer_limit(None);
                Some(c)
            }
            None => None,
        };
        let ws = match ws {
            Some(settings) => WsLayer::Handshake { request: Vec::new(), settings, frame_max_bytes },
            None => WsLayer::None,
        };
        Ok(TransportState {
            tls,
            ws,
            out: Vec::new(),
            out_pos: 0,
            plain: Vec::new(),
            reply: Vec::new(),
            closing: false,
        })
    }

    /// Still in a handshake (TLS, or the WebSocket upgrade): no MQTT bytes yet.
    pub(crate) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
            || matches!(self.ws, WsLayer::Handshake { .. })
    }

    /// The WebSocket upgrade request has not been answered yet.
    pub(crate) fn ws_upgrading(&self) -> bool {
        matches!(self.ws, WsLayer::Handshake { .. })
    }

    /// The TLS handshake is done (or there is no TLS).
    pub(crate) fn tls_established(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
    }

    /// The subject CN of the client certificate the TLS handshake verified, if any.
    pub(crate) fn peer_cn(&self) -> Option<String> {
        let certs = self.tls.as_ref()?.peer_certificates()?;
        tls::subject_cn(certs.first()?)
    }

    /// Bytes waiting for the socket.
    pub(crate) fn out(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`TransportState::out`] were sent.
    pub(crate) fn consume(&mut self, n: usize) {
        self.out_pos += n;
        debug_assert!(self.out_pos <= self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 2 * WRAP_BATCH_BYTES {
                self.out = Vec::new();
            }
        }
    }

    /// Nothing is waiting for the socket.
    pub(crate) fn out_is_empty(&self) -> bool {
        self.out_pos == self.out.len()
    }

    /// Feeds bytes read from the socket; MQTT bytes are appended to `mqtt`.
    pub(crate) fn ingest(&mut self, raw: &[u8], mqtt: &mut BytesMut) -> Ingest {
        if self.closing {
            return Ingest::Ok;
        }
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let result = self.ingest_tls(raw, &mut plain);
        let result = match result {
            Ingest::Ok => self.ingest_ws(&plain, mqtt),
            // What arrived before close_notify still counts.
            Ingest::Eof => match self.ingest_ws(&plain, mqtt) {
                Ingest::Ok => Ingest::Eof,
                other => other,
            },
            other => other,
        };
        self.plain = plain;
        if matches!(result, Ingest::Close(_)) {
            self.closing = true;
            if let Some(t) = &mut self.tls {
                t.send_close_notify();
                drain_tls(t, &mut self.out);
            }
        }
        result
    }

    /// The TLS layer: raw records in, plaintext out (or the raw bytes as they are).
    fn ingest_tls(&mut self, mut raw: &[u8], plain: &mut Vec<u8>) -> Ingest {
        let Some(t) = &mut self.tls else {
            plain.extend_from_slice(raw);
            return Ingest::Ok;
        };
        let mut eof = false;
        while !raw.is_empty() {
            let was_handshaking = t.is_handshaking();
            if let Err(e) = t.read_tls(&mut raw) {
                return Ingest::Close(Closing {
                    stage: if was_handshaking { Stage::TlsHandshake } else { Stage::Tls },
                    reason: Some(e.to_string()),
                });
            }
            match t.process_new_packets() {
                Ok(state) => {
                    if state.plaintext_bytes_to_read() > 0 {
                        let start = plain.len();
                        plain.resize(start + state.plaintext_bytes_to_read(), 0);
                        let n = t.reader().read(&mut plain[start..]).unwrap_or(0);
                        plain.truncate(start + n);
                    }
                    eof |= state.peer_has_closed();
                }
                Err(e) => {
                    // The alert rustls queued for the client goes out before the close.
                    drain_tls(t, &mut self.out);
                    return Ingest::Close(Closing {
                        stage: if was_handshaking { Stage::TlsHandshake } else { Stage::Tls },
                        reason: Some(e.to_string()),
                    });
                }
            }
        }
        drain_tls(t, &mut self.out);
        if eof {
            Ingest::Eof
        } else {
            Ingest::Ok
        }
    }

    /// The WebSocket layer: plaintext in, MQTT bytes out.
    fn ingest_ws(&mut self, plain: &[u8], mqtt: &mut BytesMut) -> Ingest {
        if plain.is_empty() {
            return Ingest::Ok;
        }
        match &mut self.ws {
            WsLayer::None => {
                mqtt.extend_from_slice(plain);
                Ingest::Ok
            }
            WsLayer::Handshake { request, settings, frame_max_bytes } => {
                request.extend_from_slice(plain);
                match ws_handshake::answer(request, settings) {
                    None => Ingest::Ok,
                    Some(Answer::Refuse { response, reason }) => {
                        self.send_plain(&response);
                        Ingest::Close(Closing { stage: Stage::WsHandshake, reason: Some(reason) })
                    }
                    Some(Answer::Upgrade { response, used }) => {
                        let early = request.split_off(used);
                        let deframer = Deframer::new(*frame_max_bytes);
                        self.ws = WsLayer::Open(deframer);
                        self.send_plain(&response);
                        self.ingest_ws(&early, mqtt)
                    }
                }
            }
            WsLayer::Open(deframer) => {
                let mut reply = std::mem::take(&mut self.reply);
                let fed = deframer.feed(plain, mqtt, &mut reply);
                self.send_plain(&reply);
                reply.clear();
                self.reply = reply;
                match fed {
                    Ok(()) => Ingest::Ok,
                    Err(closed) => Ingest::Close(Closing {
                        stage: Stage::Ws,
                        reason: closed.reason.map(|r| format!("{r} (close {})", closed.code)),
                    }),
                }
            }
        }
    }

    /// The broker closes the connection (DISCONNECT, takeover, keep alive, shutdown): queues
    /// a WebSocket close frame (1000, §5.5.1) and TLS close_notify, once. `true` when there is
    /// something new to send before the FIN; `false` once done, or when a refusal already
    /// sent its own close.
    pub(crate) fn finish(&mut self) -> bool {
        if std::mem::replace(&mut self.closing, true) {
            return false;
        }
        if matches!(self.ws, WsLayer::Open(_)) {
            let mut frame = Vec::with_capacity(4);
            ws::control_frame(ws::OP_CLOSE, &ws::close_code::NORMAL.to_be_bytes(), &mut frame);
            self.send_plain(&frame);
        }
        if let Some(t) = &mut self.tls {
            t.send_close_notify();
            drain_tls(t, &mut self.out);
        }
        !self.out_is_empty()
    }

    /// Queues bytes above TLS (an HTTP answer, a WebSocket frame) for the socket.
    fn send_plain(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match &mut self.tls {
            Some(t) => {
                // Unbounded buffer (`set_buffer_limit(None)`): never a short write.
                let _ = t.writer().write_all(data);
                drain_tls(t, &mut self.out);
            }
            None => self.out.extend_from_slice(data),
        }
    }

    /// Plain WebSocket, upgraded: the writer sends queued MQTT frames straight from the
    /// connection's queue behind a frame header of its own ([`ws::data_header`]), with no
    /// copy: the frame bytes are the queue's, shared as they are with TCP. TLS and the
    /// upgrade go through [`TransportState::wrap`].
    pub(crate) fn ws_direct(&self) -> bool {
        self.tls.is_none() && matches!(self.ws, WsLayer::Open(_))
    }

    /// A direct WebSocket frame (header and payload slices, `frame`) went out only up to
    /// byte `sent` (0 when the socket took nothing): the rest is copied into [`TransportState::out`], so the frame is whole
    /// before anything else (a pong, a close, the next frame) is sent. Only a full socket
    /// costs this copy, of one batch at most.
    pub(crate) fn keep_unsent(&mut self, frame: &[IoSlice<'_>], mut sent: usize) {
        for part in frame {
            if sent >= part.len() {
                sent -= part.len();
                continue;
            }
            self.out.extend_from_slice(&part[sent..]);
            sent = 0;
        }
    }

    /// Wraps queued MQTT frames for the socket: one binary WebSocket frame around all of
    /// them (server frames are unmasked, §5.1), then TLS records. Returns the MQTT bytes
    /// taken (at most [`WRAP_BATCH_BYTES`]; a slice may be taken in part).
    pub(crate) fn wrap(&mut self, frames: &[IoSlice<'_>]) -> usize {
        let mut total = 0;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len());
        for f in frames {
            let take = f.len().min(WRAP_BATCH_BYTES - total);
            if take == 0 {
                break;
            }
            parts.push(&f[..take]);
            total += take;
        }
        if total == 0 {
            return 0;
        }
        let ws = matches!(self.ws, WsLayer::Open(_));
        let (header, header_len) = ws::data_header(total);
        match &mut self.tls {
            Some(t) => {
                // One vectored write of the header and every slice: rustls cuts records of
                // up to 16 KiB across the slices, not one record per MQTT frame. The buffer
                // is unbounded (`set_buffer_limit(None)`), so everything is taken.
                let mut slices = Vec::with_capacity(parts.len() + 1);
                if ws {
                    slices.push(IoSlice::new(&header[..header_len]));
                }
                slices.extend(parts.iter().map(|p| IoSlice::new(p)));
                let _ = t.writer().write_vectored(&slices);
                drain_tls(t, &mut self.out);
            }
            None => {
                if ws {
                    self.out.extend_from_slice(&header[..header_len]);
                }
                for p in &parts {
                    self.out.extend_from_slice(p);
                }
            }
        }
        total
    }
}

/// Moves every TLS record rustls has ready into `out`.
fn drain_tls(t: &mut ServerConnection, out: &mut Vec<u8>) {
    while t.wants_write() {
        if t.write_tls(out).is_err() {
            break;
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
