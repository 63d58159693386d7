//! Memory of a compiled ACL: an ACL file of 10,000 users (5 lines each) and 100 patterns,
//! the shape of issue #13's cost target, measured by counting the bytes the allocator holds
//! (this test binary's global allocator counts; nothing else runs in it meanwhile), and the
//! most held while loading it (a process's memory keeps its peak).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use shardmq_engine::core::auth::acl::{Acl, Ident, READ, WRITE};

struct Counting;

static HELD_BYTES: AtomicIsize = AtomicIsize::new(0);
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

fn held(delta: isize) {
    let now = HELD_BYTES.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        held(l.size() as isize);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        held(-(l.size() as isize));
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        held(new_size as isize - l.size() as isize);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The ACL of `scripts/bench-acl.py` (and perf/notes/2026-12-07-acl.md).
fn big_acl() -> (String, usize) {
    let mut s = String::from("topic readwrite #\n");
    for i in 0..10_000 {
        s += &format!(
            "user user{i}\ntopic readwrite home/user{i}/#\ntopic read sensors/{}/+\n\
             topic write cmd/user{i}\ntopic deny home/user{i}/secret/#\ntopic read shared/{}/#\n",
            i % 100,
            i % 7
        );
    }
    for i in 0..100 {
        s += &format!("pattern readwrite devices/%c/p{i}/#\n");
    }
    (s, 1 + 10_000 * 5 + 100)
}

/// Bytes a rule may take, compiled (the rule's text here is ~20 bytes).
const BYTES_PER_RULE_MAX: usize = 300;

#[test]
fn a_large_acl_takes_little_memory_per_rule() {
    let (text, rules) = big_acl();
    let before = HELD_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(before, Ordering::Relaxed);
    let acl = Acl::parse(&text).unwrap();
    let held = (HELD_BYTES.load(Ordering::Relaxed) - before) as usize;
    let peak = (PEAK_BYTES.load(Ordering::Relaxed) - before) as usize;
    assert_eq!(acl.rule_count(), rules);
    let per_rule = held / rules;
    eprintln!(
        "compiled ACL: {held} bytes, {per_rule} bytes per rule ({rules} rules); {peak} bytes \
         at the peak of loading"
    );
    // Still right after compaction.
    let alice = Ident { user: Some("user4242"), client_id: "c1" };
    assert!(acl.allows(&alice, "home/user4242/kitchen", READ | WRITE));
    assert!(!acl.allows(&alice, "home/user4242/secret/x", READ));
    assert!(acl.allows(&alice, "devices/c1/p7/x", WRITE));
    assert!(!acl.allows(&alice, "devices/c2/p7/x", WRITE));
    assert!(per_rule <= BYTES_PER_RULE_MAX, "{per_rule} bytes per rule");
    // Loading does not hold much more than the result (the process keeps its peak).
    assert!(peak <= held + held / 4, "peak {peak} bytes for {held}");
}
