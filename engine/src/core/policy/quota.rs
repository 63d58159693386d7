//! Quotas: how much one client may take. Every quota is off unless configured.
//!
//! - `connections_max`: connected clients in the whole broker (one counter shared by the
//!   shards, touched only at CONNECT and close). Past it, CONNECT gets 0x97 Quota exceeded
//!   (3.1.1: return code 3, server unavailable).
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
    /// Connected clients now, across the shards (shared by every shard's copy).
    pub connected: Arc<AtomicU64>,
}

impl PartialEq for Quotas {
    /// Equal settings (the live counter is not a setting).
    fn eq(&self, o: &Quotas) -> bool {
        self.connections_max == o.connections_max
            && self.connections_per_sec_per_address == o.connections_per_sec_per_address
            && self.publish_messages_per_sec == o.publish_messages_per_sec
            && self.publish_bytes_per_sec == o.publish_bytes_per_sec
    }
}

impl Eq for Quotas {}

impl Quotas {
    /// Takes a connection slot; false (nothing taken) at `connections_max`.
    pub(crate) fn take_connection(&self) -> bool {
        let n = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        if self.connections_max.is_some_and(|max| n > max) {
            self.connected.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives a connection slot back.
    pub(crate) fn release_connection(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
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
        assert!(q.take_connection() && other_shard.take_connection());
        assert!(!q.take_connection(), "the counter is shared");
        other_shard.release_connection();
        assert!(q.take_connection());
        let mut rates = ConnectRates::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        assert!(rates.admit(a, 2, t0) && rates.admit(a, 2, t0));
        assert!(!rates.admit(a, 2, t0));
        assert!(rates.admit(b, 2, t0), "per address");
        assert!(rates.admit(a, 2, t0 + Duration::from_secs(1)));
    }
}
