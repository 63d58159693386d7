use super::*;
use crate::core::admin::{CoreStats, DisconnectReason};
use crate::core::delivery::drops::DropReason;
use crate::io::control::LogSnapshot;

fn two_shards() -> Vec<ShardStats> {
    let mut a = ShardStats { shard: 0, ..Default::default() };
    a.core = CoreStats {
        connections: 3,
        clients_connected: 2,
        clients_by_version: [0, 1, 1],
        clients_by_listener: vec![2],
        denials: [1, 0, 0, 0, 0, 3, 0, 0, 0, 0],
        messages_received_by_qos: [5, 6, 7],
        messages_sent: 9,
        connects_refused: vec![(0x86, 2), (0x85, 1)],
        disconnects: vec![(DisconnectReason::Client, 4), (DisconnectReason::Server(0x8d), 1)],
        sessions: 5,
        retained_messages: 2,
        retained_bytes: 40,
        ..Default::default()
    };
    a.bytes_received = 1000;
    a.core.traffic.sent_messages_by_qos = [8, 1, 0];
    a.core.traffic.sent_bytes_by_qos = [800, 120, 0];
    a.core.traffic.dropped_by_reason[DropReason::Expired as usize] = 4;
    let mut log = LogSnapshot { disk_bytes: 4096, ..Default::default() };
    log.stats.fsync_latency.record(150);
    log.stats.fsync_latency.record(3_000_000);
    a.log = Some(log);
    let mut b = ShardStats { shard: 1, ..Default::default() };
    b.core.retained_messages = 2;
    b.core.messages_received_by_qos = [1, 0, 0];
    vec![a, b]
}

fn process() -> ProcessInfo {
    ProcessInfo { listener_urls: vec!["mqtt://x".into()], ..Default::default() }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn text_004_names_counters_with_total_and_has_no_eof() {
    let text = render(&two_shards(), &process(), Format::Text004);
    let l = lines(&text);
    assert!(l.contains(&"# TYPE shardmq_messages_received_total counter"));
    assert!(l.contains(&"shardmq_messages_received_total{shard=\"0\",qos=\"2\"} 7"));
    assert!(l.contains(&"shardmq_messages_received_total{shard=\"1\",qos=\"0\"} 1"));
    assert!(l.contains(&"shardmq_clients_connected{shard=\"0\",protocol=\"5.0\"} 1"));
    assert!(l.contains(&"shardmq_connects_refused_total{shard=\"0\",reason=\"0x86\"} 2"));
    assert!(l.contains(&"shardmq_auth_failures_total{shard=\"0\"} 2"), "0x85 is not auth");
    assert!(l.contains(&"shardmq_disconnects_total{shard=\"0\",reason=\"0x8d\"} 1"));
    assert!(l.contains(&"shardmq_sessions{shard=\"0\",state=\"offline\"} 3"));
    // A replica on every shard: one value, not the sum.
    assert!(l.contains(&"shardmq_retained_messages 2"));
    assert!(!text.contains("# EOF"));
    let url =
        "shardmq_clients_connected_by_listener{shard=\"0\",listener=\"0\",url=\"mqtt://x\"} 2";
    assert!(l.contains(&url), "{text}");
    assert!(l.contains(&"shardmq_denials_total{shard=\"0\",reason=\"session_owner\"} 3"));
}

#[test]
fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
    let text = render(&two_shards(), &process(), Format::OpenMetrics);
    let l = lines(&text);
    assert!(l.contains(&"# TYPE shardmq_messages_received counter"));
    assert!(l.contains(&"shardmq_messages_received_total{shard=\"0\",qos=\"2\"} 7"));
    assert_eq!(l.last(), Some(&"# EOF"));
}

#[test]
fn every_sample_belongs_to_one_declared_family() {
    for format in [Format::Text004, Format::OpenMetrics] {
        let text = render(&two_shards(), &process(), format);
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!families.contains(&name), "{name} declared twice");
                families.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let ok = families.iter().any(|f| {
                    name == f
                        || [f.clone() + "_total", f.clone() + "_bucket", f.clone() + "_sum"]
                            .contains(&name.to_owned())
                        || name == f.clone() + "_count"
                });
                assert!(ok, "{format:?}: sample {name} has no family");
            }
        }
    }
}

#[test]
fn the_fsync_histogram_is_cumulative_in_seconds() {
    let text = render(&two_shards(), &process(), Format::Text004);
    let l = lines(&text);
    let name = "shardmq_log_fsync_duration_seconds";
    assert!(l.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.0001\"}} 0").as_str()));
    assert!(l.contains(&format!("{name}_bucket{{shard=\"0\",le=\"0.00025\"}} 1").as_str()));
    assert!(l.contains(&format!("{name}_bucket{{shard=\"0\",le=\"1.0\"}} 1").as_str()));
    assert!(l.contains(&format!("{name}_bucket{{shard=\"0\",le=\"+Inf\"}} 2").as_str()));
    assert!(l.contains(&format!("{name}_count{{shard=\"0\"}} 2").as_str()));
    assert!(l.contains(&format!("{name}_sum{{shard=\"0\"}} 3.00015").as_str()));
    // Shard 1 runs in memory: no log series for it.
    assert!(!text.contains("shardmq_log_disk_bytes{shard=\"1\"}"));
}

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    write_labels(&mut out, &[("a", "x\"y\\z\nw")]);
    assert_eq!(out, "{a=\"x\\\"y\\\\z\\nw\"}");
}

#[test]
fn accept_picks_the_format() {
    assert_eq!(Format::from_accept(None), Format::Text004);
    assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4")), Format::Text004);
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
}

#[test]
fn traffic_is_labelled_by_qos_and_reason_and_cluster_drops_have_their_family() {
    let mut clustered = process();
    clustered.cluster_dropped = Some(ClusterDropped { link_down: 2, queue_full: 5 });
    let text = render(&two_shards(), &clustered, Format::Text004);
    let l = lines(&text);
    assert!(l.contains(&"shardmq_messages_sent_total{shard=\"0\",qos=\"0\"} 8"), "{text}");
    assert!(l.contains(&"shardmq_messages_sent_total{shard=\"1\",qos=\"2\"} 0"));
    assert!(l.contains(&"shardmq_publish_bytes_sent_total{shard=\"0\",qos=\"1\"} 120"));
    assert!(l.contains(&"shardmq_messages_dropped_total{shard=\"0\",reason=\"expired\"} 4"));
    for r in DropReason::ALL {
        let zero =
            format!("shardmq_messages_dropped_total{{shard=\"1\",reason=\"{}\"}} 0", r.name());
        assert!(l.contains(&zero.as_str()), "every reason has a series: {zero}");
    }
    assert!(l.contains(&"shardmq_cluster_messages_dropped_total{reason=\"queue_full\"} 5"));
    assert!(l.contains(&"shardmq_cluster_messages_dropped_total{reason=\"link_down\"} 2"));
    let alone = render(&two_shards(), &process(), Format::Text004);
    assert!(!alone.contains("shardmq_cluster_messages_dropped"), "no cluster, no family");
}
