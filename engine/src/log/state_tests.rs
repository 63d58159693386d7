use super::*;
use crate::log::workload::Workload;

fn c() -> String {
    "c1".to_string()
}

fn stored(msg_id: u64, topic: &str) -> Record {
    Record::MessageStored(MessageStored {
        msg_id,
        topic: topic.into(),
        payload: vec![1, 2, 3],
        qos: 1,
        retain: false,
        properties: vec![],
        received_at_ms: 5,
    })
}

fn apply_all(state: &mut LogState, records: &[Record]) {
    for r in records {
        state.apply(r).unwrap_or_else(|e| panic!("{r:?}: {e}"));
        state.check_invariants();
    }
}

#[test]
fn a_message_lives_while_queued_or_retained() {
    let mut s = LogState::default();
    apply_all(
        &mut s,
        &[
            SessionCreated { client_id: c(), expiry_secs: 60, clean: true }.into(),
            SessionCreated { client_id: "c2".into(), expiry_secs: 60, clean: true }.into(),
            stored(1, "t"),
            MessageQueued { client_id: c(), msg_id: 1, group: String::new() }.into(),
            MessageQueued { client_id: "c2".into(), msg_id: 1, group: String::new() }.into(),
            RetainedSet { topic: "t".into(), msg_id: 1 }.into(),
            Delivered { client_id: c(), msg_id: 1, packet_id: 7 }.into(),
        ],
    );
    assert_eq!(s.messages()[&1].refs, 2);
    let q: Vec<_> = s.sessions()[&c()].queue().copied().collect();
    assert_eq!(q, [QueueEntry { msg_id: 1, packet_id: Some(7) }]);
    apply_all(&mut s, &[Acknowledged { client_id: c(), msg_id: 1 }.into()]);
    apply_all(&mut s, &[SessionEnded { client_id: "c2".into() }.into()]);
    assert_eq!(s.messages()[&1].refs, 0, "still retained");
    apply_all(&mut s, &[RetainedCleared { topic: "t".into() }.into()]);
    assert!(s.messages().is_empty());
}

#[test]
fn a_clean_start_drops_the_old_session() {
    let mut s = LogState::default();
    apply_all(
        &mut s,
        &[
            SessionCreated { client_id: c(), expiry_secs: 60, clean: false }.into(),
            SubscriptionAdded { client_id: c(), filter: "a/#".into(), options: 1, sub_id: 0 }
                .into(),
            stored(1, "a/b"),
            MessageQueued { client_id: c(), msg_id: 1, group: String::new() }.into(),
            Qos2Received { client_id: c(), packet_id: 3 }.into(),
            // Resume keeps everything, updates expiry.
            SessionCreated { client_id: c(), expiry_secs: 90, clean: false }.into(),
        ],
    );
    let sess = &s.sessions()[&c()];
    assert_eq!((sess.expiry_secs, sess.subscriptions.len(), sess.queue().len()), (90, 1, 1));
    apply_all(&mut s, &[SessionCreated { client_id: c(), expiry_secs: 0, clean: true }.into()]);
    assert_eq!(s.sessions()[&c()], SessionState { clean: true, ..Default::default() });
    assert!(s.messages().is_empty());
}

#[test]
fn retained_replacement_releases_the_old_message() {
    let mut s = LogState::default();
    apply_all(
        &mut s,
        &[
            stored(1, "t"),
            RetainedSet { topic: "t".into(), msg_id: 1 }.into(),
            stored(2, "t"),
            RetainedSet { topic: "t".into(), msg_id: 2 }.into(),
        ],
    );
    assert_eq!(s.messages().keys().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(s.retained()["t"], 2);
}

#[test]
fn records_that_do_not_fit_are_refused_and_change_nothing() {
    let mut s = LogState::default();
    apply_all(
        &mut s,
        &[SessionCreated { client_id: c(), expiry_secs: 1, clean: true }.into(), stored(1, "t")],
    );
    let before = s.clone();
    let bad: Vec<Record> = vec![
        MessageQueued { client_id: c(), msg_id: 9, group: String::new() }.into(),
        MessageQueued { client_id: "nobody".into(), msg_id: 1, group: String::new() }.into(),
        Delivered { client_id: c(), msg_id: 1, packet_id: 1 }.into(),
        Acknowledged { client_id: c(), msg_id: 1 }.into(),
        SessionEnded { client_id: "nobody".into() }.into(),
        SubscriptionAdded { client_id: "nobody".into(), filter: "x".into(), options: 0, sub_id: 0 }
            .into(),
        RetainedSet { topic: "other".into(), msg_id: 1 }.into(),
        RetainedSet { topic: "t".into(), msg_id: 2 }.into(),
        stored(1, "t"),
        Checkpoint { end_seq: 5, live_records: 0 }.into(),
    ];
    for r in bad {
        let e = s.apply(&r).unwrap_err();
        assert_eq!(e.kind, r.kind_name());
        assert_eq!(s, before, "{r:?} changed the state");
    }
    apply_all(&mut s, &[MessageQueued { client_id: c(), msg_id: 1, group: String::new() }.into()]);
    assert!(
        s.apply(&MessageQueued { client_id: c(), msg_id: 1, group: String::new() }.into()).is_err(),
        "queued twice"
    );
}

#[test]
fn prune_drops_unreferenced_messages() {
    let mut s = LogState::default();
    apply_all(
        &mut s,
        &[stored(1, "t"), stored(2, "t"), RetainedSet { topic: "t".into(), msg_id: 2 }.into()],
    );
    s.prune();
    assert_eq!(s.messages().keys().copied().collect::<Vec<_>>(), [2]);
}

/// The property compaction relies on: replaying a snapshot rebuilds the (pruned) state, and
/// the snapshot is never longer than the records that made the state.
#[test]
fn snapshots_rebuild_the_state_for_many_seeds() {
    for seed in 0..40 {
        let mut w = Workload::new(seed, 6, 32);
        let mut records = 0u64;
        for step in 0..400 {
            records += w.next_batch().len() as u64;
            if step % 37 == 0 || step == 399 {
                let mut want = w.state().clone();
                want.prune();
                want.check_invariants();
                let snap: Vec<Record> = w.state().snapshot().collect();
                assert_eq!(snap.len() as u64, w.state().snapshot_len());
                assert!(snap.len() as u64 <= records, "seed {seed}: snapshot larger than its log");
                let mut rebuilt = LogState::default();
                apply_all(&mut rebuilt, &[Checkpoint { end_seq: 1, live_records: 0 }.into()]);
                apply_all(&mut rebuilt, &snap);
                assert_eq!(rebuilt, want, "seed {seed} step {step}");
                // A snapshot of the rebuilt state is the same snapshot.
                assert!(rebuilt.snapshot().eq(snap.iter().cloned()));
            }
        }
    }
}

/// Snapshot of a prefix + the rest of the log == the whole log (what compaction of sealed
/// segments does while the active segment keeps going).
#[test]
fn snapshot_of_a_prefix_then_the_suffix_equals_the_whole() {
    for seed in 100..130 {
        let mut w = Workload::new(seed, 5, 8);
        let batches: Vec<Vec<Record>> = (0..300).map(|_| w.next_batch()).collect();
        let cut = (seed as usize * 7) % batches.len();
        let mut prefix = LogState::default();
        for b in &batches[..cut] {
            apply_all(&mut prefix, b);
        }
        let mut compacted = LogState::default();
        apply_all(&mut compacted, &prefix.snapshot().collect::<Vec<_>>());
        for b in &batches[cut..] {
            apply_all(&mut compacted, b);
        }
        compacted.prune();
        let mut whole = w.state().clone();
        whole.prune();
        assert_eq!(compacted, whole, "seed {seed} cut {cut}");
    }
}
