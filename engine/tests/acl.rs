//! Authorisation with Mosquitto's files, with rumqttc clients against an in-process broker of
//! two shards: the denial codes (SUBACK 0x87 / 0x80, PUBACK and PUBREC 0x87), partly covered
//! wildcards, and sessions that belong to their user (on both shards, and across a restart).
//! The black-box suite (`test_18_acl.py`) runs the same files against Mosquitto.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{addr, broker_with, id_on_shard, shutdown, V4, V5};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PubRecReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS as Q5;
use shardmq_engine::config::Config;
use shardmq_engine::core::auth::acl::Acl;
use shardmq_engine::core::auth::passwd::PasswdFile;
use shardmq_engine::io::BrokerHandle;
use shardmq_engine::log::settings::PersistConfig;

const SHARDS: u16 = 2;

/// Written by Debian's `mosquitto_passwd` 2.0.11 for throwaway passwords: alice/wonderland,
/// "bob smith"/"s3cret pw" (`$7$`), carol/"old style" (`$6$`, `-H sha512`).
const PASSWD: &str = "\
alice:$7$101$61ayJXSMSfTkGE9p$jicI6lMRIIgiLu/iVYTYTtrYa8TvuJbK5bK9qvyYRJ7m6PoibwEnijCsMmHURP5NT4CxJH7kZxe8LwTLGC59HQ==
bob smith:$7$101$iFjBzw5T9z4yuswK$MOwewFGH8R519rd6qEY6+ZxYao9sa7A4/l54FO/kUkXkZCRKZJyAP9XFH1IUpOStgLuJzwGUw5JYB+uXBiXw5g==
carol:$6$e+wnf2FVnip7JE98$GN4t0IFzExDwqoMYcw6HTbTQUWmxA3ES7zxljbQ6nygLJSAZptXVtGAyEcZ3Yym95Ks0TYYM4XbEpxSj+dAdZw==
";

const ACL: &str = "\
topic read public/#
user alice
topic readwrite alice/#
topic deny alice/private/#
user bob smith
topic readwrite #
user carol
topic readwrite #
";

fn configure(c: &mut Config) {
    c.auth.passwd = Some(Arc::new(PasswdFile::parse(PASSWD).unwrap()));
    c.auth.acl = Some(Arc::new(Acl::parse(ACL).unwrap()));
    c.auth.allow_anonymous = true;
}

fn broker() -> BrokerHandle {
    broker_with(SHARDS, configure)
}

fn as_user(
    user: &'static str,
    password: &'static str,
) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    move |o| {
        o.set_credentials(user, password);
    }
}

/// The next SUBACK's reason codes (other packets skipped).
async fn suback(c: &mut V5) -> Vec<SubscribeReasonCode> {
    loop {
        match c.next_incoming("SUBACK").await.expect("connected") {
            P5::SubAck(a) => return a.return_codes,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_have_their_reason_codes() {
    let b = broker();
    let a = addr(&b);
    for shard in 0..SHARDS {
        let id = id_on_shard(&format!("alice-{shard}"), shard, SHARDS);
        let mut c = V5::connect(a, &id, as_user("alice", "wonderland")).await;
        // SUBACK: one code per filter; 0x87 only for the filter without any read right
        // (5.0 §3.9.3); a partly readable wildcard is granted.
        let filters = ["alice/x", "public/#", "alice/#", "alice/private/+"];
        let subs =
            filters.iter().map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(*f, Q5::AtLeastOnce));
        c.client.subscribe_many(subs).await.unwrap();
        let codes = suback(&mut c).await;
        use SubscribeReasonCode::{NotAuthorized, Success};
        let want =
            [Success(Q5::AtLeastOnce), NotAuthorized, Success(Q5::AtLeastOnce), NotAuthorized];
        assert_eq!(codes, want, "shard {shard}");
        // PUBLISH without write right: PUBACK / PUBREC 0x87 (5.0 §3.4.2.1, §3.5.2.1).
        c.client.publish("public/x", Q5::AtLeastOnce, false, "no").await.unwrap();
        c.client.publish("alice/private/y", Q5::ExactlyOnce, false, "no").await.unwrap();
        c.client.publish("alice/ok", Q5::AtLeastOnce, false, "yes").await.unwrap();
        let (mut puback, mut pubrec, mut delivered) = (Vec::new(), Vec::new(), Vec::new());
        while delivered.is_empty() || puback.len() < 2 || pubrec.is_empty() {
            match c.next_incoming("acks and the permitted message").await.expect("connected") {
                P5::PubAck(p) => puback.push(p.reason),
                P5::PubRec(p) => pubrec.push(p.reason),
                P5::Publish(p) => delivered.push(p.topic),
                _ => {}
            }
        }
        assert_eq!(puback, [PubAckReason::NotAuthorized, PubAckReason::Success]);
        assert_eq!(pubrec, [PubRecReason::NotAuthorized]);
        // Only the permitted message came back through `alice/#` (the denied ones were
        // dropped before routing, and it was published after them).
        assert_eq!(delivered, [bytes::Bytes::from_static(b"alice/ok")]);
        c.kill();
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_covered_wildcard_delivers_only_permitted_topics() {
    let b = broker();
    let a = addr(&b);
    let mut sub = V5::connect(a, "alice-wild", as_user("alice", "wonderland")).await;
    sub.client.subscribe("#", Q5::AtMostOnce).await.unwrap();
    assert_eq!(suback(&mut sub).await, [SubscribeReasonCode::Success(Q5::AtMostOnce)]);
    let publisher = V5::connect(a, "carol-pub", as_user("carol", "old style")).await;
    for t in ["alice/private/a", "bob/b", "public/c", "alice/d"] {
        publisher.client.publish(t, Q5::AtLeastOnce, false, t).await.unwrap();
    }
    // `alice/d` is the marker: published last by the same client, so anything denied that
    // was delivered would have come before it.
    let p = sub.next_publish("the permitted message").await;
    assert_eq!(p.topic, "alice/d");
    sub.kill();
    publisher.kill();
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_its_user_on_both_shards() {
    let b = broker();
    let a = addr(&b);
    for shard in 0..SHARDS {
        let id = id_on_shard(&format!("alice-laptop-{shard}"), shard, SHARDS);
        let mut alice = V5::connect(a, &id, |o| {
            o.set_credentials("alice", "wonderland");
            o.set_clean_start(false);
            o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
                session_expiry_interval: Some(600),
                ..Default::default()
            });
        })
        .await;
        alice.subscribe("alice/inbox", Q5::AtLeastOnce).await;
        // Bob (authenticated, allowed `#`) with alice's client id: refused, 5.0 0x87.
        let r = rumqttc_v5_attempt(a, &id, "bob smith", "s3cret pw").await;
        assert!(r.contains("NotAuthorized"), "shard {shard}: {r}");
        // 3.1.1: return code 5.
        let mut o = rumqttc::MqttOptions::new(&id, a.ip().to_string(), a.port());
        o.set_credentials("bob smith", "s3cret pw");
        o.set_clean_session(false);
        let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
        let r = common::within("3.1.1 CONNACK", el.poll()).await;
        assert!(format!("{r:?}").contains("NotAuthorized"), "shard {shard}: {r:?}");
        // Alice's connection was not taken over: it still receives.
        let carol = V5::connect(a, "carol-x", as_user("carol", "old style")).await;
        carol.client.publish("alice/inbox", Q5::AtLeastOnce, false, "still mine").await.unwrap();
        assert_eq!(alice.next_publish("alice's message").await.payload, "still mine");
        carol.kill();
        alice.kill();
    }
    shutdown(b).await;
}

/// Connects with rumqttc 5.0 as `user` and returns how the attempt ended (debug text).
async fn rumqttc_v5_attempt(a: std::net::SocketAddr, id: &str, user: &str, pw: &str) -> String {
    let mut o = rumqttc::v5::MqttOptions::new(id, a.ip().to_string(), a.port());
    o.set_credentials(user, pw);
    o.set_clean_start(false);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    format!("{:?}", common::within("rumqttc's CONNACK", el.poll()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_survives_a_restart() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("acl-owner-restart");
    let _ = std::fs::remove_dir_all(&dir);
    let persist = PersistConfig::in_dir(dir);
    let start = || {
        broker_with(SHARDS, |c| {
            configure(c);
            c.persist = persist.clone();
        })
    };
    let ids: Vec<String> = (0..SHARDS).map(|s| id_on_shard("owned", s, SHARDS)).collect();
    let b = start();
    for id in &ids {
        let c = V4::connect(addr(&b), id, |o| {
            o.set_credentials("alice", "wonderland");
            o.set_clean_session(false);
        })
        .await;
        c.disconnect().await;
    }
    shutdown(b).await;
    let b = start();
    let a = addr(&b);
    for id in &ids {
        let r = rumqttc_v5_attempt(a, id, "bob smith", "s3cret pw").await;
        assert!(r.contains("NotAuthorized"), "{id} after the restart: {r}");
        // The owner resumes it.
        let mut o = rumqttc::MqttOptions::new(id, a.ip().to_string(), a.port());
        o.set_credentials("alice", "wonderland");
        o.set_clean_session(false);
        let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
        match common::within("alice's CONNACK", el.poll()).await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                assert!(ack.session_present, "{id}: the session survived");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    shutdown(b).await;
}

/// Writes `text` to `path` through a temporary file and a rename, as an editor would.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_judges_connected_clients_by_the_new_rules() {
    use shardmq_engine::io::control::ControlMsg;
    use shardmq_engine::reload::Reloader;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("acl-reload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    std::fs::write(&pw, PASSWD).unwrap();
    let before = "user alice\ntopic read a/#\ntopic write b/#\nuser carol\ntopic readwrite #\n";
    std::fs::write(&acl, before).unwrap();
    let argv = [
        "shardmq",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--password-file",
        pw.to_str().unwrap(),
        "--acl-file",
        acl.to_str().unwrap(),
    ];
    let config = Config::try_parse_from(argv).unwrap();
    let b = shardmq_engine::io::Broker::start(&config).unwrap();
    let a = addr(&b);
    let reloader = Reloader::new(config.clone(), b.control());
    let applied = || async {
        // Control requests are handled in order: a Ping answered means the reload is in.
        for r in b.control().ask_all(|_| ControlMsg::Ping).await {
            r.expect("shard answers");
        }
    };
    let mut alice =
        V5::connect(a, &id_on_shard("alice-r", 1, SHARDS), as_user("alice", "wonderland")).await;
    alice.subscribe("a/#", Q5::AtMostOnce).await;
    let carol =
        V5::connect(a, &id_on_shard("carol-r", 0, SHARDS), as_user("carol", "old style")).await;

    // A bad file: refused with the file and line named; the old rules stay.
    write_atomically(&acl, "user alice\ntopic raed a/x\n");
    let out = reloader.reload();
    applied().await;
    assert!(
        out.errors.iter().any(|e| e.contains("acl: line 2: access `raed`")),
        "{:?}",
        out.errors
    );
    carol.client.publish("a/y", Q5::AtMostOnce, false, "old rules").await.unwrap();
    assert_eq!(alice.next_publish("a/y under the old rules").await.payload, "old rules");

    // New rules: alice reads a/x only, writes nothing.
    write_atomically(&acl, "user alice\ntopic read a/x\nuser carol\ntopic readwrite #\n");
    let out = reloader.reload();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    applied().await;
    carol.client.publish("a/y", Q5::AtMostOnce, false, "denied now").await.unwrap();
    carol.client.publish("a/x", Q5::AtMostOnce, false, "marker").await.unwrap();
    assert_eq!(alice.next_publish("the marker").await.payload, "marker", "a/y not delivered");
    alice.client.publish("b/1", Q5::AtLeastOnce, false, "x").await.unwrap();
    loop {
        match alice.next_incoming("PUBACK").await.expect("connected") {
            P5::PubAck(p) => {
                assert_eq!(p.reason, PubAckReason::NotAuthorized, "judged by the new rules");
                break;
            }
            _ => continue,
        }
    }
    alice.kill();
    carol.kill();
    shutdown(b).await;
}
