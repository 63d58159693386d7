//! WebSocket framing (RFC 6455 §5) for MQTT over WebSocket (MQTT 5.0 §6), sans-IO.
//!
//! The reading side is a resumable deframer: bytes in, the binary payload out, appended to
//! the connection's MQTT buffer. Payloads are unmasked as they stream through, so a large
//! frame is never buffered whole, and an MQTT packet may span frames while one frame may
//! carry several packets [MQTT-6.0.0-2], [MQTT-6.0.0-3]: the codec sees one byte stream.
//! Control frames (ping, pong, close; at most 125 bytes each, §5.5) are collected in a small
//! buffer and answered through `reply`.
//!
//! The writing side is [`data_header`]: server frames are not masked (§5.1), so a batch of
//! queued MQTT frames goes out as one binary frame, its header in front of the shared
//! frame bytes.
//!
//! Shard-local: one [`Deframer`] per WebSocket connection, in its transport state (and one
//! per `ws://` bridge, on its thread, in client mode).

use bytes::BytesMut;

/// Close status codes (RFC 6455 §7.4.1).
pub(crate) mod close_code {
    /// Normal closure (also the answer to a client's close).
    pub(crate) const NORMAL: u16 = 1000;
    /// A protocol error: unmasked frame, reserved bits, bad opcode, bad fragmentation.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint does not accept: text frames [MQTT-6.0.0-1].
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame larger than the endpoint accepts.
    pub(crate) const TOO_BIG: u16 = 1009;
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The largest control frame payload (§5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;

/// Why the deframer stopped: the close frame to send (already in `reply`) and a reason for
/// the log. After it the connection is closed once `reply` is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsClosed {
    /// The status code sent (or echoed).
    pub(crate) code: u16,
    /// Why, for the log (`None` for a close the client started).
    pub(crate) reason: Option<&'static str>,
}

/// Where the deframer is in the current frame.
#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a frame header, gathered in `header`.
    Header,
    /// Inside a frame's payload.
    Payload {
        opcode: u8,
        fin: bool,
        remaining: u64,
        mask: [u8; 4],
        /// Payload bytes seen so far (the mask index).
        offset: u64,
    },
    /// A close was sent: nothing more is read.
    Closed,
}

/// The read side of one WebSocket connection (a shard's, or a bridge thread's).
#[derive(Debug)]
pub(crate) struct Deframer {
    state: State,
    /// A frame header being gathered (at most 14 bytes).
    header: Vec<u8>,
    /// A control frame's payload being gathered (at most 125 bytes).
    control: Vec<u8>,
    /// A fragmented binary message is in progress (continuations are expected).
    in_message: bool,
    /// The largest data frame accepted (the broker's maximum packet size).
    frame_max_bytes: u64,
    /// The client's side (a bridge to a `ws://` remote): frames from the server are not
    /// masked, and ours (the control answers) are (§5.1).
    client: bool,
}

impl Deframer {
    /// A deframer accepting data frames up to `frame_max_bytes`.
    pub(crate) fn new(frame_max_bytes: u64) -> Deframer {
        Deframer {
            state: State::Header,
            header: Vec::new(),
            control: Vec::new(),
            in_message: false,
            frame_max_bytes,
            client: false,
        }
    }

    /// A client's deframer (frames from a server), accepting data frames up to
    /// `frame_max_bytes`; its answers in `reply` are masked.
    pub(crate) fn new_client(frame_max_bytes: u64) -> Deframer {
        Deframer { client: true, ..Deframer::new(frame_max_bytes) }
    }

    /// Feeds bytes from the peer: binary payload bytes are appended to `mqtt`, answers
    /// (pong, close) to `reply`. `Err` once the connection must close (the close frame is in
    /// `reply`).
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        mqtt: &mut BytesMut,
        reply: &mut Vec<u8>,
    ) -> Result<(), WsClosed> {
        while !input.is_empty() {
            match &mut self.state {
                State::Closed => return Ok(()),
                State::Header => {
                    let Some(used) = self.take_header(input, reply)? else {
                        return Ok(()); // All of `input` went into the partial header.
                    };
                    input = &input[used..];
                }
                State::Payload { opcode, fin, remaining, mask, offset } => {
                    let n = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let (chunk, rest) = input.split_at(n);
                    input = rest;
                    let opcode = *opcode;
                    let fin = *fin;
                    let start = if opcode == OP_BINARY || opcode == OP_CONTINUATION {
                        let start = mqtt.len();
                        mqtt.extend_from_slice(chunk);
                        Some(start)
                    } else {
                        self.control.extend_from_slice(chunk);
                        None
                    };
                    // Unmask in place (§5.3): byte i is XORed with mask[i % 4].
                    let target: &mut [u8] = match start {
                        Some(s) => &mut mqtt[s..],
                        None => {
                            let s = self.control.len() - chunk.len();
                            &mut self.control[s..]
                        }
                    };
                    for b in target.iter_mut() {
                        *b ^= mask[(*offset % 4) as usize];
                        *offset += 1;
                    }
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                        self.end_frame(opcode, fin, reply)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Gathers and checks a frame header. `Ok(None)`: all of `input` was taken and the
    /// header is still incomplete; `Ok(Some(n))`: the header is complete after `n` bytes of
    /// `input` and the state moved to the payload (or the frame, if empty, was handled).
    fn take_header(
        &mut self,
        input: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<Option<usize>, WsClosed> {
        let had = self.header.len();
        // Take at most what the longest header needs; parse once enough is there.
        let want = 14usize.saturating_sub(had).min(input.len());
        self.header.extend_from_slice(&input[..want]);
        let h = &self.header;
        if h.len() < 2 {
            return Ok(None);
        }
        let len_bytes = match h[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = h[1] & 0x80 != 0;
        // §5.1: a server MUST close the connection on an unmasked client frame, and a
        // client on a masked server frame.
        if masked == self.client {
            let why = if self.client { "masked server frame" } else { "unmasked client frame" };
            return Err(self.close(close_code::PROTOCOL_ERROR, why, reply));
        }
        let total = 2 + len_bytes + if masked { 4 } else { 0 };
        if h.len() < total {
            return Ok(None);
        }
        let fin = h[0] & 0x80 != 0;
        let rsv = h[0] & 0x70;
        let opcode = h[0] & 0x0F;
        let len: u64 = match len_bytes {
            0 => u64::from(h[1] & 0x7F),
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            _ => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        };
        // An unmasked frame XORs with zeros.
        let mask: [u8; 4] =
            if masked { h[2 + len_bytes..total].try_into().expect("4 bytes") } else { [0; 4] };
        let used = total - had;
        self.header.clear();

        // §5.2: reserved bits must be 0 unless an extension was negotiated (none is).
        if rsv != 0 {
            return Err(self.close(close_code::PROTOCOL_ERROR, "reserved bits set", reply));
        }
        match opcode {
            // [MQTT-6.0.0-1]: MQTT Control Packets go in binary data frames; a text frame
            // closes the connection.
            OP_TEXT => {
                return Err(self.close(close_code::UNSUPPORTED_DATA, "text frame", reply));
            }
            OP_BINARY if self.in_message => {
                return Err(self.close(
                    close_code::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                    reply,
                ));
            }
            OP_CONTINUATION if !self.in_message => {
                return Err(self.close(
                    close_code::PROTOCOL_ERROR,
                    "continuation without a message",
                    reply,
                ));
            }
            OP_BINARY | OP_CONTINUATION => {
                if len > self.frame_max_bytes {
                    return Err(self.close(close_code::TOO_BIG, "frame too large", reply));
                }
                self.in_message = !fin;
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                // §5.5: control frames are never fragmented and carry at most 125 bytes.
                if !fin || len > CONTROL_PAYLOAD_MAX as u64 {
                    return Err(self.close(
                        close_code::PROTOCOL_ERROR,
                        "fragmented or oversized control frame",
                        reply,
                    ));
                }
                self.control.clear();
            }
            _ => return Err(self.close(close_code::PROTOCOL_ERROR, "unknown opcode", reply)),
        }
        if len == 0 {
            self.end_frame(opcode, fin, reply)?;
        } else {
            self.state = State::Payload { opcode, fin, remaining: len, mask, offset: 0 };
        }
        Ok(Some(used))
    }

    /// A whole frame was read: answers control frames.
    fn end_frame(&mut self, opcode: u8, _fin: bool, reply: &mut Vec<u8>) -> Result<(), WsClosed> {
        match opcode {
            // §5.5.2: a Pong with the Ping's payload.
            OP_PING => {
                let payload = std::mem::take(&mut self.control);
                self.answer(OP_PONG, &payload, reply);
                self.control = payload;
                Ok(())
            }
            OP_CLOSE => {
                // §5.5.1: answer with a close (echoing the status code), then close.
                let code = match self.control.len() {
                    0 => None,
                    1 => {
                        return Err(self.close(
                            close_code::PROTOCOL_ERROR,
                            "close frame with a 1-byte payload",
                            reply,
                        ))
                    }
                    _ => Some(u16::from_be_bytes([self.control[0], self.control[1]])),
                };
                let code = code.unwrap_or(close_code::NORMAL);
                self.answer(OP_CLOSE, &code.to_be_bytes(), reply);
                self.state = State::Closed;
                Err(WsClosed { code, reason: None })
            }
            _ => Ok(()),
        }
    }

    /// Appends a control frame answering the peer: masked on a client's side.
    fn answer(&self, opcode: u8, payload: &[u8], reply: &mut Vec<u8>) {
        if self.client {
            client_frame(opcode, payload, reply);
        } else {
            control_frame(opcode, payload, reply);
        }
    }

    /// Queues a close frame with `code` and stops reading.
    fn close(&mut self, code: u16, reason: &'static str, reply: &mut Vec<u8>) -> WsClosed {
        self.answer(OP_CLOSE, &code.to_be_bytes(), reply);
        self.state = State::Closed;
        WsClosed { code, reason: Some(reason) }
    }
}

/// Appends an unmasked control frame (server to client, §5.1).
pub(crate) fn control_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= CONTROL_PAYLOAD_MAX);
    out.push(0x80 | opcode);
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
}

/// Appends a final, masked frame (client to server, §5.1, §5.3) with a fresh random mask.
pub(crate) fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut mask = [0u8; 4];
    getrandom::getrandom(&mut mask).expect("the operating system's random number generator");
    let (h, n) = data_header(payload.len());
    out.push(0x80 | opcode);
    out.push(h[1] | 0x80);
    out.extend_from_slice(&h[2..n]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A client's binary frame carrying `payload`.
pub(crate) fn client_binary_frame(payload: &[u8], out: &mut Vec<u8>) {
    client_frame(OP_BINARY, payload, out);
}

/// The header of an unmasked, final binary frame carrying `len` payload bytes (§5.2):
/// the bytes and how many of them are used.
pub(crate) fn data_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | OP_BINARY;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
