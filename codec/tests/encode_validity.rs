//! The encoder never silently emits a packet that its own decoder (and so a conforming peer)
//! rejects. Given a model that breaks a rule, `encode` may return an error, repair the packet
//! (e.g. clear DUP on QoS 0), or assert (a programmer error): all three pass here. Writing
//! the malformed bytes does not.
//!
//! `publish_qos0_dup_is_never_emitted` is the case the engine can realistically hit: it
//! downgrades a PUBLISH to a QoS 0 subscriber, and the inbound message may carry DUP.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use shardmq_codec::*;

fn big_limits() -> Limits {
    Limits { packet_size_max_bytes: 268_435_460 }
}

/// `None` when fine (error, panic, or decodable output); otherwise the failure.
fn check(name: &str, p: &Packet, v: ProtocolVersion) -> Option<String> {
    let mut out = BytesMut::new();
    let r = catch_unwind(AssertUnwindSafe(|| encode(p, v, &mut out)));
    match r {
        Err(_) | Ok(Err(_)) => None,
        Ok(Ok(())) => {
            let wire = out.to_vec();
            match decode(&mut out, &big_limits(), v) {
                Ok(Some(_)) => None,
                other => {
                    Some(format!("{name} ({v:?}): encoded {wire:02x?}, which decodes to {other:?}"))
                }
            }
        }
    }
}

fn publish() -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteStr::from("a/b"),
        packet_id: PacketId::new(1),
        payload: Bytes::from_static(b"x"),
        properties: None,
    }
}

fn with_props(p: Properties) -> Option<Box<Properties>> {
    Some(Box::new(p))
}

fn pid() -> PacketId {
    PacketId::new(1).unwrap()
}

#[test]
fn publish_qos0_dup_is_never_emitted() {
    // [MQTT-3.3.1-2]: the DUP flag MUST be 0 for QoS 0.
    let p = Publish { qos: QoS::AtMostOnce, dup: true, packet_id: None, ..publish() };
    let mut failures = Vec::new();
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        failures.extend(check("PUBLISH QoS 0 with DUP", &Packet::Publish(p.clone()), v));
        // The fan-out path must not emit it either.
        let mut out = BytesMut::new();
        let r = catch_unwind(AssertUnwindSafe(|| encode_publish_header(&p, v, &mut out)));
        if let Ok(Ok(_)) = r {
            if out[0] & 0x08 != 0 {
                failures.push(format!(
                    "encode_publish_header ({v:?}): DUP set on QoS 0: {:02x?}",
                    &out[..]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `encode` checks each of these (`codec/src/encode_check.rs`) and returns
/// `EncodeError::Invalid`; see `codec/tests/BUGS_FOUND.md` §2.
#[test]
fn encoder_never_emits_what_its_decoder_rejects() {
    use ProtocolVersion::{V3_1_1 as V311, V5};
    let cases: Vec<(&str, Packet, ProtocolVersion)> = vec![
        (
            "PUBLISH topic with a wildcard",
            Packet::Publish(Publish { topic: ByteStr::from("a/#"), ..publish() }),
            V311,
        ),
        (
            "PUBLISH empty topic without a Topic Alias",
            Packet::Publish(Publish { topic: ByteStr::default(), ..publish() }),
            V5,
        ),
        (
            "PUBLISH Topic Alias 0",
            Packet::Publish(Publish {
                properties: with_props(Properties { topic_alias: Some(0), ..Default::default() }),
                ..publish()
            }),
            V5,
        ),
        (
            "PUBLISH Payload Format Indicator 1 with a non-UTF-8 payload",
            Packet::Publish(Publish {
                payload: Bytes::from_static(&[0xFF]),
                properties: with_props(Properties {
                    payload_format_indicator: Some(1),
                    ..Default::default()
                }),
                ..publish()
            }),
            V5,
        ),
        (
            "PUBLISH Response Topic with a wildcard",
            Packet::Publish(Publish {
                properties: with_props(Properties {
                    response_topic: Some(ByteStr::from("r/+")),
                    ..Default::default()
                }),
                ..publish()
            }),
            V5,
        ),
        (
            "CONNACK session present with an error code",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ReasonCode::NOT_AUTHORIZED,
                properties: None,
            }),
            V5,
        ),
        (
            "CONNACK reason code not valid in CONNACK",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: None,
            }),
            V5,
        ),
        (
            "CONNACK Maximum QoS 2",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::SUCCESS,
                properties: with_props(Properties { maximum_qos: Some(2), ..Default::default() }),
            }),
            V5,
        ),
        (
            "SUBACK without reason codes",
            Packet::SubAck(SubAck { packet_id: pid(), reasons: vec![], properties: None }),
            V311,
        ),
        (
            "SUBACK without reason codes",
            Packet::SubAck(SubAck { packet_id: pid(), reasons: vec![], properties: None }),
            V5,
        ),
        (
            "UNSUBACK without reason codes",
            Packet::UnsubAck(UnsubAck { packet_id: pid(), reasons: vec![], properties: None }),
            V5,
        ),
        (
            "PUBACK reason code not valid in PUBACK",
            Packet::PubAck(PubResp {
                packet_id: pid(),
                reason: ReasonCode(0x05),
                properties: None,
            }),
            V5,
        ),
        (
            "DISCONNECT reason code not valid in DISCONNECT",
            Packet::Disconnect(Disconnect { reason: ReasonCode(0x01), properties: None }),
            V5,
        ),
        (
            "SUBSCRIBE without filters",
            Packet::Subscribe(Subscribe { packet_id: pid(), filters: vec![], properties: None }),
            V311,
        ),
        (
            "SUBSCRIBE invalid filter",
            Packet::Subscribe(Subscribe {
                packet_id: pid(),
                filters: vec![(ByteStr::from("a#"), SubscriptionOptions::default())],
                properties: None,
            }),
            V311,
        ),
        (
            "UNSUBSCRIBE without filters",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(),
                filters: vec![],
                properties: None,
            }),
            V311,
        ),
    ];
    let failures: Vec<String> =
        cases.iter().filter_map(|(name, p, v)| check(name, p, *v)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} invalid models were encoded into packets the decoder rejects:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
