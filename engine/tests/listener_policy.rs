//! Per-listener policy (`[[listener]]` `password_file`, `acl_file`, `max_connections`;
//! Mosquitto's `per_listener_settings true`) with rumqttc clients against an in-process
//! broker of two shards: a user valid on one listener is refused on the other, a grant on one
//! is denied on the other, a listener's connection quota, and a reload of one listener's ACL
//! while its clients are connected. `test_22_listener_policy.py` runs the same against
//! Mosquitto.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{id_on_shard, shutdown, V5};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS as Q5;
use shardmq_engine::config::Config;
use shardmq_engine::io::control::ControlMsg;
use shardmq_engine::io::BrokerHandle;
use shardmq_engine::reload::Reloader;

const SHARDS: u16 = 2;

/// `mosquitto_passwd` 2.0.11 output: alice/wonderland, "bob smith"/"s3cret pw".
const ALICE: &str = "alice:$7$101$61ayJXSMSfTkGE9p$jicI6lMRIIgiLu/iVYTYTtrYa8TvuJbK5bK9qvyYRJ7m6PoibwEnijCsMmHURP5NT4CxJH7kZxe8LwTLGC59HQ==\n";
const BOB: &str = "bob smith:$7$101$iFjBzw5T9z4yuswK$MOwewFGH8R519rd6qEY6+ZxYao9sa7A4/l54FO/kUkXkZCRKZJyAP9XFH1IUpOStgLuJzwGUw5JYB+uXBiXw5g==\n";

/// Listener 0 ("inside"): alice and bob, alice may read and write `a/#`. Listener 1
/// ("public"): alice only, reading `pub/#`; at most two clients. A global password file
/// with bob only is not consulted by either listener.
struct Setup {
    dir: PathBuf,
    config: Config,
}

fn setup(name: &str) -> Setup {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("listener-policy-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let w = |f: &str, text: &str| {
        std::fs::write(dir.join(f), text).unwrap();
        dir.join(f).to_str().unwrap().to_owned()
    };
    let inside_pw = w("inside.passwd", &format!("{ALICE}{BOB}"));
    let public_pw = w("public.passwd", ALICE);
    let global_pw = w("global.passwd", BOB);
    let inside_acl =
        w("inside.acl", "user alice\ntopic readwrite a/#\nuser bob smith\ntopic readwrite #\n");
    let public_acl = w("public.acl", "user alice\ntopic read pub/#\n");
    let toml = format!(
        "shards = {SHARDS}\nno_pin = true\n\
         [[listener]]\nurl = \"127.0.0.1:0\"\npassword_file = {inside_pw:?}\nacl_file = {inside_acl:?}\n\
         [[listener]]\nurl = \"127.0.0.1:0\"\npassword_file = {public_pw:?}\nacl_file = {public_acl:?}\n\
         max_connections = 2\n\
         [auth]\npassword_file = {global_pw:?}\n"
    );
    let file = w("shardmq.toml", &toml);
    let config = Config::try_parse_from(["shardmq", "--config", &file, "--in-memory"]).unwrap();
    Setup { dir, config }
}

fn start(s: &Setup) -> (BrokerHandle, SocketAddr, SocketAddr) {
    let b = shardmq_engine::io::Broker::start(&s.config).unwrap();
    let (inside, public) = (b.local_addrs()[0], b.local_addrs()[1]);
    (b, inside, public)
}

fn as_user(user: &'static str, pw: &'static str) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    move |o| {
        o.set_credentials(user, pw);
    }
}

/// How a 5.0 CONNECT as `user` ends (debug text of rumqttc's first event).
async fn attempt(a: SocketAddr, id: &str, user: &str, pw: &str) -> String {
    let mut o = rumqttc::v5::MqttOptions::new(id, a.ip().to_string(), a.port());
    o.set_credentials(user, pw);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    format!("{:?}", common::within("rumqttc's CONNACK", el.poll()).await)
}

async fn suback(c: &mut V5) -> Vec<SubscribeReasonCode> {
    loop {
        if let P5::SubAck(a) = c.next_incoming("SUBACK").await.expect("connected") {
            return a.return_codes;
        }
    }
}

async fn puback(c: &mut V5) -> PubAckReason {
    loop {
        if let P5::PubAck(p) = c.next_incoming("PUBACK").await.expect("connected") {
            return p.reason;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_has_its_own_users_and_rules() {
    let s = setup("own");
    let (b, inside, public) = start(&s);
    // Bob is in the inside listener's file and in the global one, not in the public one's:
    // the public listener checks its own file only.
    assert!(attempt(public, "bob-p", "bob smith", "s3cret pw")
        .await
        .contains("BadUserNamePassword"));
    assert!(attempt(public, "anon-p", "", "").await.contains("Refused"), "no anonymous there");
    for shard in 0..SHARDS {
        // The home shard of some ids is not the accepting one: the connection is handed
        // over and keeps its listener's rules.
        let mut in_alice = V5::connect(
            inside,
            &id_on_shard("in-alice", shard, SHARDS),
            as_user("alice", "wonderland"),
        )
        .await;
        let mut pub_alice = V5::connect(
            public,
            &id_on_shard("pub-alice", shard, SHARDS),
            as_user("alice", "wonderland"),
        )
        .await;
        // The inside listener grants a/#; the public one denies it (SUBACK 0x87).
        in_alice.client.subscribe("a/#", Q5::AtLeastOnce).await.unwrap();
        assert_eq!(suback(&mut in_alice).await, [SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
        pub_alice.client.subscribe("a/#", Q5::AtLeastOnce).await.unwrap();
        assert_eq!(suback(&mut pub_alice).await, [SubscribeReasonCode::NotAuthorized]);
        // Writing a/x: granted inside, 0x87 on the public listener.
        pub_alice.client.publish("a/x", Q5::AtLeastOnce, false, "public").await.unwrap();
        assert_eq!(puback(&mut pub_alice).await, PubAckReason::NotAuthorized);
        in_alice.client.publish("a/x", Q5::AtLeastOnce, false, "inside").await.unwrap();
        assert_eq!(in_alice.next_publish("a/x from inside").await.payload, "inside");
        in_alice.kill();
        pub_alice.kill();
    }
    shutdown(b).await;
    std::fs::remove_dir_all(&s.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_refuses_past_its_max_connections() {
    let s = setup("max");
    let (b, inside, public) = start(&s);
    let ids: Vec<String> =
        (0..3).map(|i| id_on_shard(&format!("m{i}"), i % SHARDS, SHARDS)).collect();
    let first = V5::connect(public, &ids[0], as_user("alice", "wonderland")).await;
    let second = V5::connect(public, &ids[1], as_user("alice", "wonderland")).await;
    // The third on the public listener, whichever shard: 0x97 Quota exceeded.
    let r = attempt(public, &ids[2], "alice", "wonderland").await;
    assert!(r.contains("QuotaExceeded"), "{r}");
    // The other listener has no quota.
    let other = V5::connect(inside, "inside-extra", as_user("alice", "wonderland")).await;
    // A client that leaves frees its slot: the next attempt succeeds once the broker has
    // seen the close (retried until then; every refusal is a quota refusal).
    first.kill();
    let r = common::within("a freed slot", async {
        loop {
            let r = attempt(public, &ids[2], "alice", "wonderland").await;
            if !r.contains("QuotaExceeded") {
                return r;
            }
        }
    })
    .await;
    assert!(r.contains("ConnAck") && r.contains("Success"), "{r}");
    second.kill();
    other.kill();
    shutdown(b).await;
    std::fs::remove_dir_all(&s.dir).ok();
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_one_listeners_acl_applies_to_its_connected_clients() {
    let s = setup("reload");
    let (b, inside, public) = start(&s);
    let reloader = Reloader::new(s.config.clone(), b.control());
    let applied = || async {
        for r in b.control().ask_all(|_| ControlMsg::Ping).await {
            r.expect("shard answers");
        }
    };
    let mut pub_alice =
        V5::connect(public, &id_on_shard("rl-pub", 1, SHARDS), as_user("alice", "wonderland"))
            .await;
    pub_alice.subscribe("pub/#", Q5::AtMostOnce).await;
    let mut in_bob =
        V5::connect(inside, &id_on_shard("rl-bob", 0, SHARDS), as_user("bob smith", "s3cret pw"))
            .await;
    in_bob.subscribe("pub/#", Q5::AtMostOnce).await;

    // A bad public ACL: the reload names it and every listener keeps its rules.
    let public_acl = s.dir.join("public.acl");
    write_atomically(&public_acl, "user alice\ntopic raed pub/#\n");
    let out = reloader.reload();
    applied().await;
    assert!(out.errors.iter().any(|e| e.contains("public.acl: line 2")), "{:?}", out.errors);
    in_bob.client.publish("pub/1", Q5::AtMostOnce, false, "old rules").await.unwrap();
    assert_eq!(pub_alice.next_publish("pub/1 under the old rules").await.payload, "old rules");
    assert_eq!(in_bob.next_publish("bob's own pub/1").await.payload, "old rules");

    // New public rules: alice reads pub/open only, and may write pub/out.
    write_atomically(&public_acl, "user alice\ntopic read pub/open\ntopic write pub/out\n");
    let out = reloader.reload();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    applied().await;
    in_bob.client.publish("pub/2", Q5::AtMostOnce, false, "denied now").await.unwrap();
    in_bob.client.publish("pub/open", Q5::AtMostOnce, false, "marker").await.unwrap();
    assert_eq!(pub_alice.next_publish("the marker").await.payload, "marker", "pub/2 not delivered");
    // Her next PUBLISH is judged by the new rules; bob's listener did not change.
    pub_alice.client.publish("pub/out", Q5::AtLeastOnce, false, "from alice").await.unwrap();
    assert_eq!(puback(&mut pub_alice).await, PubAckReason::Success);
    let got: Vec<_> = [in_bob.next_publish("pub/2").await, in_bob.next_publish("pub/open").await]
        .into_iter()
        .map(|p| p.payload)
        .collect();
    assert_eq!(got, ["denied now", "marker"], "the inside listener's rules are unchanged");
    assert_eq!(in_bob.next_publish("alice's pub/out").await.payload, "from alice");
    pub_alice.kill();
    in_bob.kill();
    shutdown(b).await;
    std::fs::remove_dir_all(&s.dir).ok();
}

/// With a listener that checks no credentials next to one that does, a user name on the
/// unchecked listener is nobody's: a client there sending alice's name (and no password) is
/// anonymous, so it cannot take over the persistent session alice made on the checked
/// listener (5.0 CONNACK 0x87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchecked_user_name_cannot_claim_a_verified_users_session() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("listener-policy-unchecked");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("checked.passwd");
    std::fs::write(&pw, ALICE).unwrap();
    let toml = format!(
        "shards = {SHARDS}\nno_pin = true\n\
         [[listener]]\nurl = \"127.0.0.1:0\"\nallow_anonymous = true\n\
         [[listener]]\nurl = \"127.0.0.1:0\"\npassword_file = {:?}\n",
        pw.to_str().unwrap()
    );
    let file = dir.join("shardmq.toml");
    std::fs::write(&file, toml).unwrap();
    let config =
        Config::try_parse_from(["shardmq", "--config", file.to_str().unwrap(), "--in-memory"])
            .unwrap();
    let b = shardmq_engine::io::Broker::start(&config).unwrap();
    let (open, checked) = (b.local_addrs()[0], b.local_addrs()[1]);
    for shard in 0..SHARDS {
        let id = id_on_shard("alice-laptop", shard, SHARDS);
        let alice = V5::connect(checked, &id, |o| {
            o.set_credentials("alice", "wonderland");
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(600));
        })
        .await;
        alice.kill();
        let outcome = attempt(open, &id, "alice", "").await;
        assert!(outcome.contains("NotAuthorized"), "an unchecked name took the session: {outcome}");
        // Alice herself still resumes it.
        let back = attempt(checked, &id, "alice", "wonderland").await;
        assert!(back.contains("Success"), "{back}");
    }
    shutdown(b).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Per-listener files apply to the running listeners by position: a reload after a
/// `[[listener]]` table was added in front (which takes a restart) must not give the public
/// listener the inside one's files. It reports the change and keeps every listener's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_listeners_changed_keeps_their_rules() {
    let s = setup("reorder");
    let (b, _inside, public) = start(&s);
    let reloader = Reloader::new(s.config.clone(), b.control());
    let file = s.dir.join("shardmq.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // A new open listener first: the public listener's files would now be the inside one's.
    let first = text.find("[[listener]]").unwrap();
    let added = format!(
        "{}[[listener]]\nurl = \"127.0.0.1:0\"\nallow_anonymous = true\n{}",
        &text[..first],
        &text[first..]
    );
    write_atomically(&file, &added);
    let out = reloader.reload();
    assert!(out.restart_needed.contains(&"listen"), "{out:?}");
    assert!(out.errors.iter().any(|e| e.contains("listen changed")), "{out:?}");
    for r in b.control().ask_all(|_| ControlMsg::Ping).await {
        r.expect("shard answers");
    }
    // Bob is still unknown on the public listener (its own file has alice only).
    let bob = attempt(public, "reorder-bob", "bob smith", "s3cret pw").await;
    assert!(bob.contains("BadUserNamePassword"), "the public listener took other files: {bob}");
    shutdown(b).await;
    std::fs::remove_dir_all(&s.dir).ok();
}
