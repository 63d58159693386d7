//! Enhanced authentication (SCRAM-SHA-256 over AUTH packets), re-authentication, plain
//! credentials against the users file, and server redirection, against an in-process broker
//! with two shards and clients homed on each.
//!
//! rumqttc 0.25 (the newest release) speaks MQTT 5 but has no AUTH support: it is used for
//! everything that ends at CONNACK (plain credentials, refusals, redirection). The AUTH
//! exchanges use the codec-speaking raw client with the engine's `ScramClient`, whose messages
//! are checked against RFC 7677's test vector in the unit tests (and the black-box suite
//! does the same exchange with Python's hashlib).

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{addr, broker_with, id_on_shard, shutdown, Raw, V5};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use rumqttc::v5::mqttbytes::QoS;
use shardmq_codec::{
    Auth, ByteStr, Packet, PacketId, Properties, ProtocolVersion, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use shardmq_engine::core::auth::scram::{ScramClient, METHOD};
use shardmq_engine::core::auth::users::{Credential, UserDb};
use shardmq_engine::core::auth::{AuthConfig, Redirect};
use shardmq_engine::io::BrokerHandle;

const SHARDS: u16 = 2;

fn broker() -> BrokerHandle {
    let mut users = UserDb::default();
    users.insert("alice", Credential::derive(b"wonderland", b"alice's salt", 4096));
    users.insert("bob", Credential::derive(b"builder", b"bob's salt", 4096));
    broker_with(SHARDS, |c| c.auth = AuthConfig::with_users(users, false, [5; 32]))
}

fn auth_packet(reason: ReasonCode, method: &str, data: Vec<u8>) -> Packet {
    let properties = Properties {
        authentication_method: Some(ByteStr::from(method)),
        authentication_data: Some(Bytes::from(data)),
        ..Properties::default()
    };
    Packet::Auth(Auth { reason, properties: Some(Box::new(properties)) })
}

/// (reason, Authentication Method, Authentication Data) of an AUTH or CONNACK.
fn auth_fields(p: &Packet) -> (ReasonCode, Option<String>, Bytes) {
    let (reason, props) = match p {
        Packet::Auth(a) => (a.reason, a.properties.as_deref()),
        Packet::ConnAck(c) => (c.reason, c.properties.as_deref()),
        other => panic!("expected AUTH or CONNACK, got {other:?}"),
    };
    let method = props.and_then(|p| p.authentication_method.as_ref()).map(|m| m.to_string());
    (reason, method, props.and_then(|p| p.authentication_data.clone()).unwrap_or_default())
}

/// One SCRAM exchange from client-first to the server's last word: returns it (CONNACK or
/// AUTH 0x00 on success) after checking the server signature when it succeeded.
async fn scram_exchange(raw: &mut Raw, client: &mut ScramClient, first: Packet) -> Packet {
    raw.send(&first).await;
    let challenge = raw.recv().await.expect("AUTH 0x18 with server-first");
    let (reason, method, server_first) = auth_fields(&challenge);
    assert_eq!(reason, ReasonCode::CONTINUE_AUTHENTICATION, "[MQTT-4.12.0-2]");
    assert_eq!(method.as_deref(), Some(METHOD), "[MQTT-4.12.0-5]");
    let fin = client.client_final(&server_first).expect("a well-formed server-first");
    raw.send(&auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, METHOD, fin)).await;
    let last = raw.recv().await.expect("the server's answer to client-final");
    if let Packet::Disconnect(_) = last {
        return last; // A failed re-authentication.
    }
    let (reason, method, data) = auth_fields(&last);
    if reason == ReasonCode::SUCCESS {
        assert_eq!(method.as_deref(), Some(METHOD), "[MQTT-4.12.0-5]");
        client.verify_server_final(&data).expect("the server proves it holds the credential");
    }
    last
}

/// A 5.0 CONNECT for `id` naming SCRAM-SHA-256 with `client`'s first message.
fn scram_connect_packet(id: &str, client: &ScramClient) -> Packet {
    let mut p = Raw::connect_packet(id, ProtocolVersion::V5, true);
    if let Packet::Connect(c) = &mut p {
        c.properties.authentication_method = Some(ByteStr::from(METHOD));
        c.properties.authentication_data = Some(Bytes::from(client.client_first()));
    }
    p
}

async fn scram_connect(a: SocketAddr, id: &str, user: &str, password: &str) -> (Raw, Packet) {
    let mut raw = Raw::open(a).await;
    raw.version = ProtocolVersion::V5;
    let mut client = ScramClient::new(user, password, &format!("nonce-{id}"));
    let first = scram_connect_packet(id, &client);
    let last = scram_exchange(&mut raw, &mut client, first).await;
    (raw, last)
}

/// Connects with rumqttc 5.0 and returns how its first connection attempt ended.
async fn rumqttc_v5_attempt(
    a: SocketAddr,
    id: &str,
    f: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> Result<(), rumqttc::v5::ConnectionError> {
    let mut o = rumqttc::v5::MqttOptions::new(id, a.ip().to_string(), a.port());
    f(&mut o);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    common::within("rumqttc's CONNACK", el.poll()).await.map(|_| ())
}

fn refused_with(r: Result<(), rumqttc::v5::ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients_on_both_shards_connect_and_exchange_messages() {
    let b = broker();
    let a = addr(&b);
    for shard in 0..SHARDS {
        let id = id_on_shard("scram", shard, SHARDS);
        let (mut raw, connack) = scram_connect(a, &id, "alice", "wonderland").await;
        let (reason, method, data) = auth_fields(&connack);
        assert_eq!((reason, method.as_deref()), (ReasonCode::SUCCESS, Some(METHOD)), "{id}");
        assert!(data.starts_with(b"v="));

        // The connection works: a rumqttc client authenticated with a plain password, homed
        // on the other shard, publishes to it.
        let topic = format!("auth/{id}");
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![(ByteStr::from(topic.as_str()), SubscriptionOptions::default())],
            properties: None,
        }))
        .await;
        assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
        let other = id_on_shard("plain", 1 - shard, SHARDS);
        let publisher = V5::connect(a, &other, |o| {
            o.set_credentials("bob", "builder");
        })
        .await;
        publisher.client.publish(topic.clone(), QoS::AtMostOnce, false, "hi").await.unwrap();
        match raw.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hi"),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }
        publisher.kill();
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_wrong_password_and_unknown_user_are_refused_with_0x86() {
    let b = broker();
    let a = addr(&b);
    for (shard, user, password) in [(0, "alice", "looking-glass"), (1, "mallory", "x")] {
        let id = id_on_shard("scram-bad", shard, SHARDS);
        let (mut raw, connack) = scram_connect(a, &id, user, password).await;
        assert!(matches!(&connack, Packet::ConnAck(_)), "{connack:?}");
        assert_eq!(auth_fields(&connack).0, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{user}");
        assert!(raw.until_closed().await.is_empty(), "[MQTT-4.12.0-4]: closed after CONNACK");
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_succeeds_then_a_failed_one_disconnects() {
    let b = broker();
    let a = addr(&b);
    for shard in 0..SHARDS {
        let id = id_on_shard("reauth", shard, SHARDS);
        let (mut raw, connack) = scram_connect(a, &id, "alice", "wonderland").await;
        assert_eq!(auth_fields(&connack).0, ReasonCode::SUCCESS);

        // [MQTT-4.12.1-1]: AUTH 0x19 with the same method; success is AUTH 0x00.
        let mut again = ScramClient::new("alice", "wonderland", "second-nonce");
        let first = auth_packet(ReasonCode::RE_AUTHENTICATE, METHOD, again.client_first());
        let done = scram_exchange(&mut raw, &mut again, first).await;
        assert!(matches!(&done, Packet::Auth(_)), "{done:?}");
        assert_eq!(auth_fields(&done).0, ReasonCode::SUCCESS);
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Some(Packet::PingResp), "still connected");

        // [MQTT-4.12.1-2]: a failed re-authentication ends in DISCONNECT and a close.
        let mut wrong = ScramClient::new("alice", "not-it", "third-nonce");
        let first = auth_packet(ReasonCode::RE_AUTHENTICATE, METHOD, wrong.client_first());
        let last = scram_exchange(&mut raw, &mut wrong, first).await;
        match last {
            Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        assert!(raw.until_closed().await.is_empty());
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_with_another_method_is_a_protocol_error() {
    let b = broker();
    let (mut raw, _) = scram_connect(addr(&b), "reauth-other", "alice", "wonderland").await;
    raw.send(&auth_packet(ReasonCode::RE_AUTHENTICATE, "SCRAM-SHA-1", b"n,,n=a,r=x".to_vec()))
        .await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
    assert!(raw.until_closed().await.is_empty());
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_other_than_auth_during_the_exchange_is_a_protocol_error() {
    let b = broker();
    let mut raw = Raw::open(addr(&b)).await;
    raw.version = ProtocolVersion::V5;
    let client = ScramClient::new("alice", "wonderland", "n");
    raw.send(&scram_connect_packet("early-ping", &client)).await;
    assert!(matches!(raw.recv().await, Some(Packet::Auth(_))));
    raw.send(&Packet::PingReq).await; // [MQTT-3.1.2-30]
    match raw.recv().await {
        Some(Packet::ConnAck(c)) => assert_eq!(c.reason, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected CONNACK 0x82, got {other:?}"),
    }
    assert!(raw.until_closed().await.is_empty());
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_plain_credentials_are_checked_against_the_users_file() {
    let b = broker();
    let a = addr(&b);
    for shard in 0..SHARDS {
        let id = id_on_shard("rumqttc", shard, SHARDS);
        let ok = rumqttc_v5_attempt(a, &id, |o| {
            o.set_credentials("alice", "wonderland");
        });
        ok.await.expect("right password");
        let wrong = rumqttc_v5_attempt(a, &id, |o| {
            o.set_credentials("alice", "nope");
        });
        assert_eq!(refused_with(wrong.await), ConnectReturnCode::BadUserNamePassword);
        let anonymous = rumqttc_v5_attempt(a, &id, |_| {});
        assert_eq!(refused_with(anonymous.await), ConnectReturnCode::NotAuthorized);
        // [MQTT-4.12.0-1]: a method the broker does not offer.
        let unknown = rumqttc_v5_attempt(a, &id, |o| {
            o.set_authentication_method(Some("GS2-KRB5".into()));
        });
        assert_eq!(refused_with(unknown.await), ConnectReturnCode::BadAuthenticationMethod);
    }
    // 3.1.1: return code 4 (bad user name or password) and 5 (not authorised).
    for (creds, want) in [
        (Some(("bob", "wrong")), rumqttc::ConnectReturnCode::BadUserNamePassword),
        (None, rumqttc::ConnectReturnCode::NotAuthorized),
    ] {
        let mut o = rumqttc::MqttOptions::new("v311-plain", a.ip().to_string(), a.port());
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
        match common::within("CONNACK", el.poll()).await {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => assert_eq!(code, want),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirection_sends_clients_elsewhere() {
    for (permanent, code, reason) in [
        (false, ConnectReturnCode::UseAnotherServer, ReasonCode::USE_ANOTHER_SERVER),
        (true, ConnectReturnCode::ServerMoved, ReasonCode::SERVER_MOVED),
    ] {
        let b = broker_with(SHARDS, |c| {
            let server_reference = "mqtt2.example:1883".to_string();
            c.auth.redirect = Some(Redirect { server_reference, permanent });
        });
        let a = addr(&b);
        for shard in 0..SHARDS {
            let id = id_on_shard("moved", shard, SHARDS);
            assert_eq!(refused_with(rumqttc_v5_attempt(a, &id, |_| {}).await), code);
            // The Server Reference names where to go (§4.11).
            let mut raw = Raw::open(a).await;
            raw.version = ProtocolVersion::V5;
            raw.send(&Raw::connect_packet(&id, ProtocolVersion::V5, true)).await;
            match raw.recv().await {
                Some(Packet::ConnAck(c)) => {
                    assert_eq!(c.reason, reason);
                    let r = c.properties.and_then(|p| p.server_reference);
                    assert_eq!(r.as_deref(), Some("mqtt2.example:1883"));
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
            assert!(raw.until_closed().await.is_empty());
            // 3.1.1 cannot name a server: return code 3, server unavailable.
            let o = rumqttc::MqttOptions::new(id.clone(), a.ip().to_string(), a.port());
            let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
            match common::within("CONNACK", el.poll()).await {
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable)
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        shutdown(b).await;
    }
}
