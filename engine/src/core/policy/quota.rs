//! Quotas: how much one client may take. Every quota is off unless configured.
//!
//! - `connections_max`: connected clients in the whole broker (one counter shared by the
//!   shards, touched only at CONNECT and close). Past it, CONNECT gets 0x97 Quota exceeded
//!   (3.1.1: return code 3, server unavailable).
//! - `listener_connections_max`: connected clients of one listener (`[[listener]]
//!   max_connections`), counted the same way (one counter per listener shared by the
//!   shards) and refused the same way.
//! - `connections_per_sec_per_address`: new connections from one source address, per shard
//!   (each shard accepts on its own; the io layer spreads connections over the shards).
//!   Past it the connection is closed before CONNECT is read.
//! - `publish_messages_per_sec`, `publish_bytes_per_sec`: a connection's PUBLISH rate (a
//!   bucket holding one second's worth). Past it: 5.0 DISCONNECT 0x96 Message rate too
//!   high; 3.1.1 the connection is closed.
//! - Subscriptions per client: `Limits::subscriptions_per_session_max` (SUBACK 0x97).
//!
//! Shard-local state; the settings are process-wide.

use ::core::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::core::hash::Map;

/// The quota settings (process-wide).
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    /// Connected clients in the whole broker.
    pub connections_max: Option<u64>,
    /// New connections a second from one address, per shard.
    pub connections_per_sec_per_address: Option<u32>,
    /// PUBLISH packets a second per connection.
    pub publish_messages_per_sec: Option<u32>,
    /// PUBLISH payload bytes a second per connection.
    pub publish_bytes_per_sec: Option<u64>,
    /// Connected clients per listener (indexed like `ConnInfo::listener`; `None` or absent:
    /// no quota there).
    pub listener_connections_max: Vec<Option<u64>>,
    /// Connected clients now, across the shards (shared by every shard's copy).
    pub connected: Arc<AtomicU64>,
    /// Connected clients now per listener, across the shards (shared like `connected`;
    /// sized to the listeners at start-up).
    pub listener_connected: Arc<Vec<AtomicU64>>,
}

impl PartialEq for Quotas {
    /// Equal settings (the live counter is not a setting).
    fn eq(&self, o: &Quotas) -> bool {
        self.connections_max == o.connections_max
            && self.connections_per_sec_per_address == o.connections_per_sec_per_address
            && self.publish_messages_per_sec == o.publish_messages_per_sec
            && self.publish_bytes_per_sec == o.publish_bytes_per_sec
            && self.listener_connections_max == o.listener_connections_max
    }
}

impl Eq for Quotas {}

/// Which connection quota refused a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionsFull {
    /// `connections_max`.
    Broker,
    /// The listener's `max_connections`.
    Listener,
}

impl Quotas {
    /// Per-listener counters for `listeners` listeners, with these quotas.
    pub fn with_listeners(mut self, max: Vec<Option<u64>>) -> Quotas {
        self.listener_connected = Arc::new(max.iter().map(|_| AtomicU64::new(0)).collect());
        self.listener_connections_max = max;
        self
    }

    /// Takes a connection slot on `listener` (and in the broker); nothing is taken when a
    /// quota is reached. Exact across shards without a lock: each counter is raised first
    /// and lowered again if that went past the quota, so the count of admitted clients
    /// never exceeds it.
    pub(crate) fn take_connection(&self, listener: u16) -> Result<(), ConnectionsFull> {
        let n = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        if self.connections_max.is_some_and(|max| n > max) {
            self.connected.fetch_sub(1, Ordering::Relaxed);
            return Err(ConnectionsFull::Broker);
        }
        if let Some(count) = self.listener_connected.get(usize::from(listener)) {
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            let max = self.listener_connections_max.get(usize::from(listener)).copied().flatten();
            if max.is_some_and(|max| n > max) {
                count.fetch_sub(1, Ordering::Relaxed);
                self.connected.fetch_sub(1, Ordering::Relaxed);
                return Err(ConnectionsFull::Listener);
            }
        }
        Ok(())
    }

    /// Gives a connection slot on `listener` back.
    pub(crate) fn release_connection(&self, listener: u16) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(count) = self.listener_connected.get(usize::from(listener)) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connected clients of `listener` now (all shards).
    pub fn listener_connected(&self, listener: u16) -> u64 {
        self.listener_connected.get(usize::from(listener)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A token bucket holding at most one second's worth: `rate` tokens a second. Shard-local.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    available: f64,
    at: Option<Instant>,
}

impl Bucket {
    pub(crate) fn full(rate: f64) -> Bucket {
        Bucket { available: rate, at: None }
    }

    /// Takes `n` tokens at `now` if the bucket is not in debt (it may go into debt by one
    /// take, so a single message larger than a second's bytes is refused only after it).
    pub(crate) fn take(&mut self, n: f64, rate: f64, now: Instant) -> bool {
        if let Some(at) = self.at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.available = (self.available + secs * rate).min(rate);
        }
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
        if self.available < n.min(rate) {
            return false;
        }
        self.available -= n;
        true
    }
}

/// A connection's PUBLISH rate state. Shard-local: owned by the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishRate {
    messages: Bucket,
    bytes: Bucket,
}

impl PublishRate {
    pub(crate) fn new(q: &Quotas) -> PublishRate {
        PublishRate {
            messages: Bucket::full(q.publish_messages_per_sec.unwrap_or(0) as f64),
            bytes: Bucket::full(q.publish_bytes_per_sec.unwrap_or(0) as f64),
        }
    }

    /// Counts one PUBLISH of `bytes` payload bytes; false when it goes past a quota.
    pub(crate) fn admit(&mut self, q: &Quotas, bytes: usize, now: Instant) -> bool {
        let ok_messages = match q.publish_messages_per_sec {
            Some(r) => self.messages.take(1.0, f64::from(r), now),
            None => true,
        };
        let ok_bytes = match q.publish_bytes_per_sec {
            Some(r) => self.bytes.take(bytes as f64, r as f64, now),
            None => true,
        };
        ok_messages && ok_bytes
    }
}

/// New connections per source address, per shard; at most [`ADDRESSES_MAX`] addresses
/// remembered (the oldest forgotten first). Shard-local.
#[derive(Debug, Default)]
pub(crate) struct ConnectRates {
    buckets: Map<IpAddr, Bucket>,
    order: std::collections::VecDeque<IpAddr>,
}

/// Source addresses whose connection rate a shard remembers.
pub const ADDRESSES_MAX: usize = 4096;

impl ConnectRates {
    /// Counts a new connection from `ip`; false past `rate` a second.
    pub(crate) fn admit(&mut self, ip: IpAddr, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        if !self.buckets.contains_key(&ip) {
            if self.order.len() >= ADDRESSES_MAX {
                let oldest = self.order.pop_front().expect("full");
                self.buckets.remove(&oldest);
            }
            self.order.push_back(ip);
            self.buckets.insert(ip, Bucket::full(rate));
        }
        self.buckets.get_mut(&ip).expect("just made").take(1.0, rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_hold_one_second_and_refill() {
        let q = Quotas { publish_messages_per_sec: Some(2), ..Quotas::default() };
        let mut r = PublishRate::new(&q);
        let t0 = Instant::now();
        assert!(r.admit(&q, 10, t0) && r.admit(&q, 10, t0));
        assert!(!r.admit(&q, 10, t0), "a third within the second");
        assert!(r.admit(&q, 10, t0 + Duration::from_millis(500)), "half a second: one more");
        let q = Quotas { publish_bytes_per_sec: Some(1000), ..Quotas::default() };
        let mut r = PublishRate::new(&q);
        assert!(r.admit(&q, 5000, t0), "one message larger than a second's worth passes");
        assert!(!r.admit(&q, 1, t0), "then the debt is paid first");
        assert!(!r.admit(&q, 1, t0 + Duration::from_secs(4)));
        assert!(r.admit(&q, 1, t0 + Duration::from_secs(6)));
    }

    #[test]
    fn connections_are_counted_broker_wide_and_per_address() {
        let q = Quotas { connections_max: Some(2), ..Quotas::default() };
        let other_shard = q.clone();
        assert!(q.take_connection(0).is_ok() && other_shard.take_connection(0).is_ok());
        assert_eq!(q.take_connection(0), Err(ConnectionsFull::Broker), "the counter is shared");
        other_shard.release_connection(0);
        assert!(q.take_connection(0).is_ok());
        // Per listener: listener 1 holds one client; listener 0 is unlimited.
        let q = Quotas { connections_max: Some(3), ..Quotas::default() }
            .with_listeners(vec![None, Some(1)]);
        let other_shard = q.clone();
        assert!(q.take_connection(1).is_ok());
        assert_eq!(other_shard.take_connection(1), Err(ConnectionsFull::Listener));
        assert_eq!(q.listener_connected(1), 1, "a refusal takes nothing");
        assert!(q.take_connection(0).is_ok() && q.take_connection(0).is_ok());
        assert_eq!(q.take_connection(0), Err(ConnectionsFull::Broker));
        q.release_connection(1);
        assert_eq!(q.listener_connected(1), 0);
        assert!(other_shard.take_connection(1).is_ok(), "the freed slot is taken again");
        let mut rates = ConnectRates::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        assert!(rates.admit(a, 2, t0) && rates.admit(a, 2, t0));
        assert!(!rates.admit(a, 2, t0));
        assert!(rates.admit(b, 2, t0), "per address");
        assert!(rates.admit(a, 2, t0 + Duration::from_secs(1)));
    }
}
