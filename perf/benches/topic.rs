//! Topic matching micro-benchmarks: the subscription trie (mixed filters, and one filter
//! with many subscribers), the routing index, and retained-message lookup.
//!
//! Run: `cargo bench -p shardmq-perf --bench topic`; smoke test: append `-- --test`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardmq_engine::core::ids::{SessionSlot, ShardId};
use shardmq_engine::core::routing::retained::RetainedStore;
use shardmq_engine::core::routing::route_index::RouteIndex;
use shardmq_engine::core::routing::trie::SubscriptionTrie;

/// Subscriptions (or retained topics) in each benchmark's data set.
const ENTRY_COUNT: u32 = 10_000;

/// Filter `i` of a mixed set: mostly exact filters, some with `+` or `#`, a few broad ones.
fn mixed_filter(i: u32) -> String {
    let site = i % 100;
    match i % 10 {
        0 => format!("site/{site}/+/{i}/temp"),
        1 => format!("site/{site}/dev/{i}/#"),
        2 => format!("site/+/dev/{i}/temp"),
        3 => format!("+/{site}/dev/{i}/status"),
        _ => format!("site/{site}/dev/{i}/temp"),
    }
}

fn trie_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie");
    group.throughput(Throughput::Elements(1));

    let mut mixed = SubscriptionTrie::new();
    for i in 0..ENTRY_COUNT {
        mixed.insert(&mixed_filter(i), SessionSlot(i), 1u8);
    }
    // "site/42/dev/4242/temp" is matched by a few of the filters above (exact, `+`, `#`).
    group.bench_function("match_mixed_10k_filters", |b| {
        b.iter(|| {
            let mut n = 0u32;
            mixed.for_each_match(black_box("site/42/dev/4242/temp"), |_, qos, _| {
                n += u32::from(*qos);
            });
            n
        })
    });
    group.bench_function("match_mixed_10k_filters_miss", |b| {
        b.iter(|| {
            let mut n = 0u32;
            mixed.for_each_match(black_box("site/42/dev/none/temp"), |_, qos, _| {
                n += u32::from(*qos);
            });
            n
        })
    });

    let mut fanout = SubscriptionTrie::new();
    for i in 0..ENTRY_COUNT {
        fanout.insert("bench/fanout/topic", SessionSlot(i), 1u8);
    }
    group.throughput(Throughput::Elements(ENTRY_COUNT.into()));
    group.bench_function("match_one_filter_10k_subscribers", |b| {
        b.iter(|| {
            let mut n = 0u32;
            fanout.for_each_match(black_box("bench/fanout/topic"), |_, qos, _| {
                n += u32::from(*qos);
            });
            n
        })
    });
    group.finish();
}

fn route_index_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_index");
    group.throughput(Throughput::Elements(1));
    let mut index = RouteIndex::new(2);
    for i in 0..ENTRY_COUNT {
        index.add(&mixed_filter(i), ShardId((i % 2) as u16));
    }
    group.bench_function("shards_for_mixed_10k_filters", |b| {
        b.iter(|| index.shards_for(black_box("site/42/dev/4242/temp")))
    });
    group.finish();
}

fn retained_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("retained");
    let mut store = RetainedStore::new(ENTRY_COUNT as usize, usize::MAX, |_, _| 0);
    for i in 0..ENTRY_COUNT {
        let topic = format!("site/{}/dev/{i}/temp", i % 100);
        store.set(&topic, i).expect("the store holds ENTRY_COUNT topics");
    }
    group.throughput(Throughput::Elements(ENTRY_COUNT.into()));
    group.bench_function("hash_over_10k_topics", |b| {
        b.iter(|| {
            let mut n = 0u64;
            store.for_each_matching(black_box("#"), |_, v| n += u64::from(*v));
            n
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("plus_one_site_of_10k_topics", |b| {
        b.iter(|| {
            let mut n = 0u64;
            store.for_each_matching(black_box("site/42/dev/+/temp"), |_, v| n += u64::from(*v));
            n
        })
    });
    group.finish();
}

criterion_group!(benches, trie_benches, route_index_benches, retained_benches);
criterion_main!(benches);
