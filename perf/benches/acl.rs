//! Authorisation micro-benchmarks: the PUBLISH write check (`Acl::allows`) and the
//! SUBSCRIBE-time coverage decision against an ACL file of 10,000 users (5 lines each) and
//! 100 patterns — the target is ≤ 200 ns for the write check.
//!
//! Run: `cargo bench -p shardmq-perf --bench acl`; smoke test: append `-- --test`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardmq_engine::core::auth::acl::{Acl, Ident, READ, WRITE};

const USERS: u32 = 10_000;
const PATTERNS: u32 = 100;

/// The ACL file: anonymous lines, 10,000 users with five lines each, 100 patterns.
fn acl_file() -> String {
    let mut s = String::from("topic read public/#\ntopic deny public/secret\n");
    for p in 0..PATTERNS {
        let access = ["read", "write", "readwrite", "deny"][(p % 4) as usize];
        s += &format!("pattern {access} app{p}/%c/#\n");
    }
    s += "pattern readwrite devices/%c/#\npattern read users/%u/inbox\n";
    for u in 0..USERS {
        s += &format!("user user{u}\n");
        s += &format!("topic readwrite home/user{u}/#\n");
        s += &format!("topic deny home/user{u}/private/#\n");
        s += &format!("topic write site/{}/+/user{u}\n", u % 100);
        s += &format!("topic read site/{}/#\n", u % 100);
        s += "topic read $SYS/broker/clients/#\n";
    }
    s
}

fn acl_benches(c: &mut Criterion) {
    let acl = Acl::parse(&acl_file()).expect("the generated file parses");
    assert_eq!(acl.rule_count(), 2 + PATTERNS as usize + 2 + 5 * USERS as usize);
    let mut group = c.benchmark_group("acl");
    group.throughput(Throughput::Elements(1));
    let me = Ident { user: Some("user4242"), client_id: "dev-4242" };
    assert!(acl.allows(&me, "home/user4242/kitchen/temp", WRITE));
    group.bench_function("write_allowed_user_rule", |b| {
        b.iter(|| acl.allows(black_box(&me), black_box("home/user4242/kitchen/temp"), WRITE))
    });
    assert!(acl.allows(&me, "devices/dev-4242/state", WRITE));
    group.bench_function("write_allowed_pattern", |b| {
        b.iter(|| acl.allows(black_box(&me), black_box("devices/dev-4242/state"), WRITE))
    });
    assert!(!acl.allows(&me, "home/user4242/private/diary", WRITE));
    group.bench_function("write_denied_by_deny", |b| {
        b.iter(|| acl.allows(black_box(&me), black_box("home/user4242/private/diary"), WRITE))
    });
    assert!(!acl.allows(&me, "elsewhere/a/b/c", WRITE));
    group.bench_function("write_denied_no_rule", |b| {
        b.iter(|| acl.allows(black_box(&me), black_box("elsewhere/a/b/c"), WRITE))
    });
    assert!(acl.allows(&me, "site/42/x", READ));
    group.bench_function("read_partly_covered_delivery", |b| {
        b.iter(|| acl.allows(black_box(&me), black_box("site/42/x"), READ))
    });
    group.bench_function("subscribe_coverage", |b| {
        b.iter(|| acl.read_coverage(black_box(&me), black_box("home/user4242/#")))
    });
    group.finish();
}

criterion_group!(benches, acl_benches);
criterion_main!(benches);
