//! Time-driven work: keep alive, the CONNECT timeout, freeing closed connections, session
//! expiry, will delay, and the `$SYS` publication (shard 0).
//!
//! A scan every [`SCAN_INTERVAL`] visits every connection and session: O(n) per scan, so a
//! deadline may be acted on up to one interval late. Simple and cheap at our scale (15,000
//! connections ≈ tens of µs per scan); a timer wheel would make it O(expiring).
//!
//! Shard-local.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_codec::{ByteStr, QoS, ReasonCode};

use crate::core::delivery::drops::DropReason;
use crate::core::delivery::tx::SlowChange;
use crate::core::mesh::{Message, Origin};
use crate::core::policy::Denial;
use crate::core::sessions::conn::Phase;
use crate::core::shard::{BridgeCounters, CloseKind, ShardCore, CLOSING_LINGER, SCAN_INTERVAL};

/// A bridge's `$SYS/broker/bridges/NAME/…` topics, in `publish_sys`'s order.
const BRIDGE_SYS_TOPICS: [&str; 8] = [
    "connected",
    "forwarded/out",
    "forwarded/in",
    "connect_failures",
    "dropped",
    "queue/messages",
    "queue/bytes",
    "inflight",
];

/// Slow consumers named in the log per scan; past this, one line says how many more.
const SLOW_WARNINGS_PER_SCAN_MAX: usize = 8;

impl ShardCore {
    /// When the next timer work is due.
    pub(crate) fn timers_deadline(&self) -> Option<Instant> {
        let busy = self.conns.len() > 0 || self.sessions.len() > 0;
        let scan = self.next_scan_at.filter(|_| busy);
        [scan, self.next_sys_at, self.replays.deadline(self.config.started_at)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs whatever is due at `now`, and exports the counters.
    pub(crate) fn run_timers(&mut self, now: Instant) {
        self.continue_replays(now);
        if self.next_scan_at.is_some_and(|at| now >= at) {
            self.scan(now);
            self.next_scan_at = Some(now + SCAN_INTERVAL);
        }
        if let Some(at) = self.next_sys_at {
            if now >= at {
                self.export_stats();
                self.publish_sys(now);
                let interval = Duration::from_secs(self.config.sys_interval_secs.into());
                self.next_sys_at = Some(now + interval);
            }
        }
        self.export_stats();
    }

    fn scan(&mut self, now: Instant) {
        let connect_timeout = Duration::from_secs(self.config.limits.connect_timeout_secs.into());
        let mut ids = Vec::new();
        self.conns.ids(&mut ids);
        let paused = self.publishing_paused();
        let mut became_slow = 0usize;
        for id in ids {
            let Some(c) = self.conns.get_mut(id) else { continue };
            match c.tx.scan() {
                SlowChange::None | SlowChange::Recovered => {}
                SlowChange::BecameSlow => {
                    became_slow += 1;
                    if became_slow > SLOW_WARNINGS_PER_SCAN_MAX {
                        // Counted, and summed up after the scan.
                    } else if let Phase::Connected(slot) = c.phase {
                        let client_id = &self.sessions.get(slot).client_id;
                        tracing::warn!(
                            shard = %self.shard,
                            %client_id,
                            "slow consumer: its queue stays full; QoS 0 messages to it are \
                             dropped (counted in $SYS/broker/messages/dropped) until it catches up"
                        );
                    }
                }
            }
            let c = self.conns.get(id).expect("just seen");
            match c.phase {
                Phase::Closing => {
                    // `last_rx` is when closing started (`Conn::last_rx`).
                    if now >= c.last_rx + CLOSING_LINGER {
                        self.conns.remove(id);
                    }
                }
                Phase::AwaitingConnect => {
                    if now >= c.last_rx + connect_timeout {
                        self.close_conn(id, CloseKind::Abnormal(None), now);
                    }
                }
                Phase::Connected(_) => {
                    // [MQTT-3.1.2-24]: nothing received for 1.5 × keep alive. Not while
                    // publishing is paused: the io layer then leaves a publisher's PUBLISH
                    // (and what follows it, PINGREQ included) unread, and a client we do not
                    // read is not a silent one (`delivery/tx_budget.rs`).
                    let ka_ms = u64::from(c.keep_alive_secs) * 1500;
                    if ka_ms > 0 && now >= c.last_rx + Duration::from_millis(ka_ms) && !paused {
                        let kind = CloseKind::Abnormal(Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
                        self.close_conn(id, kind, now);
                    }
                }
            }
        }
        if became_slow > SLOW_WARNINGS_PER_SCAN_MAX {
            tracing::warn!(
                shard = %self.shard,
                more = became_slow - SLOW_WARNINGS_PER_SCAN_MAX,
                "more slow consumers in this scan (see $SYS/broker/clients/slow)"
            );
        }
        let now_ms = self.uptime_ms(now);
        let mut slots = Vec::new();
        self.sessions.slots(&mut slots);
        let (mut queued_messages, mut queued_bytes) = (0, 0);
        for slot in slots {
            let Some(s) = self.sessions.try_get_mut(slot) else { continue };
            s.release_idle();
            queued_messages += s.queue().len() as u64;
            queued_bytes += s.queue_bytes();
            if s.conn.is_some() {
                continue;
            }
            // Offline queues shed expired messages here, so they do not hold queue space
            // until the client returns [MQTT-3.3.2-5].
            let expired = s.drop_expired(now_ms);
            self.stats.dropped(crate::core::delivery::drops::DropReason::Expired, expired);
            if s.pending_will().is_some_and(|w| now >= w.publish_at) {
                let will = s.take_pending_will().expect("checked").will;
                self.publish_will(slot, *will, now);
            }
            let s = self.sessions.get(slot);
            // A session exporting to another node waits for that node's commit: its client
            // connected there before it expired, so it goes on there (or here, if the move
            // is aborted, and then expires at the next scan).
            if s.expires_at.is_some_and(|t| now >= t) && !self.cluster_exporting(&s.client_id) {
                self.end_session(slot, now);
            }
        }
        self.ops.queued_messages = queued_messages;
        self.ops.queued_bytes = queued_bytes;
        // A bridge's local session lives on one shard: that shard reports its depth.
        for b in &self.bridges {
            if let Some(slot) = self.sessions.find(&b.local_client_id) {
                let s = self.sessions.get(slot);
                let (queued, inflight) = (s.queue().len() as u64, s.inflight().len() as u64);
                b.queued.store(queued, Ordering::Relaxed);
                b.inflight.store(inflight, Ordering::Relaxed);
                b.queued_bytes.store(s.queue_bytes(), Ordering::Relaxed);
            }
        }
    }

    /// The running bridges changed (the admin API added or removed one). Shard 0 clears the
    /// retained `$SYS` topics of a removed bridge.
    pub fn set_bridges(&mut self, bridges: Vec<Arc<BridgeCounters>>, now: Instant) {
        let removed: Vec<String> = self
            .bridges
            .iter()
            .filter(|b| !bridges.iter().any(|n| Arc::ptr_eq(n, b)))
            .map(|b| b.name.clone())
            .collect();
        self.bridges = bridges;
        if self.shard.0 != 0 {
            return;
        }
        for name in removed {
            for what in BRIDGE_SYS_TOPICS {
                // An empty retained message clears the topic ([MQTT-3.3.1-10] in 3.1.1,
                // [MQTT-3.3.1-6] in 5.0).
                self.publish_sys_value(format!("$SYS/broker/bridges/{name}/{what}"), "", now);
            }
        }
    }

    /// Shard 0 publishes the broker's statistics, retained, as ordinary broker messages.
    fn publish_sys(&mut self, now: Instant) {
        let mut totals = [0u64; 15];
        let mut denials = [0u64; Denial::COUNT];
        let mut sent_messages = [0u64; 3];
        let mut sent_bytes = [0u64; 3];
        let mut dropped = [0u64; DropReason::COUNT];
        for s in &self.config.stats.shards {
            for (t, v) in denials.iter_mut().zip(&s.denials) {
                *t += v.load(Ordering::Relaxed);
            }
            for (t, v) in sent_messages.iter_mut().zip(&s.sent_messages_by_qos) {
                *t += v.load(Ordering::Relaxed);
            }
            for (t, v) in sent_bytes.iter_mut().zip(&s.sent_bytes_by_qos) {
                *t += v.load(Ordering::Relaxed);
            }
            for (t, v) in dropped.iter_mut().zip(&s.dropped_by_reason) {
                *t += v.load(Ordering::Relaxed);
            }
            let values = [
                &s.clients_connected,
                &s.messages_received,
                &s.messages_sent,
                &s.messages_dropped,
                &s.bytes_received,
                &s.bytes_sent,
                &s.clients_sleeping,
                &s.clients_slow,
                &s.tx_bytes_queued,
                &s.publish_pauses,
                &s.tls_handshakes,
                &s.tls_handshake_failures,
                &s.ws_upgrades,
                &s.ws_failures,
                &s.handshakes_refused_busy,
            ];
            for (t, v) in totals.iter_mut().zip(values) {
                *t += v.load(Ordering::Relaxed);
            }
        }
        let uptime_secs = now.saturating_duration_since(self.config.started_at).as_secs();
        let entries: [(&'static str, String); 17] = [
            ("$SYS/broker/version", format!("shardmq {}", env!("CARGO_PKG_VERSION"))),
            ("$SYS/broker/uptime", format!("{uptime_secs} seconds")),
            ("$SYS/broker/clients/connected", totals[0].to_string()),
            ("$SYS/broker/messages/received", totals[1].to_string()),
            ("$SYS/broker/messages/sent", totals[2].to_string()),
            ("$SYS/broker/messages/dropped", totals[3].to_string()),
            ("$SYS/broker/load/bytes/received", totals[4].to_string()),
            ("$SYS/broker/load/bytes/sent", totals[5].to_string()),
            ("$SYS/broker/clients/sleeping", totals[6].to_string()),
            ("$SYS/broker/clients/slow", totals[7].to_string()),
            ("$SYS/broker/load/bytes/queued", totals[8].to_string()),
            ("$SYS/broker/publish/pauses", totals[9].to_string()),
            ("$SYS/broker/tls/handshakes", totals[10].to_string()),
            ("$SYS/broker/tls/handshake_failures", totals[11].to_string()),
            ("$SYS/broker/websocket/upgrades", totals[12].to_string()),
            ("$SYS/broker/websocket/failures", totals[13].to_string()),
            ("$SYS/broker/handshakes/refused_busy", totals[14].to_string()),
        ];
        let denied = Denial::ALL
            .iter()
            .zip(denials)
            .map(|(d, n)| (format!("$SYS/broker/denied/{}", d.name()), n.to_string()));
        let by_qos = (0..3).flat_map(|q| {
            [
                (format!("$SYS/broker/messages/sent/qos/{q}"), sent_messages[q].to_string()),
                (format!("$SYS/broker/load/bytes/sent/qos/{q}"), sent_bytes[q].to_string()),
            ]
        });
        let dropped = DropReason::ALL
            .iter()
            .zip(dropped)
            .map(|(r, n)| (format!("$SYS/broker/messages/dropped/{}", r.name()), n.to_string()));
        let mut entries: Vec<(String, String)> = entries
            .into_iter()
            .map(|(t, v)| (t.to_owned(), v))
            .chain(denied)
            .chain(by_qos)
            .chain(dropped)
            .collect();
        for b in &self.bridges {
            let values = [
                &b.connected,
                &b.forwarded_out,
                &b.forwarded_in,
                &b.connect_failures,
                &b.dropped,
                &b.queued,
                &b.queued_bytes,
                &b.inflight,
            ];
            for (what, v) in BRIDGE_SYS_TOPICS.iter().zip(values) {
                let topic = format!("$SYS/broker/bridges/{}/{what}", b.name);
                entries.push((topic, v.load(Ordering::Relaxed).to_string()));
            }
        }
        if let Some(c) = &self.config.cluster {
            let k = &c.counters;
            for (what, v) in [
                ("node_id", &k.node_id),
                ("members", &k.members),
                ("links/up", &k.links_up),
                ("messages/out", &k.messages_out),
                ("messages/in", &k.messages_in),
                ("bytes/out", &k.bytes_out),
                ("bytes/in", &k.bytes_in),
                ("messages/dropped", &k.messages_dropped),
                ("routes/remote", &k.remote_routes),
                ("takeovers", &k.takeovers),
                ("links/handshake_failures", &k.link_handshake_failures),
            ] {
                let topic = format!("$SYS/broker/cluster/{what}");
                entries.push((topic, v.load(Ordering::Relaxed).to_string()));
            }
            let full = k.messages_dropped_queue_full.load(Ordering::Relaxed);
            let down = k.messages_dropped.load(Ordering::Relaxed).saturating_sub(full);
            for (what, n) in [("link_down", down), ("queue_full", full)] {
                let topic = format!("$SYS/broker/cluster/messages/dropped/{what}");
                entries.push((topic, n.to_string()));
            }
        }
        for (topic, value) in entries {
            self.publish_sys_value(topic, &value, now);
        }
    }

    /// Publishes one `$SYS` value, retained, as an ordinary broker message.
    fn publish_sys_value(&mut self, topic: String, value: &str, now: Instant) {
        let msg = Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from(value.to_owned()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            origin: Origin { shard: self.shard, session: u32::MAX },
            received_at_ms: self.uptime_ms(now),
        };
        self.route_message(Arc::new(msg), now);
    }
}
