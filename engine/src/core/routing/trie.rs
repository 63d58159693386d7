//! `SubscriptionTrie`: topic filters → subscribers, matched against topic names.
//!
//! A trie over topic levels. Each node has its exact-level children, at most one `+` child,
//! and two subscriber lists: the filters that end at the node (`a/b` at node `a/b`) and the
//! filters that are the node's path followed by `#` (`a/b/#` at node `a/b`). Subscribers of
//! one filter live in one dense `Vec` (with a key index once the list is long), so a filter
//! with 10,000 subscribers is matched with one lookup per topic level and one linear scan.
//!
//! Matching walks the topic's levels with `&str` slicing: no allocation on the publish path.
//! Nodes are created by `insert` and pruned by `remove` as soon as they hold nothing, so the
//! trie's memory follows the live subscriptions.
//!
//! Filters are assumed valid (the codec checks them); shared-subscription prefixes are
//! stripped by the caller. Insertion, removal and matching recurse once per level, so the
//! stack depth is bounded by `Limits::topic_levels_max`, which the caller enforces.

use crate::core::hash::Map;
use std::hash::Hash;

use crate::core::routing::topic::{
    is_dollar_topic, split_first_level, MULTI_LEVEL_WILDCARD, SINGLE_LEVEL_WILDCARD,
};

/// Subscriber lists longer than this get a key → position index, so that `insert` and
/// `remove` stay O(1) for a filter with many subscribers. Shorter lists are scanned.
const INDEX_THRESHOLD: usize = 16;

/// Topic filters → subscribers, each `(filter, key)` pair carrying a value `V`.
///
/// `K` identifies a subscriber: a session slot for the shard's own subscriptions, a shard
/// id for the routing index. A key has at most one value per filter.
///
/// Shard-local: one per shard (and one inside each shard's [`RouteIndex`] replica).
///
/// [`RouteIndex`]: crate::core::routing::route_index::RouteIndex
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    /// Number of `(filter, key)` pairs.
    len: usize,
}

/// One level of the trie. Owned by its parent node.
#[derive(Debug)]
struct Node<K, V> {
    /// Children by exact level text (possibly empty, possibly starting with `$`).
    children: Map<Box<str>, Node<K, V>>,
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of the filter that ends at this node.
    exact: Option<Box<Subscribers<K, V>>>,
    /// Subscribers of this node's path followed by `#` (just `#` at the root).
    multi: Option<Box<Subscribers<K, V>>>,
}

/// The subscribers of one filter. Owned by its trie node.
#[derive(Debug)]
struct Subscribers<K, V> {
    /// The whole filter, handed to match callbacks without rebuilding it.
    filter: Box<str>,
    /// Dense, unordered: scanned on every match.
    entries: Vec<(K, V)>,
    /// Key → position in `entries`; empty (and unallocated) while the list is short.
    index: Map<K, u32>,
}

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie::new()
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie. Does not allocate.
    pub fn new() -> Self {
        SubscriptionTrie { root: Node::new(), len: 0 }
    }

    /// Number of `(filter, key)` pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter` with `value`. If `key` already had this filter, its
    /// value is replaced and the previous one returned: a SUBSCRIBE repeating an existing
    /// filter replaces the subscription [MQTT-3.8.4-3].
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let subscribers = self.root.subscribers_or_insert(filter, filter);
        let previous = subscribers.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Unsubscribes `key` from `filter`, returning its value, or `None` if it was not
    /// subscribed. Nodes left empty are freed.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let removed = self.root.remove(filter, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value of `key`'s subscription to exactly `filter` (no wildcard matching).
    pub fn get(&self, filter: &str, key: K) -> Option<&V> {
        self.root.subscribers(filter)?.get(key)
    }

    /// The value of `key`'s subscription to exactly `filter`, mutably.
    pub fn get_mut(&mut self, filter: &str, key: K) -> Option<&mut V> {
        self.root.subscribers_mut(filter)?.get_mut(key)
    }

    /// Calls `f(key, value, filter)` for every subscription whose filter matches `topic`.
    ///
    /// A key subscribed through several matching filters is visited once per filter (the
    /// caller picks, e.g. the highest QoS [MQTT-3.3.4-2]). Order is unspecified. Filters
    /// whose first level is a wildcard do not match a topic beginning with `$`
    /// [MQTT-4.7.2-1]. Does not allocate.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(K, &V, &str)) {
        let root = &self.root;
        let (first, rest) = split_first_level(topic);
        if !is_dollar_topic(topic) {
            visit(root.multi.as_deref(), &mut f);
            if let Some(plus) = &root.plus {
                plus.match_rest(rest, &mut f);
            }
        }
        if let Some(child) = root.child(first) {
            child.match_rest(rest, &mut f);
        }
    }

    /// Calls `f(key, value, filter)` for every subscription, in unspecified order.
    pub fn for_each(&self, mut f: impl FnMut(K, &V, &str)) {
        self.root.for_each(&mut f);
    }
}

/// Calls `f` for every subscriber in `subscribers`.
#[inline]
fn visit<K: Copy, V>(subscribers: Option<&Subscribers<K, V>>, f: &mut impl FnMut(K, &V, &str)) {
    if let Some(s) = subscribers {
        for (key, value) in &s.entries {
            f(*key, value, &s.filter);
        }
    }
}

impl<K: Copy + Eq + Hash, V> Node<K, V> {
    fn new() -> Self {
        Node { children: Map::default(), plus: None, exact: None, multi: None }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.multi.is_none()
    }

    #[inline]
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if self.children.is_empty() {
            None
        } else {
            self.children.get(level)
        }
    }

    /// Matches the remaining topic levels `rest` below this node, which matched every
    /// level before them. `None` means the topic ends at this node.
    fn match_rest(&self, rest: Option<&str>, f: &mut impl FnMut(K, &V, &str)) {
        // `#` matches any number of remaining levels, including none: `a/#` matches `a`
        // (§4.7.1.2, [MQTT-4.7.1-1]).
        visit(self.multi.as_deref(), f);
        match rest {
            None => visit(self.exact.as_deref(), f),
            Some(rest) => {
                let (level, next) = split_first_level(rest);
                if let Some(child) = self.child(level) {
                    child.match_rest(next, f);
                }
                if let Some(plus) = &self.plus {
                    plus.match_rest(next, f);
                }
            }
        }
    }

    fn for_each(&self, f: &mut impl FnMut(K, &V, &str)) {
        visit(self.exact.as_deref(), f);
        visit(self.multi.as_deref(), f);
        if let Some(plus) = &self.plus {
            plus.for_each(f);
        }
        for child in self.children.values() {
            child.for_each(f);
        }
    }

    /// The subscriber list of `rest` (the part of `whole` below this node), created with
    /// the nodes leading to it if missing.
    fn subscribers_or_insert(&mut self, rest: &str, whole: &str) -> &mut Subscribers<K, V> {
        let (level, next) = split_first_level(rest);
        if level == MULTI_LEVEL_WILDCARD {
            assert!(next.is_none(), "[MQTT-4.7.1-1] `#` must be the last level: {whole:?}");
            return self.multi.get_or_insert_with(|| Subscribers::new(whole));
        }
        let child = if level == SINGLE_LEVEL_WILDCARD {
            self.plus.get_or_insert_with(|| Box::new(Node::new()))
        } else {
            // `entry` would allocate the key even when the child exists; a second lookup
            // is cheaper on this (subscribe) path.
            if !self.children.contains_key(level) {
                self.children.insert(level.into(), Node::new());
            }
            self.children.get_mut(level).expect("child was just inserted")
        };
        match next {
            None => child.exact.get_or_insert_with(|| Subscribers::new(whole)),
            Some(next) => child.subscribers_or_insert(next, whole),
        }
    }

    fn subscribers(&self, filter: &str) -> Option<&Subscribers<K, V>> {
        let mut node = self;
        let mut rest = filter;
        loop {
            let (level, next) = split_first_level(rest);
            if level == MULTI_LEVEL_WILDCARD {
                return node.multi.as_deref();
            }
            node = if level == SINGLE_LEVEL_WILDCARD {
                node.plus.as_deref()?
            } else {
                node.child(level)?
            };
            match next {
                None => return node.exact.as_deref(),
                Some(next) => rest = next,
            }
        }
    }

    fn subscribers_mut(&mut self, filter: &str) -> Option<&mut Subscribers<K, V>> {
        let mut node = self;
        let mut rest = filter;
        loop {
            let (level, next) = split_first_level(rest);
            if level == MULTI_LEVEL_WILDCARD {
                return node.multi.as_deref_mut();
            }
            node = if level == SINGLE_LEVEL_WILDCARD {
                node.plus.as_deref_mut()?
            } else {
                node.children.get_mut(level)?
            };
            match next {
                None => return node.exact.as_deref_mut(),
                Some(next) => rest = next,
            }
        }
    }

    /// Removes `key` from the filter `rest` below this node, pruning children left empty.
    fn remove(&mut self, rest: &str, key: K) -> Option<V> {
        let (level, next) = split_first_level(rest);
        if level == MULTI_LEVEL_WILDCARD {
            return remove_from(&mut self.multi, key);
        }
        if level == SINGLE_LEVEL_WILDCARD {
            let child = self.plus.as_deref_mut()?;
            let removed = child.remove_here_or_below(next, key);
            if child.is_empty() {
                self.plus = None;
            }
            removed
        } else {
            let child = self.children.get_mut(level)?;
            let removed = child.remove_here_or_below(next, key);
            if child.is_empty() {
                self.children.remove(level);
                shrink_map(&mut self.children);
            }
            removed
        }
    }

    fn remove_here_or_below(&mut self, next: Option<&str>, key: K) -> Option<V> {
        match next {
            None => remove_from(&mut self.exact, key),
            Some(next) => self.remove(next, key),
        }
    }
}

/// Removes `key` from a subscriber list, dropping the list once empty.
fn remove_from<K: Copy + Eq + Hash, V>(
    slot: &mut Option<Box<Subscribers<K, V>>>,
    key: K,
) -> Option<V> {
    let subscribers = slot.as_deref_mut()?;
    let removed = subscribers.remove(key);
    if subscribers.entries.is_empty() {
        *slot = None;
    }
    removed
}

/// Gives back most of a map's memory once it holds a quarter of its capacity or less.
pub(crate) fn shrink_map<A: Eq + Hash, B>(map: &mut Map<A, B>) {
    if map.capacity() > 16 && map.len() <= map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    fn new(filter: &str) -> Box<Self> {
        Box::new(Subscribers { filter: filter.into(), entries: Vec::new(), index: Map::default() })
    }

    fn position(&self, key: K) -> Option<usize> {
        if self.index.is_empty() {
            self.entries.iter().position(|(k, _)| *k == key)
        } else {
            self.index.get(&key).map(|p| *p as usize)
        }
    }

    fn get(&self, key: K) -> Option<&V> {
        self.position(key).map(|p| &self.entries[p].1)
    }

    fn get_mut(&mut self, key: K) -> Option<&mut V> {
        self.position(key).map(|p| &mut self.entries[p].1)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(p) = self.position(key) {
            return Some(std::mem::replace(&mut self.entries[p].1, value));
        }
        let p = u32::try_from(self.entries.len()).expect("subscribers of one filter fit in u32");
        self.entries.push((key, value));
        if !self.index.is_empty() {
            self.index.insert(key, p);
        } else if self.entries.len() > INDEX_THRESHOLD {
            self.index = self.entries.iter().zip(0..).map(|((k, _), i)| (*k, i)).collect();
        }
        None
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let p = self.position(key)?;
        let (_, value) = self.entries.swap_remove(p);
        if !self.index.is_empty() {
            self.index.remove(&key);
            if let Some((moved, _)) = self.entries.get(p) {
                // `p` came from the index, so it fits in u32.
                self.index.insert(*moved, p as u32);
            }
            if self.entries.len() < INDEX_THRESHOLD / 2 {
                self.index = Map::default();
            } else {
                shrink_map(&mut self.index);
            }
        }
        if self.entries.capacity() > 64 && self.entries.len() <= self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;
    use crate::core::routing::topic::filter_matches;
    use crate::core::routing::topic::strategies::{filter_strategy, topic_strategy};

    /// Every `(key, filter)` the trie matches for `topic`, sorted.
    fn matches(trie: &SubscriptionTrie<u32, u32>, topic: &str) -> BTreeSet<(u32, String)> {
        let mut out = BTreeSet::new();
        trie.for_each_match(topic, |k, _, filter| {
            assert!(out.insert((k, filter.to_owned())), "visited twice: {k} {filter}");
        });
        out
    }

    /// What the reference matcher says for the same subscriptions.
    fn expected(model: &HashMap<(String, u32), u32>, topic: &str) -> BTreeSet<(u32, String)> {
        model
            .keys()
            .filter(|(filter, _)| filter_matches(filter, topic))
            .map(|(filter, k)| (*k, filter.clone()))
            .collect()
    }

    fn trie_of(filters: &[&str]) -> SubscriptionTrie<u32, u32> {
        let mut trie = SubscriptionTrie::new();
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(trie.insert(f, i as u32, 0), None);
        }
        trie
    }

    fn matched_filters(trie: &SubscriptionTrie<u32, u32>, topic: &str) -> Vec<String> {
        matches(trie, topic)
            .into_iter()
            .map(|(_, f)| f)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    // The examples of MQTT 5.0 §4.7, against one trie holding every filter.
    #[test]
    fn spec_examples() {
        let trie = trie_of(&[
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "+/monitor/Clients",
            "$SYS/#",
            "$SYS/monitor/+",
            "/finance",
            "finance",
        ]);
        assert_eq!(
            matched_filters(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"]
        );
        assert_eq!(
            matched_filters(&trie, "sport/tennis/player1/score/wimbledon"),
            ["#", "sport/#", "sport/tennis/player1/#"]
        );
        // `sport/+` does not match `sport`, but `sport/#` does (the parent level).
        assert_eq!(matched_filters(&trie, "sport"), ["#", "+", "sport/#"]);
        assert_eq!(matched_filters(&trie, "sport/"), ["#", "+/+", "sport/#", "sport/+"]);
        assert_eq!(matched_filters(&trie, "/finance"), ["#", "+/+", "/+", "/finance"]);
        assert_eq!(matched_filters(&trie, "finance"), ["#", "+", "finance"]);
        // [MQTT-4.7.2-1]: no wildcard-first filter matches a `$` topic.
        assert_eq!(matched_filters(&trie, "$SYS/monitor/Clients"), ["$SYS/#", "$SYS/monitor/+"]);
        assert_eq!(matched_filters(&trie, "$SYS"), ["$SYS/#"]);
        assert_eq!(matched_filters(&trie, "a/monitor/Clients"), ["#", "+/monitor/Clients"]);
    }

    #[test]
    fn empty_levels() {
        let trie = trie_of(&["a//b", "a/+/b", "+/a", "/", "+/+", "a/"]);
        assert_eq!(matched_filters(&trie, "a//b"), ["a/+/b", "a//b"]);
        assert_eq!(matched_filters(&trie, "/a"), ["+/+", "+/a"]);
        assert_eq!(matched_filters(&trie, "/"), ["+/+", "/"]);
        assert_eq!(matched_filters(&trie, "a/"), ["+/+", "a/"]);
        assert!(matched_filters(&trie, "a").is_empty());
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert("a/+/c", 1u32, 10u32), None);
        // [MQTT-3.8.4-3]: the same filter again replaces the subscription.
        assert_eq!(trie.insert("a/+/c", 1, 11), Some(10));
        assert_eq!(trie.insert("a/#", 1, 12), None);
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get("a/+/c", 1), Some(&11));
        *trie.get_mut("a/#", 1).unwrap() += 1;
        assert_eq!(trie.get("a/#", 1), Some(&13));
        assert_eq!(trie.remove("a/+/c", 2), None);
        assert_eq!(trie.remove("a/b/c", 1), None);
        assert_eq!(trie.remove("a/+/c", 1), Some(11));
        assert_eq!(trie.remove("a/#", 1), Some(13));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty nodes are pruned: {:?}", trie.root);
    }

    #[test]
    fn many_subscribers_on_one_filter() {
        let mut trie = SubscriptionTrie::new();
        for k in 0..1000u32 {
            assert_eq!(trie.insert("fan/out", k, k), None);
        }
        for k in (0..1000u32).step_by(3) {
            assert_eq!(trie.remove("fan/out", k), Some(k));
        }
        let mut seen = BTreeSet::new();
        trie.for_each_match("fan/out", |k, _, _| assert!(seen.insert(k)));
        assert_eq!(seen, (0..1000u32).filter(|k| k % 3 != 0).collect());
        (0..1000u32).for_each(|k| assert_eq!(trie.remove("fan/out", k).is_some(), k % 3 != 0));
        assert!(trie.root.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32, u32),
        Remove(String, u32),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (filter_strategy(), 0..4u32, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            (filter_strategy(), 0..4u32).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(
            subs in prop::collection::vec((filter_strategy(), 0..8u32), 0..40),
            topics in prop::collection::vec(topic_strategy(), 1..20),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut model = HashMap::new();
            for (filter, key) in subs {
                prop_assert_eq!(trie.insert(&filter, key, 0), model.insert((filter, key), 0));
            }
            for topic in &topics {
                prop_assert_eq!(matches(&trie, topic), expected(&model, topic), "topic {:?}", topic);
            }
        }

        #[test]
        fn long_subscriber_lists_behave_like_a_map(
            ops in prop::collection::vec((any::<bool>(), 0..48u32, any::<u32>()), 0..400),
        ) {
            // One filter, many keys: the list crosses INDEX_THRESHOLD both ways.
            let mut trie = SubscriptionTrie::new();
            let mut model = HashMap::new();
            for (insert, k, v) in ops {
                if insert {
                    prop_assert_eq!(trie.insert("a/+", k, v), model.insert(k, v));
                } else {
                    prop_assert_eq!(trie.remove("a/+", k), model.remove(&k));
                }
                prop_assert_eq!(trie.get("a/+", k), model.get(&k));
            }
            for k in 0..48u32 {
                prop_assert_eq!(trie.get("a/+", k), model.get(&k));
            }
        }

        #[test]
        fn behaves_like_a_map(
            ops in prop::collection::vec(op_strategy(), 0..200),
            topics in prop::collection::vec(topic_strategy(), 1..10),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut model: HashMap<(String, u32), u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(f, k, v) => {
                        prop_assert_eq!(trie.insert(&f, k, v), model.insert((f, k), v));
                    }
                    Op::Remove(f, k) => {
                        prop_assert_eq!(trie.remove(&f, k), model.remove(&(f, k)));
                    }
                }
                prop_assert_eq!(trie.len(), model.len());
            }
            for ((f, k), v) in &model {
                prop_assert_eq!(trie.get(f, *k), Some(v));
            }
            let mut all = HashMap::new();
            trie.for_each(|k, v, f| {
                all.insert((f.to_owned(), k), *v);
            });
            prop_assert_eq!(&all, &model);
            for topic in &topics {
                prop_assert_eq!(matches(&trie, topic), expected(&model, topic));
            }
            for (f, k) in model.keys() {
                prop_assert!(trie.remove(f, *k).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.is_empty());
        }
    }
}
