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

use foca::{Config, Identity, Notification, OwnedNotification, PeriodicParams, Runtime, Timer};

use crate::core::cluster::NodeId;

use super::node::Effect;

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
