//! `RetainedStore`: topic name → retained value, looked up by topic filter.
//!
//! A trie over topic levels, so a wildcard SUBSCRIBE visits only the branches its filter can
//! match instead of scanning every retained topic. Both the number of topics and the bytes
//! they hold are limited (the store is given a function that weighs a value).
//!
//! Topic names are assumed valid (no wildcards; the codec checks them). Every operation
//! recurses once per topic level, so the stack depth is bounded by `Limits::topic_levels_max`,
//! which the caller enforces.

use crate::core::hash::Map;

use crate::core::routing::topic::{
    has_wildcard, split_first_level, MULTI_LEVEL_WILDCARD, SINGLE_LEVEL_WILDCARD,
};
use crate::core::routing::trie::shrink_map;

/// Retained values by topic name, with limits on the number of topics and on their bytes.
///
/// Shard-local: one replica per shard, kept in step by the topic owner's replication
/// messages.
#[derive(Debug)]
pub struct RetainedStore<V> {
    root: Node<V>,
    len: usize,
    count_max: usize,
    /// The weight of every retained value (topic included), and its limit.
    bytes: usize,
    bytes_max: usize,
    weigh: fn(&str, &V) -> usize,
    /// Values refused by [`RetainedStore::set`] so far.
    refusals: u64,
}

/// One topic level. Owned by its parent node.
#[derive(Debug)]
struct Node<V> {
    children: Map<Box<str>, Node<V>>,
    /// The value retained on the topic that ends at this node, with that topic's name.
    value: Option<(Box<str>, V)>,
}

/// [`RetainedStore::set`] refused a value: the store would exceed one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainedFull {
    /// The store already holds this many topics.
    #[error("retained store full: {0} topics")]
    Topics(usize),
    /// The value would take the store past this many bytes.
    #[error("retained store full: {0} bytes")]
    Bytes(usize),
}

impl<V> RetainedStore<V> {
    /// An empty store that holds at most `count_max` topics (at least one) weighing at most
    /// `bytes_max` together, as `weigh(topic, value)` counts them.
    pub fn new(
        count_max: usize,
        bytes_max: usize,
        weigh: fn(&str, &V) -> usize,
    ) -> RetainedStore<V> {
        assert!(count_max > 0, "a retained store holds at least one topic");
        RetainedStore {
            root: Node::new(),
            len: 0,
            count_max,
            bytes: 0,
            bytes_max,
            weigh,
            refusals: 0,
        }
    }

    /// The weight of every retained value.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Values [`RetainedStore::set`] refused so far, and those refused before reaching it
    /// ([`RetainedStore::note_refusal`]): for warnings that do not flood.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// Counts a value refused because [`RetainedStore::fits`] said no; returns the count.
    pub fn note_refusal(&mut self) -> u64 {
        self.refusals += 1;
        self.refusals
    }

    /// Number of topics with a retained value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no topic has a retained value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most topics the store holds.
    pub fn count_max(&self) -> usize {
        self.count_max
    }

    /// Retains `value` on `topic`, returning the value it replaces. A new topic is refused
    /// once the store holds `count_max` topics; any value that would take the store past
    /// `bytes_max` is refused (the old value then stays).
    pub fn set(&mut self, topic: &str, value: V) -> Result<Option<V>, RetainedFull> {
        debug_assert!(!has_wildcard(topic), "[MQTT-3.3.2-2] topic name {topic:?} has a wildcard");
        let weight = (self.weigh)(topic, &value);
        if let Err(e) = self.fits(topic, weight) {
            self.refusals += 1;
            return Err(e);
        }
        let weigh = self.weigh;
        let old = self.root.find_mut(topic).and_then(|n| n.value.as_mut());
        let old_weight = old.as_ref().map_or(0, |(_, v)| weigh(topic, v));
        if let Some((_, old)) = old {
            self.bytes = self.bytes - old_weight + weight;
            return Ok(Some(std::mem::replace(old, value)));
        }
        let node = self.root.find_or_insert(topic);
        debug_assert!(node.value.is_none());
        node.value = Some((topic.into(), value));
        self.len += 1;
        self.bytes += weight;
        Ok(None)
    }

    /// Whether [`RetainedStore::set`] would accept a value weighing `weight` on `topic` now
    /// (asked before a message is routed, so that a refusal is known before any copy of it
    /// is sent).
    pub fn fits(&self, topic: &str, weight: usize) -> Result<(), RetainedFull> {
        let old = self.get(topic);
        let old_weight = old.map_or(0, |v| (self.weigh)(topic, v));
        if self.bytes - old_weight + weight > self.bytes_max {
            return Err(RetainedFull::Bytes(self.bytes_max));
        }
        if old.is_none() && self.len >= self.count_max {
            return Err(RetainedFull::Topics(self.count_max));
        }
        Ok(())
    }

    /// Removes the value retained on `topic`, if any. Nodes left empty are freed.
    pub fn clear(&mut self, topic: &str) -> Option<V> {
        let removed = self.root.clear(topic);
        if let Some(v) = &removed {
            self.len -= 1;
            self.bytes -= (self.weigh)(topic, v);
        }
        removed
    }

    /// The value retained on exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        let mut rest = topic;
        loop {
            let (level, next) = split_first_level(rest);
            node = node.children.get(level)?;
            match next {
                None => return node.value.as_ref().map(|(_, v)| v),
                Some(next) => rest = next,
            }
        }
    }

    /// Calls `f(topic, value)` for every retained topic that `filter` matches, in
    /// unspecified order: the retained messages a new subscription receives [MQTT-3.3.1-9].
    /// A filter whose first level is a wildcard skips topics beginning with `$`
    /// [MQTT-4.7.2-1]; `#` matches its parent level too (§4.7.1.2, [MQTT-4.7.1-1]).
    pub fn for_each_matching(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        self.root.matching(filter, true, &mut f);
    }

    /// Calls `f(topic, value)` for every retained topic, in unspecified order.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        self.root.for_each(&mut f);
    }
}

impl<V> Node<V> {
    fn new() -> Node<V> {
        Node { children: Map::default(), value: None }
    }

    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }

    fn find_mut(&mut self, topic: &str) -> Option<&mut Node<V>> {
        let mut node = self;
        let mut rest = topic;
        loop {
            let (level, next) = split_first_level(rest);
            node = node.children.get_mut(level)?;
            match next {
                None => return Some(node),
                Some(next) => rest = next,
            }
        }
    }

    fn find_or_insert(&mut self, topic: &str) -> &mut Node<V> {
        let mut node = self;
        let mut rest = topic;
        loop {
            let (level, next) = split_first_level(rest);
            node = node.children.entry(level.into()).or_insert_with(Node::new);
            match next {
                None => return node,
                Some(next) => rest = next,
            }
        }
    }

    /// Clears the topic `rest` below this node, pruning children left empty.
    fn clear(&mut self, rest: &str) -> Option<V> {
        let (level, next) = split_first_level(rest);
        let child = self.children.get_mut(level)?;
        let removed = match next {
            None => child.value.take().map(|(_, v)| v),
            Some(next) => child.clear(next),
        };
        if child.is_empty() {
            self.children.remove(level);
            shrink_map(&mut self.children);
        }
        removed
    }

    /// Matches the filter levels `rest` against this node's children. At the root, the
    /// wildcards skip `$` topics [MQTT-4.7.2-1].
    fn matching(&self, rest: &str, at_root: bool, f: &mut impl FnMut(&str, &V)) {
        let (level, next) = split_first_level(rest);
        if level == MULTI_LEVEL_WILDCARD {
            // This node is the parent level `#` also matches (the root holds no value).
            self.visit(f);
            for (name, child) in &self.children {
                if !(at_root && name.starts_with('$')) {
                    child.for_each(f);
                }
            }
        } else if level == SINGLE_LEVEL_WILDCARD {
            for (name, child) in &self.children {
                if !(at_root && name.starts_with('$')) {
                    child.matching_below(next, f);
                }
            }
        } else if let Some(child) = self.children.get(level) {
            child.matching_below(next, f);
        }
    }

    /// This node matched a filter level; `next` is the rest of the filter, if any.
    fn matching_below(&self, next: Option<&str>, f: &mut impl FnMut(&str, &V)) {
        match next {
            None => self.visit(f),
            Some(next) => self.matching(next, false, f),
        }
    }

    fn visit(&self, f: &mut impl FnMut(&str, &V)) {
        if let Some((topic, value)) = &self.value {
            f(topic, value);
        }
    }

    fn for_each(&self, f: &mut impl FnMut(&str, &V)) {
        self.visit(f);
        for child in self.children.values() {
            child.for_each(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;
    use crate::core::routing::topic::filter_matches;
    use crate::core::routing::topic::strategies::{filter_strategy, topic_strategy};

    fn matching(store: &RetainedStore<u32>, filter: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        store.for_each_matching(filter, |topic, _| {
            assert!(out.insert(topic.to_owned()), "visited twice: {topic}");
        });
        out.into_iter().collect()
    }

    fn store_of(topics: &[&str]) -> RetainedStore<u32> {
        let mut store = RetainedStore::new(100, usize::MAX, |_, _| 0);
        for (i, t) in topics.iter().enumerate() {
            assert_eq!(store.set(t, i as u32), Ok(None));
        }
        store
    }

    // The examples of MQTT 5.0 §4.7, seen from the retained side.
    #[test]
    fn spec_examples() {
        let store = store_of(&[
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "/finance",
            "finance",
            "$SYS/monitor/Clients",
            "$SYS",
        ]);
        assert_eq!(
            matching(&store, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(
            matching(&store, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(matching(&store, "sport/+"), ["sport/"]);
        assert_eq!(matching(&store, "+/+"), ["/finance", "sport/"]);
        assert_eq!(matching(&store, "/+"), ["/finance"]);
        assert_eq!(matching(&store, "+"), ["finance", "sport"]);
        assert_eq!(matching(&store, "#").len(), 8);
        assert!(!matching(&store, "#").iter().any(|t| t.starts_with('$')));
        assert!(matching(&store, "+/monitor/Clients").is_empty());
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
    }

    #[test]
    fn byte_limit_counts_topic_and_value_and_frees_on_replace_and_clear() {
        // Weight: topic length + the value.
        let mut store: RetainedStore<usize> = RetainedStore::new(10, 10, |t, v| t.len() + v);
        assert_eq!(store.set("a", 4), Ok(None)); // 5
        assert_eq!(store.set("b", 5), Err(RetainedFull::Bytes(10))); // 11
        assert_eq!(store.bytes(), 5);
        assert_eq!(store.get("b"), None);
        // Replacing counts the difference; a too-heavy replacement keeps the old value.
        assert_eq!(store.set("a", 9), Ok(Some(4))); // 10
        assert_eq!(store.set("a", 10), Err(RetainedFull::Bytes(10)));
        assert_eq!(store.get("a"), Some(&9));
        assert_eq!(store.set("a", 1), Ok(Some(9))); // 2
        assert_eq!(store.set("b", 5), Ok(None)); // 8
        assert_eq!(store.bytes(), 8);
        assert_eq!(store.clear("a"), Some(1));
        assert_eq!(store.bytes(), 6);
        assert_eq!(store.clear("b"), Some(5));
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn limit_applies_to_new_topics_only() {
        let mut store = RetainedStore::new(2, usize::MAX, |_, _| 0);
        assert_eq!(store.set("a", 1), Ok(None));
        assert_eq!(store.set("a/b", 2), Ok(None));
        assert_eq!(store.set("c", 3), Err(RetainedFull::Topics(2)));
        // Replacing an existing topic is always allowed.
        assert_eq!(store.set("a", 4), Ok(Some(1)));
        assert_eq!(store.get("a"), Some(&4));
        assert_eq!(store.get("a/"), None);
        assert_eq!(store.clear("a"), Some(4));
        assert_eq!(store.clear("a"), None);
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.set("c", 3), Ok(None));
        assert_eq!(store.len(), 2);
        assert_eq!(store.clear("a/b"), Some(2));
        assert_eq!(store.clear("c"), Some(3));
        assert!(store.is_empty());
        assert!(store.root.is_empty(), "empty nodes are pruned: {:?}", store.root);
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(
            ops in prop::collection::vec((topic_strategy(), prop::option::of(any::<u32>())), 0..60),
            filters in prop::collection::vec(filter_strategy(), 1..20),
        ) {
            let mut store = RetainedStore::new(1000, usize::MAX, |_, _| 0);
            let mut model: HashMap<String, u32> = HashMap::new();
            for (topic, value) in ops {
                match value {
                    Some(v) => prop_assert_eq!(store.set(&topic, v), Ok(model.insert(topic, v))),
                    None => prop_assert_eq!(store.clear(&topic), model.remove(&topic)),
                }
                prop_assert_eq!(store.len(), model.len());
            }
            for (topic, v) in &model {
                prop_assert_eq!(store.get(topic), Some(v));
            }
            for filter in &filters {
                let mut got = HashMap::new();
                store.for_each_matching(filter, |t, v| {
                    got.insert(t.to_owned(), *v);
                });
                let expected: HashMap<String, u32> = model
                    .iter()
                    .filter(|(t, _)| filter_matches(filter, t))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(got, expected, "filter {:?}", filter);
            }
            for topic in model.keys() {
                prop_assert!(store.clear(topic).is_some());
            }
            prop_assert!(store.root.is_empty());
        }
    }
}
