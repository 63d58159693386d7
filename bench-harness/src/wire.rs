//! The harness's MQTT client side of the wire.
//!
//! CONNECT, SUBSCRIBE and PUBLISH are encoded with `shardmq_codec::encode`; CONNACK and SUBACK
//! are decoded with `shardmq_codec::decode`. The hot paths are cheaper on purpose: a PUBLISH
//! is encoded once into a [`PublishTemplate`] and then copied with its packet id and payload
//! header patched in place, and the receive path ([`split_frame`], [`parse_publish`]) only
//! reads the fixed header, the topic length, the packet id and (in 5.0) the property length.
//! The four acknowledgements are four literal bytes (5.0 allows omitting reason code 0x00 and
//! properties when the remaining length is 2, [MQTT-3.4.2.1]).

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, encode, encode_publish_header, ByteStr, Connect, Limits, Packet, PacketId, Properties,
    ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
};

use crate::payload::{Header, HEADER_BYTES};

/// Fixed-header packet types the receive path cares about.
pub mod kind {
    /// CONNACK
    pub const CONNACK: u8 = 2;
    /// PUBLISH
    pub const PUBLISH: u8 = 3;
    /// PUBACK
    pub const PUBACK: u8 = 4;
    /// PUBREC
    pub const PUBREC: u8 = 5;
    /// PUBREL
    pub const PUBREL: u8 = 6;
    /// PUBCOMP
    pub const PUBCOMP: u8 = 7;
    /// SUBACK
    pub const SUBACK: u8 = 9;
    /// PINGRESP
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT
    pub const DISCONNECT: u8 = 14;
}

/// Maps the `--mqtt-version` number (3, 4 or 5) to the codec's version.
pub fn protocol_version(level: u8) -> Result<ProtocolVersion> {
    match level {
        3 => Ok(ProtocolVersion::V3_1),
        4 => Ok(ProtocolVersion::V3_1_1),
        5 => Ok(ProtocolVersion::V5),
        other => bail!("unsupported MQTT protocol level {other} (use 3, 4 or 5)"),
    }
}

/// Maps 0, 1, 2 to a QoS.
pub fn qos(level: u8) -> Result<QoS> {
    QoS::from_u8(level).ok_or_else(|| anyhow!("QoS must be 0, 1 or 2, not {level}"))
}

fn encode_packet(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).map_err(|e| anyhow!("encoding {packet:?}: {e}"))?;
    Ok(out.to_vec())
}

/// A clean-start CONNECT.
pub fn connect(client_id: &str, version: ProtocolVersion, keep_alive_secs: u16) -> Result<Vec<u8>> {
    connect_session(client_id, version, keep_alive_secs, false)
}

/// A CONNECT; `persistent`: clean session off (3.1.1) or clean start off with a one-day
/// session expiry interval (5.0), so the session and its queue outlive the connection.
pub fn connect_session(
    client_id: &str,
    version: ProtocolVersion,
    keep_alive_secs: u16,
    persistent: bool,
) -> Result<Vec<u8>> {
    let mut properties = Properties::default();
    if persistent && version.is_v5() {
        properties.session_expiry_interval_secs = Some(24 * 3600);
    }
    encode_packet(
        &Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: !persistent,
            keep_alive_secs,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties,
        })),
        version,
    )
}

/// The Session Present flag of a CONNACK.
pub fn session_present(packet: &Packet) -> bool {
    matches!(packet, Packet::ConnAck(c) if c.session_present)
}

/// A SUBSCRIBE of one filter.
pub fn subscribe(
    packet_id: u16,
    filter: &str,
    qos: QoS,
    version: ProtocolVersion,
) -> Result<Vec<u8>> {
    let packet_id = PacketId::new(packet_id).context("packet id 0")?;
    encode_packet(
        &Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions { qos, ..Default::default() },
            )],
            properties: None,
        }),
        version,
    )
}

/// PINGREQ, two literal bytes.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// DISCONNECT (normal disconnection), two literal bytes in every version.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id`, success, no properties.
pub fn ack(kind: u8, packet_id: u16) -> [u8; 4] {
    debug_assert!((kind::PUBACK..=kind::PUBCOMP).contains(&kind));
    // PUBREL's fixed-header flags are 0b0010 [MQTT-3.6.1-1].
    let flags = if kind == kind::PUBREL { 0x02 } else { 0x00 };
    let [hi, lo] = packet_id.to_be_bytes();
    [(kind << 4) | flags, 0x02, hi, lo]
}

/// A PUBLISH encoded once by the codec, copied per message with the packet id and the
/// payload header patched in place.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    frame: Vec<u8>,
    payload_offset: usize,
    packet_id_offset: Option<usize>,
}

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_bytes` (at least [`HEADER_BYTES`]) zero bytes.
    pub fn new(
        topic: &str,
        qos: QoS,
        retain: bool,
        payload_bytes: usize,
        version: ProtocolVersion,
    ) -> Result<PublishTemplate> {
        if payload_bytes < HEADER_BYTES {
            bail!(
                "--payload-bytes must be at least {HEADER_BYTES} (the sequence/timestamp header)"
            );
        }
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteStr::from(topic),
            packet_id: if qos == QoS::AtMostOnce { None } else { PacketId::new(1) },
            payload: Bytes::from(vec![0u8; payload_bytes]),
            properties: None,
        };
        let frame = encode_packet(&Packet::Publish(publish.clone()), version)?;
        let mut header = BytesMut::new();
        let packet_id_offset = encode_publish_header(&publish, version, &mut header)
            .map_err(|e| anyhow!("encoding a PUBLISH header: {e}"))?;
        let payload_offset = frame.len() - payload_bytes;
        if header.len() != payload_offset || header[..] != frame[..payload_offset] {
            bail!("codec: encode_publish_header disagrees with encode for {topic:?}");
        }
        if packet_id_offset.is_some() != (qos != QoS::AtMostOnce) {
            bail!("codec: packet id offset {packet_id_offset:?} for QoS {qos:?}");
        }
        Ok(PublishTemplate { frame, payload_offset, packet_id_offset })
    }

    /// Size of one frame in bytes.
    pub fn frame_bytes(&self) -> usize {
        self.frame.len()
    }

    /// Appends one PUBLISH to `out`.
    pub fn append(&self, out: &mut Vec<u8>, packet_id: Option<u16>, header: &Header) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let frame = &mut out[start..];
        if let (Some(offset), Some(id)) = (self.packet_id_offset, packet_id) {
            frame[offset..offset + 2].copy_from_slice(&id.to_be_bytes());
        }
        header.write(&mut frame[self.payload_offset..]);
    }
}

/// A malformed frame from the broker: the connection is closed and counted as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// Finds the first whole frame in `buf`: `Ok(Some((frame_len, body_offset)))`, `Ok(None)` if
/// more bytes are needed.
pub fn split_frame(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let mut remaining: usize = 0;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        remaining |= ((b & 0x7F) as usize) << shift;
        if b & 0x80 == 0 {
            let total = 1 + i + remaining;
            return Ok(if buf.len() >= total { Some((total, 1 + i)) } else { None });
        }
        shift += 7;
    }
    Err(WireError("remaining length longer than four bytes"))
}

/// What the receive path needs from a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    /// QoS from the fixed header.
    pub qos: u8,
    /// Packet id (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// Topic name bytes (empty when a 5.0 topic alias is used).
    pub topic: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Parses a PUBLISH body (everything after the fixed header).
pub fn parse_publish(byte0: u8, body: &[u8], v5: bool) -> Result<PublishView<'_>, WireError> {
    let qos = (byte0 >> 1) & 0x03;
    if qos == 3 {
        return Err(WireError("PUBLISH with QoS 3"));
    }
    if body.len() < 2 {
        return Err(WireError("PUBLISH shorter than its topic length"));
    }
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2 + topic_len;
    let topic = body.get(2..pos).ok_or(WireError("PUBLISH topic longer than the packet"))?;
    let packet_id = if qos > 0 {
        let b = body.get(pos..pos + 2).ok_or(WireError("PUBLISH without packet id"))?;
        pos += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    } else {
        None
    };
    if v5 {
        let (props_len, used) = read_varint(&body[pos.min(body.len())..])?;
        pos += used + props_len;
    }
    let payload = body.get(pos..).ok_or(WireError("PUBLISH properties longer than the packet"))?;
    Ok(PublishView { qos, packet_id, topic, payload })
}

/// Packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub fn ack_packet_id(body: &[u8]) -> Result<u16, WireError> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(WireError("acknowledgement without packet id")),
    }
}

fn read_varint(buf: &[u8]) -> Result<(usize, usize), WireError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(WireError("malformed variable byte integer"))
}

/// Decodes a setup-phase frame (CONNACK, SUBACK, ...) with the codec.
pub fn decode_frame(frame: &[u8], version: ProtocolVersion) -> Result<Packet> {
    let mut buf = BytesMut::from(frame);
    let limits = Limits::default();
    match decode(&mut buf, &limits, version) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => bail!("codec: a whole frame decoded as incomplete"),
        Err(e) => bail!("codec: {e}"),
    }
}

/// Checks a CONNACK: accepted or an error naming the reason.
pub fn check_connack(packet: &Packet) -> Result<()> {
    match packet {
        Packet::ConnAck(c) if c.reason.0 == 0 => Ok(()),
        Packet::ConnAck(c) => bail!("CONNACK refused with reason 0x{:02X}", c.reason.0),
        other => bail!("expected CONNACK, got {:?}", other.packet_type()),
    }
}

/// The Receive Maximum a 5.0 CONNACK announces (§3.2.2.3.3): how many QoS 1/2 PUBLISHes
/// the broker accepts unacknowledged from this client.
pub fn receive_maximum(packet: &Packet) -> Option<u16> {
    match packet {
        Packet::ConnAck(c) => c.properties.as_ref().and_then(|p| p.receive_maximum),
        _ => None,
    }
}

/// Checks a SUBACK: every filter granted (reason < 0x80).
pub fn check_suback(packet: &Packet) -> Result<()> {
    match packet {
        Packet::SubAck(s) if s.reasons.iter().all(|r| r.0 < 0x80) => Ok(()),
        Packet::SubAck(s) => bail!("SUBACK refused: {:?}", s.reasons),
        other => bail!("expected SUBACK, got {:?}", other.packet_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_frames() {
        assert_eq!(split_frame(&[]), Ok(None));
        assert_eq!(split_frame(&[0x30]), Ok(None));
        assert_eq!(split_frame(&[0x30, 0x02, 0x00]), Ok(None));
        assert_eq!(split_frame(&[0x30, 0x02, 0x00, 0x00, 0xFF]), Ok(Some((4, 2))));
        // 200 bytes of remaining length: 0xC8 0x01.
        let mut big = vec![0x30, 0xC8, 0x01];
        big.resize(3 + 200, 0);
        assert_eq!(split_frame(&big), Ok(Some((203, 3))));
        assert!(split_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn parse_publish_v311_and_v5() {
        // QoS 1, topic "a/b", packet id 7, payload "xy".
        let body = [0, 3, b'a', b'/', b'b', 0, 7, b'x', b'y'];
        let p = parse_publish(0x32, &body, false).unwrap();
        assert_eq!((p.qos, p.packet_id, p.topic, p.payload), (1, Some(7), &b"a/b"[..], &b"xy"[..]));
        // The same in 5.0 with two bytes of properties (payload format indicator 0).
        let body = [0, 3, b'a', b'/', b'b', 0, 7, 2, 0x01, 0x00, b'x', b'y'];
        let p = parse_publish(0x32, &body, true).unwrap();
        assert_eq!((p.packet_id, p.payload), (Some(7), &b"xy"[..]));
        // QoS 0 without packet id.
        let body = [0, 1, b't', b'z'];
        let p = parse_publish(0x30, &body, false).unwrap();
        assert_eq!((p.qos, p.packet_id, p.payload), (0, None, &b"z"[..]));
        assert!(parse_publish(0x36, &body, false).is_err());
        assert!(parse_publish(0x30, &[0, 9, b't'], false).is_err());
    }

    fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Packet {
        let (len, _) = split_frame(bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        decode_frame(bytes, version).unwrap()
    }

    #[test]
    fn template_frames_decode_to_what_was_patched() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let t = PublishTemplate::new("bench/x/1", q, false, 64, version).unwrap();
                let mut out = Vec::new();
                let h = Header { seq: 41, publisher: 3, sent_ns: 99 };
                t.append(&mut out, (q != QoS::AtMostOnce).then_some(513), &h);
                assert_eq!(out.len(), t.frame_bytes());
                let Packet::Publish(p) = decode_all(&out, version) else { panic!("not a PUBLISH") };
                assert_eq!((p.qos, p.topic.as_str(), p.payload.len()), (q, "bench/x/1", 64));
                assert_eq!(p.packet_id.map(|id| id.get()), (q != QoS::AtMostOnce).then_some(513));
                assert_eq!(Header::read(&p.payload), Some(h));
                // The hot-path parser agrees with the codec.
                let (_, body) = split_frame(&out).unwrap().unwrap();
                let v = parse_publish(out[0], &out[body..], version.is_v5()).unwrap();
                assert_eq!(
                    (v.qos, v.packet_id, v.topic),
                    (q as u8, p.packet_id.map(|i| i.get()), &b"bench/x/1"[..])
                );
                assert_eq!(v.payload, &p.payload[..]);
            }
        }
        assert!(
            PublishTemplate::new("t", QoS::AtMostOnce, false, 19, ProtocolVersion::V3_1_1).is_err()
        );
    }

    #[test]
    fn literal_acks_decode_with_the_codec() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for (k, name) in [
                (kind::PUBACK, "PubAck"),
                (kind::PUBREC, "PubRec"),
                (kind::PUBREL, "PubRel"),
                (kind::PUBCOMP, "PubComp"),
            ] {
                let p = decode_all(&ack(k, 7), version);
                assert!(format!("{p:?}").starts_with(name), "{p:?}");
            }
            assert_eq!(decode_all(&PINGREQ, version), Packet::PingReq);
            assert!(matches!(decode_all(&DISCONNECT, version), Packet::Disconnect(_)));
        }
    }

    #[test]
    fn connect_and_subscribe_round_trip() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let Packet::Connect(c) = decode_all(&connect("bench-1", version, 60).unwrap(), version)
            else {
                panic!("not a CONNECT")
            };
            assert_eq!(
                (c.client_id.as_str(), c.keep_alive_secs, c.clean_start),
                ("bench-1", 60, true)
            );
            let Packet::Subscribe(s) =
                decode_all(&subscribe(1, "a/+", QoS::AtLeastOnce, version).unwrap(), version)
            else {
                panic!("not a SUBSCRIBE")
            };
            assert_eq!(s.filters[0].0.as_str(), "a/+");
            assert_eq!(s.filters[0].1.qos, QoS::AtLeastOnce);
        }
    }

    #[test]
    fn acks_are_literal() {
        assert_eq!(ack(kind::PUBACK, 0x0102), [0x40, 2, 1, 2]);
        assert_eq!(ack(kind::PUBREC, 1), [0x50, 2, 0, 1]);
        assert_eq!(ack(kind::PUBREL, 1), [0x62, 2, 0, 1]);
        assert_eq!(ack(kind::PUBCOMP, 1), [0x70, 2, 0, 1]);
        assert_eq!(ack_packet_id(&[0, 9, 0x10]), Ok(9));
    }
}
