//! The ACL's rule tries (a child module of `acl.rs`): one node per topic level of the rules,
//! with the grants and denies of the rules that end there.
//!
//! Compact: most nodes of a large file have one or a few children (a user's own subtree), so
//! a node keeps its literal children in an exactly sized slice sorted by name (binary
//! search) unless it has more than [`FEW_CHILDREN_MAX`] (then a hash map), and keeps its rare
//! wildcard and placeholder children behind one optional box. A node is 56 bytes; issue
//! #13's file of 10,000 users (5 lines each) and 100 patterns takes 212 bytes per rule,
//! against 798 with a hash map in every node (`engine/tests/acl_memory.rs`).
//!
//! Process-wide, read-only once frozen.

use super::{usable_value, Ident, Lvl, Map};

/// A frozen node with more literal children than this keeps them in a hash map.
pub(super) const FEW_CHILDREN_MAX: usize = 16;

/// What matched a topic: the union of grants, and whether any deny matched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bits {
    pub(super) grant: u8,
    pub(super) deny: bool,
}

impl Bits {
    fn add(&mut self, other: Bits) {
        self.grant |= other.grant;
        self.deny |= other.deny;
    }
    fn add_rule(&mut self, grant: u8) {
        if grant == 0 {
            self.deny = true;
        } else {
            self.grant |= grant;
        }
    }
}

/// The literal children of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lits {
    /// At most [`FEW_CHILDREN_MAX`], sorted by name, exactly sized.
    Few(Box<[(Box<str>, Node)]>),
    /// More.
    Many(Map<Box<str>, Node>),
}

impl Default for Lits {
    fn default() -> Lits {
        Lits::Few(Box::default())
    }
}

impl Lits {
    fn get(&self, name: &str) -> Option<&Node> {
        match self {
            Lits::Few(few) => {
                few.binary_search_by(|(k, _)| (**k).cmp(name)).ok().map(|i| &few[i].1)
            }
            Lits::Many(map) => map.get(name),
        }
    }

    /// The child `name`, made if missing. The slice is kept exactly sized and sorted while
    /// building too (a copy per new child, at most [`FEW_CHILDREN_MAX`] of them), so that
    /// loading a large file never holds more than the result.
    fn entry(&mut self, name: &str) -> &mut Node {
        if let Lits::Few(few) = self {
            if let Err(at) = few.binary_search_by(|(k, _)| (**k).cmp(name)) {
                let mut v = std::mem::take(few).into_vec();
                if v.len() < FEW_CHILDREN_MAX {
                    v.insert(at, (name.into(), Node::default()));
                    *few = v.into_boxed_slice();
                } else {
                    *self = Lits::Many(v.into_iter().collect());
                }
            }
        }
        match self {
            Lits::Few(few) => {
                let i = few.binary_search_by(|(k, _)| (**k).cmp(name)).expect("just made");
                &mut few[i].1
            }
            Lits::Many(map) => map.entry(name.into()).or_default(),
        }
    }

    fn freeze(&mut self) {
        match self {
            Lits::Few(few) => few.iter_mut().for_each(|(_, n)| n.freeze()),
            Lits::Many(map) => {
                map.values_mut().for_each(Node::freeze);
                map.shrink_to_fit();
            }
        }
    }
}

/// A node's wildcard and placeholder children (rare: boxed apart).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Wild {
    plus: Option<Box<Node>>,
    client_id: Option<Box<Node>>,
    user: Option<Box<Node>>,
    /// Levels holding `%c` or `%u` among other text.
    templates: Vec<(Box<str>, Node)>,
}

/// A trie of rules by level. Placeholder children are compared with the client's values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Node {
    lit: Lits,
    wild: Option<Box<Wild>>,
    /// Rules ending here.
    end: Bits,
    /// Rules ending with `#` here (they match this level's topic too: `a/#` matches `a`).
    hash: Bits,
}

impl Node {
    /// Adds a rule of `levels` granting `grant` (0: deny).
    pub(super) fn insert(&mut self, levels: &[Lvl], grant: u8) {
        let mut node = self;
        for (i, l) in levels.iter().enumerate() {
            node = match l {
                Lvl::Hash => {
                    debug_assert_eq!(i + 1, levels.len(), "`#` is last (checked at parse)");
                    node.hash.add_rule(grant);
                    return;
                }
                Lvl::Lit(s) => node.lit.entry(s),
                Lvl::Plus => node.wild_mut().plus.get_or_insert_with(Box::default),
                Lvl::ClientId => node.wild_mut().client_id.get_or_insert_with(Box::default),
                Lvl::User => node.wild_mut().user.get_or_insert_with(Box::default),
                Lvl::Template(t) => {
                    let templates = &mut node.wild_mut().templates;
                    let i = match templates.iter().position(|(x, _)| x == t) {
                        Some(i) => i,
                        None => {
                            templates.push((t.clone(), Node::default()));
                            templates.len() - 1
                        }
                    };
                    &mut templates[i].1
                }
            };
        }
        node.end.add_rule(grant);
    }

    fn wild_mut(&mut self) -> &mut Wild {
        self.wild.get_or_insert_with(Box::default)
    }

    /// Compacts the trie once every rule is in.
    pub(super) fn freeze(&mut self) {
        self.lit.freeze();
        if let Some(w) = &mut self.wild {
            for n in [&mut w.plus, &mut w.client_id, &mut w.user].into_iter().flatten() {
                n.freeze();
            }
            for (_, n) in &mut w.templates {
                n.freeze();
            }
            w.templates.shrink_to_fit();
        }
    }

    /// Adds what matches the topic's remaining levels to `out`. `first`: the topic's first
    /// level (the `$` rule applies there).
    pub(super) fn collect<'t>(
        &self,
        level: Option<&'t str>,
        rest: &mut (impl Iterator<Item = &'t str> + Clone),
        ident: &Ident<'_>,
        first: bool,
        out: &mut Bits,
    ) {
        let dollar = first && level.is_some_and(|l| l.starts_with('$'));
        if !dollar {
            out.add(self.hash);
        }
        let Some(t) = level else {
            out.add(self.end);
            return;
        };
        let next = rest.next();
        if let Some(n) = self.lit.get(t) {
            n.collect(next, &mut rest.clone(), ident, false, out);
        }
        if dollar {
            return;
        }
        let Some(w) = &self.wild else { return };
        if let Some(n) = &w.plus {
            n.collect(next, &mut rest.clone(), ident, false, out);
        }
        if let Some(n) = &w.client_id {
            if usable_value(Some(ident.client_id)) == Some(t) {
                n.collect(next, &mut rest.clone(), ident, false, out);
            }
        }
        if let Some(n) = &w.user {
            if usable_value(ident.user) == Some(t) {
                n.collect(next, &mut rest.clone(), ident, false, out);
            }
        }
        for (template, n) in &w.templates {
            if template_matches(template, ident, t) {
                n.collect(next, &mut rest.clone(), ident, false, out);
            }
        }
    }
}

/// Whether `template` (a level with `%c` / `%u` in it) with the client's values is `level`.
/// False when a value it needs is missing or unusable.
fn template_matches(template: &str, ident: &Ident<'_>, level: &str) -> bool {
    let mut rest = level;
    let mut t = template;
    while !t.is_empty() {
        let (value, skip) = if let Some(after) = t.strip_prefix("%c") {
            (usable_value(Some(ident.client_id)), after)
        } else if let Some(after) = t.strip_prefix("%u") {
            (usable_value(ident.user), after)
        } else {
            let c = t.chars().next().expect("not empty");
            let Some(r) = rest.strip_prefix(c) else { return false };
            rest = r;
            t = &t[c.len_utf8()..];
            continue;
        };
        let Some(v) = value else { return false };
        let Some(r) = rest.strip_prefix(v) else { return false };
        rest = r;
        t = skip;
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_small_and_a_frozen_trie_finds_what_a_building_one_does() {
        assert!(size_of::<Node>() <= 56, "Node: {}", size_of::<Node>());
        let mut n = Node::default();
        let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        for (i, k) in names.iter().enumerate() {
            let lvl = [Lvl::Lit(k.as_str().into()), Lvl::Lit("x".into())];
            n.insert(&lvl, if i % 2 == 0 { 1 } else { 2 });
        }
        n.insert(&[Lvl::Lit("k3".into()), Lvl::Plus], 0);
        let ident = Ident { user: None, client_id: "c" };
        let bits = |n: &Node, topic: &str| {
            let mut rest = topic.split('/');
            let first = rest.next();
            let mut out = Bits::default();
            n.collect(first, &mut rest, &ident, true, &mut out);
            out
        };
        let building: Vec<Bits> = names.iter().map(|k| bits(&n, &format!("{k}/x"))).collect();
        n.freeze();
        assert!(matches!(n.lit, Lits::Many(_)), "40 children: a map");
        let k3 = n.lit.get("k3").unwrap();
        assert!(matches!(&k3.lit, Lits::Few(few) if few.len() == 1), "one child: a slice");
        let frozen: Vec<Bits> = names.iter().map(|k| bits(&n, &format!("{k}/x"))).collect();
        assert_eq!(building, frozen);
        assert_eq!(bits(&n, "k3/x"), Bits { grant: 2, deny: true });
        assert_eq!(bits(&n, "k4/y"), Bits::default());
    }
}
