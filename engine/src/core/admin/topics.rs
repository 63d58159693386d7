//! The admin API's view of a shard's subscriptions and of the retained store, and the
//! broker's own publications (`POST /api/v1/publish`, `DELETE /api/v1/retained/{topic}`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardmq_codec::{ByteStr, Properties, QoS};

use crate::core::admin::Smallest;
use crate::core::ids::SessionSlot;
use crate::core::mesh::{Message, Origin};
use crate::core::routing::topic::filter_matches;
use crate::core::shard::ShardCore;

/// One subscription, with its client (`GET /api/v1/subscriptions`,
/// `GET /api/v1/topics/{topic}/subscribers`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriptionRow {
    /// The subscriber.
    pub client_id: String,
    /// The filter as sent.
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// The subscriber's home shard.
    pub shard: u16,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRow {
    /// Its topic.
    pub topic: String,
    /// Its payload (only when asked for one topic; lists leave it out).
    pub payload: Option<Bytes>,
    /// Payload size.
    pub payload_bytes: usize,
    /// QoS it was published with.
    pub qos: u8,
}

/// A message the broker publishes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPublish {
    /// A valid topic name (no wildcard, not `$`-prefixed: checked by the caller).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// 5.0 properties passed to subscribers (`None`: none).
    pub properties: Option<Box<Properties>>,
}

/// Whether the row (`client_id`, `filter`) sorts before `top`.
fn beats<'a>(client_id: &'a str, filter: &'a str) -> impl FnOnce(&SubscriptionRow) -> bool + 'a {
    move |top| (client_id, filter) < (top.client_id.as_str(), top.filter.as_str())
}

impl ShardCore {
    /// This shard's subscriptions whose filter starts with `filter_prefix`, ordered by
    /// (client id, filter), after `after` (exclusive), at most `limit`.
    pub fn admin_subscriptions(
        &self,
        filter_prefix: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> Vec<SubscriptionRow> {
        let mut slots = Vec::new();
        self.sessions.slots(&mut slots);
        let mut page = Smallest::new(limit);
        for slot in slots {
            let Some(s) = self.sessions.try_get(slot) else { continue };
            for (filter, o) in &s.subs {
                if filter_prefix.is_some_and(|p| !filter.starts_with(p)) {
                    continue;
                }
                let key = (&*s.client_id, &**filter);
                if after.is_some_and(|(c, f)| key <= (c.as_str(), f.as_str())) {
                    continue;
                }
                page.offer(
                    |top: &SubscriptionRow| key < (top.client_id.as_str(), top.filter.as_str()),
                    || self.row(&s.client_id, filter, o.opts.qos),
                );
            }
        }
        page.into_sorted()
    }

    fn row(&self, client_id: &str, filter: &str, qos: QoS) -> SubscriptionRow {
        SubscriptionRow {
            client_id: client_id.to_owned(),
            filter: filter.to_owned(),
            qos: qos as u8,
            shard: self.shard.0,
        }
    }

    /// The subscriptions on this shard that a PUBLISH to `topic` would reach, at most
    /// `limit` (shared subscriptions are listed as members; the broker delivers to one
    /// member per group).
    pub fn admin_subscribers(&self, topic: &str, limit: usize) -> Vec<SubscriptionRow> {
        let mut page = Smallest::new(limit);
        self.trie.for_each_match(topic, |slot: SessionSlot, o, filter| {
            if let Some(s) = self.sessions.try_get(slot) {
                let make = || self.row(&s.client_id, filter, o.opts.qos);
                page.offer(beats(&s.client_id, filter), make);
            }
        });
        let mut slots = Vec::new();
        self.sessions.slots(&mut slots);
        for slot in slots {
            let Some(s) = self.sessions.try_get(slot) else { continue };
            for (filter, o) in &s.subs {
                let Some((_, f)) = crate::core::routing::topic::split_shared(filter) else {
                    continue;
                };
                if filter_matches(f, topic) {
                    let make = || self.row(&s.client_id, filter, o.opts.qos);
                    page.offer(beats(&s.client_id, filter), make);
                }
            }
        }
        let mut rows = page.into_sorted();
        rows.dedup();
        rows
    }

    /// Retained messages whose topic this shard owns ([`ShardCore::retain_owner`]: its copy
    /// is the newest) and starts with `prefix`, in topic order after `after` (exclusive), at
    /// most `limit`, without payloads.
    pub fn admin_retained(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<RetainedRow> {
        let mut page = Smallest::new(limit);
        self.retained.for_each(|topic, m| {
            if prefix.is_some_and(|p| !topic.starts_with(p))
                || after.is_some_and(|a| topic <= a)
                || self.retain_owner(topic) != self.shard
            {
                return;
            }
            page.offer(
                |top: &(String, usize, u8)| topic < top.0.as_str(),
                || (topic.to_owned(), m.payload.len(), m.qos as u8),
            );
        });
        let rows = page.into_sorted().into_iter();
        rows.map(|(topic, payload_bytes, qos)| RetainedRow {
            topic,
            payload: None,
            payload_bytes,
            qos,
        })
        .collect()
    }

    /// The retained message of `topic`, with its payload.
    pub fn admin_retained_one(&self, topic: &str) -> Option<RetainedRow> {
        let m = self.retained.get(topic)?;
        Some(RetainedRow {
            topic: topic.to_owned(),
            payload: Some(m.payload.clone()),
            payload_bytes: m.payload.len(),
            qos: m.qos as u8,
        })
    }

    /// Clears `topic`'s retained message without publishing anything: must run on the
    /// topic's owner ([`ShardCore::retain_owner`]), which logs it and updates every replica.
    /// False if there was none.
    pub fn admin_clear_retained(&mut self, topic: &str) -> bool {
        assert_eq!(self.retain_owner(topic), self.shard, "retained clear on the wrong shard");
        if self.retained.get(topic).is_none() {
            return false;
        }
        self.apply_retained_as_owner(ByteStr::from(topic), None);
        true
    }

    /// Publishes a message from the broker itself, routed like a client's (retained if
    /// asked). Nobody waits for its acknowledgement.
    pub fn admin_publish(&mut self, p: AdminPublish, now: Instant) {
        let msg = Message {
            topic: ByteStr::from(p.topic.as_str()),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            origin: Origin { shard: self.shard, session: u32::MAX },
            received_at_ms: self.uptime_ms(now),
        };
        let mark = self.mesh_out.len();
        self.publish_from_client(Arc::new(msg), now);
        // As for a will: a shard that refuses a copy answers the next durability request
        // with the failure, so ask now (`persist/ack.rs`).
        self.request_remote_durability(mark);
        self.take_copy_refused();
    }
}
