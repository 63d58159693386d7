//! What `encode` checks before writing: the rules the decoder enforces on what it reads, so
//! the encoder never emits a packet that its own decoder, and so a conforming peer, rejects.
//! A broken rule is reported as [`EncodeError::Invalid`] carrying the [`DecodeError`] the
//! receiver would answer with (which names the spec rule).
//!
//! The checks are cheap: flags, list lengths, reason codes by packet type, property values;
//! topic names and filters are scanned once (a PUBLISH topic with the decoder's
//! word-at-a-time pass); a payload is scanned only when its Payload Format Indicator says
//! UTF-8. Cost, `perf/benches/codec.rs` (PUBLISH, 39-byte topic, 256 per batch, loaded
//! 2-core machine, 2026-12-07): `encode` 3.4 → 7.8 µs per batch for 16 B payloads (~17 ns per
//! packet; 12.3 µs with a byte-by-byte topic scan). The broker's outgoing PUBLISH path does
//! not pay it: it uses `encode_publish_header` on topics it decoded (and so validated) itself.
//!
//! What is not re-checked: what the model's types already guarantee (`ByteStr` is UTF-8,
//! `PacketId` is non-zero, `QoS` is 0–2) and the fan-out path's `encode_publish_header`,
//! whose input is a PUBLISH the engine decoded (and so validated) itself.

use crate::error::{DecodeError, EncodeError};
use crate::properties::Properties;
use crate::reason::ReasonCode;
use crate::topic::{validate_topic_filter, validate_topic_name};
use crate::types::{Packet, ProtocolVersion, Publish};

/// Checks `packet` against the rules its receiver enforces, for `version`.
pub(crate) fn check(packet: &Packet, version: ProtocolVersion) -> Result<(), EncodeError> {
    check_packet(packet, version).map_err(EncodeError::Invalid)
}

fn check_packet(packet: &Packet, version: ProtocolVersion) -> Result<(), DecodeError> {
    let v5 = version.is_v5();
    let t = packet.packet_type();
    let reason_ok = |reason: ReasonCode| {
        if !v5 || reason.is_valid_for(t, version) {
            Ok(())
        } else {
            Err(DecodeError::InvalidReasonCode { packet: t, code: reason.0 })
        }
    };
    match packet {
        Packet::Publish(p) => check_publish(p, v5)?,
        Packet::ConnAck(c) => {
            reason_ok(c.reason)?;
            // [MQTT-3.2.2-4] (5.0: [MQTT-3.2.2-6]): Session Present is 0 with a failure code.
            if c.session_present && c.reason != ReasonCode::SUCCESS {
                return Err(DecodeError::SessionPresentWithError);
            }
            check_props(c.properties.as_deref(), v5)?;
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            reason_ok(r.reason)?;
            check_props(r.properties.as_deref(), v5)?;
        }
        Packet::SubAck(s) => {
            // [MQTT-3.9.3-1]: one reason code per topic filter of the SUBSCRIBE (at least one).
            if s.reasons.is_empty() {
                return Err(DecodeError::NoReasonCodes { packet: t });
            }
            // Before 5.0 every failure is written as 0x80, so any failure code is fine.
            for &r in &s.reasons {
                if !(r.is_valid_for(t, version) || !v5 && r.is_error()) {
                    return Err(DecodeError::InvalidReasonCode { packet: t, code: r.0 });
                }
            }
            check_props(s.properties.as_deref(), v5)?;
        }
        Packet::UnsubAck(u) if v5 => {
            // 5.0 [MQTT-3.11.3-1]: one reason code per topic filter (at least one).
            if u.reasons.is_empty() {
                return Err(DecodeError::NoReasonCodes { packet: t });
            }
            u.reasons.iter().try_for_each(|&r| reason_ok(r))?;
            check_props(u.properties.as_deref(), v5)?;
        }
        Packet::Subscribe(s) => {
            // [MQTT-3.8.3-3]: at least one topic filter.
            if s.filters.is_empty() {
                return Err(DecodeError::SubscribeNoFilters);
            }
            for (filter, _) in &s.filters {
                validate_topic_filter(filter, v5)?;
            }
            check_props(s.properties.as_deref(), v5)?;
        }
        Packet::Unsubscribe(u) => {
            // [MQTT-3.10.3-2]: at least one topic filter.
            if u.filters.is_empty() {
                return Err(DecodeError::UnsubscribeNoFilters);
            }
            for filter in &u.filters {
                validate_topic_filter(filter, v5)?;
            }
            check_props(u.properties.as_deref(), v5)?;
        }
        Packet::Disconnect(d) => {
            reason_ok(d.reason)?;
            check_props(d.properties.as_deref(), v5)?;
        }
        Packet::Connect(c) => {
            let v5 = c.protocol.is_v5();
            check_props(Some(&c.properties), v5)?;
            if let Some(w) = &c.will {
                // [MQTT-3.1.3-11]: the will topic is a valid topic name.
                validate_topic_name(&w.topic)?;
                check_props(Some(&w.properties), v5)?;
                check_payload_format(Some(&w.properties), &w.payload, v5)?;
            }
        }
        Packet::Auth(a) => {
            reason_ok(a.reason)?;
            check_props(a.properties.as_deref(), v5)?;
        }
        Packet::UnsubAck(_) | Packet::PingReq | Packet::PingResp => {}
    }
    Ok(())
}

fn check_publish(p: &Publish, v5: bool) -> Result<(), DecodeError> {
    let props = p.properties.as_deref();
    if p.topic.is_empty() {
        // 5.0 §3.3.2.3.4: an empty topic name only with a Topic Alias (3.1.1: the existing
        // `EncodeError::EmptyTopic`, checked by the PUBLISH encoder).
        if v5 && props.and_then(|p| p.topic_alias).is_none() {
            return Err(DecodeError::TopicNameEmpty);
        }
    } else {
        // [MQTT-3.3.2-2]: no wildcard characters in a topic name (and no U+0000, [MQTT-1.5.4-2]).
        // The decoder's word-at-a-time pass: this runs for every PUBLISH `encode` writes.
        crate::primitives::validate_topic_name(p.topic.as_bytes())?;
    }
    check_props(props, v5)?;
    check_payload_format(props, &p.payload, v5)
}

/// [MQTT-3.3.2-4]: a payload marked UTF-8 (Payload Format Indicator 1) is UTF-8.
fn check_payload_format(
    props: Option<&Properties>,
    payload: &[u8],
    v5: bool,
) -> Result<(), DecodeError> {
    if v5
        && props.is_some_and(|p| p.payload_format_indicator == Some(1))
        && std::str::from_utf8(payload).is_err()
    {
        return Err(DecodeError::PayloadFormatInvalid);
    }
    Ok(())
}

/// The value rules the property decoder enforces (5.0 §2.2.2.2). Properties are not written
/// before 5.0, so nothing is checked there.
fn check_props(props: Option<&Properties>, v5: bool) -> Result<(), DecodeError> {
    let Some(p) = props.filter(|_| v5) else {
        return Ok(());
    };
    let invalid = |id: u8| DecodeError::InvalidPropertyValue { id };
    // Byte properties that may only be 0 or 1.
    for (value, id) in [
        (p.payload_format_indicator, 0x01),
        (p.request_problem_information, 0x17),
        (p.request_response_information, 0x19),
        (p.maximum_qos, 0x24),
        (p.retain_available, 0x25),
        (p.wildcard_subscription_available, 0x28),
        (p.subscription_identifier_available, 0x29),
        (p.shared_subscription_available, 0x2A),
    ] {
        if value.is_some_and(|v| v > 1) {
            return Err(invalid(id));
        }
    }
    if p.topic_alias == Some(0) {
        return Err(DecodeError::TopicAliasZero);
    }
    if p.receive_maximum == Some(0) {
        return Err(invalid(0x21));
    }
    if p.maximum_packet_size == Some(0) {
        return Err(invalid(0x27));
    }
    if p.subscription_identifiers.contains(&0) {
        return Err(DecodeError::SubscriptionIdentifierZero);
    }
    // [MQTT-3.3.2-14]: the Response Topic is a topic name.
    if p.response_topic.as_ref().is_some_and(|t| validate_topic_name(t).is_err()) {
        return Err(DecodeError::ResponseTopicInvalid);
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}
