//! Unit tests of `shard.rs` (ShardCore basics, back-pressure across shards).

use super::*;
use shardmq_codec::{Connect, DecodeError, Properties};

fn core(shard_count: u16) -> (ShardCore, Instant) {
    let now = Instant::now();
    let config = CoreConfig {
        limits: Limits { mesh_outbox_messages_max: 10, ..Limits::default() },
        shard_count,
        sys_interval_secs: 10,
        stats: Arc::new(GlobalStats::new(shard_count)),
        started_at: now,
        auth: AuthConfig::default(),
        fault_panic_topic: None,
        hash_keys: HashKeys::default(),
        cluster: None,
    };
    (ShardCore::new(ShardId(0), config), now)
}

fn connect(id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: ByteStr::from(id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

#[test]
fn back_pressure_is_shared_with_the_other_shards() {
    let (mut core, now) = core(3);
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    let pause = core.config.limits.connection_tx_bytes_pause as usize;
    core.tx(conn).unwrap().push_copy(&vec![0u8; pause + 1]);
    assert!(core.publishing_paused(), "a connection past its pause mark");
    assert!(core.pressure_dirty());
    core.sync_pressure();
    let mut out = Vec::new();
    core.drain_mesh_out(&mut out);
    let told: Vec<_> =
        out.iter().map(|(to, m)| (to.0, matches!(m, MeshMsg::Pressure { paused: true }))).collect();
    assert_eq!(told, [(1, true), (2, true)]);
    core.tx(conn).unwrap().consume(pause + 1);
    assert!(!core.publishing_paused());
    core.sync_pressure();
    core.drain_mesh_out(&mut out);
    assert!(out[2..].iter().all(|(_, m)| matches!(m, MeshMsg::Pressure { paused: false })));
    assert_eq!(out.len(), 4);

    // A peer's pause holds this shard's publishers too, until it says otherwise.
    core.handle_mesh(ShardId(2), MeshMsg::Pressure { paused: true }, now);
    assert!(core.publishing_paused());
    assert!(!core.pressure_dirty(), "a peer's pause is not re-broadcast");
    core.handle_mesh(ShardId(2), MeshMsg::Pressure { paused: false }, now);
    assert!(!core.publishing_paused());
}

#[test]
fn home_shard_is_stable() {
    // FNV-1a of "" is the offset basis; the log depends on these values never changing.
    assert_eq!(ShardCore::home_shard(b"", 7), ShardId((0xcbf2_9ce4_8422_2325u64 % 7) as u16));
    assert_eq!(ShardCore::home_shard(b"anything", 1), ShardId(0));
}

#[test]
fn will_payload_not_utf8_is_refused_with_connack_0x99() {
    // 5.0 §3.1.3.2.3: CONNACK 0x99 (Payload format invalid), then close.
    let (mut core, now) = core(1);
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    core.handle_decode_error(conn, DecodeError::PayloadFormatInvalid, now);
    let mut out = Vec::new();
    core.tx(conn).unwrap().take_all(&mut out);
    assert_eq!(out.concat(), [0x20, 0x03, 0x00, 0x99, 0x00]);
    assert!(std::iter::from_fn(|| core.poll_action()).any(|a| a == IoAction::Close(conn)));
}

#[test]
fn a_decode_error_without_a_disconnect_code_disconnects_with_0x82() {
    // A second CONNECT with an unknown protocol name maps to 0x84, which DISCONNECT cannot
    // carry (5.0 §3.14.2.1): 0x82, a second CONNECT being a Protocol Error [MQTT-3.1.0-2].
    let (mut core, now) = core(1);
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    let Packet::Connect(mut c) = connect("c") else { unreachable!() };
    c.protocol = ProtocolVersion::V5;
    core.handle_packet(conn, Packet::Connect(c), now);
    let mut out = Vec::new();
    core.tx(conn).unwrap().take_all(&mut out);
    core.handle_decode_error(conn, DecodeError::ProtocolNameInvalid, now);
    out.clear();
    core.tx(conn).unwrap().take_all(&mut out);
    assert_eq!(out.concat(), [0xE0, 0x02, 0x82, 0x00]);
}

#[test]
fn one_flush_per_empty_to_non_empty_transition() {
    let (mut core, now) = core(1);
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    assert_eq!(core.protocol_version(conn), None);
    core.handle_packet(conn, connect("c"), now);
    assert_eq!(core.protocol_version(conn), Some(ProtocolVersion::V3_1_1));
    core.handle_packet(conn, Packet::PingReq, now);
    assert_eq!(core.poll_action(), Some(IoAction::Flush(conn)));
    assert_eq!(core.poll_action(), None, "CONNACK and PINGRESP share one flush");
    let mut out = Vec::new();
    core.tx(conn).unwrap().take_all(&mut out);
    assert_eq!(out.concat(), [0x20, 0x02, 0x00, 0x00, 0xD0, 0x00]);
    core.handle_packet(conn, Packet::PingReq, now);
    assert_eq!(core.poll_action(), Some(IoAction::Flush(conn)));
}

#[test]
fn close_keeps_the_queue_readable_then_frees_it() {
    let (mut core, now) = core(1);
    let conn = core.open_connection(ConnInfo::default(), now).unwrap();
    core.handle_packet(conn, connect("c"), now);
    core.handle_packet(conn, connect("c"), now); // [MQTT-3.1.0-2]
    assert_eq!(core.poll_action(), Some(IoAction::Flush(conn)));
    assert_eq!(core.poll_action(), Some(IoAction::Close(conn)));
    assert!(core.tx(conn).is_some(), "the io layer can still take the last bytes");
    core.handle_packet(conn, Packet::PingReq, now); // ignored
    assert_eq!(core.poll_action(), None);
    core.handle_tick(now + CLOSING_LINGER + SCAN_INTERVAL);
    assert!(core.tx(conn).is_none());
    assert_eq!(core.sessions.len(), 0, "a clean session ends with its connection");
}

#[test]
fn mesh_backlog_pauses_reading() {
    let (mut core, _) = core(2);
    assert!(!core.publishing_paused());
    core.set_mesh_backlog(10);
    assert!(core.publishing_paused());
    core.set_mesh_backlog(0);
    assert!(!core.publishing_paused());
}

#[test]
fn deadlines_cover_sys_on_shard_zero_and_scans_while_busy() {
    let (mut core, now) = core(1);
    assert_eq!(core.next_deadline(), Some(now + Duration::from_secs(10)));
    let _conn = core.open_connection(ConnInfo::default(), now).unwrap();
    assert_eq!(core.next_deadline(), Some(now + SCAN_INTERVAL));
}
