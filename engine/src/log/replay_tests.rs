use rkyv::util::AlignedVec;

use super::*;
use crate::log::workload::Workload;

const MAX: usize = 1 << 16;

/// A segment of `n` records starting at seq `base`, and each frame's start offset.
fn segment(seed: u64, base: u64, n: usize) -> (AlignedVec<16>, Vec<usize>, Vec<Record>) {
    let mut w = Workload::new(seed, 4, 40);
    let mut v = Vec::new();
    let mut offsets = Vec::new();
    let mut records = Vec::new();
    while records.len() < n {
        for r in w.next_batch() {
            if records.len() == n {
                break;
            }
            offsets.push(v.len());
            record::encode_into(&mut v, LogSeq(base + records.len() as u64), &r, false, MAX)
                .unwrap();
            records.push(r);
        }
    }
    let mut a = AlignedVec::<16>::new();
    a.extend_from_slice(&v);
    (a, offsets, records)
}

fn opts(last_segment: bool, torn_window_bytes: u64, skip_damaged: bool) -> ScanOptions {
    ScanOptions { body_max_bytes: MAX, last_segment, torn_window_bytes, skip_damaged }
}

fn scan(bytes: &[u8], base: u64, o: ScanOptions) -> Result<(Vec<Scanned>, ScanSummary), ScanError> {
    let mut s = Scanner::new(bytes, LogSeq(base), o);
    let mut out = Vec::new();
    for item in s.by_ref() {
        out.push(item?);
    }
    Ok((out, s.summary().clone()))
}

#[test]
fn a_clean_segment_replays_every_record() {
    let (bytes, _, records) = segment(1, 10, 50);
    let (got, sum) = scan(&bytes, 10, opts(true, 1 << 20, false)).unwrap();
    assert_eq!(
        got.iter().map(|s| &s.record).collect::<Vec<_>>(),
        records.iter().collect::<Vec<_>>()
    );
    assert_eq!(got.last().unwrap().seq, LogSeq(59));
    assert_eq!(sum.valid_len_bytes, bytes.len() as u64);
    assert_eq!((sum.records, sum.last_seq, sum.torn), (50, Some(LogSeq(59)), None));
}

#[test]
fn zero_padding_is_not_damage() {
    let (mut bytes, _, _) = segment(2, 1, 5);
    let len = bytes.len();
    bytes.extend_from_slice(&[0u8; 4096 + 13]);
    for last in [true, false] {
        let (got, sum) = scan(&bytes, 1, opts(last, 0, false)).unwrap();
        assert_eq!((got.len(), sum.valid_len_bytes, sum.padding_bytes), (5, len as u64, 4096 + 13));
    }
}

/// The codec-level promise carried to segments: a cut anywhere in the last segment is a torn
/// tail at the last whole frame, never corruption.
#[test]
fn a_cut_at_every_byte_is_a_torn_tail() {
    let (bytes, offsets, _) = segment(3, 1, 12);
    for cut in 0..=bytes.len() {
        let (got, sum) = scan(&bytes[..cut], 1, opts(true, 1 << 20, false))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e:?}"));
        let ends: Vec<usize> = offsets[1..].iter().copied().chain([bytes.len()]).collect();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(got.len(), whole, "cut at {cut}");
        let boundary = if whole == 0 { 0 } else { ends[whole - 1] };
        assert_eq!(sum.valid_len_bytes, boundary as u64, "cut at {cut}");
        assert_eq!(sum.torn.is_some(), cut != boundary, "cut at {cut}");
    }
}

#[test]
fn a_torn_tail_with_zeroed_blocks_is_torn() {
    // A crash that persisted a later block but not an earlier one of the same write.
    let (mut bytes, offsets, _) = segment(4, 1, 40);
    let at = offsets[30];
    for b in &mut bytes[at..at + 16] {
        *b = 0;
    }
    let (got, sum) = scan(&bytes, 1, opts(true, 1 << 20, false)).unwrap();
    assert_eq!(got.len(), 30);
    let torn = sum.torn.unwrap();
    assert_eq!(torn.offset, at as u64);
    assert!(torn.valid_frames_after);
}

#[test]
fn damage_before_the_window_is_corruption_with_its_offset() {
    let (mut bytes, offsets, _) = segment(5, 7, 40);
    let at = offsets[10];
    bytes[at + HEADER_BYTES] ^= 0x40;
    let window = (bytes.len() - offsets[20]) as u64;
    for last in [true, false] {
        let err = scan(&bytes, 7, opts(last, window, false)).unwrap_err();
        assert_eq!(
            err,
            ScanError { offset: at as u64, damage: Damage::Frame(RecordError::BodyCrc) }
        );
    }
    // In a sealed segment even trailing garbage is corruption.
    let (mut bytes, offsets, _) = segment(5, 7, 5);
    let n = bytes.len();
    bytes[n - 3] = 0xEE;
    let err = scan(&bytes, 7, opts(false, 1 << 20, false)).unwrap_err();
    assert_eq!(err.offset, offsets[4] as u64);
}

#[test]
fn skip_damaged_resumes_at_the_next_valid_frame() {
    let (mut bytes, offsets, records) = segment(6, 1, 40);
    bytes[offsets[10] + 2] ^= 1; // header checksum of frame 10
    bytes[offsets[11] + HEADER_BYTES] ^= 1; // body of frame 11
    let (got, sum) = scan(&bytes, 1, opts(true, 0, true)).unwrap();
    assert_eq!(got.len(), 38);
    assert_eq!(got[10].seq, LogSeq(13));
    assert_eq!(got[10].record, records[12]);
    assert_eq!(sum.skipped.len(), 1);
    assert_eq!(sum.skipped[0].offset, offsets[10] as u64);
    assert_eq!(sum.skipped[0].len_bytes, (offsets[12] - offsets[10]) as u64);
    assert_eq!(sum.valid_len_bytes, bytes.len() as u64);
}

#[test]
fn wrong_seqs_are_damage() {
    let (bytes, _, _) = segment(7, 5, 3);
    let err = scan(&bytes, 4, opts(false, 0, false)).unwrap_err();
    assert_eq!(
        err,
        ScanError { offset: 0, damage: Damage::Seq { expected: LogSeq(4), found: LogSeq(5) } }
    );
    // Two frames with the same seq (e.g. a segment glued to itself).
    let mut twice = AlignedVec::<16>::new();
    twice.extend_from_slice(&bytes);
    twice.extend_from_slice(&bytes);
    let err = scan(&twice, 5, opts(true, 0, false)).unwrap_err();
    assert_eq!(err.offset, bytes.len() as u64);
}

#[test]
fn leading_checkpoint_is_found() {
    let mut v = Vec::new();
    let cp = Checkpoint { end_seq: 10, live_records: 2 };
    record::encode_into(&mut v, LogSeq(7), &cp.clone().into(), false, MAX).unwrap();
    let mut a = AlignedVec::<16>::new();
    a.extend_from_slice(&v);
    assert_eq!(leading_checkpoint(&a, MAX), Some((LogSeq(7), cp)));
    let (bytes, _, _) = segment(8, 1, 2);
    assert_eq!(leading_checkpoint(&bytes, MAX), None);
}

#[test]
fn an_unfinished_batch_is_never_yielded() {
    // Frames 0..3 single, 3..6 one batch, 6 single.
    let mut v = Vec::new();
    let mut offsets = Vec::new();
    for i in 0..7u64 {
        offsets.push(v.len());
        let r: Record = crate::log::record::SessionEnded { client_id: format!("c{i}") }.into();
        record::encode_into(&mut v, LogSeq(1 + i), &r, (3..5).contains(&i), MAX).unwrap();
    }
    let mut bytes = AlignedVec::<16>::new();
    bytes.extend_from_slice(&v);
    for cut in [offsets[4], offsets[5], offsets[5] + 9, offsets[6] - 1] {
        let (got, sum) = scan(&bytes[..cut], 1, opts(true, 1 << 20, false)).unwrap();
        assert_eq!(got.len(), 3, "cut at {cut}");
        assert_eq!(sum.valid_len_bytes, offsets[3] as u64);
        assert_eq!(sum.torn.unwrap().offset, offsets[3] as u64);
    }
    // Damage in the batch's middle frame drops the whole batch.
    bytes[offsets[4] + HEADER_BYTES] ^= 1;
    let (got, sum) = scan(&bytes, 1, opts(true, 1 << 20, false)).unwrap();
    assert_eq!((got.len(), sum.torn.unwrap().offset), (3, offsets[3] as u64));
    // A sealed segment that ends inside a batch is corrupt.
    let err = scan(&bytes[..offsets[4]], 1, opts(false, 1 << 20, false)).unwrap_err();
    assert_eq!(err.damage, Damage::IncompleteBatch);
    // Skipping drops the damaged batch and resumes after it.
    let (got, sum) = scan(&bytes, 1, opts(true, 0, true)).unwrap();
    assert_eq!(got.iter().map(|s| s.seq.0).collect::<Vec<_>>(), [1, 2, 3, 6, 7]);
    assert_eq!(sum.skipped[0].offset, offsets[3] as u64);
}
