//! Topic name and topic filter validation (§4.7, §4.8.2), applied once at decode.
//!
//! Validation works on bytes: `+`, `#` and `/` are ASCII and never occur inside a multi-byte
//! UTF-8 sequence, so byte positions are character boundaries for them.

use crate::error::DecodeError;

/// The prefix of a shared subscription's topic filter (5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Validates a non-empty topic name: at least one character [MQTT-4.7.3-1] and no wildcard
/// characters [MQTT-3.3.2-2] [MQTT-4.7.1-1].
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::TopicNameEmpty);
    }
    check_no_wildcards(topic.as_bytes())
}

/// Checks a topic name has no `+` or `#` [MQTT-3.3.2-2]; empty is accepted here.
pub(crate) fn check_no_wildcards(topic: &[u8]) -> Result<(), DecodeError> {
    if topic.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(DecodeError::TopicNameWildcard);
    }
    Ok(())
}

/// Validates a topic filter. With `shared` (MQTT 5.0), a filter starting with `$share/` must
/// be `$share/{ShareName}/{filter}` with a non-empty share name without `/`, `+`, `#`
/// [MQTT-4.8.2-1] [MQTT-4.8.2-2]; before 5.0 such a string is an ordinary filter.
pub fn validate_topic_filter(filter: &str, shared: bool) -> Result<(), DecodeError> {
    let f = filter.as_bytes();
    if shared {
        if let Some(rest) = f.strip_prefix(SHARE_PREFIX.as_bytes()) {
            let (name, inner) = match rest.iter().position(|&c| c == b'/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if name.is_empty() {
                return Err(DecodeError::SharedNameEmpty);
            }
            if name.iter().any(|&c| c == b'+' || c == b'#') {
                return Err(DecodeError::SharedNameInvalid);
            }
            return match inner {
                Some(inner) if !inner.is_empty() => check_filter_levels(inner),
                _ => Err(DecodeError::SharedFilterMissing),
            };
        }
    }
    check_filter_levels(f)
}

/// Splits a shared subscription filter into (share name, topic filter). `None` when `filter`
/// is not a shared subscription. Assumes a filter validated with `shared = true`.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARE_PREFIX)?.split_once('/')
}

/// Non-empty [MQTT-4.7.3-1]; `#` only as the whole last level [MQTT-4.7.1-2]; `+` only as a
/// whole level [MQTT-4.7.1-3].
fn check_filter_levels(f: &[u8]) -> Result<(), DecodeError> {
    if f.is_empty() {
        return Err(DecodeError::TopicFilterEmpty);
    }
    let last = f.len() - 1;
    for (i, &c) in f.iter().enumerate() {
        let prev_is_sep = i == 0 || f.get(i - 1) == Some(&b'/');
        match c {
            b'#' if i != last || !prev_is_sep => {
                return Err(DecodeError::TopicFilterMultiLevelWildcard)
            }
            b'+' if !prev_is_sep || (i != last && f.get(i + 1) != Some(&b'/')) => {
                return Err(DecodeError::TopicFilterSingleLevelWildcard)
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecodeError::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "/", "a/b", "a//b", "$SYS/x", " ", "ü/€"] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicNameEmpty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicNameWildcard));
        assert_eq!(validate_topic_name("a/#"), Err(TopicNameWildcard));
        assert_eq!(validate_topic_name("a+b"), Err(TopicNameWildcard));
    }

    #[test]
    fn filters_valid() {
        for ok in [
            "#",
            "+",
            "/",
            "a",
            "a/b",
            "+/+",
            "a/+/b",
            "a/#",
            "+/#",
            "/#",
            "//",
            "a//+",
            "$share",
            "$sharex/+",
            "€/+/#",
        ] {
            assert_eq!(validate_topic_filter(ok, true), Ok(()), "{ok:?}");
            assert_eq!(validate_topic_filter(ok, false), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn filters_invalid() {
        assert_eq!(validate_topic_filter("", true), Err(TopicFilterEmpty));
        for bad in ["a#", "#/a", "a/#/b", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad, false),
                Err(TopicFilterMultiLevelWildcard),
                "{bad:?}"
            );
        }
        for bad in ["a+", "+a", "a/+b", "a/b+/c", "++"] {
            assert_eq!(
                validate_topic_filter(bad, false),
                Err(TopicFilterSingleLevelWildcard),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn shared_filters() {
        for ok in ["$share/g/a", "$share/g/#", "$share/g/+/x", "$share/grp-1/$SYS/#"] {
            assert_eq!(validate_topic_filter(ok, true), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_filter("$share/", true), Err(SharedNameEmpty));
        assert_eq!(validate_topic_filter("$share//a", true), Err(SharedNameEmpty));
        assert_eq!(validate_topic_filter("$share/g+/a", true), Err(SharedNameInvalid));
        assert_eq!(validate_topic_filter("$share/#", true), Err(SharedNameInvalid));
        assert_eq!(validate_topic_filter("$share/g", true), Err(SharedFilterMissing));
        assert_eq!(validate_topic_filter("$share/g/", true), Err(SharedFilterMissing));
        assert_eq!(validate_topic_filter("$share/g/a#", true), Err(TopicFilterMultiLevelWildcard));
        // Before 5.0 these are ordinary filters.
        assert_eq!(validate_topic_filter("$share//a", false), Ok(()));
        assert_eq!(validate_topic_filter("$share/g", false), Ok(()));
    }

    #[test]
    fn split_shared_filter() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("a/b"), None);
    }
}
