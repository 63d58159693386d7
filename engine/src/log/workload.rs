//! Seeded generators of consistent record batches, for the log's tests, fuzzers and
//! benchmarks. Not used by the broker: compiled only for tests and with the `test-support`
//! feature.

use super::record::{
    Acknowledged, Delivered, MessageQueued, MessageStored, PubrelCompleted, PubrelPending,
    Qos2Received, Qos2Released, RetainedCleared, RetainedSet, SessionCreated, SessionEnded,
    SessionOffline, SubscriptionAdded, SubscriptionRemoved,
};
use super::state::LogState;
use super::Record;
pub use crate::splitmix::Rng;

/// Mixed into a workload's seed, so it does not share a sequence with other users of [`Rng`].
const SEED_MIX: u64 = 0x5DEE_CE66_D1A4_F87B;

/// Generates batches of records that always fit the state built so far: the engine's
/// traffic in miniature (sessions come and go, messages are stored, queued, delivered,
/// acknowledged, retained, QoS 2 handshakes run).
#[derive(Debug, Clone)]
pub struct Workload {
    rng: Rng,
    state: LogState,
    next_msg_id: u64,
    clients: u64,
    payload_bytes_max: u64,
}

impl Workload {
    /// A workload over `clients` client ids with payloads of up to `payload_bytes_max` bytes.
    pub fn new(seed: u64, clients: u64, payload_bytes_max: u64) -> Workload {
        Workload {
            rng: Rng::new(seed ^ SEED_MIX),
            state: LogState::default(),
            next_msg_id: 1,
            clients,
            payload_bytes_max,
        }
    }

    /// A workload continuing from `state` (say, after recovery), numbering messages from
    /// `next_msg_id`.
    pub fn resume(
        seed: u64,
        clients: u64,
        payload_bytes_max: u64,
        state: LogState,
        next_msg_id: u64,
    ) -> Workload {
        Workload { rng: Rng::new(seed ^ SEED_MIX), state, next_msg_id, clients, payload_bytes_max }
    }

    /// The msg id the next stored message gets.
    pub fn next_msg_id(&self) -> u64 {
        self.next_msg_id
    }

    /// The state of every batch generated so far.
    pub fn state(&self) -> &LogState {
        &self.state
    }

    /// The generator's random source.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn pick<'a, T>(rng: &mut Rng, mut items: impl ExactSizeIterator<Item = T> + 'a) -> Option<T> {
        let n = items.len() as u64;
        if n == 0 {
            return None;
        }
        items.nth(rng.below(n) as usize)
    }

    fn client(&mut self) -> String {
        format!("client-{}", self.rng.below(self.clients))
    }

    fn existing_client(&mut self) -> Option<String> {
        Self::pick(&mut self.rng, self.state.sessions().keys()).cloned()
    }

    /// The next batch: one to a few records, already applied to [`Workload::state`].
    pub fn next_batch(&mut self) -> Vec<Record> {
        loop {
            if let Some(batch) = self.try_batch() {
                for r in &batch {
                    if let Err(e) = self.state.apply(r) {
                        panic!("workload generated an inconsistent {r:?}: {e}");
                    }
                }
                return batch;
            }
        }
    }

    fn try_batch(&mut self) -> Option<Vec<Record>> {
        let roll = self.rng.below(100);
        let r: Vec<Record> =
            match roll {
                0..=7 => {
                    let clean = self.rng.chance(30);
                    let expiry_secs = self.rng.below(7200) as u32;
                    vec![SessionCreated { client_id: self.client(), expiry_secs, clean }.into()]
                }
                8 => vec![SessionEnded { client_id: self.existing_client()? }.into()],
                9 => {
                    let client_id = self.existing_client()?;
                    let expires_at_unix_ms = 1_700_000_000_000 + self.rng.below(7200);
                    vec![SessionOffline { client_id, expires_at_unix_ms }.into()]
                }
                10..=19 => {
                    let client_id = self.existing_client()?;
                    let filter = format!("t/{}/+", self.rng.below(8));
                    if self.rng.chance(75) {
                        let options = self.rng.below(64) as u8;
                        let sub_id = self.rng.below(3) as u32;
                        vec![SubscriptionAdded { client_id, filter, options, sub_id }.into()]
                    } else {
                        vec![SubscriptionRemoved { client_id, filter }.into()]
                    }
                }
                20..=49 => self.store_batch(),
                50..=64 => {
                    let client_id = self.existing_client()?;
                    let s = &self.state.sessions()[&client_id];
                    let entry = *Self::pick(&mut self.rng, s.queue())?;
                    let packet_id = 1 + self.rng.below(u16::MAX as u64) as u16;
                    vec![Delivered { client_id, msg_id: entry.msg_id, packet_id }.into()]
                }
                65..=84 => {
                    let client_id = self.existing_client()?;
                    let s = &self.state.sessions()[&client_id];
                    let entry = *Self::pick(&mut self.rng, s.queue())?;
                    let mut batch =
                        vec![Acknowledged { client_id: client_id.clone(), msg_id: entry.msg_id }
                            .into()];
                    if let (Some(packet_id), true) = (entry.packet_id, self.rng.chance(50)) {
                        batch.push(PubrelPending { client_id, packet_id }.into());
                    }
                    batch
                }
                85..=94 => {
                    let client_id = self.existing_client()?;
                    let packet_id = 1 + self.rng.below(40) as u16;
                    let s = &self.state.sessions()[&client_id];
                    match self.rng.below(3) {
                        0 => vec![Qos2Received { client_id, packet_id }.into()],
                        1 => {
                            let packet_id = *Self::pick(&mut self.rng, s.qos2_inbound.iter())?;
                            vec![Qos2Released { client_id, packet_id }.into()]
                        }
                        _ => {
                            let packet_id = *Self::pick(&mut self.rng, s.pubrel_pending.iter())?;
                            vec![PubrelCompleted { client_id, packet_id }.into()]
                        }
                    }
                }
                _ => {
                    let topic = Self::pick(&mut self.rng, self.state.retained().keys())?.clone();
                    vec![RetainedCleared { topic }.into()]
                }
            };
        Some(r)
    }

    /// A stored message, queued for a few sessions, sometimes retained: one batch.
    fn store_batch(&mut self) -> Vec<Record> {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        let topic = format!("t/{}/{}", self.rng.below(8), self.rng.below(4));
        let len = self.rng.below(self.payload_bytes_max + 1) as usize;
        let payload: Vec<u8> = (0..len).map(|i| (msg_id as usize + i) as u8).collect();
        let retain = self.rng.chance(10);
        let mut batch: Vec<Record> = vec![MessageStored {
            msg_id,
            topic: topic.clone(),
            payload,
            qos: self.rng.below(3) as u8,
            retain,
            properties: if self.rng.chance(20) { vec![0x23, 0, 7] } else { vec![] },
            received_at_ms: 1_700_000_000_000 + msg_id,
        }
        .into()];
        let fanout = self.rng.below(4);
        let mut chosen = Vec::new();
        for _ in 0..fanout {
            if let Some(c) = self.existing_client() {
                if !chosen.contains(&c) {
                    chosen.push(c.clone());
                    let group = if self.rng.chance(20) { "$share/g/t/#" } else { "" };
                    batch.push(MessageQueued { client_id: c, msg_id, group: group.into() }.into());
                }
            }
        }
        if retain {
            batch.push(RetainedSet { topic, msg_id }.into());
        }
        batch
    }
}
