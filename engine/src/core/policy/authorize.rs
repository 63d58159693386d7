//! Authorisation on the shard: each session is judged by the ACL (`auth/acl.rs`) as its
//! identity, the user name it connected with (`SessionTable::user`) and its client id.
//!
//! - PUBLISH: checked for write on every message (`delivery/publish.rs`).
//! - SUBSCRIBE: the filter's read coverage is decided once ([`Coverage`]): fully covered
//!   filters are delivered without any check per message; filters with no read right are
//!   refused (SUBACK 0x87 / 0x80); the rest are marked `acl_check` in the trie and each
//!   delivered topic is checked (`delivery/deliver.rs`), retained messages included.
//! - Shared subscriptions are checked on the member's shard for every message (their
//!   options live with the group's owner).
//! - Wills are checked when they are published (`sessions/connect.rs`).
//!
//! Coverage is decided again when the identity of a session changes (a reconnection, maybe
//! on another listener with another ACL) and when the rules change (reload).
//!
//! Shard-local: runs on the session's home shard.

use crate::core::auth::acl::{Coverage, Ident, READ};
use crate::core::ids::SessionSlot;
use crate::core::policy::Denial;
use crate::core::routing::topic::split_shared;
use crate::core::shard::ShardCore;

impl ShardCore {
    /// Counts a denial of `what` (a topic or filter) to `slot`'s client and logs it at
    /// debug level.
    pub(crate) fn count_denial(&mut self, denial: Denial, slot: SessionSlot, what: &str) {
        self.stats.denials[denial as usize] += 1;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let client_id = self.sessions.try_get(slot).map_or("", |s| &*s.client_id);
            let user = self.sessions.user(slot).unwrap_or("");
            tracing::debug!(shard = %self.shard, reason = denial.name(), client_id, user, what, "denied");
        }
    }

    /// Whether `slot`'s client has `access` (`READ` / `WRITE`) on `topic`: always without an
    /// ACL. The ACL is the one of the listener the client connected on (its own, else the
    /// global one: `auth/listener.rs`), read afresh each time (a reload applies from the
    /// next PUBLISH).
    pub(crate) fn acl_allows(&self, slot: SessionSlot, topic: &str, access: u8) -> bool {
        let s = self.sessions.get(slot);
        let Some(acl) = self.config.auth.acl_on(s.listener) else { return true };
        let ident = Ident { user: self.sessions.user(slot), client_id: &s.client_id };
        acl.allows(&ident, topic, access)
    }

    /// How much of `filter` `slot`'s client may read: `Full` without an ACL. A shared
    /// subscription `$share/G/F` is judged on F.
    pub(crate) fn acl_read_coverage(&self, slot: SessionSlot, filter: &str) -> Coverage {
        let s = self.sessions.get(slot);
        let Some(acl) = self.config.auth.acl_on(s.listener) else { return Coverage::Full };
        let filter = split_shared(filter).map_or(filter, |(_, f)| f);
        let ident = Ident { user: self.sessions.user(slot), client_id: &s.client_id };
        acl.read_coverage(&ident, filter)
    }

    /// Decides the coverage of every subscription of `slot` again (its identity or the
    /// rules changed): a subscription whose filter is no longer fully covered is checked
    /// per message from now on; one with no read right left receives nothing.
    pub(crate) fn refresh_acl_coverage(&mut self, slot: SessionSlot) {
        let n = self.sessions.get(slot).subs.len();
        for i in 0..n {
            let filter = self.sessions.get(slot).subs[i].0.clone();
            if split_shared(&filter).is_some() {
                continue; // Checked per message on this shard (`deliver_shared_checked`).
            }
            let check = self.acl_read_coverage(slot, &filter) != Coverage::Full;
            let entry = &mut self.sessions.get_mut(slot).subs[i].1;
            if entry.acl_check != check {
                entry.acl_check = check;
                if let Some(e) = self.trie.get_mut(&filter, slot) {
                    e.acl_check = check;
                }
            }
        }
    }

    /// Whether a shared subscription's message may go to member `slot` (checked for every
    /// message: the group's owner keeps no per-member coverage). Counts a denial.
    pub(crate) fn acl_allows_shared(&mut self, slot: SessionSlot, topic: &str) -> bool {
        if !self.config.auth.any_acl() || self.acl_allows(slot, topic, READ) {
            return true;
        }
        self.count_denial(Denial::Deliver, slot, topic);
        self.stats.dropped(crate::core::delivery::drops::DropReason::AclDenied, 1);
        false
    }
}
