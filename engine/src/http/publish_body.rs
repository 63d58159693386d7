//! The body of `POST /api/v1/publish`, checked field by field: every error names its field.
//!
//! ```json
//! {"topic": "a/b", "payload": "text", "qos": 1, "retain": false,
//!  "properties": {"content_type": "text/plain", "response_topic": "r",
//!                 "correlation_data_base64": "AAE=", "message_expiry_interval_secs": 60,
//!                 "payload_format_indicator": 1, "user_properties": [["k", "v"]]}}
//! ```
//! `payload_base64` replaces `payload` for binary payloads.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};
use shardmq_codec::{ByteStr, Properties, QoS};

use crate::core::admin::topics::AdminPublish;
use crate::core::routing::topic::{has_wildcard, TopicLimits};

/// User properties accepted on one message.
pub const USER_PROPERTIES_MAX: usize = 32;

/// A field and what is wrong with it.
pub type FieldError = (String, String);

fn err(field: &str, msg: &str) -> FieldError {
    (field.to_owned(), msg.to_owned())
}

/// Checks a topic name for publishing [MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-3.3.2-2]; `$`
/// topics are the broker's own.
pub fn check_topic(topic: &str, limits: &TopicLimits, field: &str) -> Result<(), FieldError> {
    if topic.is_empty() {
        return Err(err(field, "must not be empty [MQTT-4.7.3-1]"));
    }
    if topic.contains('\0') {
        return Err(err(field, "must not contain U+0000 [MQTT-4.7.3-2]"));
    }
    if has_wildcard(topic) {
        return Err(err(field, "a topic name has no wildcards [MQTT-3.3.2-2]"));
    }
    if topic.starts_with('$') {
        return Err(err(field, "topics starting with $ are the broker's own"));
    }
    limits.check(topic).map_err(|e| err(field, &e.to_string()))
}

fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(field, "must be a string")),
    }
}

fn number(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max: u64,
) -> Result<Option<u64>, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(err(field, &format!("must be an integer from 0 to {max}"))),
        },
    }
}

fn base64(s: &str, field: &str) -> Result<Bytes, FieldError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(|e| err(field, &format!("not valid base64: {e}")))
}

fn only_keys(obj: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<(), FieldError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(err(
            &format!("{prefix}{k}"),
            &format!("unknown field (accepted: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Parses and checks a publish request. `payload_max` bounds the payload.
pub fn parse(
    body: &[u8],
    limits: &TopicLimits,
    payload_max: usize,
) -> Result<AdminPublish, FieldError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| err("body", &format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else { return Err(err("body", "must be a JSON object")) };
    only_keys(&obj, &["topic", "payload", "payload_base64", "qos", "retain", "properties"], "")?;
    let topic = string(&obj, "topic", "topic")?.ok_or_else(|| err("topic", "is required"))?;
    check_topic(topic, limits, "topic")?;
    let payload = match (
        string(&obj, "payload", "payload")?,
        string(&obj, "payload_base64", "payload_base64")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(err("payload_base64", "give payload or payload_base64, not both"))
        }
        (Some(text), None) => Bytes::copy_from_slice(text.as_bytes()),
        (None, Some(b64)) => base64(b64, "payload_base64")?,
        (None, None) => Bytes::new(),
    };
    if payload.len() > payload_max {
        return Err(err("payload", &format!("larger than {payload_max} bytes")));
    }
    let qos = match number(&obj, "qos", "qos", 2)?.unwrap_or(0) {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let retain = match obj.get("retain") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(err("retain", "must be true or false")),
    };
    let properties = match obj.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => properties(p, limits)?,
        Some(_) => return Err(err("properties", "must be an object")),
    };
    Ok(AdminPublish { topic: topic.to_owned(), payload, qos, retain, properties })
}

fn properties(
    p: &Map<String, Value>,
    limits: &TopicLimits,
) -> Result<Option<Box<Properties>>, FieldError> {
    only_keys(
        p,
        &[
            "content_type",
            "response_topic",
            "correlation_data_base64",
            "message_expiry_interval_secs",
            "payload_format_indicator",
            "user_properties",
        ],
        "properties.",
    )?;
    let content_type = string(p, "content_type", "properties.content_type")?.map(ByteStr::from);
    let mut out = Properties { content_type, ..Properties::default() };
    if let Some(t) = string(p, "response_topic", "properties.response_topic")? {
        check_topic(t, limits, "properties.response_topic")?;
        out.response_topic = Some(ByteStr::from(t));
    }
    if let Some(b) = string(p, "correlation_data_base64", "properties.correlation_data_base64")? {
        out.correlation_data = Some(base64(b, "properties.correlation_data_base64")?);
    }
    out.message_expiry_interval_secs = number(
        p,
        "message_expiry_interval_secs",
        "properties.message_expiry_interval_secs",
        u64::from(u32::MAX),
    )?
    .map(|n| n as u32);
    out.payload_format_indicator =
        number(p, "payload_format_indicator", "properties.payload_format_indicator", 1)?
            .map(|n| n as u8);
    match p.get("user_properties") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if items.len() > USER_PROPERTIES_MAX {
                return Err(err(
                    "properties.user_properties",
                    &format!("at most {USER_PROPERTIES_MAX}"),
                ));
            }
            for item in items {
                match item.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), Value::String(v)]) => {
                        out.user_properties
                            .push((ByteStr::from(k.as_str()), ByteStr::from(v.as_str())));
                    }
                    _ => {
                        return Err(err(
                            "properties.user_properties",
                            "must be a list of [name, value] string pairs",
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(err("properties.user_properties", "must be a list of [name, value] pairs"))
        }
    }
    Ok((!out.is_empty()).then(|| Box::new(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits { levels_max: 8, length_max_bytes: 64 };

    fn field_of(body: &str) -> String {
        parse(body.as_bytes(), &LIMITS, 16).unwrap_err().0
    }

    #[test]
    fn a_full_request_parses() {
        let body = r#"{"topic":"a/b","payload_base64":"AAE=","qos":2,"retain":true,
            "properties":{"content_type":"x","message_expiry_interval_secs":5,
            "user_properties":[["k","v"]],"correlation_data_base64":"AQ=="}}"#;
        let p = parse(body.as_bytes(), &LIMITS, 16).unwrap();
        assert_eq!(p.topic, "a/b");
        assert_eq!(&p.payload[..], &[0, 1]);
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert!(p.retain);
        let props = p.properties.unwrap();
        assert_eq!(props.message_expiry_interval_secs, Some(5));
        assert_eq!(props.user_properties.len(), 1);
        let p = parse(br#"{"topic":"t","payload":"hi"}"#, &LIMITS, 16).unwrap();
        assert_eq!(
            (&p.payload[..], p.qos, p.retain, p.properties),
            (&b"hi"[..], QoS::AtMostOnce, false, None)
        );
    }

    #[test]
    fn every_error_names_its_field() {
        assert_eq!(field_of("nope"), "body");
        assert_eq!(field_of("[1]"), "body");
        assert_eq!(field_of(r#"{"payload":"x"}"#), "topic");
        assert_eq!(field_of(r#"{"topic":"a/+"}"#), "topic");
        assert_eq!(field_of(r#"{"topic":"$SYS/x"}"#), "topic");
        assert_eq!(field_of(r#"{"topic":""}"#), "topic");
        assert_eq!(field_of(r#"{"topic":"a/b/c/d/e/f/g/h/i"}"#), "topic");
        assert_eq!(field_of(r#"{"topic":"t","qos":3}"#), "qos");
        assert_eq!(field_of(r#"{"topic":"t","qos":"1"}"#), "qos");
        assert_eq!(field_of(r#"{"topic":"t","retain":1}"#), "retain");
        assert_eq!(field_of(r#"{"topic":"t","payload":"01234567890123456"}"#), "payload");
        assert_eq!(field_of(r#"{"topic":"t","payload_base64":"!!"}"#), "payload_base64");
        assert_eq!(
            field_of(r#"{"topic":"t","payload":"a","payload_base64":"AA=="}"#),
            "payload_base64"
        );
        assert_eq!(field_of(r#"{"topic":"t","bogus":1}"#), "bogus");
        assert_eq!(
            field_of(r#"{"topic":"t","properties":{"topic_alias":1}}"#),
            "properties.topic_alias"
        );
        assert_eq!(
            field_of(r#"{"topic":"t","properties":{"user_properties":[["a"]]}}"#),
            "properties.user_properties"
        );
        assert_eq!(
            field_of(r#"{"topic":"t","properties":{"response_topic":"a/#"}}"#),
            "properties.response_topic"
        );
        assert_eq!(
            field_of(r#"{"topic":"t","properties":{"payload_format_indicator":2}}"#),
            "properties.payload_format_indicator"
        );
    }
}
