//! Shared subscriptions `$share/{name}/{filter}` (5.0 §4.8.2; also accepted from 3.1.1
//! clients, where `$share/...` is otherwise an ordinary filter): each message matching
//! `filter` goes to one member of the group, chosen round-robin, wherever the members live.
//!
//! **Owner.** Every group has an owner shard, `home_shard("$share/{name}/{filter}")`. Only
//! the owner knows the members: a [`SharedGroups`] table of groups, each a list of
//! `(member shard, session slot, options)` and a round-robin cursor, and a small trie from the
//! inner `filter` to the groups. While a group has members, the owner counts one subscription
//! of its own to `filter` in the routing index (broadcast as an ordinary `SubDelta`), so every
//! shard routes matching messages to the owner — once per message, however many members.
//!
//! **Members.** A member's session (on its home shard) keeps the `$share/...` filter in its
//! `subs` like any subscription, but not in the shard's trie: ordinary fan-out never sees it.
//! Joining sends `MeshMsg::SharedJoin` to the owner (or joins directly when the owner is the
//! member's shard); leaving (UNSUBSCRIBE, the session ending: clean start, expiry) sends
//! `SharedLeave`. Mesh rings are FIFO per pair of shards, so a member's join, leave and
//! requeues reach the owner in the order they were made.
//!
//! **SUBACK.** The owner answers a join with `SharedJoinAck` only after every peer has acked
//! the owner's routing deltas up to the join (the SUBACK gate of `routing/subscribe.rs`, reused);
//! the member's SUBACK waits for that ack as well as for its own deltas. So a PUBLISH made after
//! SUBACK, on any shard, reaches the group.
//!
//! **Delivery.** When a message reaches the owner (`route_message` locally, or
//! `MeshMsg::Publish`), after the ordinary local fan-out the owner matches its group trie and,
//! per matching group, picks the next member: a local member is delivered directly; a remote
//! one gets `SharedDeliver` (QoS already downgraded to the member's maximum). Messages queued or
//! inflight for a group are tagged with it (`Queued::group`, `Inflight::group`).
//!
//! **Members going away.** A member's shard that receives `SharedDeliver` for a session that
//! no longer holds the subscription sends the message back with `SharedRequeue`; the owner
//! (which has processed the leave first, rings being FIFO) gives it to another member. On
//! UNSUBSCRIBE the session's queued, not yet sent messages of that group are requeued; when a
//! session ends, its queued messages and its sent-but-unacknowledged QoS 1 / QoS 2 (before
//! PUBREC) messages of every group are requeued (5.0 §4.8.2: "SHOULD send the Application
//! Message to another Client"). A group left with no members drops what it is given.
//!
//! **Durability.** With persistence, the member's shard logs its copy when it queues it. The
//! publisher's shard asks the owner for a *chained* durability round trip
//! (`MeshMsg::DurableReq { chain: true }`): the owner answers only when its own log is
//! durable and every member shard it forwarded QoS 1/2 messages to has answered a plain
//! request sent behind those messages. So the publisher's PUBACK/PUBREC covers the second
//! hop. A queued message's group is logged with it, so it goes back to the group after a
//! restart too. Not covered: a message handed back (`SharedRequeue`) is in memory only until
//! the next member's shard logs it, so a crash in between loses it.
//!
//! **Retained messages** are not sent on a shared subscription (5.0 §4.8.2, §3.8.4). No Local
//! on a shared subscription is refused by the codec [MQTT-3.8.3-4].
//!
//! Shard-local: each shard holds the groups it owns.

use crate::core::hash::Map;
use std::sync::Arc;

use shardmq_codec::{ByteStr, QoS};

use crate::core::cluster::{NodeId, NodeSet};
use crate::core::ids::{SessionSlot, ShardId};
use crate::core::mesh::{MeshMsg, Message, Origin};
use crate::core::routing::subscribe::SubOptions;
use crate::core::routing::topic::{split_shared, SHARED_PREFIX};
use crate::core::routing::trie::SubscriptionTrie;
use crate::core::sessions::session::{Awaiting, Session};
use crate::core::shard::ShardCore;

/// True if `filter` is a well-formed shared subscription: `$share/`, a non-empty share name
/// without `+` or `#` [MQTT-4.8.2-1]/[MQTT-4.8.2-2], `/` and a non-empty filter. The codec
/// checks this for 5.0; for 3.1.1 `$share/...` decodes as an ordinary filter, so the engine
/// checks it here.
pub(crate) fn is_valid_shared(filter: &str) -> bool {
    match split_shared(filter) {
        Some((name, inner)) => !name.is_empty() && !name.contains(['+', '#']) && !inner.is_empty(),
        None => false,
    }
}

/// True if `filter` (as held in a session's subscriptions) is a shared subscription.
pub(crate) fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARED_PREFIX)
}

/// One member of a group.
#[derive(Debug, Clone, Copy)]
struct Member {
    shard: ShardId,
    /// Session slot on `shard`.
    session: u32,
    entry: SubOptions,
}

/// One shared subscription group, on its owner shard.
#[derive(Debug)]
struct Group {
    /// `$share/{name}/{filter}`.
    name: ByteStr,
    /// The inner filter.
    filter: ByteStr,
    /// In join order.
    members: Vec<Member>,
    /// Index of the member to pick next (modulo the member count, plus the nodes in
    /// `remote`: each counts as one member).
    next: usize,
    /// Other nodes of the cluster with members (`core/cluster/`): the group lives while it
    /// has members here or there.
    remote: NodeSet,
}

/// The shared-subscription groups this shard owns.
///
/// Shard-local: one per shard.
#[derive(Debug, Default)]
pub(crate) struct SharedGroups {
    by_name: Map<ByteStr, u32>,
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    /// Inner filter → groups.
    trie: SubscriptionTrie<u32, ()>,
    /// Scratch for the groups matching one message.
    matched: Vec<u32>,
}

impl SharedGroups {
    /// Number of groups with at least one member.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Member count of `name`, 0 if the group does not exist here.
    #[cfg(test)]
    pub(crate) fn member_count(&self, name: &str) -> usize {
        self.by_name.get(&ByteStr::from(name)).map_or(0, |&id| self.group(id).members.len())
    }

    #[cfg(test)]
    fn group(&self, id: u32) -> &Group {
        self.groups[id as usize].as_ref().expect("live group id")
    }

    fn group_mut(&mut self, id: u32) -> &mut Group {
        self.groups[id as usize].as_mut().expect("live group id")
    }
}

impl ShardCore {
    /// The owner shard of the group `name` (`$share/{name}/{filter}`).
    pub(crate) fn shared_owner(&self, name: &str) -> ShardId {
        Self::home_shard(name.as_bytes(), self.config.shard_count)
    }

    /// Session `slot` of this shard subscribes to (or updates its options in) the group
    /// `name`. Returns true if the SUBACK must wait for the owner's `SharedJoinAck` carrying
    /// `token`; false if the owner is this shard (joined already).
    pub(crate) fn shared_subscribe(
        &mut self,
        slot: SessionSlot,
        name: &ByteStr,
        entry: SubOptions,
        token: u64,
    ) -> bool {
        let owner = self.shared_owner(name);
        if owner == self.shard {
            self.join_group(name, self.shard, slot.0, entry);
            return false;
        }
        let join = MeshMsg::SharedJoin {
            group: name.clone(),
            session: slot.0,
            opts: entry.opts,
            sub_id: entry.id,
            token,
        };
        self.mesh_out.push((owner, join));
        true
    }

    /// Session `slot` of this shard leaves the group `name`. Its queued messages of the
    /// group, if the session is still live (UNSUBSCRIBE), go back to the group.
    pub(crate) fn shared_unsubscribe(&mut self, slot: SessionSlot, name: &ByteStr, now_ms: u64) {
        let owner = self.shared_owner(name);
        if owner == self.shard {
            self.leave_group(name, self.shard, slot.0);
        } else {
            let leave = MeshMsg::SharedLeave { group: name.clone(), session: slot.0 };
            self.mesh_out.push((owner, leave));
        }
        let Some(session) = self.sessions.try_get_mut(slot) else { return };
        for q in session.take_group_queued(name) {
            self.shared_requeue(name.clone(), q.msg, now_ms);
        }
    }

    /// A session ended (and has left its groups): its queued messages and its sent,
    /// unacknowledged messages not yet PUBREC'd of any group go to other members.
    pub(crate) fn shared_requeue_session(&mut self, session: &Session, now_ms: u64) {
        let inflight = session.inflight().iter().filter(|i| i.state != Awaiting::PubComp);
        let inflight = inflight.filter_map(|i| Some((i.group.clone()?, i.msg.clone())));
        let queued = session.queue().iter().filter_map(|q| Some((q.group.clone()?, q.msg.clone())));
        let moved: Vec<_> = inflight.chain(queued).collect();
        for (name, msg) in moved {
            self.shared_requeue(name, msg, now_ms);
        }
    }

    /// On the owner: adds (or updates) a member, creating the group and routing its filter
    /// here if it is new.
    pub(crate) fn join_group(
        &mut self,
        name: &ByteStr,
        shard: ShardId,
        session: u32,
        e: SubOptions,
    ) {
        debug_assert_eq!(self.shared_owner(name), self.shard, "join on a non-owner");
        let id = self.ensure_group(name);
        let group = self.shared.group_mut(id);
        match group.members.iter_mut().find(|m| m.shard == shard && m.session == session) {
            Some(m) => m.entry = e,
            None => {
                group.members.push(Member { shard, session, entry: e });
                if group.members.len() == 1 {
                    // The node's first member: the other nodes send it the group's share.
                    let name = group.name.clone();
                    self.cluster_filter(&name, true);
                }
            }
        }
    }

    /// On the owner: the group `name`, created (and its inner filter routed here) if new.
    fn ensure_group(&mut self, name: &ByteStr) -> u32 {
        if let Some(&id) = self.shared.by_name.get(name) {
            return id;
        }
        let (_, inner) = split_shared(name).expect("validated shared filter");
        // Own the bytes: the name may be a slice of a read buffer.
        let name = ByteStr::from(name.as_str());
        let filter = ByteStr::from(inner);
        let group = Group {
            name: name.clone(),
            filter,
            members: Vec::new(),
            next: 0,
            remote: NodeSet::EMPTY,
        };
        let id = match self.shared.free.pop() {
            Some(id) => {
                self.shared.groups[id as usize] = Some(group);
                id
            }
            None => {
                let id = u32::try_from(self.shared.groups.len()).expect("group count");
                self.shared.groups.push(Some(group));
                id
            }
        };
        self.shared.by_name.insert(name, id);
        self.shared.trie.insert(inner, id, ());
        if self.routes.add(inner, self.shard) {
            // This node's shards only: the nodes learn of the group itself (`join_group`).
            self.broadcast_delta(&ByteStr::from(inner), true);
        }
        id
    }

    /// On the owner: `node` gained its first (`added`) or lost its last member of the group
    /// `name` (`ClusterIn::Route` for `$share/...`).
    pub(crate) fn group_remote(&mut self, name: &ByteStr, node: NodeId, added: bool) {
        // Another node's data: the inner filter is checked as a SUBSCRIBE's would be
        // [MQTT-4.7.1-1..3] before it reaches the tries.
        let inner_ok = split_shared(name)
            .is_some_and(|(_, f)| shardmq_codec::topic::validate_topic_filter(f, false).is_ok());
        if !is_valid_shared(name) || !inner_ok || self.shared_owner(name) != self.shard {
            return;
        }
        if added {
            let id = self.ensure_group(name);
            self.shared.group_mut(id).remote.insert(node);
        } else if let Some(&id) = self.shared.by_name.get(name) {
            self.shared.group_mut(id).remote.remove(node);
            self.drop_group_if_empty(id);
        }
    }

    /// On the owner: `node` left the cluster; its members of every group go with it.
    pub(crate) fn groups_forget_node(&mut self, node: NodeId) {
        let ids: Vec<u32> = self.shared.by_name.values().copied().collect();
        for id in ids {
            self.shared.group_mut(id).remote.remove(node);
            self.drop_group_if_empty(id);
        }
    }

    /// Removes group `id` and its route once it has no member here nor on another node.
    fn drop_group_if_empty(&mut self, id: u32) {
        let group = self.shared.group_mut(id);
        if !group.members.is_empty() || !group.remote.is_empty() {
            return;
        }
        let group = self.shared.groups[id as usize].take().expect("live group id");
        self.shared.free.push(id);
        self.shared.by_name.remove(&group.name);
        self.shared.trie.remove(&group.filter, id);
        if self.routes.remove(&group.filter, self.shard) {
            self.broadcast_delta(&group.filter, false);
        }
    }

    /// On the owner: removes a member; the last one's leaving removes the group and its route.
    pub(crate) fn leave_group(&mut self, name: &ByteStr, shard: ShardId, session: u32) {
        let Some(&id) = self.shared.by_name.get(name) else { return };
        let group = self.shared.group_mut(id);
        let Some(i) = group.members.iter().position(|m| m.shard == shard && m.session == session)
        else {
            return;
        };
        group.members.remove(i);
        if i < group.next {
            group.next -= 1;
        }
        if !group.members.is_empty() {
            return;
        }
        // The node's last member: the other nodes stop sending it the group's share.
        let name = group.name.clone();
        self.cluster_filter(&name, false);
        self.drop_group_if_empty(id);
    }

    /// On the owner: gives `msg` to one member of every group whose filter matches it.
    pub(crate) fn deliver_shared(&mut self, msg: &Arc<Message>, now_ms: u64) {
        if self.shared.by_name.is_empty() || msg.origin == Origin::REMOTE {
            // A message from another node reaches a group here only as that node's pick
            // (`ClusterIn::PublishShared`): its owner chose one node for it.
            return;
        }
        let mut matched = std::mem::take(&mut self.shared.matched);
        matched.clear();
        self.shared.trie.for_each_match(&msg.topic, |id, (), _| matched.push(id));
        for &id in &matched {
            self.dispatch_to_group(id, msg, now_ms);
        }
        self.shared.matched = matched;
    }

    /// On the owner: the next member of group `id` gets `msg` — here, or on another node of
    /// the cluster (each such node counts as one member; a message from another node stays
    /// here). False if the group has no member left.
    fn dispatch_to_group(&mut self, id: u32, msg: &Arc<Message>, now_ms: u64) -> bool {
        let local_only = msg.origin == Origin::REMOTE;
        let group = self.shared.group_mut(id);
        let remote = if local_only { 0 } else { group.remote.len() };
        let slots = group.members.len() + remote;
        if slots == 0 {
            return false;
        }
        let i = group.next % slots;
        group.next = i + 1;
        if i >= group.members.len() {
            let node = group.remote.iter().nth(i - group.members.len()).expect("a remote slot");
            let group = group.name.clone();
            self.cluster_forward_shared(node, group, msg);
            return true;
        }
        let m = group.members[i];
        let name = group.name.clone();
        let qos = m.entry.opts.qos.min(msg.qos);
        // [MQTT-3.3.1-9]: RETAIN is 0 unless Retain As Published.
        let retain = m.entry.opts.retain_as_published && msg.retain;
        if m.shard == self.shard {
            let delivered = self.deliver_to_member(
                &name,
                SessionSlot(m.session),
                msg,
                qos,
                retain,
                m.entry.id,
                now_ms,
            );
            // Local membership changes synchronously with the session's subscriptions.
            debug_assert!(
                delivered,
                "local member {} of {name} without the subscription",
                m.session
            );
        } else {
            let deliver = MeshMsg::SharedDeliver {
                group: name,
                session: m.session,
                msg: msg.clone(),
                qos,
                retain,
                sub_id: m.entry.id,
            };
            self.mesh_out.push((m.shard, deliver));
            if qos != QoS::AtMostOnce {
                // The publisher's acknowledgement also waits for this copy (`persist/ack.rs`).
                self.note_shared_forward(m.shard);
            }
        }
        true
    }

    /// On a member's shard: delivers `msg` to `slot` if it still holds the subscription
    /// `name`; false (nothing done) otherwise.
    #[allow(clippy::too_many_arguments)] // One delivery's properties.
    fn deliver_to_member(
        &mut self,
        name: &ByteStr,
        slot: SessionSlot,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_id: Option<u32>,
        now_ms: u64,
    ) -> bool {
        let member =
            self.sessions.try_get_mut(slot).is_some_and(|s| s.sub_position(name).is_some());
        if !member {
            return false;
        }
        if !self.acl_allows_shared(slot, &msg.topic) {
            // Taken by this member and not delivered, as Mosquitto does.
            return true;
        }
        self.fanout.layouts.reset();
        self.deliver_to_session(slot, msg, qos, retain, sub_id.as_slice(), Some(name), now_ms);
        true
    }

    /// `MeshMsg::SharedDeliver` on the member's shard: deliver, or hand the message back to
    /// the owner if the member has left.
    #[allow(clippy::too_many_arguments)] // The message's fields.
    pub(crate) fn handle_shared_deliver(
        &mut self,
        name: ByteStr,
        session: u32,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_id: Option<u32>,
        now_ms: u64,
    ) {
        if !self.deliver_to_member(&name, SessionSlot(session), &msg, qos, retain, sub_id, now_ms) {
            debug_assert_ne!(self.shared_owner(&name), self.shard, "SharedDeliver from self");
            self.shared_requeue(name, msg, now_ms);
        }
    }

    /// Gives `msg` back to group `name` for another member (through its owner).
    pub(crate) fn shared_requeue(&mut self, name: ByteStr, msg: Arc<Message>, now_ms: u64) {
        let owner = self.shared_owner(&name);
        if owner == self.shard {
            self.handle_shared_requeue(&name, &msg, now_ms);
        } else {
            self.mesh_out.push((owner, MeshMsg::SharedRequeue { group: name, msg }));
        }
    }

    /// On the owner: a message handed back by a member that left goes to the next member, or
    /// is dropped if none is left.
    pub(crate) fn handle_shared_requeue(
        &mut self,
        name: &ByteStr,
        msg: &Arc<Message>,
        now_ms: u64,
    ) {
        let delivered = match self.shared.by_name.get(name) {
            Some(&id) => self.dispatch_to_group(id, msg, now_ms),
            None => false,
        };
        if !delivered {
            self.stats.dropped(crate::core::delivery::drops::DropReason::NoSubscribers, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filter_validity() {
        assert!(is_valid_shared("$share/g/a/#"));
        assert!(is_valid_shared("$share/g/+"));
        assert!(!is_valid_shared("$share/g"));
        assert!(!is_valid_shared("$share/g/"));
        assert!(!is_valid_shared("$share//a"));
        assert!(!is_valid_shared("$share/+/a"));
        assert!(!is_valid_shared("$share/#/a"));
        assert!(!is_valid_shared("a/b"));
        assert!(is_shared("$share/g/a") && !is_shared("$sharex/g/a"));
    }
}
