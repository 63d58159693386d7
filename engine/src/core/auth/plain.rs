//! Plain-password checks (a CONNECT with a user name and password, 3.1.1 or 5.0) without
//! stalling the shard: a check is one PBKDF2 (`UserDb::verify_password`, about 1 µs a round,
//! 4096 rounds for a default entry), computed on the shard's own core, which serves nobody
//! else meanwhile. Two things bound it:
//!
//! - **A cache of outcomes.** A user who logs in again with the password that worked last
//!   time costs one HMAC, and so does a client retrying the same wrong password. Entries are
//!   keyed by a tag, HMAC(per-process key, user name, password): neither the password nor
//!   anything derived from the credential (SaltedPassword or ClientKey would let a memory
//!   dump log in with SCRAM) is kept. Successes (one per user) and failures are kept apart and
//!   bounded, so a flood of wrong passwords cannot evict the users who logged in.
//! - **A budget of PBKDF2 rounds per second** (`AuthConfig::password_rounds_per_sec`, a token
//!   bucket refilled from the `now` the core is given). A check that finds the budget spent is
//!   answered 0x89 Server busy (3.1.1: return code 3, server unavailable) without deriving, so
//!   wrong-password floods cost the shard at most that much of its time.
//!
//! Shard-local: one [`PasswordChecks`] per shard (the cache key is per shard too).

use ::core::net::IpAddr;
use std::collections::VecDeque;

use crate::core::hash::{Map, Set};
use std::time::Instant;

use shardmq_codec::ReasonCode;
use subtle::ConstantTimeEq;

use super::passwd::PasswdFile;
use super::scram::hmac;
use super::users::{UserDb, ITERATIONS_MIN, PLAIN_ITERATIONS_MAX};

/// Something plain passwords are checked against: the users file, Mosquitto's password file,
/// or both.
pub(crate) trait PlainVerifier {
    /// The PBKDF2 rounds [`PlainVerifier::verify_password`] spends on `name` (at most
    /// [`PLAIN_ITERATIONS_MAX`]).
    fn plain_check_rounds(&self, name: &str) -> u32;
    /// Whether `name` exists and `password` is its password.
    fn verify_password(&self, name: &str, password: &[u8]) -> bool;
}

impl PlainVerifier for UserDb {
    fn plain_check_rounds(&self, name: &str) -> u32 {
        UserDb::plain_check_rounds(self, name)
    }
    fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        UserDb::verify_password(self, name, password)
    }
}

impl PlainVerifier for PasswdFile {
    fn plain_check_rounds(&self, name: &str) -> u32 {
        PasswdFile::plain_check_rounds(self, name)
    }
    fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        PasswdFile::verify_password(self, name, password)
    }
}

/// The password file and the users file together: a name is looked up in the password file
/// first, then in the users file (the configuration refuses a name in both); an unknown name
/// is refused after a typical entry's work in the users file (or the password file without one).
pub(crate) struct Credentials<'a> {
    pub(crate) passwd: Option<&'a PasswdFile>,
    pub(crate) users: Option<&'a UserDb>,
}

impl Credentials<'_> {
    fn pick(&self, name: &str) -> Option<&dyn PlainVerifier> {
        match (self.passwd, self.users) {
            (Some(p), _) if p.get(name).is_some() => Some(p),
            (_, Some(u)) => Some(u),
            (Some(p), None) => Some(p),
            (None, None) => None,
        }
    }
}

impl PlainVerifier for Credentials<'_> {
    fn plain_check_rounds(&self, name: &str) -> u32 {
        self.pick(name).map_or(1, |v| v.plain_check_rounds(name))
    }
    fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        self.pick(name).is_some_and(|v| v.verify_password(name, password))
    }
}

/// Users whose last good password is remembered, per shard.
pub const GOOD_ENTRIES_MAX: usize = 4096;
/// Wrong (user, password) pairs remembered, per shard.
pub const BAD_ENTRIES_MAX: usize = 1024;
/// The default budget: 100,000 PBKDF2 rounds a second per shard, about a tenth of a core:
/// 24 first-time checks of a 4096-round entry a second.
pub const ROUNDS_PER_SEC_DEFAULT: u32 = 100_000;
/// Each source address, and each user name, may spend at most this fraction (1/N) of a
/// shard's budget: one client guessing passwords leaves the rest to everybody else.
pub const PER_KEY_SHARE: u32 = 4;
/// The smallest budget accepted: one check of the smallest entry a second.
pub const ROUNDS_PER_SEC_MIN: u32 = ITERATIONS_MIN;
/// The largest budget accepted (a whole core).
pub const ROUNDS_PER_SEC_MAX: u32 = 10_000_000;

/// A keyed hash of (user, password): what the cache remembers instead of either.
type Tag = [u8; 32];

/// One shard's plain-password checks: the outcome cache and the PBKDF2 budget.
/// Shard-local.
pub(crate) struct PasswordChecks {
    /// Keys the tags; derived from the process's seed and the shard.
    tag_key: [u8; 32],
    /// User → tag of the password that last succeeded.
    good: Map<String, Tag>,
    /// Insertion order of `good`'s users (oldest first), for eviction.
    good_order: VecDeque<String>,
    /// Tags of (user, password) pairs that failed.
    bad: Set<Tag>,
    /// Insertion order of `bad`, for eviction.
    bad_order: VecDeque<Tag>,
    budget: RoundBudget,
    /// Budgets per source address and per user name, each a share of `budget`, taken
    /// before it (`None`: not used): a flood of wrong passwords from one address, or for one
    /// name, spends its own share and leaves the rest to everybody else.
    per_source: Option<KeyedBudgets<IpAddr>>,
    per_user: Option<KeyedBudgets<String>>,
    /// Checks refused because a source's or a user's share was spent.
    pub(crate) share_refusals_count: u64,
    /// Checks answered from the cache (for tests and statistics).
    pub(crate) cache_hits_count: u64,
    /// PBKDF2 derivations run.
    pub(crate) derivations_count: u64,
}

impl std::fmt::Debug for PasswordChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChecks")
            .field("good", &self.good.len())
            .field("bad", &self.bad.len())
            .finish_non_exhaustive()
    }
}

impl PasswordChecks {
    /// The checks of shard `shard`, keyed from `seed`, with a budget of `rounds_per_sec`.
    pub(crate) fn new(seed: &[u8; 32], shard: u16, rounds_per_sec: u32) -> PasswordChecks {
        let mut label = b"shardmq plain-password cache key, shard ".to_vec();
        label.extend_from_slice(&shard.to_be_bytes());
        PasswordChecks {
            tag_key: hmac(seed, &label),
            good: Map::default(),
            good_order: VecDeque::new(),
            bad: Set::default(),
            bad_order: VecDeque::new(),
            budget: RoundBudget::new(rounds_per_sec),
            per_source: None,
            per_user: None,
            share_refusals_count: 0,
            cache_hits_count: 0,
            derivations_count: 0,
        }
    }

    /// The same checks, where each source address and each user name may spend at most
    /// `1/share` of the budget a second (first from its own share, then from the shard's).
    pub(crate) fn with_per_key_share(mut self, share: u32) -> PasswordChecks {
        assert!(share >= 1, "a share of the budget");
        let rate = (self.budget.rounds_per_sec / share).max(1);
        self.per_source = Some(KeyedBudgets::new(rate));
        self.per_user = Some(KeyedBudgets::new(rate));
        self
    }

    /// Checks `name`'s `password` against `users`: `Ok` when it is right; 0x86 when it is
    /// wrong or the user unknown; 0x89 Server busy when the budget is spent.
    #[cfg(test)]
    pub(crate) fn check<V: PlainVerifier + ?Sized>(
        &mut self,
        users: &V,
        name: &str,
        password: &[u8],
        now: Instant,
    ) -> Result<(), ReasonCode> {
        self.check_from(users, 0, name, password, None, now)
    }

    /// [`PasswordChecks::check`] for a client at `source`: a derivation is charged to the
    /// source's and the user name's shares first (0x89 when either is spent, without
    /// touching the shard's budget), then to the shard's budget. `realm` names the set of
    /// credentials `users` is (`LoginsRef::realm`): outcomes are remembered per realm, so a
    /// password right on one listener proves nothing on another.
    pub(crate) fn check_from<V: PlainVerifier + ?Sized>(
        &mut self,
        users: &V,
        realm: u16,
        name: &str,
        password: &[u8],
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), ReasonCode> {
        // A user name holds no U+0000 [MQTT-1.5.4-2]: the suffix cannot be confused with a
        // name of the global realm.
        let key: std::borrow::Cow<'_, str> = match realm {
            0 => name.into(),
            r => format!("{name}\0{r}").into(),
        };
        let key = &*key;
        let tag = self.tag(key, password);
        if let Some(good) = self.good.get(key) {
            if bool::from(good.ct_eq(&tag)) {
                self.cache_hits_count += 1;
                return Ok(());
            }
        }
        if self.bad.contains(&tag) {
            self.cache_hits_count += 1;
            return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        }
        let rounds = users.plain_check_rounds(name);
        let source_ok = match (&mut self.per_source, source) {
            (Some(b), Some(ip)) => b.has_room(ip, now),
            _ => true,
        };
        let user_ok = match &mut self.per_user {
            Some(b) => b.has_room(name.to_owned(), now),
            None => true,
        };
        if !source_ok || !user_ok {
            self.share_refusals_count += 1;
            return Err(ReasonCode::SERVER_BUSY);
        }
        if !self.budget.take(rounds, now) {
            return Err(ReasonCode::SERVER_BUSY);
        }
        if let (Some(b), Some(ip)) = (&mut self.per_source, source) {
            b.charge(ip, rounds);
        }
        if let Some(b) = &mut self.per_user {
            b.charge(name.to_owned(), rounds);
        }
        self.derivations_count += 1;
        if users.verify_password(name, password) {
            self.remember_good(key, tag);
            Ok(())
        } else {
            self.remember_bad(tag);
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
    }

    /// Forgets every remembered outcome (the credentials were reloaded). The budget stays.
    pub(crate) fn forget(&mut self) {
        self.good.clear();
        self.good_order.clear();
        self.bad.clear();
        self.bad_order.clear();
    }

    /// HMAC(tag key, len(name) ‖ name ‖ password): the length keeps ("ab", "c") and
    /// ("a", "bc") apart.
    fn tag(&self, name: &str, password: &[u8]) -> Tag {
        let mut data = Vec::with_capacity(4 + name.len() + password.len());
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(password);
        hmac(&self.tag_key, &data)
    }

    fn remember_good(&mut self, name: &str, tag: Tag) {
        if self.good.insert(name.to_owned(), tag).is_some() {
            return; // Already in the order queue.
        }
        self.good_order.push_back(name.to_owned());
        if self.good_order.len() > GOOD_ENTRIES_MAX {
            let oldest = self.good_order.pop_front().expect("longer than the maximum");
            self.good.remove(&oldest);
        }
        debug_assert_eq!(self.good.len(), self.good_order.len());
    }

    fn remember_bad(&mut self, tag: Tag) {
        if !self.bad.insert(tag) {
            return;
        }
        self.bad_order.push_back(tag);
        if self.bad_order.len() > BAD_ENTRIES_MAX {
            let oldest = self.bad_order.pop_front().expect("longer than the maximum");
            self.bad.remove(&oldest);
        }
        debug_assert_eq!(self.bad.len(), self.bad_order.len());
    }
}

/// Budgets per key (source address, user name), each refilled at the same rate; at most
/// [`KEYED_BUDGETS_MAX`] keys, the oldest forgotten first (a forgotten key starts full again).
/// Shard-local.
struct KeyedBudgets<K> {
    rounds_per_sec: u32,
    budgets: Map<K, RoundBudget>,
    order: VecDeque<K>,
}

/// Keys whose budget a shard remembers, per kind.
pub const KEYED_BUDGETS_MAX: usize = 4096;

impl<K: std::hash::Hash + Eq + Clone> KeyedBudgets<K> {
    fn new(rounds_per_sec: u32) -> KeyedBudgets<K> {
        KeyedBudgets { rounds_per_sec, budgets: Map::default(), order: VecDeque::new() }
    }

    /// Whether `key` has rounds left at `now` (creating its budget, full, if new).
    fn has_room(&mut self, key: K, now: Instant) -> bool {
        if !self.budgets.contains_key(&key) {
            if self.order.len() >= KEYED_BUDGETS_MAX {
                let oldest = self.order.pop_front().expect("full");
                self.budgets.remove(&oldest);
            }
            self.order.push_back(key.clone());
            self.budgets.insert(key.clone(), RoundBudget::with_rate(self.rounds_per_sec));
        }
        self.budgets.get_mut(&key).expect("just made").take(0, now)
    }

    /// Charges `rounds` to `key` (after [`KeyedBudgets::has_room`]).
    fn charge(&mut self, key: K, rounds: u32) {
        if let Some(b) = self.budgets.get_mut(&key) {
            b.available_rounds -= i64::from(rounds);
        }
    }
}

/// A token bucket of PBKDF2 rounds: refilled at `rounds_per_sec`, holding at most one
/// second's worth. A check may overdraw it (so an entry of more rounds than a second's worth
/// still gets through); the next waits until it is positive again, so the average stays
/// within the rate. Shard-local.
#[derive(Debug)]
struct RoundBudget {
    rounds_per_sec: u32,
    /// Rounds available; negative after an overdraft.
    available_rounds: i64,
    /// When `available_rounds` was last brought up to date.
    refilled_at: Option<Instant>,
}

impl RoundBudget {
    fn new(rounds_per_sec: u32) -> RoundBudget {
        assert!(
            (ROUNDS_PER_SEC_MIN..=ROUNDS_PER_SEC_MAX).contains(&rounds_per_sec),
            "the configuration checks the budget"
        );
        RoundBudget {
            rounds_per_sec,
            available_rounds: i64::from(rounds_per_sec),
            refilled_at: None,
        }
    }

    /// A bucket of any rate (a share of a checked budget).
    fn with_rate(rounds_per_sec: u32) -> RoundBudget {
        RoundBudget {
            rounds_per_sec,
            available_rounds: i64::from(rounds_per_sec),
            refilled_at: None,
        }
    }

    /// Takes `rounds` if any are left at `now` (0: only asks whether any are left).
    fn take(&mut self, rounds: u32, now: Instant) -> bool {
        assert!(rounds <= PLAIN_ITERATIONS_MAX, "a plain check costs at most the cap");
        if let Some(at) = self.refilled_at {
            let elapsed_ns = now.saturating_duration_since(at).as_nanos();
            let earned = elapsed_ns.saturating_mul(u128::from(self.rounds_per_sec)) / 1_000_000_000;
            let capacity = i64::from(self.rounds_per_sec);
            let earned = i64::try_from(earned).unwrap_or(i64::MAX).min(capacity);
            self.available_rounds = self.available_rounds.saturating_add(earned).min(capacity);
        }
        // Only `now` moves the refill time forward; a `now` from before it earns nothing.
        self.refilled_at = Some(self.refilled_at.map_or(now, |at| at.max(now)));
        if self.available_rounds <= 0 {
            return false;
        }
        self.available_rounds -= i64::from(rounds);
        true
    }
}

#[cfg(test)]
#[path = "plain_tests.rs"]
mod tests;
