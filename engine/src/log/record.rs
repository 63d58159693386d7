//! Log records: the record kinds, their rkyv bodies, and the frame codec (header, CRC32C,
//! padding). Sans-IO: functions over byte slices and `Vec<u8>`.
//!
//! The byte layout is described in the [module documentation](super).

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::LogSeq;

/// First byte of every frame. Never zero, so zero padding is never mistaken for a record.
pub const FRAME_MAGIC: u8 = 0xB5;
/// Format version written in byte 1 of every frame.
pub const FORMAT_VERSION: u8 = 1;
/// Size of a frame header.
pub const HEADER_BYTES: usize = 24;
/// Flag bit: more frames of the same batch follow this one.
pub const FLAG_BATCH_CONTINUES: u8 = 0x01;
/// Frames start at multiples of this within a segment, so every rkyv body is aligned.
pub const FRAME_ALIGN_BYTES: usize = 8;

/// Rounds `n` up to a multiple of [`FRAME_ALIGN_BYTES`].
pub const fn align_frame(n: usize) -> usize {
    (n + FRAME_ALIGN_BYTES - 1) & !(FRAME_ALIGN_BYTES - 1)
}

/// Why bytes are not a valid frame or record. Small and `Copy`: the reason names the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header, or than the length the header declares.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    /// The first byte is not [`FRAME_MAGIC`].
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    /// The header's CRC32C does not match its first 20 bytes.
    #[error("header checksum mismatch")]
    HeaderCrc,
    /// A version this build cannot read.
    #[error("unsupported format version {0}")]
    Version(u8),
    /// A kind byte that names no record kind.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// Unknown flag bits are set.
    #[error("reserved flags {0:#04x} set")]
    Flags(u8),
    /// The body is larger than `record_size_max_bytes`.
    #[error("record body of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    /// The body's CRC32C does not match.
    #[error("body checksum mismatch")]
    BodyCrc,
    /// Padding after the body is not zero.
    #[error("non-zero padding after the body")]
    Padding,
    /// The body failed rkyv's validation.
    #[error("body is not a valid archived {0}")]
    Archive(&'static str),
    /// The record decoded but breaks a field rule (see [`Record::validate`]).
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

macro_rules! records {
    ($($(#[$doc:meta])* $kind:literal => $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? })*) => {
        /// The record bodies. rkyv's derives add resolver types without `Debug`.
        #[allow(missing_debug_implementations)]
        mod bodies {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
                #[rkyv(derive(Debug))]
                pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }

                impl From<$name> for Record {
                    fn from(r: $name) -> Record { Record::$name(r) }
                }
            )*
        }
        pub use bodies::*;

        /// One log record. Plain owned data, so the engine can build and consume them directly.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Record { $($(#[$doc])* $name($name)),* }

        impl Record {
            /// The kind byte written in the frame header.
            pub fn kind(&self) -> u8 {
                match self { $(Record::$name(_) => $kind),* }
            }

            /// The kind's name, for messages.
            pub fn kind_name(&self) -> &'static str {
                match self { $(Record::$name(_) => stringify!($name)),* }
            }

            fn serialize_body(&self, out: &mut Vec<u8>) {
                let res = match self {
                    $(Record::$name(r) => rkyv::api::high::to_bytes_in::<_, rancor::Error>(r, out).map(drop)),*
                };
                // Serializing owned plain data into a Vec cannot fail.
                res.expect("rkyv serialization into a Vec failed");
            }

            /// Decodes a body of kind `kind`. `body` must be aligned to [`FRAME_ALIGN_BYTES`].
            fn deserialize_body(kind: u8, body: &[u8]) -> Result<Record, RecordError> {
                match kind {
                    $($kind => rkyv::from_bytes::<$name, rancor::Error>(body)
                        .map(Record::$name)
                        .map_err(|_| RecordError::Archive(stringify!($name))),)*
                    k => Err(RecordError::UnknownKind(k)),
                }
            }

            fn kind_is_known(kind: u8) -> bool {
                [$($kind),*].contains(&kind)
            }
        }
    };
}

records! {
    /// A session was created, or resumed (`clean == false` keeps existing state).
    1 => SessionCreated { client_id: String, expiry_secs: u32, clean: bool }
    /// A session ended (expired, or replaced by a clean start): drop all its state.
    2 => SessionEnded { client_id: String }
    /// A subscription was added or replaced. `options` is the v5 subscription options byte,
    /// `sub_id` its 5.0 Subscription Identifier (0: none).
    3 => SubscriptionAdded { client_id: String, filter: String, options: u8, sub_id: u32 }
    /// A subscription was removed.
    4 => SubscriptionRemoved { client_id: String, filter: String }
    /// A message was stored. `properties` is an opaque blob the engine encodes.
    5 => MessageStored {
        msg_id: u64,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        properties: Vec<u8>,
        received_at_ms: u64,
    }
    /// Delivery of a stored message is pending for a session (takes a reference). `group`
    /// is the shared subscription (`$share/...`) it was delivered for; empty: none.
    6 => MessageQueued { client_id: String, msg_id: u64, group: String }
    /// A queued message was sent to the session with `packet_id` (now in flight, unacked).
    7 => Delivered { client_id: String, msg_id: u64, packet_id: u16 }
    /// The session no longer needs the message (PUBACK, PUBREC, or dropped): drops a reference.
    8 => Acknowledged { client_id: String, msg_id: u64 }
    /// Inbound QoS 2: PUBLISH received and stored, PUBREC sent ([MQTT-4.3.3]).
    9 => Qos2Received { client_id: String, packet_id: u16 }
    /// Inbound QoS 2: PUBREL received, PUBCOMP sent; the packet id may be reused.
    10 => Qos2Released { client_id: String, packet_id: u16 }
    /// Outbound QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    11 => PubrelPending { client_id: String, packet_id: u16 }
    /// Outbound QoS 2: PUBCOMP received.
    12 => PubrelCompleted { client_id: String, packet_id: u16 }
    /// The retained message for `topic` is the stored message `msg_id`.
    13 => RetainedSet { topic: String, msg_id: u64 }
    /// The retained message for `topic` was cleared.
    14 => RetainedCleared { topic: String }
    /// First record of a compacted segment: it holds the live state of every record before
    /// `end_seq`, so all other segments with a base below `end_seq` are obsolete.
    15 => Checkpoint { end_seq: u64, live_records: u64 }
    /// The session went offline and expires at this wall-clock time (milliseconds since the
    /// Unix epoch), unless it is resumed (`SessionCreated`) first. Recovery subtracts the
    /// downtime from the interval.
    16 => SessionOffline { client_id: String, expires_at_unix_ms: u64 }
    /// The will of the session's connection (CONNECT), or a will waiting for its delay.
    /// `properties` is the same opaque blob as a stored message's; `delay_secs` the Will
    /// Delay Interval (5.0; 0: none).
    17 => WillSet {
        client_id: String,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        properties: Vec<u8>,
        delay_secs: u32,
    }
    /// The session has no will any more (published, or discarded by a normal DISCONNECT
    /// [MQTT-3.1.2-10], or a new connection without one).
    18 => WillCleared { client_id: String }
    /// The identity the session belongs to (the user name its creator connected with;
    /// `None`: anonymous). With authentication on, another user cannot take the session
    /// over (`sessions/connect.rs`). Logs without it (older ones) leave the owner unknown:
    /// the first client to resume the session claims it.
    19 => SessionOwner { client_id: String, user: Option<String> }
}

// Every archived body must fit the frame alignment, or zero-copy access would be misaligned.
const _: () = {
    assert!(std::mem::align_of::<ArchivedMessageStored>() <= FRAME_ALIGN_BYTES);
    assert!(std::mem::align_of::<ArchivedCheckpoint>() <= FRAME_ALIGN_BYTES);
    assert!(std::mem::align_of::<ArchivedSessionCreated>() <= FRAME_ALIGN_BYTES);
};

fn check_client_id(id: &str) -> Result<(), RecordError> {
    if id.is_empty() {
        return Err(RecordError::Invalid("empty client id"));
    }
    Ok(())
}

/// The largest Subscription Identifier (a Variable Byte Integer).
const SUBSCRIPTION_ID_MAX: u32 = 268_435_455;

fn check_filter(client_id: &str, filter: &str) -> Result<(), RecordError> {
    check_client_id(client_id)?;
    if filter.is_empty() {
        return Err(RecordError::Invalid("empty topic filter [MQTT-4.7.3-1]"));
    }
    Ok(())
}

fn check_packet_id(id: u16) -> Result<(), RecordError> {
    if id == 0 {
        return Err(RecordError::Invalid("packet id 0 [MQTT-2.2.1-3]"));
    }
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), RecordError> {
    if topic.is_empty() {
        return Err(RecordError::Invalid("empty topic name [MQTT-4.7.3-1]"));
    }
    if topic.contains(['+', '#']) {
        return Err(RecordError::Invalid("wildcard in topic name [MQTT-3.3.2-2]"));
    }
    Ok(())
}

impl Record {
    /// Field rules every record obeys. Checked (asserted) before a record is written and
    /// checked again after it is read back.
    pub fn validate(&self) -> Result<(), RecordError> {
        match self {
            Record::SessionCreated(r) => check_client_id(&r.client_id),
            Record::SessionEnded(r) => check_client_id(&r.client_id),
            Record::SessionOffline(r) => check_client_id(&r.client_id),
            Record::WillCleared(r) => check_client_id(&r.client_id),
            Record::SessionOwner(r) => check_client_id(&r.client_id),
            Record::WillSet(w) => {
                check_client_id(&w.client_id)?;
                check_topic(&w.topic)?;
                if w.qos > 2 {
                    return Err(RecordError::Invalid("will QoS above 2 [MQTT-3.1.2-12]"));
                }
                Ok(())
            }
            Record::SubscriptionAdded(SubscriptionAdded { client_id, filter, sub_id, .. }) => {
                check_filter(client_id, filter)?;
                // A Variable Byte Integer of 1 to 268,435,455 (5.0 §3.8.2.1.2); 0 is none.
                if *sub_id > SUBSCRIPTION_ID_MAX {
                    return Err(RecordError::Invalid("subscription identifier above 268,435,455"));
                }
                Ok(())
            }
            Record::SubscriptionRemoved(SubscriptionRemoved { client_id, filter }) => {
                check_filter(client_id, filter)
            }
            Record::MessageStored(m) => {
                check_topic(&m.topic)?;
                if m.qos > 2 {
                    return Err(RecordError::Invalid("QoS above 2 [MQTT-3.3.1-4]"));
                }
                Ok(())
            }
            Record::MessageQueued(MessageQueued { client_id, .. })
            | Record::Acknowledged(Acknowledged { client_id, .. }) => check_client_id(client_id),
            Record::Delivered(r) => {
                check_client_id(&r.client_id)?;
                check_packet_id(r.packet_id)
            }
            Record::Qos2Received(Qos2Received { client_id, packet_id })
            | Record::Qos2Released(Qos2Released { client_id, packet_id })
            | Record::PubrelPending(PubrelPending { client_id, packet_id })
            | Record::PubrelCompleted(PubrelCompleted { client_id, packet_id }) => {
                check_client_id(client_id)?;
                check_packet_id(*packet_id)
            }
            Record::RetainedSet(RetainedSet { topic, .. })
            | Record::RetainedCleared(RetainedCleared { topic }) => check_topic(topic),
            Record::Checkpoint(_) => Ok(()),
        }
    }
}

/// A frame split from a byte slice: header fields and the (still undecoded) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The record's sequence number.
    pub seq: LogSeq,
    /// The kind byte.
    pub kind: u8,
    /// The rkyv body.
    pub body: &'a [u8],
    /// More frames of the same batch follow.
    pub continues: bool,
    /// Header + body + padding: where the next frame starts.
    pub frame_bytes: usize,
}

impl Frame<'_> {
    /// Decodes and validates the body.
    pub fn record(&self) -> Result<Record, RecordError> {
        let record = if (self.body.as_ptr() as usize).is_multiple_of(FRAME_ALIGN_BYTES) {
            Record::deserialize_body(self.kind, self.body)?
        } else {
            // rkyv needs aligned bytes: copy a misaligned body into an aligned buffer.
            let mut aligned = AlignedVec::<16>::with_capacity(self.body.len());
            aligned.extend_from_slice(self.body);
            Record::deserialize_body(self.kind, &aligned)?
        };
        record.validate()?;
        Ok(record)
    }
}

/// Checks a frame header without looking at the body. `bytes` must hold at least
/// [`HEADER_BYTES`]. Returns `(seq, kind, body_len)`.
pub fn check_header(
    bytes: &[u8],
    body_max_bytes: usize,
) -> Result<(LogSeq, u8, usize), RecordError> {
    if bytes.len() < HEADER_BYTES {
        return Err(RecordError::Truncated { have: bytes.len(), need: HEADER_BYTES });
    }
    if bytes[0] != FRAME_MAGIC {
        return Err(RecordError::BadMagic(bytes[0]));
    }
    let header_crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..20]) != header_crc {
        return Err(RecordError::HeaderCrc);
    }
    if bytes[1] != FORMAT_VERSION {
        return Err(RecordError::Version(bytes[1]));
    }
    let kind = bytes[2];
    if !Record::kind_is_known(kind) {
        return Err(RecordError::UnknownKind(kind));
    }
    if bytes[3] & !FLAG_BATCH_CONTINUES != 0 {
        return Err(RecordError::Flags(bytes[3]));
    }
    let body_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if body_len > body_max_bytes {
        return Err(RecordError::TooLarge { len_bytes: body_len, max_bytes: body_max_bytes });
    }
    let seq = LogSeq(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")));
    Ok((seq, kind, body_len))
}

/// Splits the frame at the start of `bytes` and checks its header, body CRC and padding.
/// Does not decode the body: see [`Frame::record`].
pub fn split_frame(bytes: &[u8], body_max_bytes: usize) -> Result<Frame<'_>, RecordError> {
    let (seq, kind, body_len) = check_header(bytes, body_max_bytes)?;
    let frame_bytes = align_frame(HEADER_BYTES + body_len);
    if bytes.len() < frame_bytes {
        return Err(RecordError::Truncated { have: bytes.len(), need: frame_bytes });
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + body_len];
    let body_crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != body_crc {
        return Err(RecordError::BodyCrc);
    }
    if bytes[HEADER_BYTES + body_len..frame_bytes].iter().any(|&b| b != 0) {
        return Err(RecordError::Padding);
    }
    let continues = bytes[3] & FLAG_BATCH_CONTINUES != 0;
    Ok(Frame { seq, kind, body, frame_bytes, continues })
}

/// Splits, checks and decodes one frame: `(frame, record)`.
pub fn decode(bytes: &[u8], body_max_bytes: usize) -> Result<(Frame<'_>, Record), RecordError> {
    let frame = split_frame(bytes, body_max_bytes)?;
    let record = frame.record()?;
    Ok((frame, record))
}

/// Appends the frame of `record` with sequence number `seq` to `out`, whose length must be a
/// multiple of [`FRAME_ALIGN_BYTES`] (so the body is aligned where the frame is written).
/// `continues` marks every frame of a batch but the last. Returns the frame's size. On
/// `TooLarge`, `out` is left as it was.
///
/// # Panics
/// If `record` breaks a field rule ([`Record::validate`]): writing one is an engine bug.
pub fn encode_into(
    out: &mut Vec<u8>,
    seq: LogSeq,
    record: &Record,
    continues: bool,
    body_max_bytes: usize,
) -> Result<usize, RecordError> {
    if let Err(e) = record.validate() {
        panic!("refusing to write an invalid {} record: {e}", record.kind_name());
    }
    assert_eq!(out.len() % FRAME_ALIGN_BYTES, 0, "frames start 8-byte aligned");
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    record.serialize_body(out);
    let body_len = out.len() - start - HEADER_BYTES;
    if body_len > body_max_bytes {
        out.truncate(start);
        return Err(RecordError::TooLarge { len_bytes: body_len, max_bytes: body_max_bytes });
    }
    let body_crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out.resize(start + align_frame(HEADER_BYTES + body_len), 0);
    let header = &mut out[start..start + HEADER_BYTES];
    header[0] = FRAME_MAGIC;
    header[1] = FORMAT_VERSION;
    header[2] = record.kind();
    header[3] = if continues { FLAG_BATCH_CONTINUES } else { 0 };
    header[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&seq.0.to_le_bytes());
    header[16..20].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&header_crc.to_le_bytes());
    let frame_bytes = out.len() - start;
    if cfg!(debug_assertions) {
        // Read back what was just written: the codec must round-trip.
        let mut aligned = AlignedVec::<16>::with_capacity(frame_bytes);
        aligned.extend_from_slice(&out[start..]);
        let (frame, back) = decode(&aligned, body_max_bytes).expect("fresh frame decodes");
        assert_eq!((frame.seq, frame.continues, &back), (seq, continues, record), "no round trip");
    }
    Ok(frame_bytes)
}

#[cfg(test)]
mod tests;
