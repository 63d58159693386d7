//! A bridge's topic rules: `FILTER DIRECTION QOS [LOCAL_PREFIX REMOTE_PREFIX]`, with
//! Mosquitto's meaning (mosquitto.conf(5), `topic`): the local side subscribes to (and
//! publishes) `LOCAL_PREFIX + FILTER`, the remote side `REMOTE_PREFIX + FILTER`; a message
//! crossing the bridge loses one prefix and gains the other. `""` stands for an empty prefix.

use shardmq_codec::topic::validate_topic_filter;
use shardmq_codec::QoS;

/// Which way a rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local → remote.
    Out,
    /// Remote → local.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Forwards local messages to the remote broker.
    pub fn outgoing(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Forwards remote messages to the local broker.
    pub fn incoming(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topics` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// The filter without prefixes.
    pub filter: String,
    /// Which way.
    pub direction: Direction,
    /// The QoS of the bridge's subscriptions for this rule.
    pub qos: QoS,
    /// Prepended on the local side.
    pub local_prefix: String,
    /// Prepended on the remote side.
    pub remote_prefix: String,
}

/// The most rules one bridge may have.
pub const TOPIC_RULES_MAX: usize = 256;

impl TopicRule {
    /// Parses `FILTER DIRECTION QOS [LOCAL_PREFIX REMOTE_PREFIX]` (DIRECTION and QOS default
    /// to `out` and 0 as in Mosquitto when only the filter is given).
    pub fn parse(line: &str) -> Result<TopicRule, String> {
        let tokens: Vec<String> = line
            .split_whitespace()
            .map(|t| if t == "\"\"" { String::new() } else { t.to_string() })
            .collect();
        let (filter, rest) = match tokens.split_first() {
            Some((f, rest)) => (f.clone(), rest),
            None => return Err("empty topic rule".into()),
        };
        // The bridge subscribes with No Local, which a shared subscription may not have
        // [MQTT-3.8.3-4]; and a bridge forwards topics, not group shares.
        if filter.starts_with("$share/") {
            return Err("a bridge rule cannot be a shared subscription ($share/...)".into());
        }
        let direction = match rest.first().map(String::as_str) {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("direction {other:?}: in, out or both")),
        };
        let qos = match rest.get(1).map(String::as_str) {
            None => QoS::AtMostOnce,
            Some(q) => q
                .parse::<u8>()
                .ok()
                .and_then(QoS::from_u8)
                .ok_or_else(|| format!("QoS {q:?}: 0, 1 or 2"))?,
        };
        let (local_prefix, remote_prefix) = match rest.len() {
            0..=2 => (String::new(), String::new()),
            4 => (rest[2].clone(), rest[3].clone()),
            _ => return Err("expected FILTER DIRECTION QOS [LOCAL_PREFIX REMOTE_PREFIX]".into()),
        };
        for p in [&local_prefix, &remote_prefix] {
            if p.contains(['+', '#']) {
                return Err(format!("prefix {p:?} contains a wildcard"));
            }
        }
        let rule = TopicRule { filter, direction, qos, local_prefix, remote_prefix };
        for f in [rule.local_filter(), rule.remote_filter()] {
            validate_topic_filter(&f, false).map_err(|e| format!("filter {f:?}: {e}"))?;
        }
        Ok(rule)
    }

    /// What the bridge subscribes to locally (outgoing rules).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// What the bridge subscribes to remotely (incoming rules).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }

    /// The remote topic of local topic `t`, if this outgoing rule takes it.
    pub fn to_remote(&self, t: &str) -> Option<String> {
        if !self.direction.outgoing() {
            return None;
        }
        let rest = t.strip_prefix(self.local_prefix.as_str())?;
        matches(&self.filter, rest).then(|| format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic of remote topic `t`, if this incoming rule takes it.
    pub fn to_local(&self, t: &str) -> Option<String> {
        if !self.direction.incoming() {
            return None;
        }
        let rest = t.strip_prefix(self.remote_prefix.as_str())?;
        matches(&self.filter, rest).then(|| format!("{}{rest}", self.local_prefix))
    }
}

/// Whether topic name `topic` matches `filter` (§4.7): `+` one level, `#` the rest (and the
/// parent level); wildcards in the first level do not match topics starting with `$`
/// [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_like_mosquitto() {
        let r = TopicRule::parse("sensors/# out 1").unwrap();
        assert_eq!((r.direction, r.qos), (Direction::Out, QoS::AtLeastOnce));
        assert_eq!((r.local_filter(), r.remote_filter()), ("sensors/#".into(), "sensors/#".into()));
        let r = TopicRule::parse("# both 2 edge/ central/edge1/").unwrap();
        assert_eq!(r.local_filter(), "edge/#");
        assert_eq!(r.remote_filter(), "central/edge1/#");
        let r = TopicRule::parse("cmd/+ in 1 \"\" site1/").unwrap();
        assert_eq!((r.local_prefix.as_str(), r.remote_prefix.as_str()), ("", "site1/"));
        assert_eq!(TopicRule::parse("a").unwrap().direction, Direction::Out);
        for bad in [
            "",
            "a sideways 1",
            "a out 3",
            "a out 1 x",
            "a out 1 x/+ y",
            "a/#/b out 1",
            "$share/g/a in 1",
        ] {
            assert!(TopicRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_swapped() {
        let r = TopicRule::parse("# both 2 edge/ central/edge1/").unwrap();
        assert_eq!(r.to_remote("edge/t/1").as_deref(), Some("central/edge1/t/1"));
        assert_eq!(r.to_local("central/edge1/t/1").as_deref(), Some("edge/t/1"));
        assert_eq!(r.to_remote("other/t"), None);
        let out = TopicRule::parse("s/+ out 0").unwrap();
        assert_eq!(out.to_remote("s/a").as_deref(), Some("s/a"));
        assert_eq!(out.to_remote("s/a/b"), None);
        assert_eq!(out.to_local("s/a"), None, "an out rule forwards nothing in");
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("#", "x/y"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
    }
}
