//! CONNECT (3.1 §3.1, 3.1.1 §3.1, 5.0 §3.1).
//!
//! CONNECT is decoded and encoded by its own protocol name and level, whatever the
//! connection's version. The client identifier's length is not checked (3.1 limits it to 23
//! bytes, but brokers accept longer ones); neither is an empty client identifier without
//! Clean Session in 3.1.1 [MQTT-3.1.3-8]: both are accept/reject decisions for the engine
//! (CONNACK 0x02 / 0x85), not wire-format errors.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_binary, put_str, Reader};
use crate::properties::{Properties, PropertyContext};
use crate::topic;
use crate::types::{Connect, PacketType, ProtocolVersion, QoS, Will};

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// The protocol name of a version (§3.1.2.1).
fn protocol_name(v: ProtocolVersion) -> &'static [u8] {
    match v {
        ProtocolVersion::V3_1 => b"MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => b"MQTT",
    }
}

/// Decodes the body of a CONNECT.
pub(crate) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let name: &[u8] = name.as_bytes();
    if name != b"MQTT".as_slice() && name != b"MQIsdp".as_slice() {
        return Err(DecodeError::ProtocolNameInvalid);
    }
    // Levels 0x83 / 0x84 are 3.1 / 3.1.1 with the high bit set: Mosquitto's private marker
    // of a bridge (`try_private`), not in the specification. They decode as their version;
    // `peek_connect_bridge` tells the broker it is a bridge.
    let protocol = match level {
        3 | 0x83 => ProtocolVersion::V3_1,
        4 | 0x84 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocolLevel { level }),
    };
    if name != protocol_name(protocol) {
        return Err(DecodeError::ProtocolNameInvalid);
    }
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & FLAG_RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & FLAG_WILL != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    if !will_flag {
        if will_qos_bits != 0 {
            return Err(DecodeError::WillQoSWithoutWill);
        }
        if will_retain {
            return Err(DecodeError::WillRetainWithoutWill);
        }
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::WillQoSInvalid)?;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    if has_password && !has_username && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }

    let keep_alive_secs = r.u16()?;
    let properties = if v5 {
        Properties::decode(&mut r, PacketType::Connect.into())?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            Properties::decode(&mut r, PropertyContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        // The will topic is a topic name [MQTT-3.1.3-11]: non-empty, no wildcards.
        topic::validate_topic_name(&topic)?;
        let payload = r.binary()?;
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            return Err(DecodeError::PayloadFormatInvalid);
        }
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & FLAG_CLEAN != 0,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// The remaining length of `c` (encoded with its own protocol version).
pub(crate) fn body_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    let mut n = field_len(protocol_name(c.protocol)) + 1 + 1 + 2;
    if v5 {
        n += c.properties.block_len();
    }
    n += field_len(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            n += w.properties.block_len();
        }
        n += field_len(w.topic.as_bytes()) + field_len(&w.payload);
    }
    if let Some(u) = &c.username {
        n += field_len(u.as_bytes());
    }
    if let Some(p) = c.password.as_ref().filter(|_| v5 || c.username.is_some()) {
        n += field_len(p);
    }
    n
}

/// Appends the body of `c`. Before 5.0 a password without a user name cannot be expressed
/// [MQTT-3.1.2-22]: it is dropped.
pub(crate) fn encode_body(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    put_binary(out, protocol_name(c.protocol))?;
    out.put_u8(c.protocol.level());
    let mut flags = 0;
    if c.clean_start {
        flags |= FLAG_CLEAN;
    }
    if let Some(w) = &c.will {
        flags |= FLAG_WILL | ((w.qos as u8) << 3);
        if w.retain {
            flags |= FLAG_WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= FLAG_USERNAME;
    }
    let password = c.password.as_ref().filter(|_| v5 || c.username.is_some());
    if password.is_some() {
        flags |= FLAG_PASSWORD;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive_secs);
    if v5 {
        c.properties.encode(PacketType::Connect.into(), out)?;
    }
    put_str(out, &c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            w.properties.encode(PropertyContext::Will, out)?;
        }
        put_str(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_str(out, u)?;
    }
    if let Some(p) = password {
        put_binary(out, p)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
