//! Proptest strategies that generate every *valid* [`Packet`] for a protocol version.
//!
//! "Valid" means what a conforming peer may put on the wire, in the canonical form the model
//! uses for it:
//! - 3.1/3.1.1 packets carry no properties (`None` / empty) and only the reason codes the old
//!   versions can express (CONNACK return codes 0..=5, SUBACK 0/1/2/0x80, `Success` elsewhere);
//! - 5.0 packets carry random properties, but only the ones allowed in that packet, with
//!   their allowed values, and `None` (never `Some(empty)`) when there are none;
//! - packet ids are non-zero, QoS 0 PUBLISH has no packet id and no DUP flag;
//! - topic names have no wildcards, topic filters are well-formed (incl. `$share/g/f`).

use std::num::NonZeroU16;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use shardmq_codec::*;

use super::properties::*;

/// A string with no control characters (the spec's "SHOULD NOT" set) and no U+0000.
pub fn mqtt_string(max_chars: usize) -> BoxedStrategy<ByteStr> {
    proptest::string::string_regex(&format!("\\PC{{0,{max_chars}}}"))
        .unwrap()
        .prop_map(ByteStr::from)
        .boxed()
}

/// A non-empty [`mqtt_string`].
pub fn mqtt_string_nonempty(max_chars: usize) -> BoxedStrategy<ByteStr> {
    proptest::string::string_regex(&format!("\\PC{{1,{max_chars}}}"))
        .unwrap()
        .prop_map(ByteStr::from)
        .boxed()
}

/// Binary data.
pub fn binary(max_len: usize) -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..=max_len).prop_map(Bytes::from).boxed()
}

/// One topic level: no `+`, `#`, `/`, control characters or U+0000. May be empty.
fn topic_level() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_]{0,6}",
        1 => "[^+#/\\p{C}]{0,4}",
        1 => Just(String::new()),
    ]
}

/// A valid, non-empty topic name (no wildcards) [MQTT-4.7.1-1], [MQTT-4.7.3-1].
pub fn topic_name() -> BoxedStrategy<ByteStr> {
    vec(topic_level(), 1..5)
        .prop_map(|levels| {
            let t = levels.join("/");
            if t.is_empty() {
                ByteStr::from("t")
            } else {
                ByteStr::from(t)
            }
        })
        .boxed()
}

/// A valid topic filter: `+` occupies a whole level, `#` only as the whole last level
/// [MQTT-4.7.1-2], [MQTT-4.7.1-3]. Not shared.
pub fn plain_topic_filter() -> BoxedStrategy<ByteStr> {
    (vec(prop_oneof![3 => topic_level(), 1 => Just("+".to_string())], 1..5), any::<bool>())
        .prop_map(|(mut levels, multi)| {
            if multi {
                levels.push("#".to_string());
            }
            let f = levels.join("/");
            if f.is_empty() {
                ByteStr::from("#")
            } else {
                ByteStr::from(f)
            }
        })
        .boxed()
}

/// A shared subscription `$share/{group}/{filter}` (5.0 §4.8.2; a group name has no `/`,
/// `+` or `#`).
pub fn shared_topic_filter() -> BoxedStrategy<ByteStr> {
    ("[a-zA-Z0-9_\\-]{1,8}", plain_topic_filter())
        .prop_map(|(g, f)| ByteStr::from(format!("$share/{g}/{}", &*f)))
        .boxed()
}

/// Any valid filter for `version` (shared subscriptions only in 5.0; in 3.1.1 a `$share/...`
/// string is an ordinary filter, so it is generated too).
pub fn topic_filter() -> BoxedStrategy<ByteStr> {
    prop_oneof![4 => plain_topic_filter(), 1 => shared_topic_filter()].boxed()
}

/// A non-zero packet identifier.
pub fn packet_id() -> BoxedStrategy<PacketId> {
    (1u16..=u16::MAX).prop_map(|v| PacketId(NonZeroU16::new(v).unwrap())).boxed()
}

/// Any QoS.
pub fn qos() -> BoxedStrategy<QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)].boxed()
}

fn codes(list: &'static [u8]) -> BoxedStrategy<ReasonCode> {
    proptest::sample::select(list).prop_map(ReasonCode).boxed()
}

/// CONNACK reason codes (§3.2.2.2).
pub const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK / PUBREC reason codes (§3.4.2.1, §3.5.2.1).
pub const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL / PUBCOMP reason codes (§3.6.2.1, §3.7.2.1).
pub const PUBREL_V5: &[u8] = &[0x00, 0x92];
/// SUBACK reason codes (§3.9.3).
pub const SUBACK_V5: &[u8] =
    &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
/// UNSUBACK reason codes (§3.11.3).
pub const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// DISCONNECT reason codes (§3.14.2.1).
pub const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// AUTH reason codes (§3.15.2.1).
pub const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];
/// 3.1.1 SUBACK return codes.
pub const SUBACK_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// 3.1 SUBACK return codes (no failure code in 3.1).
pub const SUBACK_V31: &[u8] = &[0x00, 0x01, 0x02];

fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let client_id = if version == ProtocolVersion::V3_1 {
        // 3.1 §3.1: the client identifier is 1 to 23 characters.
        "[a-zA-Z0-9]{1,23}".prop_map(ByteStr::from).boxed()
    } else {
        mqtt_string(23)
    };
    let will = (
        topic_name(),
        binary(16),
        qos(),
        any::<bool>(),
        if v5 { will_properties() } else { Just(Properties::default()).boxed() },
        "[a-z ]{0,16}",
    )
        .prop_map(|(topic, payload, qos, retain, properties, text)| {
            // Payload Format Indicator 1 declares a UTF-8 payload.
            let payload = if properties.payload_format_indicator == Some(1) {
                Bytes::from(text)
            } else {
                payload
            };
            Will { topic, payload, qos, retain, properties }
        });
    (
        any::<bool>(),
        any::<u16>(),
        client_id,
        option::of(will),
        option::of(mqtt_string(8)),
        option::of(binary(8)),
        if v5 { connect_properties() } else { Just(Properties::default()).boxed() },
    )
        .prop_map(
            move |(clean_start, keep_alive_secs, client_id, will, username, password, props)| {
                // 3.1/3.1.1: no password without a user name [MQTT-3.1.2-22].
                let password = if v5 || username.is_some() { password } else { None };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive_secs,
                    client_id,
                    will,
                    username,
                    password,
                    properties: props,
                }))
            },
        )
        .boxed()
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    (
        any::<bool>(),
        if v5 {
            codes(CONNACK_V5)
        } else {
            (0u8..=5).prop_map(|c| ReasonCode::from_v3_connack(c).unwrap()).boxed()
        },
        if v5 { connack_properties() } else { Just(Properties::default()).boxed() },
    )
        .prop_map(|(sp, reason, props)| {
            Packet::ConnAck(ConnAck {
                // Session Present is 0 with a failure code [MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4]).
                session_present: sp && reason == ReasonCode::SUCCESS,
                reason,
                properties: boxed_or_none(props),
            })
        })
        .boxed()
}

/// A valid PUBLISH for `version`, with payloads up to `payload_max_bytes`.
pub fn publish_with(version: ProtocolVersion, payload_max_bytes: usize) -> BoxedStrategy<Publish> {
    let v5 = version.is_v5();
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        packet_id(),
        if v5 {
            // 5.0: an empty topic with a Topic Alias (§3.3.2.1).
            prop_oneof![3 => topic_name(), 1 => Just(ByteStr::default())].boxed()
        } else {
            topic_name()
        },
        binary(payload_max_bytes),
        "\\PC{0,16}",
        any::<bool>(),
    )
        .prop_flat_map(move |(qos, dup, retain, pid, topic, payload, text, want_props)| {
            let need_alias = v5 && topic.is_empty();
            let props = if v5 && (want_props || need_alias) {
                publish_properties(need_alias)
            } else {
                Just(Properties::default()).boxed()
            };
            props.prop_map(move |properties| {
                let payload = if properties.payload_format_indicator == Some(1) {
                    Bytes::from(text.clone())
                } else {
                    payload.clone()
                };
                let qos0 = qos == QoS::AtMostOnce;
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: topic.clone(),
                    packet_id: if qos0 { None } else { Some(pid) },
                    payload,
                    properties: boxed_or_none(properties),
                }
            })
        })
        .boxed()
}

fn pub_resp(version: ProtocolVersion, reasons: &'static [u8]) -> BoxedStrategy<PubResp> {
    let v5 = version.is_v5();
    (
        packet_id(),
        if v5 { codes(reasons) } else { Just(ReasonCode::SUCCESS).boxed() },
        if v5 { reason_string_user_properties() } else { Just(Properties::default()).boxed() },
    )
        .prop_map(|(packet_id, reason, props)| PubResp {
            packet_id,
            reason,
            properties: boxed_or_none(props),
        })
        .boxed()
}

fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let filter = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend),
        ],
    )
        .prop_map(move |(f, qos, nl, rap, rh)| {
            let opts = if v5 {
                SubscriptionOptions {
                    qos,
                    // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                    no_local: nl && !f.starts_with("$share/"),
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions { qos, ..SubscriptionOptions::default() }
            };
            (f, opts)
        });
    let props = if v5 {
        (rare(1u32..=SUB_ID_MAX), user_properties())
            .prop_map(|(sid, up)| Properties {
                subscription_identifiers: sid.into_iter().collect(),
                user_properties: up,
                ..Properties::default()
            })
            .boxed()
    } else {
        Just(Properties::default()).boxed()
    };
    (packet_id(), vec(filter, 1..4), props)
        .prop_map(|(packet_id, filters, props)| {
            Packet::Subscribe(Subscribe { packet_id, filters, properties: boxed_or_none(props) })
        })
        .boxed()
}

fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let list = match version {
        ProtocolVersion::V5 => SUBACK_V5,
        ProtocolVersion::V3_1_1 => SUBACK_V311,
        ProtocolVersion::V3_1 => SUBACK_V31,
    };
    let props = if version.is_v5() {
        reason_string_user_properties()
    } else {
        Just(Properties::default()).boxed()
    };
    (packet_id(), vec(codes(list), 1..5), props)
        .prop_map(|(packet_id, reasons, props)| {
            Packet::SubAck(SubAck { packet_id, reasons, properties: boxed_or_none(props) })
        })
        .boxed()
}

fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let props = if version.is_v5() {
        user_properties()
            .prop_map(|up| Properties { user_properties: up, ..Properties::default() })
            .boxed()
    } else {
        Just(Properties::default()).boxed()
    };
    (packet_id(), vec(topic_filter(), 1..4), props)
        .prop_map(|(packet_id, filters, props)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: boxed_or_none(props),
            })
        })
        .boxed()
}

fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if version.is_v5() {
        (packet_id(), vec(codes(UNSUBACK_V5), 1..5), reason_string_user_properties())
            .prop_map(|(packet_id, reasons, props)| {
                Packet::UnsubAck(UnsubAck { packet_id, reasons, properties: boxed_or_none(props) })
            })
            .boxed()
    } else {
        packet_id()
            .prop_map(|packet_id| {
                Packet::UnsubAck(UnsubAck { packet_id, reasons: Vec::new(), properties: None })
            })
            .boxed()
    }
}

fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if version.is_v5() {
        (
            codes(DISCONNECT_V5),
            rare(any::<u32>()),
            rare(mqtt_string(8)),
            rare(mqtt_string(8)),
            user_properties(),
        )
            .prop_map(|(reason, sei, rs, sr, up)| {
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: boxed_or_none(Properties {
                        session_expiry_interval_secs: sei,
                        reason_string: rs,
                        server_reference: sr,
                        user_properties: up,
                        ..Properties::default()
                    }),
                })
            })
            .boxed()
    } else {
        Just(Packet::Disconnect(Disconnect { reason: ReasonCode::SUCCESS, properties: None }))
            .boxed()
    }
}

fn auth() -> BoxedStrategy<Packet> {
    (
        codes(AUTH_V5),
        mqtt_string_nonempty(8),
        rare(binary(8)),
        rare(mqtt_string(8)),
        user_properties(),
    )
        .prop_map(|(reason, am, ad, rs, up)| {
            Packet::Auth(Auth {
                reason,
                properties: boxed_or_none(Properties {
                    authentication_method: Some(am),
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: up,
                    ..Properties::default()
                }),
            })
        })
        .boxed()
}

/// Every valid packet of `version`. `Packet::Connect` carries `version` as its protocol.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let (ack, rel) = if v5 { (PUBACK_V5, PUBREL_V5) } else { (&[0u8][..], &[0u8][..]) };
    let mut options: Vec<(u32, BoxedStrategy<Packet>)> = vec![
        (1, connect(version)),
        (1, connack(version)),
        (4, publish_with(version, 300).prop_map(Packet::Publish).boxed()),
        (1, pub_resp(version, ack).prop_map(Packet::PubAck).boxed()),
        (1, pub_resp(version, ack).prop_map(Packet::PubRec).boxed()),
        (1, pub_resp(version, rel).prop_map(Packet::PubRel).boxed()),
        (1, pub_resp(version, rel).prop_map(Packet::PubComp).boxed()),
        (1, subscribe(version)),
        (1, suback(version)),
        (1, unsubscribe(version)),
        (1, unsuback(version)),
        (1, Just(Packet::PingReq).boxed()),
        (1, Just(Packet::PingResp).boxed()),
        (1, disconnect(version)),
    ];
    if v5 {
        options.push((1, auth()));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

/// Any protocol version.
pub fn version() -> BoxedStrategy<ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
    .boxed()
}
