//! `GET /metrics`: every shard's counters (gathered through the control plane, summed by
//! Prometheus, not here: each series carries a `shard` label) rendered in the Prometheus
//! text format 0.0.4, or in OpenMetrics 1.0 when the scraper's `Accept` header asks for it.
//!
//! The two formats differ only in a few places, handled here: OpenMetrics names a counter
//! family without its `_total` suffix, and ends with `# EOF`.

use std::fmt::Write as _;

use crate::core::admin::AUTH_FAILURE_CODES;
use crate::core::delivery::drops::DropReason;
use crate::core::policy::denial::Denial;
use crate::io::control::ShardStats;
use crate::log::latency::{LatencyHistogram, BUCKETS_US};

/// The exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text004,
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it, else 0.0.4.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text004,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Process-wide values that no shard owns.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Reloads since start.
    pub reloads: u64,
    /// Shards that did not answer the scrape (their series are missing).
    pub shards_unanswered: u64,
    /// The listeners' URLs, by index.
    pub listener_urls: Vec<String>,
    /// The cluster runtime's dropped messages by reason (`None` without a cluster).
    pub cluster_dropped: Option<ClusterDropped>,
}

/// Messages the cluster runtime did not send to another node, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterDropped {
    /// The destination's link was down (or broke with the message queued).
    pub link_down: u64,
    /// The destination link's queue was full.
    pub queue_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes families one after the other.
struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// Starts a family. `name` is the family name without `_total` for counters.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let shown = match (kind, self.format) {
            (Kind::Counter, Format::Text004) => format!("{name}_total"),
            _ => name.to_owned(),
        };
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {shown} {help}");
        let _ = writeln!(self.out, "# TYPE {shown} {kind}");
    }

    /// One sample: `name` is the full sample name (`…_total` for counters).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels);
        let _ = writeln!(self.out, " {value}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter family with one series per shard.
    fn per_shard_counter(
        &mut self,
        stats: &[ShardStats],
        name: &str,
        help: &str,
        f: impl Fn(&ShardStats) -> u64,
    ) {
        self.family(name, Kind::Counter, help);
        let total = format!("{name}_total");
        for s in stats {
            self.sample(&total, &[("shard", &s.shard.to_string())], f(s));
        }
    }

    /// A gauge family with one series per shard.
    fn per_shard_gauge(
        &mut self,
        stats: &[ShardStats],
        name: &str,
        help: &str,
        f: impl Fn(&ShardStats) -> u64,
    ) {
        self.family(name, Kind::Gauge, help);
        for s in stats {
            self.sample(name, &[("shard", &s.shard.to_string())], f(s));
        }
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &LatencyHistogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, bound_us) in BUCKETS_US.iter().enumerate() {
            cumulative += h.counts[i];
            let le = seconds(*bound_us);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count());
        self.sample_f(&format!("{name}_sum"), labels, h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

/// Microseconds as seconds, the way Prometheus writes bucket bounds (`0.00025`, `1.0`).
fn seconds(us: u64) -> String {
    let s = format!("{}", us as f64 / 1e6);
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

const PROTOCOLS: [&str; 3] = ["3.1", "3.1.1", "5.0"];

/// Renders every family. `stats` holds the shards that answered, in shard order.
pub fn render(stats: &[ShardStats], process: &ProcessInfo, format: Format) -> String {
    let mut w = Writer { out: String::with_capacity(16 * 1024), format };
    w.family("shardmq_build_info", Kind::Gauge, "The broker's version (value 1).");
    w.sample("shardmq_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    w.family("shardmq_uptime_seconds", Kind::Gauge, "Seconds since the broker started.");
    w.sample("shardmq_uptime_seconds", &[], process.uptime_secs);
    w.family("shardmq_shards_unanswered", Kind::Gauge, "Shards that did not answer this scrape.");
    w.sample("shardmq_shards_unanswered", &[], process.shards_unanswered);
    w.family("shardmq_reloads", Kind::Counter, "Reloads (SIGHUP or POST /api/v1/reload).");
    w.sample("shardmq_reloads_total", &[], process.reloads);

    w.per_shard_gauge(stats, "shardmq_connections", "Open connections, connected or not.", |s| {
        s.core.connections
    });
    w.family("shardmq_clients_connected", Kind::Gauge, "Connected clients by protocol version.");
    for s in stats {
        let shard = s.shard.to_string();
        for (i, p) in PROTOCOLS.iter().enumerate() {
            let labels = [("shard", shard.as_str()), ("protocol", p)];
            w.sample("shardmq_clients_connected", &labels, s.core.clients_by_version[i]);
        }
    }
    w.family(
        "shardmq_clients_connected_by_listener",
        Kind::Gauge,
        "Connected clients by listener (index and URL).",
    );
    for s in stats {
        let shard = s.shard.to_string();
        for (i, url) in process.listener_urls.iter().enumerate() {
            let n = s.core.clients_by_listener.get(i).copied().unwrap_or(0);
            let index = i.to_string();
            let labels = [("shard", shard.as_str()), ("listener", &index), ("url", url)];
            w.sample("shardmq_clients_connected_by_listener", &labels, n);
        }
    }
    w.per_shard_gauge(
        stats,
        "shardmq_clients_sleeping",
        "Connections asleep (no task; the socket waits in the idle poller).",
        |s| s.clients_sleeping,
    );
    w.per_shard_gauge(stats, "shardmq_clients_slow", "Connections marked slow consumers.", |s| {
        s.core.clients_slow
    });
    w.per_shard_counter(stats, "shardmq_connects", "CONNECTs accepted.", |s| s.core.connects);
    w.family("shardmq_connects_refused", Kind::Counter, "CONNECTs refused, by reason code.");
    for s in stats {
        let shard = s.shard.to_string();
        for (code, n) in &s.core.connects_refused {
            let reason = format!("0x{code:02x}");
            w.sample(
                "shardmq_connects_refused_total",
                &[("shard", &shard), ("reason", &reason)],
                *n,
            );
        }
    }
    w.per_shard_counter(
        stats,
        "shardmq_auth_failures",
        "CONNECTs refused for bad credentials or authentication (0x86, 0x87, 0x8c).",
        |s| {
            let refused = &s.core.connects_refused;
            refused.iter().filter(|(c, _)| AUTH_FAILURE_CODES.contains(c)).map(|(_, n)| n).sum()
        },
    );
    w.family(
        "shardmq_disconnects",
        Kind::Counter,
        "Connected clients that went away, by reason (client, connection_lost, or the \
         broker's reason code).",
    );
    for s in stats {
        let shard = s.shard.to_string();
        for (why, n) in &s.core.disconnects {
            let labels = [("shard", shard.as_str()), ("reason", &why.label())];
            w.sample("shardmq_disconnects_total", &labels, *n);
        }
    }
    w.family("shardmq_denials", Kind::Counter, "Policy (ACL, session owner) denials, by reason.");
    for s in stats {
        let shard = s.shard.to_string();
        for (d, n) in Denial::ALL.iter().zip(s.core.denials) {
            w.sample("shardmq_denials_total", &[("shard", &shard), ("reason", d.name())], n);
        }
    }
    w.per_shard_counter(stats, "shardmq_tls_handshakes", "TLS handshakes completed.", |s| {
        s.tls_handshakes
    });
    w.per_shard_counter(
        stats,
        "shardmq_tls_handshake_failures",
        "TLS handshakes refused or failed (bad certificate, garbage, timeout).",
        |s| s.tls_handshake_failures,
    );
    w.per_shard_counter(stats, "shardmq_ws_upgrades", "WebSocket upgrades accepted.", |s| {
        s.ws_upgrades
    });
    w.per_shard_counter(
        stats,
        "shardmq_ws_failures",
        "WebSocket upgrades refused or abandoned, and connections closed for a bad frame.",
        |s| s.ws_failures,
    );
    w.per_shard_counter(
        stats,
        "shardmq_handshakes_refused_busy",
        "Connections closed at once: too many handshakes in progress on the shard.",
        |s| s.handshakes_refused_busy,
    );
    let bridges: Vec<_> = stats.iter().flat_map(|s| &s.bridges).collect();
    if !bridges.is_empty() {
        w.family(
            "shardmq_bridge_connected",
            Kind::Gauge,
            "1 while both links of the bridge are up.",
        );
        for b in &bridges {
            w.sample("shardmq_bridge_connected", &[("bridge", &b.name)], b.connected);
        }
        w.family(
            "shardmq_bridge_forwarded",
            Kind::Counter,
            "Messages a bridge forwarded, by direction.",
        );
        for b in &bridges {
            w.sample(
                "shardmq_bridge_forwarded_total",
                &[("bridge", &b.name), ("direction", "out")],
                b.forwarded_out,
            );
            w.sample(
                "shardmq_bridge_forwarded_total",
                &[("bridge", &b.name), ("direction", "in")],
                b.forwarded_in,
            );
        }
        w.family(
            "shardmq_bridge_connect_failures",
            Kind::Counter,
            "A bridge's failed connection attempts.",
        );
        for b in &bridges {
            w.sample(
                "shardmq_bridge_connect_failures_total",
                &[("bridge", &b.name)],
                b.connect_failures,
            );
        }
    }
    w.family("shardmq_messages_received", Kind::Counter, "PUBLISH packets received, by QoS.");
    for s in stats {
        let shard = s.shard.to_string();
        for (qos, n) in s.core.messages_received_by_qos.iter().enumerate() {
            let labels = [("shard", shard.as_str()), ("qos", &qos.to_string())];
            w.sample("shardmq_messages_received_total", &labels, *n);
        }
    }
    w.family("shardmq_messages_sent", Kind::Counter, "PUBLISH packets sent to clients, by QoS.");
    for s in stats {
        let shard = s.shard.to_string();
        for (qos, n) in s.core.traffic.sent_messages_by_qos.iter().enumerate() {
            let labels = [("shard", shard.as_str()), ("qos", &qos.to_string())];
            w.sample("shardmq_messages_sent_total", &labels, *n);
        }
    }
    w.family(
        "shardmq_publish_bytes_sent",
        Kind::Counter,
        "Bytes of the PUBLISH packets sent to clients (whole packets), by QoS.",
    );
    for s in stats {
        let shard = s.shard.to_string();
        for (qos, n) in s.core.traffic.sent_bytes_by_qos.iter().enumerate() {
            let labels = [("shard", shard.as_str()), ("qos", &qos.to_string())];
            w.sample("shardmq_publish_bytes_sent_total", &labels, *n);
        }
    }
    w.family(
        "shardmq_messages_dropped",
        Kind::Counter,
        "Messages (or copies of one) dropped, by reason.",
    );
    for s in stats {
        let shard = s.shard.to_string();
        for (r, n) in DropReason::ALL.iter().zip(s.core.traffic.dropped_by_reason) {
            w.sample(
                "shardmq_messages_dropped_total",
                &[("shard", &shard), ("reason", r.name())],
                n,
            );
        }
    }
    if let Some(c) = &process.cluster_dropped {
        w.family(
            "shardmq_cluster_messages_dropped",
            Kind::Counter,
            "Messages for other nodes not sent, by reason (link down, link queue full).",
        );
        for (reason, n) in [("link_down", c.link_down), ("queue_full", c.queue_full)] {
            w.sample("shardmq_cluster_messages_dropped_total", &[("reason", reason)], n);
        }
    }
    w.per_shard_counter(stats, "shardmq_bytes_received", "Bytes read from clients.", |s| {
        s.bytes_received
    });
    w.per_shard_counter(stats, "shardmq_bytes_sent", "Bytes written to clients.", |s| s.bytes_sent);
    w.per_shard_gauge(
        stats,
        "shardmq_subscriptions",
        "Subscriptions of the shard's sessions.",
        |s| s.core.subscriptions,
    );
    w.family("shardmq_sessions", Kind::Gauge, "Sessions by state (online: a client is connected).");
    for s in stats {
        let shard = s.shard.to_string();
        let online = s.core.clients_connected;
        let offline = s.core.sessions.saturating_sub(online);
        w.sample("shardmq_sessions", &[("shard", &shard), ("state", "online")], online);
        w.sample("shardmq_sessions", &[("shard", &shard), ("state", "offline")], offline);
    }
    w.per_shard_gauge(
        stats,
        "shardmq_queued_messages",
        "Messages in session queues (as of the last scan, at most 0.5 s old).",
        |s| s.core.queued_messages,
    );
    w.per_shard_gauge(stats, "shardmq_queued_bytes", "Bytes of messages in session queues.", |s| {
        s.core.queued_bytes
    });
    w.per_shard_gauge(stats, "shardmq_tx_queued_bytes", "Bytes waiting in transmit queues.", |s| {
        s.core.tx_bytes_queued
    });
    w.per_shard_counter(
        stats,
        "shardmq_publish_pauses",
        "Times the shard paused its publishers (back-pressure).",
        |s| s.core.publish_pauses,
    );
    // Every shard holds a replica of the retained store: one value, not a sum.
    let retained = stats.first().map(|s| (s.core.retained_messages, s.core.retained_bytes));
    w.family("shardmq_retained_messages", Kind::Gauge, "Retained messages.");
    w.sample("shardmq_retained_messages", &[], retained.map_or(0, |r| r.0));
    w.family("shardmq_retained_bytes", Kind::Gauge, "Bytes of retained topics and payloads.");
    w.sample("shardmq_retained_bytes", &[], retained.map_or(0, |r| r.1));
    w.per_shard_gauge(
        stats,
        "shardmq_mesh_outbox_messages",
        "Messages for other shards waiting for room on a full ring.",
        |s| s.mesh_outbox_messages,
    );
    w.per_shard_gauge(
        stats,
        "shardmq_mesh_inflight_bytes",
        "Bytes routed to other shards and not yet handled there.",
        |s| s.core.mesh_inflight_bytes,
    );
    w.per_shard_gauge(
        stats,
        "shardmq_route_filters",
        "Filters in the shard's routing index.",
        |s| s.core.route_filters,
    );

    let logged: Vec<_> = stats.iter().filter_map(|s| s.log.map(|l| (s.shard, l))).collect();
    if !logged.is_empty() {
        w.family("shardmq_log_disk_bytes", Kind::Gauge, "Bytes of the shard's log on disk.");
        for (shard, l) in &logged {
            w.sample("shardmq_log_disk_bytes", &[("shard", &shard.to_string())], l.disk_bytes);
        }
        w.family("shardmq_log_written_bytes", Kind::Counter, "Bytes appended to the log.");
        for (shard, l) in &logged {
            let n = l.stats.bytes_written;
            w.sample("shardmq_log_written_bytes_total", &[("shard", &shard.to_string())], n);
        }
        w.family("shardmq_log_fsyncs", Kind::Counter, "fdatasyncs of log segments.");
        for (shard, l) in &logged {
            w.sample("shardmq_log_fsyncs_total", &[("shard", &shard.to_string())], l.stats.fsyncs);
        }
        w.family("shardmq_log_compactions", Kind::Counter, "Log compactions.");
        for (shard, l) in &logged {
            let n = l.stats.compactions;
            w.sample("shardmq_log_compactions_total", &[("shard", &shard.to_string())], n);
        }
        w.family(
            "shardmq_log_fsync_duration_seconds",
            Kind::Histogram,
            "How long each fdatasync of a log segment took.",
        );
        for (shard, l) in &logged {
            let shard = shard.to_string();
            let labels = [("shard", shard.as_str())];
            w.histogram("shardmq_log_fsync_duration_seconds", &labels, &l.stats.fsync_latency);
        }
    }
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
