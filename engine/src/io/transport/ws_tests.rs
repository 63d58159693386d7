use super::*;

/// A client frame (masked, §5.3) with the given first byte.
fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(0x82, payload, KEY)
}

/// Feeds `input` in pieces of `step` bytes; returns the MQTT bytes, the replies and the
/// first error.
fn feed_in_steps(
    d: &mut Deframer,
    input: &[u8],
    step: usize,
) -> (Vec<u8>, Vec<u8>, Option<WsClosed>) {
    let mut mqtt = BytesMut::new();
    let mut reply = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        if let Err(e) = d.feed(chunk, &mut mqtt, &mut reply) {
            return (mqtt.to_vec(), reply, Some(e));
        }
    }
    (mqtt.to_vec(), reply, None)
}

#[test]
fn binary_frames_stream_through_whatever_the_read_boundaries() {
    // One packet split over two frames, then two packets in one frame [MQTT-6.0.0-2/3],
    // with a 16-bit and a 64-bit length among them.
    let big = vec![0xAB; 70_000];
    let mid = vec![0x5A; 300];
    let mut input = binary(&[0x30, 0x05, 0x00]);
    input.extend(binary(&[0x01, b't', b'x']));
    input.extend(binary(&mid));
    input.extend(binary(&big));
    let mut want = vec![0x30, 0x05, 0x00, 0x01, b't', b'x'];
    want.extend(&mid);
    want.extend(&big);
    for step in [1, 2, 3, 7, 13, 100, 65_536, usize::MAX] {
        let mut d = Deframer::new(1 << 20);
        let (mqtt, reply, err) = feed_in_steps(&mut d, &input, step);
        assert_eq!(err, None, "step {step}");
        assert!(reply.is_empty());
        assert_eq!(mqtt, want, "step {step}");
    }
}

#[test]
fn fragmented_messages_with_control_frames_between_the_fragments() {
    let mut input = frame(0x02, b"ab", KEY); // binary, not final
    input.extend(frame(0x89, b"hi", KEY)); // ping between fragments (§5.4)
    input.extend(frame(0x00, b"cd", KEY)); // continuation, not final
    input.extend(frame(0x80, b"ef", KEY)); // continuation, final
    input.extend(frame(0x8A, b"", KEY)); // unsolicited pong: ignored
    let mut d = Deframer::new(1024);
    let (mqtt, reply, err) = feed_in_steps(&mut d, &input, 5);
    assert_eq!(err, None);
    assert_eq!(mqtt, b"abcdef");
    assert_eq!(reply, [0x8A, 0x02, b'h', b'i'], "§5.5.3: pong echoes the ping's payload");
}

#[test]
fn bad_frames_close_with_the_right_code() {
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (frame(0x81, b"text", KEY), close_code::UNSUPPORTED_DATA, "[MQTT-6.0.0-1] text"),
        (frame(0x82, b"x", None), close_code::PROTOCOL_ERROR, "§5.1 unmasked"),
        (frame(0xC2, b"x", KEY), close_code::PROTOCOL_ERROR, "§5.2 RSV1"),
        (frame(0x83, b"x", KEY), close_code::PROTOCOL_ERROR, "reserved opcode"),
        (frame(0x80, b"x", KEY), close_code::PROTOCOL_ERROR, "continuation first"),
        (frame(0x09, b"x", KEY), close_code::PROTOCOL_ERROR, "§5.5 fragmented ping"),
        (frame(0x89, &[0; 126], KEY), close_code::PROTOCOL_ERROR, "§5.5 ping > 125"),
        (frame(0x82, &[0; 101], KEY), close_code::TOO_BIG, "over the maximum"),
        (frame(0x88, &[3], KEY), close_code::PROTOCOL_ERROR, "1-byte close payload"),
        (
            [frame(0x02, b"a", KEY), frame(0x82, b"b", KEY)].concat(),
            close_code::PROTOCOL_ERROR,
            "new message before the last fragment",
        ),
    ];
    for (input, code, what) in cases {
        for step in [1, usize::MAX] {
            let mut d = Deframer::new(100);
            let (_, reply, err) = feed_in_steps(&mut d, &input, step);
            let err = err.unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(err.code, code, "{what}");
            assert!(err.reason.is_some(), "{what}");
            assert_eq!(reply[..2], [0x88, 0x02], "{what}: a close frame");
            assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), code, "{what}");
            // Nothing is read after a close.
            let mut mqtt = BytesMut::new();
            let mut more = Vec::new();
            assert_eq!(d.feed(&binary(b"late"), &mut mqtt, &mut more), Ok(()));
            assert!(mqtt.is_empty() && more.is_empty(), "{what}");
        }
    }
}

#[test]
fn a_client_close_is_echoed() {
    let mut d = Deframer::new(100);
    let mut input = binary(b"\xC0\x00");
    input.extend(frame(0x88, &[0x03, 0xE9, b'b', b'y', b'e'], KEY)); // 1001 going away
    let (mqtt, reply, err) = feed_in_steps(&mut d, &input, 3);
    assert_eq!(mqtt, [0xC0, 0x00]);
    assert_eq!(err, Some(WsClosed { code: 1001, reason: None }));
    assert_eq!(reply, [0x88, 0x02, 0x03, 0xE9]);
    let mut d = Deframer::new(100);
    let (_, reply, err) = feed_in_steps(&mut d, &frame(0x88, b"", KEY), 1);
    assert_eq!(err.map(|e| e.code), Some(close_code::NORMAL));
    assert_eq!(reply, [0x88, 0x02, 0x03, 0xE8]);
}

#[test]
fn server_headers_use_the_shortest_length_form() {
    assert_eq!(data_header(0), ([0x82, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2));
    assert_eq!(data_header(125).0[..2], [0x82, 125]);
    assert_eq!(data_header(126).0[..4], [0x82, 126, 0, 126]);
    assert_eq!(data_header(65_535).1, 4);
    let (h, n) = data_header(65_536);
    assert_eq!((n, &h[..n]), (10, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0][..]));
}

/// The client's side (bridges to `ws://` remotes): unmasked server frames are read, in any
/// split, fragmented or not; a masked one closes with 1002 (§5.1); a ping is answered with a
/// masked pong carrying its payload.
#[test]
fn a_client_reads_unmasked_server_frames_and_masks_its_answers() {
    let mut input = frame(0x02, b"he", None); // binary, not final
    input.extend(frame(0x89, b"p!", None)); // a ping between the fragments
    input.extend(frame(0x80, b"llo", None)); // the final continuation
    input.extend(frame(0x82, &[7u8; 300], None)); // a 16-bit length
    for step in [1, 2, 5, input.len()] {
        let mut d = Deframer::new_client(1 << 20);
        let (mqtt, reply, err) = feed_in_steps(&mut d, &input, step);
        assert_eq!(err, None, "step {step}");
        assert_eq!(&mqtt[..5], b"hello");
        assert_eq!(&mqtt[5..], &[7u8; 300][..]);
        // A masked pong (0x8A, mask bit, length 2, 4 key bytes, 2 masked bytes).
        assert_eq!((reply[0], reply[1], reply.len()), (0x8A, 0x82, 8), "step {step}");
        let key = &reply[2..6];
        assert_eq!([reply[6] ^ key[0], reply[7] ^ key[1]], *b"p!");
    }
    let mut d = Deframer::new_client(1 << 20);
    let (_, reply, err) = feed_in_steps(&mut d, &binary(b"x"), 1);
    assert_eq!(err.map(|e| e.code), Some(close_code::PROTOCOL_ERROR));
    assert_eq!(reply[0], 0x88);
    assert_ne!(reply[1] & 0x80, 0, "a client's close is masked");
}

#[test]
fn client_frames_are_masked_and_unmask_to_the_payload() {
    for len in [0usize, 125, 126, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut out = Vec::new();
        client_binary_frame(&payload, &mut out);
        // A server deframer (masks required) reads it back.
        let mut d = Deframer::new(1 << 20);
        let (mqtt, _, err) = feed_in_steps(&mut d, &out, 7);
        assert_eq!(err, None, "len {len}");
        assert_eq!(mqtt, payload, "len {len}");
    }
}
