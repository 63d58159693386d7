//! Proptest strategies for the properties each packet may carry (MQTT 5.0 §2.2.2), with
//! their allowed values: used by `strategies.rs` to build whole packets.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use shardmq_codec::*;

use super::strategies::{binary, mqtt_string, mqtt_string_nonempty, topic_name};

pub(crate) fn rare<S: Strategy>(s: S) -> option::OptionStrategy<S> {
    option::weighted(0.25, s)
}

pub(crate) fn user_properties() -> BoxedStrategy<Vec<(ByteStr, ByteStr)>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => vec((mqtt_string(6), mqtt_string(6)), 1..4),
    ]
    .boxed()
}

pub(crate) fn boxed_or_none(p: Properties) -> Option<Box<Properties>> {
    if p.is_empty() {
        None
    } else {
        Some(Box::new(p))
    }
}

/// Variable byte integer range of a subscription identifier.
pub(crate) const SUB_ID_MAX: u32 = 268_435_455;

/// Properties of PUBLISH (§3.3.2.3). `topic_alias` is forced when `need_alias`. With
/// Payload Format Indicator 1 the caller must use a UTF-8 payload.
pub(crate) fn publish_properties(need_alias: bool) -> BoxedStrategy<Properties> {
    (
        rare(0u8..=1),
        rare(any::<u32>()),
        rare(mqtt_string(8)),
        rare(topic_name()),
        rare(binary(8)),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(1u32..=SUB_ID_MAX, 1..3)],
        if need_alias {
            (1u16..=u16::MAX).prop_map(Some).boxed()
        } else {
            rare(1u16..=u16::MAX).boxed()
        },
        user_properties(),
    )
        .prop_map(|(pfi, mei, ct, rt, cd, sids, alias, up)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval_secs: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: sids,
            topic_alias: alias,
            user_properties: up,
            ..Properties::default()
        })
        .boxed()
}

/// Properties of a will (§3.1.3.2).
pub(crate) fn will_properties() -> BoxedStrategy<Properties> {
    (
        rare(any::<u32>()),
        rare(0u8..=1),
        rare(any::<u32>()),
        rare(mqtt_string(8)),
        rare(topic_name()),
        rare(binary(8)),
        user_properties(),
    )
        .prop_map(|(delay, pfi, mei, ct, rt, cd, up)| Properties {
            will_delay_interval_secs: delay,
            payload_format_indicator: pfi,
            message_expiry_interval_secs: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            ..Properties::default()
        })
        .boxed()
}

/// Authentication method and data; data only with a method (§3.1.2.11.10).
pub(crate) fn auth_method_data() -> BoxedStrategy<(Option<ByteStr>, Option<Bytes>)> {
    prop_oneof![
        3 => Just((None, None)),
        1 => (mqtt_string_nonempty(8), rare(binary(8))).prop_map(|(m, d)| (Some(m), d)),
    ]
    .boxed()
}

/// Properties of CONNECT (§3.1.2.11).
pub(crate) fn connect_properties() -> BoxedStrategy<Properties> {
    (
        rare(any::<u32>()),
        rare(1u16..=u16::MAX),
        rare(1u32..=u32::MAX),
        rare(any::<u16>()),
        rare(0u8..=1),
        rare(0u8..=1),
        user_properties(),
        auth_method_data(),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, up, (am, ad))| Properties {
            session_expiry_interval_secs: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties: up,
            authentication_method: am,
            authentication_data: ad,
            ..Properties::default()
        })
        .boxed()
}

/// Properties of CONNACK (§3.2.2.3).
pub(crate) fn connack_properties() -> BoxedStrategy<Properties> {
    (
        (
            rare(any::<u32>()),
            rare(1u16..=u16::MAX),
            rare(0u8..=1),
            rare(0u8..=1),
            rare(1u32..=u32::MAX),
            rare(mqtt_string(8)),
            rare(any::<u16>()),
            rare(mqtt_string(8)),
        ),
        (
            user_properties(),
            rare(0u8..=1),
            rare(0u8..=1),
            rare(0u8..=1),
            rare(any::<u16>()),
            rare(mqtt_string(8)),
            rare(mqtt_string(8)),
            auth_method_data(),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs), (up, wsa, sia, ssa, ska, ri, sr, (am, ad)))| {
                Properties {
                    session_expiry_interval_secs: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifier_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive_secs: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                    ..Properties::default()
                }
            },
        )
        .boxed()
}

/// Reason String + User Property: PUBACK..PUBCOMP, SUBACK, UNSUBACK.
pub(crate) fn reason_string_user_properties() -> BoxedStrategy<Properties> {
    (rare(mqtt_string(8)), user_properties())
        .prop_map(|(rs, up)| Properties {
            reason_string: rs,
            user_properties: up,
            ..Properties::default()
        })
        .boxed()
}
