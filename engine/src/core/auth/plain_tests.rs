//! The plain-password cache and budget: what is derived, what is answered from the cache, and
//! what is refused as Server busy. Time is the `now` passed in; nothing here is timed.

use ::core::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::core::auth::scram::DERIVATIONS;
use crate::core::auth::users::Credential;

fn users() -> UserDb {
    let mut db = UserDb::default();
    db.insert("alice", Credential::derive(b"wonderland", b"0123456789abcdef", 4096));
    db.insert("bob", Credential::derive(b"builder", b"fedcba9876543210", 4096));
    db
}

/// PBKDF2 calls and rounds made on this thread by `f`.
fn derivations<T>(f: impl FnOnce() -> T) -> (T, (u64, u64)) {
    let before = DERIVATIONS.with(|d| d.get());
    let out = f();
    let after = DERIVATIONS.with(|d| d.get());
    (out, (after.0 - before.0, after.1 - before.1))
}

const BUSY: Result<(), ReasonCode> = Err(ReasonCode::SERVER_BUSY);
const WRONG: Result<(), ReasonCode> = Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);

#[test]
fn a_repeated_login_is_answered_from_the_cache_without_pbkdf2() {
    let db = users();
    let mut checks = PasswordChecks::new(&[1; 32], 0, ROUNDS_PER_SEC_DEFAULT);
    let now = Instant::now();
    let (r, n) = derivations(|| checks.check(&db, "alice", b"wonderland", now));
    assert_eq!((r, n), (Ok(()), (1, 4096)));
    let (r, n) = derivations(|| checks.check(&db, "alice", b"wonderland", now));
    assert_eq!((r, n), (Ok(()), (0, 0)), "the second login costs an HMAC, not a PBKDF2");
    // A wrong password is derived once, then remembered as wrong.
    let (r, n) = derivations(|| checks.check(&db, "alice", b"nope", now));
    assert_eq!((r, n.0), (WRONG, 1));
    let (r, n) = derivations(|| checks.check(&db, "alice", b"nope", now));
    assert_eq!((r, n.0), (WRONG, 0));
    // ... and it did not replace the good one.
    assert_eq!(checks.check(&db, "alice", b"wonderland", now), Ok(()));
    // The good entry is per user: bob's password is not alice's.
    let (r, n) = derivations(|| checks.check(&db, "bob", b"wonderland", now));
    assert_eq!((r, n.0), (WRONG, 1));
    assert_eq!((checks.cache_hits_count, checks.derivations_count), (3, 3));
}

#[test]
fn the_cache_keeps_tags_not_passwords_and_is_bounded() {
    let db = users();
    let mut checks = PasswordChecks::new(&[1; 32], 0, ROUNDS_PER_SEC_MAX);
    let mut now = Instant::now();
    assert_eq!(checks.check(&db, "alice", b"wonderland", now), Ok(()));
    assert!(checks.good.values().all(|tag| !tag.windows(10).any(|w| w == b"wonderland")));
    assert_eq!(checks.check(&db, "alice", b"guess 0", now), WRONG);
    // Past the bound, the oldest wrong pairs are forgotten; the good entry stays (failures
    // cannot evict it).
    for i in 0..BAD_ENTRIES_MAX as u32 {
        let mut tag = [0xEE; 32];
        tag[..4].copy_from_slice(&i.to_be_bytes());
        checks.remember_bad(tag);
    }
    assert_eq!((checks.bad.len(), checks.bad_order.len()), (BAD_ENTRIES_MAX, BAD_ENTRIES_MAX));
    now += Duration::from_secs(1);
    let (r, n) = derivations(|| checks.check(&db, "alice", b"guess 0", now));
    assert_eq!((r, n.0), (WRONG, 1), "forgotten: derived again");
    let (r, n) = derivations(|| checks.check(&db, "alice", b"wonderland", now));
    assert_eq!((r, n.0), (Ok(()), 0), "still cached");
}

#[test]
fn good_entries_are_bounded_oldest_first() {
    let mut checks = PasswordChecks::new(&[1; 32], 0, ROUNDS_PER_SEC_MIN);
    for i in 0..GOOD_ENTRIES_MAX + 1 {
        checks.remember_good(&format!("u{i}"), [0; 32]);
    }
    checks.remember_good("u5", [1; 32]); // A replaced entry keeps its place.
    assert_eq!(checks.good.len(), GOOD_ENTRIES_MAX);
    assert_eq!(checks.good_order.len(), GOOD_ENTRIES_MAX);
    assert!(!checks.good.contains_key("u0") && checks.good.contains_key("u1"));
    assert_eq!(checks.good.get("u5"), Some(&[1; 32]));
}

#[test]
fn past_the_budget_checks_are_refused_as_server_busy_until_it_refills() {
    let db = users();
    // Room for two 4096-round checks a second (the second overdraws).
    let mut checks = PasswordChecks::new(&[1; 32], 0, 2 * 4096 - 1);
    let t0 = Instant::now();
    assert_eq!(checks.check(&db, "alice", b"x1", t0), WRONG);
    assert_eq!(checks.check(&db, "alice", b"x2", t0), WRONG);
    let (r, n) = derivations(|| checks.check(&db, "alice", b"wonderland", t0));
    assert_eq!((r, n.0), (BUSY, 0), "no derivation once the budget is spent");
    // Cached answers need no budget.
    assert_eq!(checks.check(&db, "alice", b"x1", t0), WRONG);
    // Unknown users are charged like known ones.
    assert_eq!(checks.check(&db, "nobody", b"x", t0), BUSY);
    // Half a second later, half the budget came back: one more check.
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(checks.check(&db, "alice", b"wonderland", t1), Ok(()));
    assert_eq!(checks.check(&db, "bob", b"builder", t1), BUSY);
    // Long idle refills at most one second's worth.
    let t2 = t1 + Duration::from_secs(3600);
    assert_eq!(checks.check(&db, "bob", b"builder", t2), Ok(()));
    assert_eq!(checks.check(&db, "nobody", b"a", t2), WRONG);
    assert_eq!(checks.check(&db, "nobody", b"b", t2), BUSY);
    // A `now` from before the last one earns nothing.
    assert_eq!(checks.check(&db, "nobody", b"c", t1), BUSY);
}

#[test]
fn unknown_users_cost_the_same_derivation_as_known_ones() {
    let mut db = users();
    db.insert("carol", Credential::derive(b"pw", b"salt", 10_000));
    let mut checks = PasswordChecks::new(&[1; 32], 0, ROUNDS_PER_SEC_MAX);
    let now = Instant::now();
    let (r, known) = derivations(|| checks.check(&db, "alice", b"wrong", now));
    assert_eq!(r, WRONG);
    let (r, unknown) = derivations(|| checks.check(&db, "mallory", b"wrong", now));
    assert_eq!(r, WRONG);
    assert_eq!(known, (1, 4096));
    assert_eq!(unknown, known, "one PBKDF2 of the file's most common count");
}

#[test]
fn a_flood_from_one_address_spends_its_share_not_everybody_s_budget() {
    let db = users();
    // A shard budget of eight 4096-round checks a second; each address and each name may
    // spend a quarter of it (two checks, the second overdrawing).
    let mut checks = PasswordChecks::new(&[1; 32], 0, 8 * 4096).with_per_key_share(PER_KEY_SHARE);
    let t0 = Instant::now();
    let attacker: Option<IpAddr> = Some([10, 0, 0, 66].into());
    let names = ["u1", "u2", "u3", "u4", "u5"];
    let mut refused = 0;
    for (i, name) in names.iter().enumerate() {
        let pw = format!("guess {i}");
        if checks.check_from(&db, 0, name, pw.as_bytes(), attacker, t0) == BUSY {
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "two derivations, then the address's share is spent");
    assert_eq!(checks.share_refusals_count, 3);
    // Another address logs in: the shard's budget was barely touched.
    let other: Option<IpAddr> = Some([10, 0, 0, 7].into());
    assert_eq!(checks.check_from(&db, 0, "alice", b"wonderland", other, t0), Ok(()));
    // Per user name too: guesses for bob from many addresses spend bob's share only.
    for i in 0..3u8 {
        let from: Option<IpAddr> = Some([10, 1, 0, i].into());
        let r = checks.check_from(&db, 0, "bob", format!("g{i}").as_bytes(), from, t0);
        assert_eq!(r, if i < 2 { WRONG } else { BUSY }, "guess {i}");
    }
    let from: Option<IpAddr> = Some([10, 2, 0, 1].into());
    assert_eq!(checks.check_from(&db, 0, "alice", b"other guess", from, t0), WRONG);
    // A second later the shares are back.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(checks.check_from(&db, 0, "bob", b"builder", attacker, t1), Ok(()));
}

#[test]
fn outcomes_are_remembered_per_realm() {
    // Listener 1's own file has alice with another password: the global realm's cached
    // success must not let the global password in there.
    let global = users();
    let mut own = UserDb::default();
    own.insert("alice", Credential::derive(b"looking-glass", b"0123456789abcdef", 4096));
    let mut checks = PasswordChecks::new(&[1; 32], 0, ROUNDS_PER_SEC_DEFAULT);
    let now = Instant::now();
    assert_eq!(checks.check_from(&global, 0, "alice", b"wonderland", None, now), Ok(()));
    let (r, n) = derivations(|| checks.check_from(&own, 2, "alice", b"wonderland", None, now));
    assert_eq!((r, n.0), (WRONG, 1), "checked against the listener's own file");
    assert_eq!(checks.check_from(&own, 2, "alice", b"looking-glass", None, now), Ok(()));
    let (r, n) = derivations(|| checks.check_from(&global, 0, "alice", b"wonderland", None, now));
    assert_eq!((r, n.0), (Ok(()), 0), "the global realm's entry is still cached");
}
