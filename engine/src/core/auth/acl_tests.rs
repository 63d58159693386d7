use super::*;
use crate::core::routing::topic::filter_matches;

const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic deny alice/private/#
topic write sensors/+/alice
topic $SYS/broker/clients/#

user bob smith
topic read alice/shared

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern write x%c
";

fn anon(client_id: &str) -> Ident<'_> {
    Ident { user: None, client_id }
}

fn user<'a>(user: &'a str, client_id: &'a str) -> Ident<'a> {
    Ident { user: Some(user), client_id }
}

#[test]
fn grants_denies_and_patterns() {
    let acl = Acl::parse(FILE).unwrap();
    assert_eq!(acl.rule_count(), 10);
    let a = user("alice", "c1");
    assert!(acl.allows(&a, "alice/x", READ) && acl.allows(&a, "alice/x", WRITE));
    assert!(acl.allows(&a, "alice", WRITE), "`a/#` matches `a`");
    assert!(!acl.allows(&a, "alice/private/x", READ), "deny wins over readwrite");
    assert!(!acl.allows(&a, "alice/private", WRITE));
    assert!(acl.allows(&a, "sensors/t/alice", WRITE));
    assert!(!acl.allows(&a, "sensors/t/alice", READ));
    assert!(!acl.allows(&a, "public/news", READ), "anonymous lines are not alice's");
    assert!(acl.allows(&a, "$SYS/broker/clients/connected", READ));
    assert!(!acl.allows(&a, "$SYS/broker/load", READ));
    let b = user("bob smith", "c2");
    assert!(acl.allows(&b, "alice/shared", READ), "a user name with a space");
    assert!(!acl.allows(&b, "alice/shared", WRITE));
    let n = anon("c3");
    assert!(acl.allows(&n, "public/news", READ));
    assert!(!acl.allows(&n, "public/news", WRITE));
    assert!(!acl.allows(&n, "public/secret", READ));
    assert!(!acl.allows(&user("carol", "c4"), "public/news", READ), "no lines: nothing");
    // Patterns: whole levels, for every client, anonymous ones too.
    assert!(acl.allows(&n, "devices/c3/temp", WRITE));
    assert!(acl.allows(&user("carol", "c4"), "devices/c4", READ));
    assert!(!acl.allows(&n, "devices/c4/temp", WRITE));
    assert!(acl.allows(&b, "users/bob smith/inbox", READ));
    assert!(!acl.allows(&n, "users/c3/inbox", READ), "%u needs a user name");
    assert!(acl.allows(&n, "xc3", WRITE), "%c inside a level, as Mosquitto");
    assert!(!acl.allows(&n, "xc4", WRITE));
    assert!(!acl.allows(&n, "x%c", WRITE));
    assert!(!acl.allows(&anon("a/b"), "xa/b", WRITE), "not with a `/` in the id");
    assert_eq!(acl.read_coverage(&n, "xc3"), Coverage::None, "write only");
    let t = Acl::parse("pattern read s/%u-%c/+\n").unwrap();
    assert_eq!(t.read_coverage(&user("u", "c"), "s/u-c/x"), Coverage::Full);
    assert_eq!(t.read_coverage(&user("u", "c"), "s/+/x"), Coverage::Partial);
    assert!(t.allows(&user("u", "c"), "s/u-c/x", READ));
    assert!(!t.allows(&user("u", "c"), "s/u-cc/x", READ));
    assert!(!t.allows(&anon("c"), "s/-c/x", READ), "%u needs a user name");
    // Client ids that are not one level never fill a placeholder.
    for id in ["a/b", "+", "#", "a+", ""] {
        let i = anon(id);
        assert!(!acl.allows(&i, &format!("devices/{id}/t"), WRITE), "{id}");
        assert!(!acl.allows(&i, "devices/+/t", WRITE), "{id}");
    }
    // `$` topics are not matched by rules that start with a wildcard.
    let everything = Acl::parse("topic #\npattern +/%c\n").unwrap();
    assert!(everything.allows(&anon("c"), "a/b", READ));
    assert!(!everything.allows(&anon("c"), "$SYS/x", READ));
    assert!(!everything.allows(&anon("c"), "$x/c", READ));
}

#[test]
fn subscribe_coverage() {
    let acl = Acl::parse(FILE).unwrap();
    let a = user("alice", "c1");
    assert_eq!(acl.read_coverage(&a, "alice/x/+"), Coverage::Full);
    assert_eq!(acl.read_coverage(&a, "alice/#"), Coverage::Partial, "a deny meets it");
    assert_eq!(acl.read_coverage(&a, "alice/private/#"), Coverage::None, "a deny covers it");
    assert_eq!(acl.read_coverage(&a, "#"), Coverage::Partial);
    assert_eq!(acl.read_coverage(&a, "sensors/#"), Coverage::None, "write only");
    assert_eq!(acl.read_coverage(&a, "$SYS/#"), Coverage::Partial);
    assert_eq!(acl.read_coverage(&a, "$SYS/broker/clients/+"), Coverage::Full);
    assert_eq!(acl.read_coverage(&a, "devices/c1/#"), Coverage::Full);
    assert_eq!(acl.read_coverage(&a, "devices/+/x"), Coverage::Partial);
    let n = anon("c3");
    assert_eq!(acl.read_coverage(&n, "public/+"), Coverage::Partial);
    assert_eq!(acl.read_coverage(&n, "public/a/b"), Coverage::Full);
    assert_eq!(acl.read_coverage(&n, "+/+/+"), Coverage::Partial);
    assert_eq!(acl.read_coverage(&n, "$SYS/#"), Coverage::None, "`public/#` is not `$`");
    assert_eq!(acl.read_coverage(&anon("a/b"), "devices/a/b/#"), Coverage::None);
    let all = Acl::parse("topic read #\n").unwrap();
    assert_eq!(all.read_coverage(&n, "#"), Coverage::Full);
    assert_eq!(all.read_coverage(&n, "$SYS/#"), Coverage::None);
}

/// Coverage agrees with checking topics one by one: `Full` means every sample topic the
/// filter matches is readable, `None` that none is.
#[test]
fn coverage_agrees_with_per_topic_checks() {
    let acl = Acl::parse(FILE).unwrap();
    let words = ["alice", "public", "private", "devices", "c1", "x", "secret", "$SYS", "inbox"];
    let mut topics = Vec::new();
    for a in words {
        topics.push(a.to_string());
        for b in words {
            topics.push(format!("{a}/{b}"));
            for c in ["x", "private", "c1"] {
                topics.push(format!("{a}/{b}/{c}"));
            }
        }
    }
    let filters = ["#", "+", "+/#", "alice/#", "alice/+", "public/#", "devices/c1/+", "$SYS/#"];
    for ident in [user("alice", "c1"), anon("c1"), user("bob smith", "x")] {
        for f in filters {
            let readable: Vec<bool> = topics
                .iter()
                .filter(|t| filter_matches(f, t))
                .map(|t| acl.allows(&ident, t, READ))
                .collect();
            match acl.read_coverage(&ident, f) {
                Coverage::Full => assert!(readable.iter().all(|r| *r), "{ident:?} {f}"),
                Coverage::None => assert!(!readable.iter().any(|r| *r), "{ident:?} {f}"),
                Coverage::Partial => {}
            }
        }
    }
}

#[test]
fn malformed_lines_are_named() {
    let e = |text: &str| Acl::parse(text).unwrap_err().to_string();
    assert_eq!(
        e("topic read a\ntopic reed b\n"),
        "line 2: access `reed`: expected read, write, readwrite or deny"
    );
    assert!(e("\n\ntopci read a\n").starts_with("line 3: `topci`"));
    assert!(e("user\n").starts_with("line 1: `user` needs a user name"));
    assert!(e("topic\n").starts_with("line 1: `topic` needs a topic filter"));
    assert!(e("topic read a/#/b\n").contains("`#` must be the last level"));
    assert!(e("pattern read a+/b\n").contains("a wildcard must be a whole level"));
    assert!(e("pattern read %c+/b\n").contains("a wildcard must be a whole level"));
    // What Mosquitto accepts, so do we.
    let acl = Acl::parse("  # indented comment\r\ntopic a/b\r\nuser  x y\ntopic read  sp ace\n");
    let acl = acl.unwrap();
    assert!(acl.allows(&anon("c"), "a/b", READ | WRITE), "no access word: readwrite");
    assert!(acl.allows(&user("x y", "c"), "sp ace", READ), "filters may hold spaces");
    // An empty file denies everything.
    let empty = Acl::parse("").unwrap();
    assert!(!empty.allows(&anon("c"), "a", READ));
    assert_eq!(empty.read_coverage(&anon("c"), "#"), Coverage::None);
}
