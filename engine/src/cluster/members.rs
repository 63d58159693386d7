//! Membership: foca (SWIM) glued to the node machine. Its identity type, the generator it
//! draws from, its timer queue and the adapter that turns its calls into [`Effect`]s.
//!
//! Identity: node id, advertised address and boot id. Foca tells two identities of one
//! member apart by their address ([`Identity::Addr`] is the advertised address, so a seed
//! known only by its address can be announced to); of two identities with one address the
//! one with the larger boot id wins (a restarted node replaces its old incarnation, and a
//! node declared down rejoins with its boot id plus one, [`Identity::renew`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{
    Config, Foca, Identity, NoCustomBroadcast, Notification, OwnedNotification, PeriodicParams,
    PostcardCodec, Runtime, Timer,
};

use crate::core::cluster::{ClusterIn, NodeId, NodeSet};

use super::node::{Effect, NodeMachine, Peer};

/// How often a node announces itself again to each seed that is not a live member (so a
/// node started before its seeds, a restarted seed, or two sides of a netsplit that forgot
/// each other find the cluster again). Nothing is sent while every seed is live.
pub(crate) const SEED_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// The machine's foca.
pub(crate) type Swim = Foca<Member, PostcardCodec, SplitMix, NoCustomBroadcast>;

/// One incarnation of a node, as foca knows it.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Member {
    /// The node id (`--node-id`).
    pub node: u16,
    /// Where its UDP socket and TCP listener are (`--cluster-advertise`).
    pub addr: SocketAddr,
    /// New on every start (larger than the previous one's); plus one on a rejoin.
    pub boot_id: u64,
}

impl Member {
    /// The node id.
    pub fn id(&self) -> NodeId {
        NodeId(self.node)
    }
}

impl Identity for Member {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Member { boot_id: self.boot_id.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot_id > adversary.boot_id
    }
}

/// foca's configuration for a cluster of at most 64 nodes on a LAN, with announces that
/// heal a partition: a side that declared the other down keeps announcing itself to it.
pub(crate) fn foca_config() -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(64).expect("64 is non-zero"));
    c.periodic_announce =
        Some(PeriodicParams { frequency: Duration::from_secs(5), num_members: one() });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::new(2).expect("2 is non-zero"),
    });
    // Forget down members after a while so the member list stays bounded; a node that comes
    // back announces itself again (and is redialled through the seeds).
    c.remove_down_after = Some(Duration::from_secs(120));
    c
}

fn one() -> NonZeroUsize {
    NonZeroUsize::new(1).expect("1 is non-zero")
}

/// splitmix64, the generator foca draws its probe targets from (seeded from
/// `NodeSettings::rng_seed`, so a simulation is reproducible).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub u64);

impl rand_core::TryRng for SplitMix {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// foca's pending timers, earliest first (ties in submission order).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    events: std::collections::HashMap<u64, Timer<Member>>,
    next: u64,
}

impl Timers {
    /// Queues `event` for `at`.
    pub fn push(&mut self, at: Instant, event: Timer<Member>) {
        let n = self.next;
        self.next += 1;
        self.heap.push(Reverse((at, n)));
        self.events.insert(n, event);
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer<Member>> {
        let Reverse((at, n)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.events.remove(&n)
    }
}

/// What foca's calls produce, collected during one call into foca.
pub(crate) struct FocaIo<'a> {
    pub now: Instant,
    pub timers: &'a mut Timers,
    pub effects: &'a mut VecDeque<Effect>,
    pub notes: &'a mut Vec<OwnedNotification<Member>>,
    pub datagram_bytes: u64,
}

impl Runtime<Member> for FocaIo<'_> {
    fn notify(&mut self, notification: Notification<'_, Member>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.datagram_bytes += data.len() as u64;
        self.effects.push_back(Effect::Datagram { to: to.addr, data: data.to_vec() });
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push(self.now + after, event);
    }
}

/// Membership changes, as foca reports them.
impl NodeMachine {
    pub(super) fn announce_to_seeds(&mut self, now: Instant) {
        self.seed_announce_at = now + SEED_ANNOUNCE_INTERVAL;
        let lost: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|a| !self.peers.values().any(|p| p.live && p.member.addr == *a))
            .collect();
        for addr in lost {
            // A seed is known by its address only; foca accepts an announce addressed to
            // any identity with the receiver's address.
            let dst = Member { node: u16::MAX, addr, boot_id: 0 };
            self.with_foca(now, |foca, io| foca.announce(dst, io));
        }
    }

    /// Calls into foca, then applies the membership changes it reported.
    pub(super) fn with_foca(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Swim, &mut FocaIo<'_>) -> Result<(), foca::Error>,
    ) {
        let mut io = FocaIo {
            now,
            timers: &mut self.timers,
            effects: &mut self.effects,
            notes: &mut self.notes,
            datagram_bytes: 0,
        };
        // A datagram foca refuses (malformed, from ourselves, too big) changes nothing.
        let _ = f(&mut self.foca, &mut io);
        let notes = std::mem::take(&mut self.notes);
        for n in notes {
            self.on_notification(n, now);
        }
    }

    fn on_notification(&mut self, n: OwnedNotification<Member>, now: Instant) {
        match n {
            OwnedNotification::MemberUp(m) => self.member_up(m, now),
            OwnedNotification::MemberDown(m) => self.member_down(&m),
            OwnedNotification::Rename(old, new) => {
                // A new incarnation (a restart, or a rejoin after being declared down) has
                // lost or may have lost what the old one told us: treat it as the old one
                // going down and, if active, the new one coming up.
                self.member_down(&old);
                if self.foca.iter_members().any(|m| m.id() == &new) {
                    self.member_up(new, now);
                }
            }
            OwnedNotification::Rejoin(_)
            | OwnedNotification::Active
            | OwnedNotification::Idle
            | OwnedNotification::Defunct => {}
        }
    }

    pub(super) fn member_up(&mut self, m: Member, _now: Instant) {
        let node = m.id();
        if node == self.id || (node.0 as usize) >= NodeSet::CAPACITY {
            // Another process with our id (a configuration error), or an id out of range.
            return;
        }
        if let Some(p) = self.peers.get(&node) {
            if p.live && p.member == m {
                return;
            }
            if p.live {
                let old = p.member.clone();
                self.member_down(&old);
            }
        }
        let addr = m.addr;
        self.peers.insert(
            node,
            Peer {
                member: m,
                live: true,
                link_up: false,
                acked: 0,
                sent: 0,
                seq_in: 0,
                synced: false,
                routes: Default::default(),
                staging: None,
                kicks: VecDeque::new(),
                applied: vec![0; usize::from(self.shard_count)],
                acked_out: 0,
            },
        );
        self.effects.push_back(Effect::Dial { node, addr });
        self.membership_changed();
    }

    pub(super) fn member_down(&mut self, m: &Member) {
        let node = m.id();
        let Some(p) = self.peers.get_mut(&node) else { return };
        if p.member != *m || !p.live {
            return;
        }
        p.live = false;
        p.link_up = false;
        p.acked = 0;
        p.sent = 0;
        p.seq_in = 0;
        p.synced = false;
        p.routes.clear();
        p.staging = None;
        p.kicks.clear();
        self.effects.push_back(Effect::Hangup { node });
        self.send_every_shard(ClusterIn::NodeDown(node));
        self.moves_node_down(node);
        self.registry.forget_node(node);
        self.membership_changed();
    }

    /// After a peer came up or went down: acknowledgements it held back may be due, and
    /// client ids may have a new owner.
    fn membership_changed(&mut self) {
        self.release_acks();
        self.release_claims(self.last_now);
        self.reassign_owners();
        self.update_counters();
    }
}
