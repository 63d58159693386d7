//! Unit tests of `sessions/session.rs`.

use super::*;
use bytes::Bytes;

use crate::core::ids::ShardId;
use crate::core::mesh::Origin;

fn msg() -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from("t"),
        payload: Bytes::from_static(b"abc"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        origin: Origin { shard: ShardId(0), session: 0 },
        received_at_ms: 0,
    })
}

#[test]
fn packet_ids_skip_zero_and_ids_in_use() {
    let mut s = Session::new("c");
    s.last_packet_id = u16::MAX - 1;
    let a = s.next_packet_id();
    assert_eq!(a.get(), u16::MAX);
    s.inflight_mut().push_back(Inflight {
        packet_id: PacketId::new(1).unwrap(),
        msg: msg(),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Box::default(),
        state: Awaiting::PubAck,
        group: None,
    });
    assert_eq!(s.next_packet_id().get(), 2, "0 and the inflight id 1 are skipped");
}

#[test]
fn queue_is_bounded_by_count_and_bytes() {
    let mut s = Session::new("c");
    let q = Queued {
        msg: msg(),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Box::default(),
        group: None,
        seq: 0,
    };
    assert!(s.enqueue(q.clone(), 2, 100));
    assert!(s.enqueue(q.clone(), 2, 100));
    assert!(!s.enqueue(q.clone(), 2, 100));
    assert_eq!(s.queue_bytes(), 8);
    assert!(s.dequeue().is_some());
    assert!(!s.enqueue(q.clone(), 10, 5), "4 + 4 > 5 bytes");
    assert_eq!(s.queue_bytes(), 4);
    s.release_idle();
    assert_eq!(s.queue().len(), 1, "a backlog with a queued message is kept");
    assert!(s.dequeue().is_some());
    s.release_idle();
    assert!(s.backlog.is_none(), "an empty backlog is freed");
    assert_eq!((s.queue_bytes(), s.dequeue().is_none()), (0, true));
}

#[test]
fn table_finds_by_client_id_and_reuses_slots() {
    let mut t = SessionTable::default();
    let a = t.insert(Session::new("a"));
    assert_eq!(t.find("a"), Some(a));
    t.remove(a);
    assert_eq!(t.find("a"), None);
    let b = t.insert(Session::new("b"));
    assert_eq!(a, b);
    assert_eq!(t.len(), 1);
}

#[test]
fn queued_since_is_what_was_queued_after_the_pin_even_if_the_queue_emptied() {
    let mut s = Session::new("c");
    let q = |payload: &'static [u8]| Queued {
        msg: Arc::new(Message { payload: Bytes::from_static(payload), ..(*msg()).clone() }),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Box::default(),
        group: None,
        seq: 0,
    };
    let payloads =
        |s: &Session, from| s.queued_since(from).map(|q| q.msg.payload.clone()).collect::<Vec<_>>();
    assert!(s.enqueue(q(b"a"), 10, 100));
    assert!(s.enqueue(q(b"b"), 10, 100));
    let from = s.pin_queue_seq(true);
    assert!(payloads(&s, from).is_empty());
    // The queue empties (expired, delivered): the backlog stays while pinned.
    while s.dequeue().is_some() {}
    s.release_idle();
    assert!(s.enqueue(q(b"c"), 10, 100));
    assert_eq!(payloads(&s, from), vec![Bytes::from_static(b"c")]);
}
