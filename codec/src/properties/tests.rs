//! Tests of the property table and of property blocks.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::error::{DecodeError, EncodeError};
use crate::primitives::Reader;

const ALL_CONTEXTS: [PropertyContext; 15] = [
    PropertyContext::Will,
    PropertyContext::Packet(PacketType::Connect),
    PropertyContext::Packet(PacketType::ConnAck),
    PropertyContext::Packet(PacketType::Publish),
    PropertyContext::Packet(PacketType::PubAck),
    PropertyContext::Packet(PacketType::PubRec),
    PropertyContext::Packet(PacketType::PubRel),
    PropertyContext::Packet(PacketType::PubComp),
    PropertyContext::Packet(PacketType::Subscribe),
    PropertyContext::Packet(PacketType::SubAck),
    PropertyContext::Packet(PacketType::Unsubscribe),
    PropertyContext::Packet(PacketType::UnsubAck),
    PropertyContext::Packet(PacketType::PingReq),
    PropertyContext::Packet(PacketType::Disconnect),
    PropertyContext::Packet(PacketType::Auth),
];

/// The table of §2.2.2.2, written out independently of the masks: (id, wire type, where).
fn spec_table() -> Vec<(u8, PropertyType, &'static str)> {
    use PropertyType::*;
    vec![
        (0x01, Byte, "PUBLISH Will"),
        (0x02, FourByteInteger, "PUBLISH Will"),
        (0x03, Utf8String, "PUBLISH Will"),
        (0x08, Utf8String, "PUBLISH Will"),
        (0x09, BinaryData, "PUBLISH Will"),
        (0x0B, VariableByteInteger, "PUBLISH SUBSCRIBE"),
        (0x11, FourByteInteger, "CONNECT CONNACK DISCONNECT"),
        (0x12, Utf8String, "CONNACK"),
        (0x13, TwoByteInteger, "CONNACK"),
        (0x15, Utf8String, "CONNECT CONNACK AUTH"),
        (0x16, BinaryData, "CONNECT CONNACK AUTH"),
        (0x17, Byte, "CONNECT"),
        (0x18, FourByteInteger, "Will"),
        (0x19, Byte, "CONNECT"),
        (0x1A, Utf8String, "CONNACK"),
        (0x1C, Utf8String, "CONNACK DISCONNECT"),
        (0x1F, Utf8String, "CONNACK PUBACK PUBREC PUBREL PUBCOMP SUBACK UNSUBACK DISCONNECT AUTH"),
        (0x21, TwoByteInteger, "CONNECT CONNACK"),
        (0x22, TwoByteInteger, "CONNECT CONNACK"),
        (0x23, TwoByteInteger, "PUBLISH"),
        (0x24, Byte, "CONNACK"),
        (0x25, Byte, "CONNACK"),
        (
            0x26,
            Utf8StringPair,
            "CONNECT CONNACK PUBLISH Will PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE SUBACK \
             UNSUBSCRIBE UNSUBACK DISCONNECT AUTH",
        ),
        (0x27, FourByteInteger, "CONNECT CONNACK"),
        (0x28, Byte, "CONNACK"),
        (0x29, Byte, "CONNACK"),
        (0x2A, Byte, "CONNACK"),
    ]
}

fn context_name(ctx: PropertyContext) -> &'static str {
    match ctx {
        PropertyContext::Will => "Will",
        PropertyContext::Packet(t) => match t {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        },
    }
}

#[test]
fn table_matches_the_spec() {
    let table = spec_table();
    assert_eq!(table.len(), PropertyId::ALL.len());
    for (id, ty, contexts) in table {
        let p = PropertyId::from_u8(id).unwrap_or_else(|| panic!("{id:#04x} missing"));
        assert_eq!(p as u8, id);
        assert_eq!(p.wire_type(), ty, "{p:?}");
        for ctx in ALL_CONTEXTS {
            let name = context_name(ctx);
            let expected = contexts.split_whitespace().any(|c| c == name);
            assert_eq!(p.allowed_in(ctx), expected, "{p:?} in {name}");
        }
    }
    for id in 0..=255u8 {
        let defined = PropertyId::ALL.iter().any(|p| *p as u8 == id);
        assert_eq!(PropertyId::from_u8(id).is_some(), defined, "{id:#04x}");
    }
    assert!(PropertyId::UserProperty.repeatable_in(PacketType::PubAck));
    assert!(PropertyId::SubscriptionIdentifier.repeatable_in(PacketType::Publish));
    assert!(!PropertyId::SubscriptionIdentifier.repeatable_in(PacketType::Subscribe));
    assert!(!PropertyId::ReasonString.repeatable_in(PacketType::PubAck));
}

fn decode_block(ctx: impl Into<PropertyContext>, block: &[u8]) -> Result<Properties, DecodeError> {
    let mut r = Reader::new(Bytes::copy_from_slice(block));
    let p = Properties::decode(&mut r, ctx.into())?;
    r.finish()?;
    Ok(p)
}

/// A minimal valid encoding of a property's value (non-zero, 0/1 for bytes, a topic name for
/// strings).
fn sample_value(p: PropertyId) -> Vec<u8> {
    match p.wire_type() {
        PropertyType::Byte => vec![1],
        PropertyType::TwoByteInteger => vec![0, 1],
        PropertyType::FourByteInteger => vec![0, 0, 0, 1],
        PropertyType::VariableByteInteger => vec![1],
        PropertyType::Utf8String | PropertyType::BinaryData => vec![0, 1, b'x'],
        PropertyType::Utf8StringPair => vec![0, 1, b'k', 0, 1, b'v'],
    }
}

/// A context that allows `p`.
fn some_context(p: PropertyId) -> PropertyContext {
    ALL_CONTEXTS.into_iter().find(|c| p.allowed_in(*c)).unwrap()
}

fn block(entries: &[(PropertyId, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, v) in entries {
        body.push(*id as u8);
        body.extend_from_slice(v);
    }
    let mut out = vec![body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn every_property_roundtrips_and_at_most_once_ones_reject_duplicates() {
    for p in PropertyId::ALL {
        let ctx = some_context(p);
        let one = block(&[(p, sample_value(p))]);
        let props = match decode_block(ctx, &one) {
            // Authentication Data needs a method; add one.
            Err(DecodeError::AuthDataWithoutMethod) => {
                let m = PropertyId::AuthenticationMethod;
                let two = block(&[(m, sample_value(m)), (p, sample_value(p))]);
                decode_block(ctx, &two).unwrap()
            }
            other => {
                let props = other.unwrap_or_else(|e| panic!("{p:?}: {e}"));
                let mut out = BytesMut::new();
                props.encode(ctx, &mut out).unwrap();
                assert_eq!(&out[..], &one[..], "{p:?}");
                assert_eq!(props.block_len(), one.len());
                props
            }
        };
        assert!(!props.is_empty());
        let twice = block(&[(p, sample_value(p)), (p, sample_value(p))]);
        let r = decode_block(ctx, &twice);
        if p.repeatable_in(ctx) {
            assert!(r.is_ok(), "{p:?}: {r:?}");
        } else if p != PropertyId::AuthenticationData {
            assert_eq!(r, Err(DecodeError::DuplicateProperty { id: p as u8 }), "{p:?}");
        }
        // Everywhere else, not allowed.
        for other in ALL_CONTEXTS.into_iter().filter(|c| !p.allowed_in(*c)) {
            assert_eq!(
                decode_block(other, &one),
                Err(DecodeError::PropertyNotAllowed { id: p as u8 }),
                "{p:?} in {}",
                context_name(other)
            );
        }
    }
}

#[test]
fn byte_properties_are_0_or_1() {
    for p in PropertyId::ALL.into_iter().filter(|p| p.wire_type() == PropertyType::Byte) {
        let ctx = some_context(p);
        assert!(decode_block(ctx, &block(&[(p, vec![0])])).is_ok(), "{p:?}");
        assert_eq!(
            decode_block(ctx, &block(&[(p, vec![2])])),
            Err(DecodeError::InvalidPropertyValue { id: p as u8 }),
            "{p:?}"
        );
    }
}

#[test]
fn zero_values() {
    use PropertyId::*;
    let connect = PacketType::Connect;
    assert_eq!(
        decode_block(connect, &block(&[(ReceiveMaximum, vec![0, 0])])),
        Err(DecodeError::InvalidPropertyValue { id: 0x21 })
    );
    assert_eq!(
        decode_block(connect, &block(&[(MaximumPacketSize, vec![0, 0, 0, 0])])),
        Err(DecodeError::InvalidPropertyValue { id: 0x27 })
    );
    assert_eq!(
        decode_block(PacketType::Publish, &block(&[(TopicAlias, vec![0, 0])])),
        Err(DecodeError::TopicAliasZero)
    );
    assert_eq!(
        decode_block(PacketType::Subscribe, &block(&[(SubscriptionIdentifier, vec![0])])),
        Err(DecodeError::SubscriptionIdentifierZero)
    );
    // Zero is fine where the spec allows it.
    assert!(decode_block(connect, &block(&[(TopicAliasMaximum, vec![0, 0])])).is_ok());
    assert!(decode_block(connect, &block(&[(SessionExpiryInterval, vec![0; 4])])).is_ok());
}

#[test]
fn canonical_order_and_repeatable_order() {
    use PropertyId::*;
    // On the wire: user properties interleaved, identifiers out of order.
    let wire = block(&[
        (UserProperty, vec![0, 1, b'b', 0, 0]),
        (SubscriptionIdentifier, vec![0x80, 0x01]),
        (MessageExpiryInterval, vec![0, 0, 0, 9]),
        (UserProperty, vec![0, 1, b'a', 0, 0]),
        (SubscriptionIdentifier, vec![0x02]),
    ]);
    let p = decode_block(PacketType::Publish, &wire).unwrap();
    assert_eq!(p.subscription_identifiers, vec![128, 2]);
    let keys: Vec<&str> = p.user_properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "a"]);
    let mut out = BytesMut::new();
    p.encode(PacketType::Publish.into(), &mut out).unwrap();
    let canonical = block(&[
        (MessageExpiryInterval, vec![0, 0, 0, 9]),
        (SubscriptionIdentifier, vec![0x80, 0x01]),
        (SubscriptionIdentifier, vec![0x02]),
        (UserProperty, vec![0, 1, b'b', 0, 0]),
        (UserProperty, vec![0, 1, b'a', 0, 0]),
    ]);
    assert_eq!(&out[..], &canonical[..]);
    assert_eq!(decode_block(PacketType::Publish, &out).unwrap(), p);
}

#[test]
fn identifiers_and_lengths() {
    // A two-byte identifier (128) is unknown; a non-minimal one is malformed.
    assert_eq!(
        decode_block(PacketType::Publish, &[0x02, 0x80, 0x01]),
        Err(DecodeError::UnknownProperty { id: 128 })
    );
    assert_eq!(
        decode_block(PacketType::Publish, &[0x02, 0x81, 0x00]),
        Err(DecodeError::VarIntNotMinimal)
    );
    assert_eq!(
        decode_block(PacketType::Publish, &[0x03, 0x80, 0x80, 0x01]),
        Err(DecodeError::UnknownProperty { id: u8::MAX })
    );
    // The block is shorter than its declared length.
    assert_eq!(decode_block(PacketType::Publish, &[0x05, 0x01, 0x01]), Err(DecodeError::Truncated));
    // A value crosses the end of the block (into what would be the payload).
    assert_eq!(
        decode_block(PacketType::Publish, &[0x02, 0x23, 0x00, 0x01]),
        Err(DecodeError::Truncated)
    );
    // Bad strings inside properties.
    assert_eq!(
        decode_block(PacketType::PubAck, &[0x04, 0x1F, 0x00, 0x01, 0x00]),
        Err(DecodeError::Utf8Null)
    );
    assert_eq!(
        decode_block(PacketType::PubAck, &[0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xC0]),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn encode_errors() {
    let p = Properties { topic_alias: Some(1), ..Properties::default() };
    assert_eq!(
        p.encode(PacketType::Connect.into(), &mut BytesMut::new()),
        Err(EncodeError::PropertyNotAllowed { id: 0x23 })
    );
    let p = Properties {
        subscription_identifiers: vec![crate::VARINT_MAX + 1],
        ..Properties::default()
    };
    assert_eq!(
        p.encode(PacketType::Publish.into(), &mut BytesMut::new()),
        Err(EncodeError::VarIntOutOfRange)
    );
}
