//! `NodeRouteIndex`: topic filter → the other nodes with a subscriber to it.
//!
//! Every shard holds a replica, kept in step by the cluster runtime's
//! [`super::ClusterIn::Route`] messages (one per change of a peer node's set of filters). A
//! publishing shard asks it which nodes to send a message to: one copy per node, not per
//! subscriber (the destination node then routes it to its own shards like a local publish).

use shardmq_codec::topic::validate_topic_filter;

use crate::core::routing::trie::SubscriptionTrie;

use super::{NodeId, NodeSet};

/// Topic filter → the nodes (other than this one) with at least one subscriber to it.
///
/// Shard-local. A `(filter, node)` pair is present or not: the owning node folds its
/// subscriber counts before telling its peers, so there is no count here.
#[derive(Debug, Default)]
pub struct NodeRouteIndex {
    trie: SubscriptionTrie<NodeId, ()>,
}

impl NodeRouteIndex {
    /// An empty index.
    pub fn new() -> NodeRouteIndex {
        NodeRouteIndex::default()
    }

    /// Number of `(filter, node)` pairs.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// True if no other node has a subscriber.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Applies one change: `node` gained or lost `filter`. Returns true if it changed the
    /// index (a repeated add, the remove of an absent pair, or a filter that is not valid
    /// [MQTT-4.7.1-1]/[MQTT-4.7.1-2] — a peer's bug must not reach the trie's asserts — change
    /// nothing).
    pub fn apply(&mut self, node: NodeId, filter: &str, added: bool) -> bool {
        if validate_topic_filter(filter, false).is_err() {
            return false;
        }
        if added {
            self.trie.insert(filter, node, ()).is_none()
        } else {
            self.trie.remove(filter, node).is_some()
        }
    }

    /// Forgets every filter of `node`; returns how many pairs were removed.
    pub fn remove_node(&mut self, node: NodeId) -> usize {
        let mut filters = Vec::new();
        self.trie.for_each(|n, (), filter| {
            if n == node {
                filters.push(filter.to_owned());
            }
        });
        for f in &filters {
            self.trie.remove(f, node);
        }
        filters.len()
    }

    /// The nodes with a filter matching `topic` (the `$` rule [MQTT-4.7.2-1] applies, as in
    /// the shard route index). Does not allocate.
    pub fn nodes_for(&self, topic: &str) -> NodeSet {
        let mut set = NodeSet::EMPTY;
        self.trie.for_each_match(topic, |node, (), _| {
            set.insert(node);
        });
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_wildcard_and_forgets_a_node() {
        let mut r = NodeRouteIndex::new();
        assert!(r.apply(NodeId(1), "a/+", true));
        assert!(!r.apply(NodeId(1), "a/+", true), "a repeated add changes nothing");
        assert!(r.apply(NodeId(2), "a/#", true));
        assert!(r.apply(NodeId(2), "$SYS/#", true));
        let got: Vec<_> = r.nodes_for("a/b").iter().collect();
        assert_eq!(got, vec![NodeId(1), NodeId(2)]);
        assert_eq!(r.nodes_for("b").len(), 0);
        // [MQTT-4.7.2-1]: `#` does not match a topic starting with `$`.
        assert!(!r.nodes_for("$x/y").contains(NodeId(2)));
        assert_eq!(r.remove_node(NodeId(2)), 2);
        assert_eq!(r.nodes_for("a/b").iter().collect::<Vec<_>>(), vec![NodeId(1)]);
        assert!(r.apply(NodeId(1), "a/+", false));
        assert!(!r.apply(NodeId(1), "a/+", false), "removing an absent pair changes nothing");
        assert!(r.is_empty());
        assert!(!r.apply(NodeId(3), "a/#/b", true), "an invalid filter is refused");
        assert!(r.is_empty());
    }
}
