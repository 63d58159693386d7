//! Entry points. (Stub signatures: the codec engineer implements them.)

use bytes::BytesMut;

use crate::error::{DecodeError, EncodeError};
use crate::types::{Limits, Packet, ProtocolVersion, Publish};

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `Ok(None)`: `buf` does not hold a whole packet yet (nothing is consumed). `version` is the
/// connection's negotiated version; CONNECT is decoded by its own protocol level regardless.
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, limits, version);
    unimplemented!()
}

/// Appends the encoding of `packet` for `version` to `out`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, out);
    unimplemented!()
}

/// Appends everything of a PUBLISH except its payload (fixed header with the full remaining
/// length, topic, packet id, properties) and returns the offset of the packet id's first byte
/// relative to where writing started (`None` for QoS 0). The engine encodes this header once
/// per layout and patches the packet id per subscriber; the payload `Bytes` is shared.
pub fn encode_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<Option<usize>, EncodeError> {
    let _ = (publish, version, out);
    unimplemented!()
}
