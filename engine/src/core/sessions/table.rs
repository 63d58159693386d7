//! The table of a shard's sessions: by slot and by client id (`index.rs`), with their user
//! names and the persistent ones the log must look at.
//!
//! Shard-local: one per shard.

use crate::core::hash::{Map, Set};
use crate::core::ids::SessionSlot;
use crate::core::persist::diff::SessionLog;
use crate::core::sessions::index::SlotIndex;
use crate::core::sessions::session::Session;

/// The sessions homed on one shard, by slot and by client id.
///
/// Shard-local: one per shard.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    slots: Vec<Option<Session>>,
    free: Vec<u32>,
    /// Slot numbers by client id (the ids themselves are in the sessions).
    by_client_id: SlotIndex,
    /// Persistent sessions touched (borrowed mutably) since the log last looked.
    dirty: Vec<SessionSlot>,
    /// Persistent sessions removed since the log last looked (client id, log view).
    ended: Vec<(Box<str>, Box<SessionLog>)>,
    /// The user name of each session that has one, by slot: the identity the ACL judges it
    /// by and, with authentication on, its owner (`sessions/connect.rs`). Beside the
    /// sessions rather than in them, so a session without one pays nothing; cleared with
    /// the slot.
    users: Map<u32, Box<str>>,
    /// Sessions recovered from a log that did not record their owner: the next client to
    /// connect claims them.
    owner_unknown: Set<u32>,
}

impl SessionTable {
    /// Sessions held (online or offline).
    pub(crate) fn len(&self) -> usize {
        self.by_client_id.len()
    }

    /// The session of `client_id`.
    pub(crate) fn find(&self, client_id: &str) -> Option<SessionSlot> {
        let slots = &self.slots;
        self.by_client_id.find(client_id, |i| client_id_of(slots, i)).map(SessionSlot)
    }

    /// Adds a session; its client id must not be taken.
    pub(crate) fn insert(&mut self, session: Session) -> SessionSlot {
        let slot = if let Some(i) = self.free.pop() {
            debug_assert!(self.slots[i as usize].is_none());
            self.slots[i as usize] = Some(session);
            SessionSlot(i)
        } else {
            let i = u32::try_from(self.slots.len()).expect("session slab overflow");
            assert!(i != u32::MAX, "u32::MAX is the broker's own origin");
            self.slots.push(Some(session));
            SessionSlot(i)
        };
        let slots = &self.slots;
        let key_of = |i| client_id_of(slots, i);
        assert!(
            self.by_client_id.find(key_of(slot.0), key_of).is_none(),
            "two sessions for one client id"
        );
        self.by_client_id.insert(slot.0, key_of);
        slot
    }

    /// Removes the session in `slot`.
    pub(crate) fn remove(&mut self, slot: SessionSlot) -> Session {
        let slots = &self.slots;
        let key = client_id_of(slots, slot.0);
        let removed = self.by_client_id.remove(key, |i| client_id_of(slots, i));
        assert_eq!(removed, Some(slot.0), "a session missing from the client id index");
        let mut s = self.slots[slot.0 as usize].take().expect("checked");
        self.users.remove(&slot.0);
        self.owner_unknown.remove(&slot.0);
        self.free.push(slot.0);
        if let Some(log) = s.plog.take() {
            self.ended.push((s.client_id.clone(), log));
        }
        s
    }

    /// The user name of the session in `slot` (`None`: anonymous).
    pub(crate) fn user(&self, slot: SessionSlot) -> Option<&str> {
        self.users.get(&slot.0).map(|u| &**u)
    }

    /// Sets the user name of the live session in `slot`.
    pub(crate) fn set_user(&mut self, slot: SessionSlot, user: Option<&str>) {
        debug_assert!(self.try_get(slot).is_some(), "user of a free slot");
        self.owner_unknown.remove(&slot.0);
        match user {
            Some(u) if self.user(slot) != Some(u) => {
                self.users.insert(slot.0, u.into());
            }
            Some(_) => {}
            None => {
                self.users.remove(&slot.0);
            }
        }
    }

    /// Marks the live session in `slot` as having no known owner (recovered from a log
    /// without `SessionOwner`).
    pub(crate) fn set_owner_unknown(&mut self, slot: SessionSlot) {
        self.users.remove(&slot.0);
        self.owner_unknown.insert(slot.0);
    }

    /// Whether the session in `slot` has a known owner ([`SessionTable::user`]).
    pub(crate) fn owner_known(&self, slot: SessionSlot) -> bool {
        !self.owner_unknown.contains(&slot.0)
    }

    /// The session in `slot`, which must be live (the slot came from the trie or a
    /// connection, which never outlive their session).
    pub(crate) fn get(&self, slot: SessionSlot) -> &Session {
        self.slots[slot.0 as usize].as_ref().expect("stale session slot")
    }

    /// The session in `slot`, if live (not marked touched).
    pub(crate) fn try_get(&self, slot: SessionSlot) -> Option<&Session> {
        self.slots.get(slot.0 as usize)?.as_ref()
    }

    /// The session in `slot`, if live.
    pub(crate) fn try_get_mut(&mut self, slot: SessionSlot) -> Option<&mut Session> {
        let s = self.slots.get_mut(slot.0 as usize)?.as_mut()?;
        mark_dirty(&mut self.dirty, slot, s);
        Some(s)
    }

    /// The session in `slot`, which must be live.
    pub(crate) fn get_mut(&mut self, slot: SessionSlot) -> &mut Session {
        let s = self.slots[slot.0 as usize].as_mut().expect("stale session slot");
        mark_dirty(&mut self.dirty, slot, s);
        s
    }

    /// The persistent session in `slot`, if live, without marking it touched (the log's
    /// own access).
    pub(crate) fn try_get_log(&mut self, slot: SessionSlot) -> Option<&mut Session> {
        self.slots.get_mut(slot.0 as usize)?.as_mut().filter(|s| s.plog.is_some())
    }

    /// Has the log visit `slot`'s session when it next cuts a batch.
    pub(crate) fn mark(&mut self, slot: SessionSlot) {
        self.dirty.push(slot);
    }

    /// Persistent sessions touched since the last call.
    pub(crate) fn take_dirty(&mut self) -> Vec<SessionSlot> {
        std::mem::take(&mut self.dirty)
    }

    /// Returns the (emptied) list from [`SessionTable::take_dirty`], keeping its capacity.
    pub(crate) fn give_back_dirty(&mut self, list: Vec<SessionSlot>) {
        if self.dirty.is_empty() {
            self.dirty = list;
        }
    }

    /// Persistent sessions removed since the last call.
    pub(crate) fn take_ended(&mut self) -> Vec<(Box<str>, Box<SessionLog>)> {
        std::mem::take(&mut self.ended)
    }

    /// Slots of every session, into `out` (for the periodic scan).
    pub(crate) fn slots(&self, out: &mut Vec<SessionSlot>) {
        for (i, s) in self.slots.iter().enumerate() {
            if s.is_some() {
                out.push(SessionSlot(i as u32));
            }
        }
    }
}

/// The client id of the live session in slot `i` (the key of [`SessionTable::by_client_id`]).
fn client_id_of(slots: &[Option<Session>], i: u32) -> &str {
    &slots[i as usize].as_ref().expect("the index holds a free session slot").client_id
}

/// Every mutable borrow of a persistent session may change what the log must know: the
/// session is visited when the next log batch is cut (`persist/diff.rs`). Other sessions cost
/// one branch.
fn mark_dirty(dirty: &mut Vec<SessionSlot>, slot: SessionSlot, s: &mut Session) {
    if let Some(log) = s.plog.as_deref_mut() {
        if !log.dirty {
            log.dirty = true;
            dirty.push(slot);
        }
    }
}
