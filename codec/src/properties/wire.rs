//! The wire form of a property block (§2.2.2): decoding with every per-property check,
//! and encoding in canonical order.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Properties, PropertyContext, PropertyId};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{field_len, put_binary, put_str, put_varint, varint_len, Reader};
use crate::topic;
use crate::types::ByteStr;

/// Sets an at-most-once property [§2.2.2.2].
fn once<T>(slot: &mut Option<T>, id: PropertyId, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id: id as u8 });
    }
    *slot = Some(v);
    Ok(())
}

/// A byte property whose only values are 0 and 1.
fn bool_byte(r: &mut Reader, id: PropertyId) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::InvalidPropertyValue { id: id as u8 }),
    }
}

impl Properties {
    /// Decodes a property block (property length + properties) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        use PropertyId::*;
        let len = r.varint()?;
        let mut p = Properties::default();
        if len == 0 {
            return Ok(p);
        }
        let mut r = r.sub(len as usize)?;
        while !r.is_empty() {
            // The identifier is a variable byte integer; every defined one fits one byte.
            let raw = r.varint()?;
            let id = u8::try_from(raw)
                .ok()
                .and_then(PropertyId::from_u8)
                .ok_or(DecodeError::UnknownProperty { id: u8::try_from(raw).unwrap_or(u8::MAX) })?;
            if !id.allowed_in(ctx) {
                return Err(DecodeError::PropertyNotAllowed { id: id as u8 });
            }
            match id {
                PayloadFormatIndicator => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.payload_format_indicator, id, v)?
                }
                MessageExpiryInterval => {
                    let v = r.u32()?;
                    once(&mut p.message_expiry_interval_secs, id, v)?
                }
                ContentType => {
                    let v = r.string()?;
                    once(&mut p.content_type, id, v)?
                }
                ResponseTopic => {
                    let v = r.string()?;
                    // A topic name: non-empty, no wildcards [MQTT-3.3.2-14].
                    if topic::validate_topic_name(&v).is_err() {
                        return Err(DecodeError::ResponseTopicInvalid);
                    }
                    once(&mut p.response_topic, id, v)?
                }
                CorrelationData => {
                    let v = r.binary()?;
                    once(&mut p.correlation_data, id, v)?
                }
                SubscriptionIdentifier => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::SubscriptionIdentifierZero);
                    }
                    if !p.subscription_identifiers.is_empty() && !id.repeatable_in(ctx) {
                        return Err(DecodeError::DuplicateProperty { id: id as u8 });
                    }
                    p.subscription_identifiers.push(v)
                }
                SessionExpiryInterval => {
                    let v = r.u32()?;
                    once(&mut p.session_expiry_interval_secs, id, v)?
                }
                AssignedClientIdentifier => {
                    let v = r.string()?;
                    once(&mut p.assigned_client_identifier, id, v)?
                }
                ServerKeepAlive => {
                    let v = r.u16()?;
                    once(&mut p.server_keep_alive_secs, id, v)?
                }
                AuthenticationMethod => {
                    let v = r.string()?;
                    once(&mut p.authentication_method, id, v)?
                }
                AuthenticationData => {
                    let v = r.binary()?;
                    once(&mut p.authentication_data, id, v)?
                }
                RequestProblemInformation => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.request_problem_information, id, v)?
                }
                WillDelayInterval => {
                    let v = r.u32()?;
                    once(&mut p.will_delay_interval_secs, id, v)?
                }
                RequestResponseInformation => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.request_response_information, id, v)?
                }
                ResponseInformation => {
                    let v = r.string()?;
                    once(&mut p.response_information, id, v)?
                }
                ServerReference => {
                    let v = r.string()?;
                    once(&mut p.server_reference, id, v)?
                }
                ReasonString => {
                    let v = r.string()?;
                    once(&mut p.reason_string, id, v)?
                }
                ReceiveMaximum => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue { id: id as u8 });
                    }
                    once(&mut p.receive_maximum, id, v)?
                }
                TopicAliasMaximum => {
                    let v = r.u16()?;
                    once(&mut p.topic_alias_maximum, id, v)?
                }
                TopicAlias => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::TopicAliasZero);
                    }
                    once(&mut p.topic_alias, id, v)?
                }
                MaximumQos => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.maximum_qos, id, v)?
                }
                RetainAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.retain_available, id, v)?
                }
                UserProperty => {
                    let kv = r.string_pair()?;
                    p.user_properties.push(kv)
                }
                MaximumPacketSize => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue { id: id as u8 });
                    }
                    once(&mut p.maximum_packet_size, id, v)?
                }
                WildcardSubscriptionAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.wildcard_subscription_available, id, v)?
                }
                SubscriptionIdentifierAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.subscription_identifier_available, id, v)?
                }
                SharedSubscriptionAvailable => {
                    let v = bool_byte(&mut r, id)?;
                    once(&mut p.shared_subscription_available, id, v)?
                }
            }
        }
        // It is a Protocol Error to include Authentication Data without an Authentication
        // Method (§3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.4).
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p)
    }

    /// Decodes a property block into the `Option<Box<_>>` form packets use: `None` when the
    /// block is empty (the canonical form of "no properties").
    pub(crate) fn decode_boxed(
        r: &mut Reader,
        ctx: PropertyContext,
    ) -> Result<Option<Box<Properties>>, DecodeError> {
        if r.peek_u8() == Some(0) {
            r.u8()?;
            return Ok(None);
        }
        let p = Properties::decode(r, ctx)?;
        Ok(if p.is_empty() { None } else { Some(Box::new(p)) })
    }

    /// Length of the properties, without the property-length prefix.
    pub(crate) fn body_len(&self) -> usize {
        fn opt<T>(v: &Option<T>, n: impl FnOnce(&T) -> usize) -> usize {
            v.as_ref().map_or(0, |v| 1 + n(v))
        }
        let s = |v: &ByteStr| field_len(v.as_bytes());
        let b = |v: &Bytes| field_len(v);
        let mut n = opt(&self.payload_format_indicator, |_| 1)
            + opt(&self.message_expiry_interval_secs, |_| 4)
            + opt(&self.content_type, s)
            + opt(&self.response_topic, s)
            + opt(&self.correlation_data, b)
            + opt(&self.session_expiry_interval_secs, |_| 4)
            + opt(&self.assigned_client_identifier, s)
            + opt(&self.server_keep_alive_secs, |_| 2)
            + opt(&self.authentication_method, s)
            + opt(&self.authentication_data, b)
            + opt(&self.request_problem_information, |_| 1)
            + opt(&self.will_delay_interval_secs, |_| 4)
            + opt(&self.request_response_information, |_| 1)
            + opt(&self.response_information, s)
            + opt(&self.server_reference, s)
            + opt(&self.reason_string, s)
            + opt(&self.receive_maximum, |_| 2)
            + opt(&self.topic_alias_maximum, |_| 2)
            + opt(&self.topic_alias, |_| 2)
            + opt(&self.maximum_qos, |_| 1)
            + opt(&self.retain_available, |_| 1)
            + opt(&self.maximum_packet_size, |_| 4)
            + opt(&self.wildcard_subscription_available, |_| 1)
            + opt(&self.subscription_identifier_available, |_| 1)
            + opt(&self.shared_subscription_available, |_| 1);
        for id in &self.subscription_identifiers {
            n += 1 + varint_len(*id);
        }
        for (k, v) in &self.user_properties {
            n += 1 + s(k) + s(v);
        }
        n
    }

    /// Length of the property block: property length prefix + properties.
    pub(crate) fn block_len(&self) -> usize {
        let n = self.body_len();
        varint_len(u32::try_from(n).unwrap_or(u32::MAX)) + n
    }

    /// Appends the property block (length + properties in canonical order) for `ctx`.
    /// Fails if a property is not allowed in `ctx` or a value cannot be encoded.
    pub(crate) fn encode(
        &self,
        ctx: PropertyContext,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        use PropertyId::*;
        let len = u32::try_from(self.body_len()).map_err(|_| EncodeError::TooLarge)?;
        put_varint(out, len).map_err(|_| EncodeError::TooLarge)?;
        let check = |id: PropertyId| -> Result<(), EncodeError> {
            if id.allowed_in(ctx) {
                Ok(())
            } else {
                Err(EncodeError::PropertyNotAllowed { id: id as u8 })
            }
        };
        macro_rules! prop {
            ($field:expr, $id:expr, |$v:ident| $write:expr) => {
                if let Some($v) = &$field {
                    check($id)?;
                    out.put_u8($id as u8);
                    $write;
                }
            };
        }
        prop!(self.payload_format_indicator, PayloadFormatIndicator, |v| { out.put_u8(*v) });
        prop!(self.message_expiry_interval_secs, MessageExpiryInterval, |v| out.put_u32(*v));
        prop!(self.content_type, ContentType, |v| put_str(out, v)?);
        prop!(self.response_topic, ResponseTopic, |v| put_str(out, v)?);
        prop!(self.correlation_data, CorrelationData, |v| put_binary(out, v)?);
        for v in &self.subscription_identifiers {
            check(SubscriptionIdentifier)?;
            out.put_u8(SubscriptionIdentifier as u8);
            put_varint(out, *v)?;
        }
        prop!(self.session_expiry_interval_secs, SessionExpiryInterval, |v| out.put_u32(*v));
        prop!(self.assigned_client_identifier, AssignedClientIdentifier, |v| put_str(out, v)?);
        prop!(self.server_keep_alive_secs, ServerKeepAlive, |v| out.put_u16(*v));
        prop!(self.authentication_method, AuthenticationMethod, |v| { put_str(out, v)? });
        prop!(self.authentication_data, AuthenticationData, |v| { put_binary(out, v)? });
        prop!(self.request_problem_information, RequestProblemInformation, |v| out.put_u8(*v));
        prop!(self.will_delay_interval_secs, WillDelayInterval, |v| out.put_u32(*v));
        prop!(self.request_response_information, RequestResponseInformation, |v| out.put_u8(*v));
        prop!(self.response_information, ResponseInformation, |v| put_str(out, v)?);
        prop!(self.server_reference, ServerReference, |v| put_str(out, v)?);
        prop!(self.reason_string, ReasonString, |v| put_str(out, v)?);
        prop!(self.receive_maximum, ReceiveMaximum, |v| out.put_u16(*v));
        prop!(self.topic_alias_maximum, TopicAliasMaximum, |v| out.put_u16(*v));
        prop!(self.topic_alias, TopicAlias, |v| out.put_u16(*v));
        prop!(self.maximum_qos, MaximumQos, |v| out.put_u8(*v));
        prop!(self.retain_available, RetainAvailable, |v| out.put_u8(*v));
        for (k, v) in &self.user_properties {
            check(UserProperty)?;
            out.put_u8(UserProperty as u8);
            put_str(out, k)?;
            put_str(out, v)?;
        }
        prop!(self.maximum_packet_size, MaximumPacketSize, |v| out.put_u32(*v));
        prop!(self.wildcard_subscription_available, WildcardSubscriptionAvailable, |v| out
            .put_u8(*v));
        prop!(self.subscription_identifier_available, SubscriptionIdentifierAvailable, |v| out
            .put_u8(*v));
        prop!(self.shared_subscription_available, SharedSubscriptionAvailable, |v| out.put_u8(*v));
        Ok(())
    }
}

/// Length of an optional boxed property block (`None` encodes as an empty block).
pub(crate) fn opt_block_len(p: &Option<Box<Properties>>) -> usize {
    p.as_deref().map_or(1, Properties::block_len)
}

/// Appends an optional boxed property block (`None` encodes as an empty block).
pub(crate) fn encode_opt(
    p: &Option<Box<Properties>>,
    ctx: PropertyContext,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match p {
        Some(p) => p.encode(ctx, out),
        None => {
            out.put_u8(0);
            Ok(())
        }
    }
}

/// True when `p` is `None` or empty.
pub(crate) fn opt_is_empty(p: &Option<Box<Properties>>) -> bool {
    match p {
        Some(p) => p.is_empty(),
        None => true,
    }
}
