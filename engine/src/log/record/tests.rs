use proptest::prelude::*;
use rkyv::util::AlignedVec;

use super::*;

const MAX: usize = 1 << 20;

/// One record of every kind.
pub(crate) fn samples() -> Vec<Record> {
    let c = || "client-1".to_string();
    vec![
        SessionCreated { client_id: c(), expiry_secs: 3600, clean: true }.into(),
        SessionEnded { client_id: c() }.into(),
        SessionOffline { client_id: c(), expires_at_unix_ms: 1_700_000_060_000 }.into(),
        SubscriptionAdded { client_id: c(), filter: "a/+/c".into(), options: 0x21, sub_id: 7 }
            .into(),
        SubscriptionRemoved { client_id: c(), filter: "a/#".into() }.into(),
        MessageStored {
            msg_id: u64::MAX - 7,
            topic: "sensors/1/temp".into(),
            payload: b"21.5".to_vec(),
            qos: 2,
            retain: true,
            properties: vec![1, 2, 3],
            received_at_ms: 1_700_000_000_000,
        }
        .into(),
        MessageQueued { client_id: c(), msg_id: 9, group: "$share/g/a/#".into() }.into(),
        Delivered { client_id: c(), msg_id: 9, packet_id: 65535 }.into(),
        Acknowledged { client_id: c(), msg_id: 9 }.into(),
        Qos2Received { client_id: c(), packet_id: 1 }.into(),
        Qos2Released { client_id: c(), packet_id: 1 }.into(),
        PubrelPending { client_id: c(), packet_id: 2 }.into(),
        PubrelCompleted { client_id: c(), packet_id: 2 }.into(),
        RetainedSet { topic: "t".into(), msg_id: 3 }.into(),
        RetainedCleared { topic: "t".into() }.into(),
        Checkpoint { end_seq: 100, live_records: 7 }.into(),
    ]
}

fn encode_one(seq: u64, r: &Record) -> AlignedVec<16> {
    let mut v = Vec::new();
    let n = encode_into(&mut v, LogSeq(seq), r, false, MAX).unwrap();
    assert_eq!(n, v.len());
    let mut a = AlignedVec::<16>::new();
    a.extend_from_slice(&v);
    a
}

#[test]
fn every_kind_round_trips_and_frames_are_aligned() {
    let mut kinds = std::collections::BTreeSet::new();
    for (i, r) in samples().iter().enumerate() {
        let bytes = encode_one(i as u64 + 1, r);
        assert_eq!(bytes.len() % FRAME_ALIGN_BYTES, 0);
        let (frame, back) = decode(&bytes, MAX).unwrap();
        assert_eq!(frame.seq, LogSeq(i as u64 + 1));
        assert_eq!(frame.frame_bytes, bytes.len());
        assert_eq!(&back, r);
        kinds.insert(r.kind());
    }
    assert_eq!(kinds.len(), 16, "one sample per kind");
}

#[test]
fn header_bytes_are_as_documented() {
    let r: Record = SessionEnded { client_id: "c".into() }.into();
    let b = encode_one(0x0102_0304_0506_0708, &r);
    assert_eq!(b[0], FRAME_MAGIC);
    assert_eq!(b[1], FORMAT_VERSION);
    assert_eq!(b[2], 2);
    assert_eq!(b[3], 0);
    let body_len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    assert_eq!(b.len(), align_frame(HEADER_BYTES + body_len));
    assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    let body = &b[HEADER_BYTES..HEADER_BYTES + body_len];
    assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), crc32c::crc32c(body));
    assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), crc32c::crc32c(&b[..20]));
}

#[test]
fn misaligned_bodies_are_copied_before_access() {
    let r = samples()[4].clone();
    let b = encode_one(5, &r);
    let mut shifted = AlignedVec::<16>::new();
    shifted.extend_from_slice(&[0u8; 3]);
    shifted.extend_from_slice(&b);
    let (_, back) = decode(&shifted[3..], MAX).unwrap();
    assert_eq!(back, r);
}

#[test]
fn flipping_any_bit_is_detected() {
    for r in samples() {
        let good = encode_one(42, &r);
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = AlignedVec::<16>::new();
                bad.extend_from_slice(&good);
                bad[byte] ^= 1 << bit;
                match decode(&bad, MAX) {
                    Err(_) => {}
                    Ok((f, back)) => panic!("flip {byte}.{bit} of {r:?} decoded to {f:?} {back:?}"),
                }
            }
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncated_or_short() {
    for r in samples() {
        let good = encode_one(1, &r);
        for len in 0..good.len() {
            let err = decode(&good[..len], MAX).unwrap_err();
            assert!(
                matches!(err, RecordError::Truncated { .. }),
                "cut at {len} of {}: {err:?}",
                good.len()
            );
        }
    }
}

#[test]
fn specific_checks_name_their_cause() {
    let good = encode_one(1, &samples()[0]);
    let mut b = AlignedVec::<16>::new();
    b.extend_from_slice(&good);
    b[0] = 0;
    assert_eq!(decode(&b, MAX).unwrap_err(), RecordError::BadMagic(0));
    b[0] = FRAME_MAGIC;
    b[HEADER_BYTES] ^= 0xFF;
    assert_eq!(decode(&b, MAX).unwrap_err(), RecordError::BodyCrc);
    b[HEADER_BYTES] ^= 0xFF;
    // A header that claims too large a body is refused before the body is looked at.
    assert!(matches!(decode(&b, 4).unwrap_err(), RecordError::TooLarge { max_bytes: 4, .. }));
    // A re-sealed header with an unknown version or kind.
    for (at, value, want) in [
        (1, 9, RecordError::Version(9)),
        (2, 99, RecordError::UnknownKind(99)),
        (3, 2, RecordError::Flags(2)),
    ] {
        let mut c = AlignedVec::<16>::new();
        c.extend_from_slice(&good);
        c[at] = value;
        let crc = crc32c::crc32c(&c[..20]);
        c[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&c, MAX).unwrap_err(), want);
    }
}

#[test]
fn a_valid_archive_of_the_wrong_kind_is_refused() {
    // A SessionEnded body under a MessageStored kind byte, with correct checksums: rkyv's
    // validation (or the field rules) must catch it.
    let good = encode_one(1, &SessionEnded { client_id: "c".into() }.into());
    let mut c = AlignedVec::<16>::new();
    c.extend_from_slice(&good);
    c[2] = 5;
    let crc = crc32c::crc32c(&c[..20]);
    c[20..24].copy_from_slice(&crc.to_le_bytes());
    assert!(decode(&c, MAX).is_err());
}

#[test]
fn too_large_leaves_the_buffer_untouched() {
    let mut v = vec![0u8; 8];
    let r = samples()[4].clone();
    assert!(matches!(
        encode_into(&mut v, LogSeq(1), &r, false, 8),
        Err(RecordError::TooLarge { .. })
    ));
    assert_eq!(v, vec![0u8; 8]);
}

#[test]
#[should_panic(expected = "refusing to write an invalid")]
fn writing_an_invalid_record_is_a_bug() {
    let r: Record = Delivered { client_id: "c".into(), msg_id: 1, packet_id: 0 }.into();
    let _ = encode_into(&mut Vec::new(), LogSeq(1), &r, false, MAX);
}

#[test]
fn field_rules() {
    let bad: Vec<Record> = vec![
        SessionCreated { client_id: String::new(), expiry_secs: 0, clean: true }.into(),
        SubscriptionAdded { client_id: "c".into(), filter: String::new(), options: 0, sub_id: 0 }
            .into(),
        SubscriptionAdded {
            client_id: "c".into(),
            filter: "f".into(),
            options: 0,
            sub_id: 1 << 28,
        }
        .into(),
        RetainedSet { topic: "a/+".into(), msg_id: 1 }.into(),
        Qos2Received { client_id: "c".into(), packet_id: 0 }.into(),
        MessageStored {
            msg_id: 1,
            topic: "t".into(),
            payload: vec![],
            qos: 3,
            retain: false,
            properties: vec![],
            received_at_ms: 0,
        }
        .into(),
    ];
    for r in bad {
        assert!(matches!(r.validate(), Err(RecordError::Invalid(_))), "{r:?}");
    }
}

fn arb_record() -> impl Strategy<Value = Record> {
    let id = "[a-z0-9]{1,12}";
    prop_oneof![
        (id, any::<u32>(), any::<bool>()).prop_map(|(c, e, k)| SessionCreated {
            client_id: c,
            expiry_secs: e,
            clean: k
        }
        .into()),
        (id, "[a-z/+#]{1,20}", any::<u8>(), 0u32..=268_435_455).prop_map(|(c, f, o, i)| {
            SubscriptionAdded { client_id: c, filter: f, options: o, sub_id: i }.into()
        }),
        (
            any::<u64>(),
            "[a-z/]{1,30}",
            proptest::collection::vec(any::<u8>(), 0..300),
            0u8..3,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            any::<u64>()
        )
            .prop_map(|(m, t, p, q, r, pr, at)| MessageStored {
                msg_id: m,
                topic: t,
                payload: p,
                qos: q,
                retain: r,
                properties: pr,
                received_at_ms: at
            }
            .into()),
        (id, any::<u64>(), 1u16..).prop_map(|(c, m, p)| Delivered {
            client_id: c,
            msg_id: m,
            packet_id: p
        }
        .into()),
        (id, any::<u64>()).prop_map(|(c, at)| SessionOffline {
            client_id: c,
            expires_at_unix_ms: at
        }
        .into()),
    ]
}

proptest! {
    #[test]
    fn prop_round_trip_in_a_stream(records in proptest::collection::vec(arb_record(), 1..20)) {
        let mut v = Vec::new();
        for (i, r) in records.iter().enumerate() {
            encode_into(&mut v, LogSeq(i as u64 + 1), r, i % 3 == 0, MAX).unwrap();
        }
        let mut a = AlignedVec::<16>::new();
        a.extend_from_slice(&v);
        let mut pos = 0;
        for (i, r) in records.iter().enumerate() {
            let (f, back) = decode(&a[pos..], MAX).unwrap();
            prop_assert_eq!(f.seq, LogSeq(i as u64 + 1));
            prop_assert_eq!(f.continues, i % 3 == 0);
            prop_assert_eq!(&back, r);
            pos += f.frame_bytes;
        }
        prop_assert_eq!(pos, a.len());
    }

    #[test]
    fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut a = AlignedVec::<16>::new();
        a.extend_from_slice(&bytes);
        let _ = decode(&a, MAX);
    }
}
