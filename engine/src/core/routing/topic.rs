//! Topic names and topic filters as `&str` levels: splitting, the reference matcher, the
//! `$` rule, shared-subscription splitting and a limit check.
//!
//! What it does not do: validate filter syntax (`#` last, wildcards occupying whole levels,
//! no wildcard in a topic name, no U+0000). The codec does that once, at decode; everything
//! here assumes its input already passed.
//!
//! Everything here is a pure function or plain data: usable on any shard.

use crate::core::limits::Limits;

/// The topic level separator.
pub const LEVEL_SEPARATOR: char = '/';

/// The single-level wildcard, as a whole level.
pub const SINGLE_LEVEL_WILDCARD: &str = "+";

/// The multi-level wildcard, as a whole level.
pub const MULTI_LEVEL_WILDCARD: &str = "#";

/// The prefix of a shared subscription's filter, `$share/{group}/{filter}`.
pub const SHARED_PREFIX: &str = "$share/";

/// The levels of a topic name or filter, in order. Empty levels are kept: `a//b` has three
/// levels and `/a` has two, the first one empty. Never allocates.
pub fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split(LEVEL_SEPARATOR)
}

/// Splits off the first level: `("a", Some("b/c"))` for `a/b/c`, `("a", None)` for `a`.
/// The remainder is `Some("")` when `s` ends with a separator (a trailing empty level).
#[inline]
pub fn split_first_level(s: &str) -> (&str, Option<&str>) {
    match s.find(LEVEL_SEPARATOR) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// The number of levels of a topic name or filter (at least one).
pub fn level_count(s: &str) -> usize {
    s.bytes().filter(|b| *b == b'/').count() + 1
}

/// True if the topic name's first level begins with `$` (`$SYS/...`, and any other
/// server-specific topic): such topics are not matched by filters that start with a
/// wildcard [MQTT-4.7.2-1].
#[inline]
pub fn is_dollar_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// True if the filter's first level is a wildcard (`+` or `#`).
#[inline]
pub fn starts_with_wildcard(filter: &str) -> bool {
    let (first, _) = split_first_level(filter);
    first == SINGLE_LEVEL_WILDCARD || first == MULTI_LEVEL_WILDCARD
}

/// True if any level of the filter is a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    levels(filter).any(|l| l == SINGLE_LEVEL_WILDCARD || l == MULTI_LEVEL_WILDCARD)
}

/// The reference matcher: does `filter` match `topic`?
///
/// Simple and obviously correct; the tries are tested against it. Levels are compared
/// byte for byte, with no normalisation [MQTT-4.7.3-4]. `+` matches exactly one level,
/// possibly empty. `#` matches any number of levels including the parent level, so `a/#`
/// matches `a` (§4.7.1.2: [MQTT-4.7.1-1] in 5.0, [MQTT-4.7.1-2] in 3.1.1). A filter whose
/// first level is a wildcard does not match a topic beginning with `$` [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if is_dollar_topic(topic) && starts_with_wildcard(filter) {
        return false;
    }
    let mut filter_levels = levels(filter);
    let mut topic_levels = levels(topic);
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // The multi-level wildcard is the last level of a valid filter: it matches
            // whatever remains, including nothing (the parent level).
            (Some(MULTI_LEVEL_WILDCARD), _) => return true,
            (Some(SINGLE_LEVEL_WILDCARD), Some(_)) => {}
            (Some(f), Some(t)) => {
                if f != t {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// Splits a shared subscription's filter `$share/{group}/{filter}` into `(group, filter)`.
///
/// `None` if `filter` does not start with `$share/` or has no separator after the group.
/// The syntax (a non-empty group without `+`, `#` or `/` [MQTT-4.8.2-1], followed by a
/// valid filter [MQTT-4.8.2-2]) is the codec's to check; this only splits.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    rest.split_once(LEVEL_SEPARATOR)
}

/// The broker's limits on topic names and filters beyond the protocol's own.
///
/// Plain data: each shard holds a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Levels in a topic name or filter. The tries recurse once per level, so this also
    /// bounds their stack depth.
    pub levels_max: usize,
    /// Length of a topic name or filter.
    pub length_max_bytes: usize,
}

/// Why a topic name or filter was refused by [`TopicLimits::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicLimitError {
    /// More levels than `levels_max`.
    #[error("topic has more than {levels_max} levels")]
    TooManyLevels {
        /// The limit that was exceeded.
        levels_max: usize,
    },
    /// Longer than `length_max_bytes`.
    #[error("topic is longer than {length_max_bytes} bytes")]
    TooLong {
        /// The limit that was exceeded.
        length_max_bytes: usize,
    },
}

impl TopicLimits {
    /// Checks a topic name or filter against the limits. For a shared subscription, pass the
    /// whole `$share/...` string: the limits apply to what the client sent.
    pub fn check(&self, s: &str) -> Result<(), TopicLimitError> {
        if s.len() > self.length_max_bytes {
            return Err(TopicLimitError::TooLong { length_max_bytes: self.length_max_bytes });
        }
        if level_count(s) > self.levels_max {
            return Err(TopicLimitError::TooManyLevels { levels_max: self.levels_max });
        }
        Ok(())
    }
}

impl From<&Limits> for TopicLimits {
    fn from(limits: &Limits) -> TopicLimits {
        TopicLimits {
            levels_max: limits.topic_levels_max.into(),
            length_max_bytes: limits.topic_length_max_bytes.into(),
        }
    }
}

/// Proptest strategies shared by the tests of the tries built on these helpers.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    /// A filter over a small alphabet: empty levels, `$`, `+`, and `#` as the last level.
    pub(crate) fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$a", "$SYS", "+"]);
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map(
            "a filter has at least one level",
            |(levels, hash)| {
                let mut levels: Vec<&str> = levels;
                if hash {
                    levels.push("#");
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            },
        )
    }

    /// A topic name over the same alphabet, without wildcards.
    pub(crate) fn topic_strategy() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$a", "$SYS"]);
        prop::collection::vec(level, 1..5).prop_map(|levels| levels.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_empty_levels() {
        assert_eq!(levels("a//b").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(levels("/a").collect::<Vec<_>>(), ["", "a"]);
        assert_eq!(levels("a/").collect::<Vec<_>>(), ["a", ""]);
        assert_eq!(levels("/").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(level_count("a//b"), 3);
        assert_eq!(level_count("a"), 1);
        assert_eq!(split_first_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_first_level("a/"), ("a", Some("")));
        assert_eq!(split_first_level("a"), ("a", None));
    }

    // §4.7.1.2: the multi-level wildcard, including the parent level.
    #[test]
    fn spec_multi_level_wildcard() {
        let f = "sport/tennis/player1/#";
        assert!(filter_matches(f, "sport/tennis/player1"));
        assert!(filter_matches(f, "sport/tennis/player1/ranking"));
        assert!(filter_matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!filter_matches(f, "sport/tennis/player2"));
        assert!(!filter_matches(f, "sport/tennis"));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("#", "sport/tennis"));
        assert!(filter_matches("#", "/"));
        assert!(filter_matches("/#", "/finance"));
        assert!(!filter_matches("/#", "finance"));
    }

    // §4.7.1.3: the single-level wildcard matches exactly one level, possibly empty.
    #[test]
    fn spec_single_level_wildcard() {
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!filter_matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("+/tennis/#", "sport/tennis"));
        assert!(filter_matches("a/+/b", "a//b"));
    }

    // §4.7.2 [MQTT-4.7.2-1]: topics beginning with `$`.
    #[test]
    fn spec_dollar_topics() {
        assert!(!filter_matches("#", "$SYS/monitor/Clients"));
        assert!(!filter_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS"));
        assert!(!filter_matches("+", "$SYS"));
        // Only the first level matters: a `$` further down is an ordinary character.
        assert!(filter_matches("#", "a/$SYS"));
        assert!(filter_matches("+/+", "a/$b"));
    }

    // §4.7.3 [MQTT-4.7.3-4]: no normalisation; case and spaces are significant.
    #[test]
    fn spec_exact_comparison() {
        assert!(!filter_matches("ACCOUNTS", "Accounts"));
        assert!(filter_matches("Accounts payable", "Accounts payable"));
        assert!(!filter_matches("/finance", "finance"));
        assert!(!filter_matches("finance", "/finance"));
        assert!(!filter_matches("a/b", "a/b/"));
        assert!(filter_matches("a//b", "a//b"));
    }

    #[test]
    fn wildcard_predicates() {
        assert!(starts_with_wildcard("+/a"));
        assert!(starts_with_wildcard("#"));
        assert!(!starts_with_wildcard("a/+"));
        assert!(!starts_with_wildcard("$SYS/#"));
        assert!(has_wildcard("a/+/b"));
        assert!(has_wildcard("a/#"));
        assert!(!has_wildcard("a/b"));
    }

    #[test]
    fn shared_subscriptions_split() {
        assert_eq!(split_shared("$share/g1/sport/#"), Some(("g1", "sport/#")));
        assert_eq!(split_shared("$share/g/+"), Some(("g", "+")));
        assert_eq!(split_shared("$share/g//a"), Some(("g", "/a")));
        assert_eq!(split_shared("$share/g"), None);
        assert_eq!(split_shared("sport/#"), None);
        assert_eq!(split_shared("$SYS/#"), None);
        assert_eq!(split_shared("$sharex/g/a"), None);
    }

    #[test]
    fn limits_are_checked() {
        let limits = TopicLimits { levels_max: 3, length_max_bytes: 8 };
        assert_eq!(limits.check("a/b/c"), Ok(()));
        assert_eq!(limits.check("a/b/c/"), Err(TopicLimitError::TooManyLevels { levels_max: 3 }));
        assert_eq!(
            limits.check("abcdefghi"),
            Err(TopicLimitError::TooLong { length_max_bytes: 8 })
        );
        let from_defaults = TopicLimits::from(&Limits::default());
        assert_eq!(from_defaults.levels_max, 32);
    }
}
