//! The connection side of authentication, driven through `ShardCore` without IO.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, Auth, ByteStr, Connect, Packet, Properties, ProtocolVersion, ReasonCode,
};

use crate::core::auth::scram::{ScramClient, METHOD};
use crate::core::auth::users::{Credential, UserDb};
use crate::core::auth::{AuthConfig, Redirect};
use crate::core::ids::{ConnId, ShardId};
use crate::core::limits::Limits;
use crate::core::shard::{CoreConfig, GlobalStats, IoAction, ShardCore};
use crate::core::ConnInfo;

fn users() -> UserDb {
    let mut db = UserDb::default();
    db.insert("alice", Credential::derive(b"wonderland", b"0123456789abcdef", 4096));
    db.insert("bob", Credential::derive(b"builder", b"fedcba9876543210", 4096));
    db
}

fn core_with(auth: AuthConfig) -> (ShardCore, Instant) {
    let now = Instant::now();
    let config = CoreConfig {
        limits: Limits::default(),
        shard_count: 1,
        sys_interval_secs: 10,
        stats: Arc::new(GlobalStats::new(1)),
        started_at: now,
        auth,
        fault_panic_topic: None,
        hash_keys: crate::core::hash::HashKeys::default(),
        cluster: None,
    };
    (ShardCore::new(ShardId(0), config), now)
}

fn core() -> (ShardCore, Instant) {
    core_with(AuthConfig::with_users(users(), false, [9; 32]))
}

fn connect(
    version: ProtocolVersion,
    user: Option<(&str, &str)>,
    method: Option<&str>,
    data: Option<Vec<u8>>,
) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: ByteStr::from("c1"),
        will: None,
        username: user.map(|(u, _)| ByteStr::from(u)),
        password: user.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties {
            authentication_method: method.map(ByteStr::from),
            authentication_data: data.map(Bytes::from),
            ..Properties::default()
        },
    }))
}

fn auth(reason: u8, method: &str, data: Option<Vec<u8>>) -> Packet {
    Packet::Auth(Auth {
        reason: ReasonCode(reason),
        properties: Some(Box::new(Properties {
            authentication_method: Some(ByteStr::from(method)),
            authentication_data: data.map(Bytes::from),
            ..Properties::default()
        })),
    })
}

/// Everything queued on `conn`, decoded, and whether the core asked to close it.
fn output(core: &mut ShardCore, conn: ConnId, version: ProtocolVersion) -> (Vec<Packet>, bool) {
    let mut closed = false;
    while let Some(a) = core.poll_action() {
        closed |= a == IoAction::Close(conn);
    }
    let mut chunks = Vec::new();
    if let Some(tx) = core.tx(conn) {
        tx.take_all(&mut chunks);
    }
    let mut buf = BytesMut::from(&chunks.concat()[..]);
    let mut packets = Vec::new();
    let limits = shardmq_codec::Limits { packet_size_max_bytes: 1 << 20 };
    while let Some(p) = decode(&mut buf, &limits, version).expect("the core encodes well") {
        packets.push(p);
    }
    (packets, closed)
}

fn auth_data(p: &Packet) -> (u8, Option<String>, Bytes) {
    let (reason, props) = match p {
        Packet::Auth(a) => (a.reason.0, a.properties.as_deref()),
        Packet::ConnAck(c) => (c.reason.0, c.properties.as_deref()),
        other => panic!("expected AUTH or CONNACK, got {other:?}"),
    };
    let method = props.and_then(|p| p.authentication_method.as_ref()).map(|m| m.to_string());
    let data = props.and_then(|p| p.authentication_data.clone()).unwrap_or_default();
    (reason, method, data)
}

/// Runs a SCRAM exchange to CONNACK; returns the connection and the client.
fn scram_connect(core: &mut ShardCore, now: Instant, password: &str) -> (ConnId, Packet, bool) {
    let v5 = ProtocolVersion::V5;
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    let mut client = ScramClient::new("alice", password, "cnonce");
    core.handle_packet(conn, connect(v5, None, Some(METHOD), Some(client.client_first())), now);
    let (out, closed) = output(core, conn, v5);
    assert!(!closed);
    let (reason, method, first) = auth_data(&out[0]);
    assert_eq!((reason, method.as_deref()), (0x18, Some(METHOD)), "[MQTT-4.12.0-2/5]");
    let fin = client.client_final(&first).unwrap();
    core.handle_packet(conn, auth(0x18, METHOD, Some(fin)), now);
    let (out, closed) = output(core, conn, v5);
    assert_eq!(out.len(), 1, "{out:?}");
    if let (0, _, data) = auth_data(&out[0]) {
        client.verify_server_final(&data).expect("the server proves it knows the credential");
    }
    (conn, out[0].clone(), closed)
}

#[test]
fn scram_exchange_ends_in_connack_with_method_and_server_final() {
    let (mut core, now) = core();
    let (conn, connack, closed) = scram_connect(&mut core, now, "wonderland");
    assert!(!closed);
    let (reason, method, data) = auth_data(&connack);
    assert_eq!((reason, method.as_deref()), (0, Some(METHOD)));
    assert!(data.starts_with(b"v="));
    assert_eq!(core.sessions.len(), 1);
    core.handle_packet(conn, Packet::PingReq, now);
    assert_eq!(output(&mut core, conn, ProtocolVersion::V5).0, [Packet::PingResp]);
}

#[test]
fn wrong_password_is_refused_with_0x86_and_closed() {
    let (mut core, now) = core();
    let (_, connack, closed) = scram_connect(&mut core, now, "looking-glass");
    assert_eq!(auth_data(&connack).0, 0x86);
    assert!(closed, "[MQTT-4.12.0-4]");
    assert_eq!(core.sessions.len(), 0);
}

#[test]
fn other_packets_during_the_exchange_are_a_protocol_error() {
    let v5 = ProtocolVersion::V5;
    for packet in [Packet::PingReq, auth(0x19, METHOD, None), auth(0x18, "OTHER", None)] {
        let (mut core, now) = core();
        let conn = core.open_connection(ConnInfo::default(), now).unwrap();
        let first = ScramClient::new("alice", "x", "n").client_first();
        core.handle_packet(conn, connect(v5, None, Some(METHOD), Some(first)), now);
        output(&mut core, conn, v5);
        core.handle_packet(conn, packet.clone(), now);
        let (out, closed) = output(&mut core, conn, v5);
        assert_eq!(auth_data(&out[0]).0, 0x82, "{packet:?}: [MQTT-3.1.2-30], [MQTT-4.12.0-3/5]");
        assert!(closed);
    }
}

/// (version, user name and password, Authentication Method, expected CONNACK code).
type Case<'a> = (ProtocolVersion, Option<(&'a str, &'a str)>, Option<&'a str>, u8);

#[test]
fn unknown_method_and_plain_credentials() {
    let v5 = ProtocolVersion::V5;
    let v311 = ProtocolVersion::V3_1_1;
    let cases: [Case<'_>; 6] = [
        (v5, None, Some("GS2-KRB5"), 0x8C), // [MQTT-4.12.0-1]
        (v5, Some(("alice", "wonderland")), None, 0x00),
        (v5, Some(("alice", "nope")), None, 0x86),
        (v5, None, None, 0x87), // anonymous refused with a users file
        (v311, Some(("alice", "nope")), None, 4),
        (v311, None, None, 5),
    ];
    for (version, user, method, want) in cases {
        let (mut core, now) = core();
        let conn = core.open_connection(ConnInfo::default(), now).unwrap();
        core.handle_packet(conn, connect(version, user, method, None), now);
        let (out, closed) = output(&mut core, conn, version);
        let Packet::ConnAck(a) = &out[0] else { panic!("{out:?}") };
        let code = if version.is_v5() { a.reason.0 } else { a.reason.to_v3_connack() };
        assert_eq!(code, want, "{version:?} {user:?} {method:?}");
        assert_eq!(closed, want != 0);
        // [MQTT-4.12.0-6]: no Authentication Method in CONNACK without one in CONNECT.
        assert!(a.properties.as_ref().is_none_or(|p| p.authentication_method.is_none()));
    }
}

#[test]
fn reauthentication_succeeds_then_fails_with_disconnect() {
    let v5 = ProtocolVersion::V5;
    let (mut core, now) = core();
    let (conn, _, _) = scram_connect(&mut core, now, "wonderland");
    for (password, ok) in [("wonderland", true), ("wrong", false)] {
        let mut client = ScramClient::new("alice", password, "again");
        core.handle_packet(conn, auth(0x19, METHOD, Some(client.client_first())), now);
        let (out, _) = output(&mut core, conn, v5);
        let (reason, method, first) = auth_data(&out[0]);
        assert_eq!((reason, method.as_deref()), (0x18, Some(METHOD)));
        let fin = client.client_final(&first).unwrap();
        core.handle_packet(conn, auth(0x18, METHOD, Some(fin)), now);
        let (out, closed) = output(&mut core, conn, v5);
        if ok {
            let (reason, method, data) = auth_data(&out[0]);
            assert_eq!((reason, method.as_deref()), (0, Some(METHOD)));
            client.verify_server_final(&data).unwrap();
            assert!(!closed);
        } else {
            // [MQTT-4.12.1-2]; 0x86 is not a DISCONNECT code, so 0x87.
            let Packet::Disconnect(d) = &out[0] else { panic!("{out:?}") };
            assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED);
            assert!(closed);
        }
    }
}

#[test]
fn reauthentication_protocol_errors() {
    let v5 = ProtocolVersion::V5;
    // A different method [MQTT-4.12.1-1], 0x18 outside an exchange, 0x00 from the client.
    for packet in [auth(0x19, "OTHER", None), auth(0x18, METHOD, None), auth(0x00, METHOD, None)] {
        let (mut core, now) = core();
        let (conn, _, _) = scram_connect(&mut core, now, "wonderland");
        core.handle_packet(conn, packet.clone(), now);
        let (out, closed) = output(&mut core, conn, v5);
        let Packet::Disconnect(d) = &out[0] else { panic!("{out:?}") };
        assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR, "{packet:?}");
        assert!(closed);
    }
    // [MQTT-4.12.0-7]: no method in CONNECT, no AUTH.
    let (mut core, now) = core();
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    core.handle_packet(conn, connect(v5, Some(("alice", "wonderland")), None, None), now);
    output(&mut core, conn, v5);
    core.handle_packet(conn, auth(0x19, METHOD, None), now);
    let (out, closed) = output(&mut core, conn, v5);
    assert!(matches!(&out[0], Packet::Disconnect(d) if d.reason == ReasonCode::PROTOCOL_ERROR));
    assert!(closed);
}

#[test]
fn redirection_names_the_server_for_v5_and_is_server_unavailable_for_v311() {
    for (permanent, code) in [(false, 0x9C), (true, 0x9D)] {
        let redirect = Redirect { server_reference: "other:1883".into(), permanent };
        let (mut core, now) =
            core_with(AuthConfig { redirect: Some(redirect), ..AuthConfig::default() });
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let conn = core.open_connection(ConnInfo::default(), now).unwrap();
            core.handle_packet(conn, connect(version, None, None, None), now);
            let (out, closed) = output(&mut core, conn, version);
            let Packet::ConnAck(a) = &out[0] else { panic!("{out:?}") };
            assert!(closed);
            if version.is_v5() {
                assert_eq!(a.reason.0, code);
                let reference = a.properties.as_ref().and_then(|p| p.server_reference.clone());
                assert_eq!(reference.as_deref(), Some("other:1883"));
            } else {
                assert_eq!(a.reason.to_v3_connack(), 3);
            }
        }
        assert_eq!(core.sessions.len(), 0);
    }
}

#[test]
fn reauthentication_as_another_user_disconnects() {
    let v5 = ProtocolVersion::V5;
    let (mut core, now) = core();
    let (conn, _, _) = scram_connect(&mut core, now, "wonderland");
    let mut bob = ScramClient::new("bob", "builder", "b");
    core.handle_packet(conn, auth(0x19, METHOD, Some(bob.client_first())), now);
    let (out, _) = output(&mut core, conn, v5);
    let fin = bob.client_final(&auth_data(&out[0]).2).unwrap();
    core.handle_packet(conn, auth(0x18, METHOD, Some(fin)), now);
    let (out, closed) = output(&mut core, conn, v5);
    assert!(matches!(&out[0], Packet::Disconnect(d) if d.reason == ReasonCode::NOT_AUTHORIZED));
    assert!(closed, "a connection keeps the identity it connected with");
}

#[test]
fn plain_password_checks_past_the_budget_get_server_busy() {
    let mut auth = AuthConfig::with_users(users(), false, [9; 32]);
    auth.password_rounds_per_sec = 4096; // One check of a 4096-round entry a second.
    let (mut core, now) = core_with(auth);
    let mut codes = Vec::new();
    for (version, password) in [
        (ProtocolVersion::V5, "wonderland"),
        (ProtocolVersion::V5, "nope"),
        (ProtocolVersion::V3_1_1, "nope"),
        (ProtocolVersion::V5, "wonderland"),
    ] {
        let conn = core.open_connection(ConnInfo::default(), now).unwrap();
        core.handle_packet(conn, connect(version, Some(("alice", password)), None, None), now);
        let (out, _) = output(&mut core, conn, version);
        let Packet::ConnAck(a) = &out[0] else { panic!("{out:?}") };
        codes.push(if version.is_v5() { a.reason.0 } else { a.reason.to_v3_connack() });
    }
    // The first check spends the second's budget; a new wrong password is then refused as
    // Server busy (3.1.1: 3, server unavailable) without deriving, while the password that
    // worked is answered from the cache.
    assert_eq!(codes, [0x00, 0x89, 3, 0x00]);
    assert_eq!(core.password_checks.derivations_count, 1);
}

/// `--tls-identity-as-username`: the certificate's CN is the user name, no password is
/// checked (not even a wrong one against the users file); without a certificate, 0x87.
#[test]
fn identity_as_username_takes_the_certificate_cn_and_asks_no_password() {
    let (mut core, now) = core();
    let v5 = ProtocolVersion::V5;
    let info = |cn: Option<&str>| ConnInfo {
        transport: crate::core::Transport::Tls,
        cert_subject_cn: cn.map(str::to_owned),
        identity_as_username: true,
        ..ConnInfo::default()
    };
    let conn = core.open_connection(info(Some("device-7")), now).unwrap();
    core.handle_packet(conn, connect(v5, Some(("alice", "not-her-password")), None, None), now);
    let (out, closed) = output(&mut core, conn, v5);
    assert!(matches!(&out[..], [Packet::ConnAck(a)] if a.reason.0 == 0), "{out:?}");
    assert!(!closed);
    assert_eq!(core.conn_info(conn).unwrap().cert_subject_cn.as_deref(), Some("device-7"));

    let conn = core.open_connection(info(None), now).unwrap();
    core.handle_packet(conn, connect(v5, Some(("alice", "wonderland")), None, None), now);
    let (out, closed) = output(&mut core, conn, v5);
    assert!(matches!(&out[..], [Packet::ConnAck(a)] if a.reason.0 == 0x87), "{out:?}");
    assert!(closed);

    // Without the listener setting, a certificate changes nothing: the password is checked.
    let plain = ConnInfo { identity_as_username: false, ..info(Some("alice")) };
    let conn = core.open_connection(plain, now).unwrap();
    core.handle_packet(conn, connect(v5, None, None, None), now);
    let (out, _) = output(&mut core, conn, v5);
    assert!(matches!(&out[..], [Packet::ConnAck(a)] if a.reason.0 == 0x87), "{out:?}");
}
