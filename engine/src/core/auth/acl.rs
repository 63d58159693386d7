//! Authorisation: Mosquitto's ACL file (`acl_file`), compiled once, checked per PUBLISH and
//! decided per SUBSCRIBE.
//!
//! ```text
//! # Lines before any `user` line apply to anonymous clients (no user name).
//! topic read public/#
//! user alice                      # the lines below apply to `alice` (rest of the line)
//! topic readwrite alice/#
//! topic deny alice/secret
//! pattern write devices/%c/state  # for every client, with its client id / user name
//! ```
//!
//! `topic [read|write|readwrite|deny] FILTER` (no access word: readwrite); `pattern` the same
//! with `%c` (client id) and `%u` (user name) replaced by the client's values (a whole level,
//! `devices/%c/#`, or inside one, `%c-state`, as Mosquitto does); `#` starts a comment line. With an ACL file, what no line grants is denied; a matching `deny` wins over
//! every grant. A topic starting with `$` is matched only by rules whose first level is not a
//! wildcard (as a subscription, [MQTT-4.7.2-1]), so `topic read #` does not grant `$SYS`.
//!
//! A placeholder whose value is missing (`%u` for an anonymous client) or could not be part of
//! a single topic level (it contains `/`, `+` or `#`, or is empty) makes that pattern not apply
//! to the client: a client id `a/b` cannot reach `devices/a/b/state` through
//! `devices/%c/state` (Mosquitto 2.0 substitutes the text, so client `a/b` writes into client
//! `a`'s `devices/a/#`: a deliberate difference).
//!
//! Unlike Mosquitto, which ignores lines it does not understand, a line that is not a comment,
//! `user`, `topic` or `pattern`, an unknown access word, or an invalid filter fails the load,
//! naming the line.
//!
//! Rules are compiled into tries (one for anonymous clients, one per user, one for patterns)
//! so that a check walks the topic's levels once per trie. SUBSCRIBE asks
//! [`Acl::read_coverage`]: a filter every topic of which is readable needs no check per
//! message; one none of which is readable is refused; the rest are checked per delivered
//! topic.
//!
//! Process-wide: built at start-up (and on reload), read-only, shared by every shard.

use crate::core::routing::topic::{levels, MULTI_LEVEL_WILDCARD, SINGLE_LEVEL_WILDCARD};
use std::borrow::Cow;

use crate::core::hash::ConfigMap;

#[path = "acl_trie.rs"]
mod trie;
use trie::{Bits, Node};

/// The read right.
pub const READ: u8 = 1;
/// The write right.
pub const WRITE: u8 = 2;
/// The longest line accepted.
pub const LINE_LENGTH_MAX_BYTES: usize = 65_536;
/// The most rules (topic and pattern lines) a file may hold.
pub const RULES_MAX: usize = 1_000_000;

/// The ACL's tables (see [`ConfigMap`]: built from the file, only looked up with what
/// clients send).
type Map<K, V> = ConfigMap<K, V>;

/// Who is asking: the user name (absent for anonymous clients) and the client id.
#[derive(Debug, Clone, Copy)]
pub struct Ident<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lvl {
    Lit(Box<str>),
    Plus,
    Hash,
    /// `%c` (patterns only).
    ClientId,
    /// `%u` (patterns only).
    User,
    /// A level holding `%c` or `%u` among other text (patterns only), e.g. `%c-state`.
    Template(Box<str>),
}

/// One `topic` or `pattern` line, as SUBSCRIBE coverage reads it: its filter as written
/// (one allocation; checked by [`parse_filter`] when loaded, and compiled into the trie).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `READ | WRITE` bits granted; 0 for `deny`.
    grant: u8,
    filter: Box<str>,
}

/// The text of a template level with the client's values in it.
fn fill_template(template: &str, ident: &Ident<'_>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut t = template;
    while !t.is_empty() {
        if let Some(after) = t.strip_prefix("%c") {
            out.push_str(usable_value(Some(ident.client_id))?);
            t = after;
        } else if let Some(after) = t.strip_prefix("%u") {
            out.push_str(usable_value(ident.user)?);
            t = after;
        } else {
            let c = t.chars().next().expect("not empty");
            out.push(c);
            t = &t[c.len_utf8()..];
        }
    }
    Some(out)
}

/// A placeholder's value when it can stand for one topic level.
pub(super) fn usable_value(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.is_empty() && !v.contains(['/', '+', '#']))
}

/// Rules and their trie.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RuleSet {
    rules: Vec<Rule>,
    trie: Node,
}

impl RuleSet {
    fn push(&mut self, rule: Rule, levels: &[Lvl]) {
        self.trie.insert(levels, rule.grant);
        self.rules.push(rule);
    }

    /// Compacts the set once every rule is in (see `acl_trie.rs`).
    fn freeze(&mut self) {
        self.rules.shrink_to_fit();
        self.trie.freeze();
    }
}

/// How much of a filter a client may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every topic the filter matches is readable: no check per message.
    Full,
    /// Some may be: granted, and each delivered topic is checked.
    Partial,
    /// None is: the subscription is refused.
    None,
}

/// A compiled ACL file. Process-wide, read-only.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acl {
    anonymous: RuleSet,
    users: Map<Box<str>, RuleSet>,
    patterns: RuleSet,
}

/// A line the ACL file cannot be read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for AclError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses a filter into levels (`placeholders`: `%c`/`%u` levels of a pattern).
fn parse_filter(filter: &str, placeholders: bool) -> Result<Box<[Lvl]>, String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    let n = levels(filter).count();
    let mut out = Vec::with_capacity(n);
    for (i, l) in levels(filter).enumerate() {
        out.push(match l {
            MULTI_LEVEL_WILDCARD if i + 1 == n => Lvl::Hash,
            MULTI_LEVEL_WILDCARD => {
                return Err(format!("`{filter}`: `#` must be the last level [MQTT-4.7.1-1]"))
            }
            SINGLE_LEVEL_WILDCARD => Lvl::Plus,
            "%c" if placeholders => Lvl::ClientId,
            "%u" if placeholders => Lvl::User,
            l if placeholders && (l.contains("%c") || l.contains("%u")) => {
                if l.contains(['+', '#']) {
                    return Err(format!(
                        "`{filter}`: a wildcard must be a whole level [MQTT-4.7.1-2] [MQTT-4.7.1-3]"
                    ));
                }
                Lvl::Template(l.into())
            }
            l if l.contains(['+', '#']) => {
                return Err(format!(
                    "`{filter}`: a wildcard must be a whole level [MQTT-4.7.1-2] [MQTT-4.7.1-3]"
                ))
            }
            l => Lvl::Lit(l.into()),
        });
    }
    Ok(out.into())
}

impl Acl {
    /// Parses an ACL file; an error names the line.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        let mut rules = 0usize;
        for (i, raw) in text.lines().enumerate() {
            let err = |reason: String| AclError { line: i + 1, reason };
            if raw.len() > LINE_LENGTH_MAX_BYTES {
                return Err(err(format!("longer than {LINE_LENGTH_MAX_BYTES} bytes")));
            }
            let line = raw.trim_start().trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim_start_matches(' ');
            match keyword {
                "user" => {
                    if rest.trim().is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    user = Some(rest.into());
                }
                "topic" | "pattern" => {
                    // `topic [ACCESS] FILTER`: the filter is the rest of the line (it may
                    // hold spaces); a single word is a filter with readwrite access.
                    let (first, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    let tail = tail.trim_start_matches(' ');
                    let (grant, filter) = if tail.is_empty() {
                        (READ | WRITE, first)
                    } else {
                        let grant = match first {
                            "read" => READ,
                            "write" => WRITE,
                            "readwrite" => READ | WRITE,
                            "deny" => 0,
                            other => {
                                return Err(err(format!(
                                    "access `{other}`: expected read, write, readwrite or deny"
                                )))
                            }
                        };
                        (grant, tail)
                    };
                    if filter.is_empty() {
                        return Err(err(format!("`{keyword}` needs a topic filter")));
                    }
                    let pattern = keyword == "pattern";
                    let levels = parse_filter(filter, pattern).map_err(err)?;
                    let rule = Rule { grant, filter: filter.into() };
                    rules += 1;
                    if rules > RULES_MAX {
                        return Err(err(format!("more than {RULES_MAX} rules")));
                    }
                    if pattern {
                        acl.patterns.push(rule, &levels);
                    } else {
                        match &user {
                            None => acl.anonymous.push(rule, &levels),
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule, &levels),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "`{}`: expected `user`, `topic`, `pattern` or a `#` comment",
                        other.escape_debug()
                    )))
                }
            }
        }
        acl.anonymous.freeze();
        acl.patterns.freeze();
        for set in acl.users.values_mut() {
            set.freeze();
        }
        acl.users.shrink_to_fit();
        Ok(acl)
    }

    /// The rule set of the client's own lines (user or anonymous), if any.
    fn own(&self, ident: &Ident<'_>) -> Option<&RuleSet> {
        match ident.user {
            None => Some(&self.anonymous),
            Some(u) => self.users.get(u),
        }
    }

    /// Whether the client has every bit of `access` (`READ` or `WRITE`) on `topic`.
    pub fn allows(&self, ident: &Ident<'_>, topic: &str, access: u8) -> bool {
        let mut bits = Bits::default();
        for set in [self.own(ident), Some(&self.patterns)].into_iter().flatten() {
            let mut rest = levels(topic);
            let first = rest.next();
            set.trie.collect(first, &mut rest, ident, true, &mut bits);
        }
        !bits.deny && bits.grant & access == access
    }

    /// How much of `filter` (a valid filter, `$share/G/` already removed) the client may
    /// read. Decided from the rules, conservatively: `Full` only when one grant covers the
    /// whole filter and no deny meets it; `None` only when no read grant meets it (or a deny
    /// covers it).
    pub fn read_coverage(&self, ident: &Ident<'_>, filter: &str) -> Coverage {
        let f: Vec<&str> = levels(filter).collect();
        let mut covered = false;
        let mut met = false;
        let mut deny_meets = false;
        let sets = [(self.own(ident), false), (Some(&self.patterns), true)];
        for (set, placeholders) in sets.into_iter().filter_map(|(s, p)| Some((s?, p))) {
            for rule in &set.rules {
                let Some(r) = substitute(&rule.filter, placeholders, ident) else { continue };
                let r: Vec<&str> = r.iter().map(|l| &**l).collect();
                if rule.grant == 0 {
                    if covers(&r, &f) {
                        return Coverage::None;
                    }
                    deny_meets |= intersects(&r, &f);
                } else if rule.grant & READ != 0 {
                    covered |= covers(&r, &f);
                    met |= intersects(&r, &f);
                }
            }
        }
        match (covered && !deny_meets, met) {
            (true, _) => Coverage::Full,
            (false, true) => Coverage::Partial,
            (false, false) => Coverage::None,
        }
    }

    /// Number of rules (for the start-up log).
    pub fn rule_count(&self) -> usize {
        self.anonymous.rules.len()
            + self.patterns.rules.len()
            + self.users.values().map(|s| s.rules.len()).sum::<usize>()
    }
}

/// A rule's levels with the client's values in place of placeholders (`placeholders`: a
/// `pattern` line, read as [`parse_filter`] does); `None` when a placeholder has no usable
/// value (the rule does not apply).
fn substitute<'a>(
    filter: &'a str,
    placeholders: bool,
    ident: &Ident<'a>,
) -> Option<Vec<Cow<'a, str>>> {
    levels(filter)
        .map(|l| match l {
            "%c" if placeholders => usable_value(Some(ident.client_id)).map(Cow::Borrowed),
            "%u" if placeholders => usable_value(ident.user).map(Cow::Borrowed),
            l if placeholders && (l.contains("%c") || l.contains("%u")) => {
                fill_template(l, ident).map(Cow::Owned)
            }
            l => Some(Cow::Borrowed(l)),
        })
        .collect()
}

fn is_wild(l: &str) -> bool {
    l == SINGLE_LEVEL_WILDCARD || l == MULTI_LEVEL_WILDCARD
}

/// The `$` rule between a rule and a filter: a rule starting with a wildcard matches no
/// `$` topic, and a filter starting with one matches none either [MQTT-4.7.2-1].
fn dollar_apart(rule: &[&str], filter: &[&str]) -> bool {
    let dollar_lit = |l: &[&str]| l.first().is_some_and(|x| x.starts_with('$'));
    let wild_first = |l: &[&str]| l.first().is_some_and(|x| is_wild(x));
    (wild_first(rule) && dollar_lit(filter)) || (wild_first(filter) && dollar_lit(rule))
}

/// Whether every topic `filter` matches, `rule` matches too.
fn covers(rule: &[&str], filter: &[&str]) -> bool {
    if dollar_apart(rule, filter) {
        return false;
    }
    for (i, r) in rule.iter().enumerate() {
        if *r == MULTI_LEVEL_WILDCARD {
            return true;
        }
        match filter.get(i) {
            // The filter is shorter: only a trailing `#` in the rule would cover its topics.
            None => return false,
            Some(&MULTI_LEVEL_WILDCARD) => return false,
            Some(&SINGLE_LEVEL_WILDCARD) if *r != SINGLE_LEVEL_WILDCARD => return false,
            Some(f) if *r != SINGLE_LEVEL_WILDCARD && r != f => return false,
            Some(_) => {}
        }
    }
    rule.len() == filter.len()
}

/// Whether some topic matches both `rule` and `filter`.
fn intersects(rule: &[&str], filter: &[&str]) -> bool {
    if dollar_apart(rule, filter) {
        return false;
    }
    let mut i = 0;
    loop {
        match (rule.get(i), filter.get(i)) {
            (Some(&MULTI_LEVEL_WILDCARD), _) | (_, Some(&MULTI_LEVEL_WILDCARD)) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(r), Some(f)) => {
                if !is_wild(r) && !is_wild(f) && r != f {
                    return false;
                }
            }
        }
        i += 1;
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
