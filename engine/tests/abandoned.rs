//! One abandoned consumer must not stop everyone (issue 11): an offline persistent session
//! subscribed to `#` whose queue is full drops its own oldest messages (counted in
//! `$SYS/broker/messages/dropped`), while every publisher — 5.0 and 3.1.1 — is acknowledged
//! and online subscribers get everything. The drops are in the log: after a restart the
//! session gets the newest `session_queue_messages_max` messages, no more.

mod common;

use std::path::PathBuf;

use common::{addr, broker_with, id_on_shard, shutdown, within, Raw, V4};
use rumqttc::QoS as Q;
use shardmq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use shardmq_engine::io::BrokerHandle;
use shardmq_engine::log::settings::PersistConfig;
use shardmq_engine::log::Durability;

const QUEUE_MAX: usize = 200;
const PUBLISHED: usize = 250;

fn start(dir: &PathBuf) -> BrokerHandle {
    broker_with(2, |c| {
        c.persist = PersistConfig::in_dir(dir);
        c.limits.session_queue_messages_max = QUEUE_MAX as u32;
        c.sys_interval_secs = 1;
    })
}

fn acked(p: Option<Packet>, what: &str) {
    match p {
        Some(Packet::PubAck(r)) => assert_eq!(r.reason, ReasonCode::SUCCESS, "{what}"),
        other => panic!("{what}: expected PUBACK, got {other:?} (3.1.1: a disconnect)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_persistent_session_drops_its_oldest_and_stops_nobody() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abandoned");
    let _ = std::fs::remove_dir_all(&dir);
    let b = start(&dir);
    let a = addr(&b);
    // `mosquitto_sub -i abandoned -c -q 1 -t '#'`, then gone.
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut gone = V4::connect(a, "abandoned", persistent).await;
    gone.subscribe("#", Q::AtLeastOnce).await;
    gone.disconnect().await;
    let mut live = V4::connect(a, &id_on_shard("live", 1, 2), |_| {}).await;
    live.subscribe("t/#", Q::AtLeastOnce).await;
    let mut sys = V4::connect(a, "sys-watch", |_| {}).await;
    sys.subscribe("$SYS/broker/messages/dropped", Q::AtMostOnce).await;

    // More than the session's queue holds, from a 5.0 publisher, pipelined.
    let mut p5 = Raw::connect(a, &id_on_shard("p5", 0, 2), ProtocolVersion::V5).await;
    for i in 1..=PUBLISHED {
        let topic = format!("t/{i}");
        p5.send(&Raw::publish_packet(&topic, QoS::AtLeastOnce, Some(i as u16), vec![1; 16])).await;
    }
    for i in 1..=PUBLISHED {
        acked(p5.recv().await, &format!("t/{i} (5.0)"));
    }
    // Then any QoS 1 publish, from a 3.1.1 client (which 0x97 would have disconnected).
    let mut p3 = Raw::connect(a, &id_on_shard("p3", 1, 2), ProtocolVersion::V3_1_1).await;
    p3.send(&Raw::publish_packet("t/last", QoS::AtLeastOnce, Some(1), b"x".to_vec())).await;
    acked(p3.recv().await, "t/last (3.1.1)");

    let got = live.publishes(PUBLISHED + 1, "every message at the online subscriber").await;
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    let mut expected: Vec<String> = (1..=PUBLISHED).map(|i| format!("t/{i}")).collect();
    expected.push("t/last".into());
    assert_eq!(topics, expected);

    // Counted as dropped: wait for $SYS to show it (published every second).
    let want = (PUBLISHED + 1 - QUEUE_MAX) as u64;
    within("$SYS/broker/messages/dropped to count the drops", async {
        loop {
            let m = sys.next_publish("$SYS dropped").await;
            let n: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            if n >= want {
                return;
            }
        }
    })
    .await;
    drop(p5);
    drop(p3);
    live.disconnect().await;
    sys.disconnect().await;
    shutdown(b).await;

    // After a restart the session has the newest QUEUE_MAX messages, the oldest gone.
    let b = start(&dir);
    let a = addr(&b);
    let mut back = V4::connect(a, "abandoned", persistent).await;
    let got = back.publishes(QUEUE_MAX, "the kept messages").await;
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    let newest = &expected[expected.len() - QUEUE_MAX..];
    assert_eq!(topics, newest);
    // Nothing else was kept: the next message is one published now.
    let mut p = Raw::connect(a, "p-after", ProtocolVersion::V5).await;
    p.send(&Raw::publish_packet("t/after", QoS::AtLeastOnce, Some(1), b"y".to_vec())).await;
    acked(p.recv().await, "t/after");
    assert_eq!(back.next_publish("the marker").await.topic, "t/after");
    back.disconnect().await;
    shutdown(b).await;
}

/// Runs a Mosquitto command-line client to completion; `None` if it is not installed.
fn mosquitto(tool: &str, port: u16, args: &[&str]) -> Option<std::process::Output> {
    let out = std::process::Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{tool}: {e}"),
    }
}

/// The issue's reproduction, with Mosquitto's own clients: `mosquitto_sub -i abandoned -c
/// -q 1 -t '#' -W 1`, then 10,000 QoS 1 publishes, then any QoS 1 publish — which every
/// publisher (3.1.1 and 5.0) gets acknowledged, and an online subscriber receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_reproduction_with_mosquitto_clients() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abandoned-mosquitto");
    let _ = std::fs::remove_dir_all(&dir);
    // Durability is not what this checks: `none` keeps 10,000 round trips quick.
    let persist = PersistConfig { durability: Durability::None, ..PersistConfig::in_dir(&dir) };
    let b = broker_with(2, |c| c.persist = persist);
    let a = addr(&b);
    let port = a.port();
    let sub = ["-i", "abandoned", "-c", "-q", "1", "-t", "#", "-W", "1"];
    let Some(_) =
        tokio::task::spawn_blocking(move || mosquitto("mosquitto_sub", port, &sub)).await.unwrap()
    else {
        println!("SKIPPED: mosquitto_sub is not installed (scripts/install-test-deps.sh)");
        return shutdown(b).await;
    };
    let mut live = V4::connect(a, "live", |_| {}).await;
    live.subscribe("any/#", Q::AtLeastOnce).await;
    let fill = ["-q", "1", "-t", "fill", "-m", "m", "--repeat", "10000"];
    let out = tokio::task::spawn_blocking(move || mosquitto("mosquitto_pub", port, &fill))
        .await
        .unwrap()
        .expect("mosquitto_pub");
    assert!(out.status.success(), "10,000 publishes: {out:?}");
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("any/{version}");
        let args = ["-V", version, "-q", "1", "-t", topic.as_str(), "-m", "after"];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mosquitto("mosquitto_pub", port, &args)
        })
        .await
        .unwrap()
        .expect("mosquitto_pub");
        assert!(out.status.success(), "{version}: {out:?}");
        assert!(out.stderr.is_empty(), "{version}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(live.next_publish("the publish after the 10,000").await.topic, topic);
    }
    live.disconnect().await;
    shutdown(b).await;
}
