//! `shardmq-codec`: the MQTT 3.1, 3.1.1 and 5.0 wire format.
//!
//! What it does: decodes and encodes every control packet of the three protocol versions into
//! one v5-shaped packet model ([`Packet`]), validating every normative statement about the
//! wire format and naming it in the error ([`DecodeError`]), with each error mapped to the
//! reason code a server must answer with.
//!
//! What it deliberately does not do: IO, clocks, async, session state, or anything that
//! depends on what came before (topic aliases, packet-id reuse, the order of packets on a
//! connection): those are the engine's job.
//!
//! Decoding is incremental: [`decode`] returns `Ok(None)` when the buffer does not yet hold a
//! whole packet, and rejects a declared size above [`Limits::packet_size_max_bytes`] from the
//! fixed header, before the body is buffered. PUBLISH payloads and strings are zero-copy
//! [`bytes::Bytes`] slices of the input buffer.
//!
//! Code map: [`codec`] (fixed header, dispatch, the entry points), one private module per
//! packet type (`connect`, `connack`, `publish`, `pubresp` for PUBACK..PUBCOMP, `subscribe`,
//! `suback`, `unsubscribe`, `unsuback`, `disconnect`, `auth`), `primitives` (integers,
//! variable byte integers, strings), [`properties`] (the property table and property blocks),
//! [`topic`] (topic name / filter / shared subscription validation), [`reason`], [`error`].
//!
//! Left to the engine on purpose (accept/reject decisions or state, not wire format): client
//! identifier length (3.1 says at most 23 bytes; brokers accept more) and an empty client
//! identifier without Clean Session [MQTT-3.1.3-8]; a Subscription Identifier sent by a
//! client [MQTT-3.3.4-6]; topic alias ranges and resolution; packet-id reuse.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod properties;
pub mod reason;
pub mod topic;
pub mod types;

mod auth;
mod connack;
mod connect;
mod disconnect;
mod encode_check;
mod primitives;
mod publish;
mod pubresp;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use codec::{
    decode, encode, encode_publish_header, encoded_len, peek_connect_bridge, peek_connect_version,
};
pub use error::{DecodeError, EncodeError};
pub use primitives::VARINT_MAX;
pub use properties::{Properties, PropertyContext, PropertyId, PropertyType};
pub use reason::ReasonCode;
pub use types::*;
