//! Black-box negative cases: whole packets that break one normative statement each must be
//! a decode error (never `Ok(None)`, never a packet). Every builder's valid form is checked
//! to decode first (`controls_decode`), so each error below is caused by the one change.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use shardmq_codec::{decode, Limits, ProtocolVersion};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A packet: first byte, minimal remaining length, body.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string / binary field.
fn s(x: &[u8]) -> Vec<u8> {
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Properties with their (1-byte) length prefix.
fn props(p: &[u8]) -> Vec<u8> {
    assert!(p.len() < 128);
    cat(&[&[p.len() as u8], p])
}

/// PUBLISH, QoS 0 unless `first` says otherwise, topic and (5.0) properties.
fn publish(
    v: ProtocolVersion,
    first: u8,
    topic: &[u8],
    pid: &[u8],
    p: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let pr = if v.is_v5() { props(p) } else { Vec::new() };
    pkt(first, &cat(&[&s(topic), pid, &pr, payload]))
}

/// CONNECT with protocol name, level, flags, (5.0) properties and payload fields.
fn connect(name: &[u8], level: u8, flags: u8, p: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let pr = p.map(props).unwrap_or_default();
    pkt(0x10, &cat(&[&s(name), &[level, flags, 0x00, 0x3C], &pr, payload]))
}

fn connect311(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, None, payload)
}

fn connect5(p: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 5, 0x02, Some(p), &s(b"c"))
}

/// SUBSCRIBE with one filter and options byte.
fn subscribe(v: ProtocolVersion, p: &[u8], filter: &[u8], opts: u8) -> Vec<u8> {
    let pr = if v.is_v5() { props(p) } else { Vec::new() };
    pkt(0x82, &cat(&[&[0x00, 0x01], &pr, &s(filter), &[opts]]))
}

fn limits() -> Limits {
    Limits::default()
}

static CASES: AtomicUsize = AtomicUsize::new(0);

fn expect_err(name: &str, v: ProtocolVersion, bytes: &[u8], failures: &mut Vec<String>) {
    CASES.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::from(bytes);
    let r = decode(&mut buf, &limits(), v);
    if r.is_err() {
        return;
    }
    failures
        .push(format!("{name} ({v:?}): expected an error, got {r:?}\n    bytes = {bytes:02x?}"));
}

fn expect_ok(name: &str, v: ProtocolVersion, bytes: &[u8], failures: &mut Vec<String>) {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, &limits(), v) {
        Ok(Some(_)) if buf.is_empty() => {}
        r => failures.push(format!(
            "control {name} ({v:?}) does not decode: {r:?}\n    bytes = {bytes:02x?}"
        )),
    }
}

/// The valid forms the negative cases are built from.
#[test]
fn controls_decode() {
    let mut f = Vec::new();
    expect_ok("puback", V311, &[0x40, 0x02, 0x00, 0x01], &mut f);
    expect_ok("pubrel", V311, &[0x62, 0x02, 0x00, 0x01], &mut f);
    expect_ok("pingreq", V311, &[0xC0, 0x00], &mut f);
    for v in [V311, V5] {
        expect_ok("publish", v, &publish(v, 0x30, b"a/b", &[], &[], b"x"), &mut f);
        expect_ok("publish q1", v, &publish(v, 0x32, b"a", &[0, 1], &[], b""), &mut f);
        expect_ok("subscribe", v, &subscribe(v, &[], b"a/+/#", 0x01), &mut f);
    }
    expect_ok(
        "publish props",
        V5,
        &publish(V5, 0x30, b"a", &[], &[0x02, 0, 0, 0, 1, 0x23, 0, 1], b"x"),
        &mut f,
    );
    expect_ok("publish alias only", V5, &publish(V5, 0x30, b"", &[], &[0x23, 0, 1], b"x"), &mut f);
    expect_ok(
        "publish pfi 1 utf8",
        V5,
        &publish(V5, 0x30, b"a", &[], &[0x01, 0x01], "é".as_bytes()),
        &mut f,
    );
    expect_ok("connect311", V311, &connect311(0x02, &s(b"c")), &mut f);
    expect_ok(
        "connect311 will",
        V311,
        &connect311(0x2E, &cat(&[&s(b"c"), &s(b"w/t"), &s(b"")])),
        &mut f,
    );
    expect_ok(
        "connect311 login",
        V311,
        &connect311(0xC2, &cat(&[&s(b"c"), &s(b"u"), &s(b"p")])),
        &mut f,
    );
    expect_ok("connect v31", V311, &connect(b"MQIsdp", 3, 0x02, None, &s(b"c")), &mut f);
    expect_ok("connect5", V5, &connect5(&[0x21, 0, 1, 0x27, 0, 0, 0, 1]), &mut f);
    expect_ok(
        "subscribe5 shared",
        V5,
        &subscribe(V5, &[0x0B, 1], b"$share/g/a/#", 0x2E & !0x04),
        &mut f,
    );
    expect_ok("connack", V311, &[0x20, 0x02, 0x01, 0x00], &mut f);
    expect_ok("connack5", V5, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x01], &mut f);
    expect_ok("suback", V311, &[0x90, 0x03, 0x00, 0x01, 0x80], &mut f);
    expect_ok("unsuback", V311, &[0xB0, 0x02, 0x00, 0x01], &mut f);
    expect_ok("unsuback5", V5, &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x11], &mut f);
    expect_ok("puback5", V5, &[0x40, 0x03, 0x00, 0x01, 0x10], &mut f);
    expect_ok("pubrel5", V5, &[0x62, 0x03, 0x00, 0x01, 0x92], &mut f);
    expect_ok("disconnect5", V5, &[0xE0, 0x01, 0x04], &mut f);
    expect_ok("auth5", V5, &[0xF0, 0x05, 0x18, 0x03, 0x15, 0x00, 0x00], &mut f);
    assert!(f.is_empty(), "\n{}", f.join("\n"));
}

#[test]
fn malformed_packets_are_errors() {
    let mut f = Vec::new();
    let both = [V311, V5];

    // Fixed header [MQTT-2.2.2-1/2] (5.0 [MQTT-2.1.3-1]) and packet types.
    for v in both {
        expect_err("PUBACK flags 1", v, &[0x41, 0x02, 0x00, 0x01], &mut f);
        expect_err("PUBREL flags 0", v, &[0x60, 0x02, 0x00, 0x01], &mut f);
        expect_err(
            "SUBSCRIBE flags 0",
            v,
            &subscribe(v, &[], b"a", 0)[..]
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { 0x80 } else { *b })
                .collect::<Vec<_>>(),
            &mut f,
        );
        expect_err(
            "UNSUBSCRIBE flags 0",
            v,
            &pkt(0xA0, &cat(&[&[0, 1], if v.is_v5() { &[0][..] } else { &[][..] }, &s(b"a")])),
            &mut f,
        );
        expect_err("PINGREQ flags", v, &[0xC1, 0x00], &mut f);
        expect_err("DISCONNECT flags", v, &[0xE2, 0x00], &mut f);
        expect_err("packet type 0", v, &[0x00, 0x00], &mut f);
        expect_err("remaining length of 5 bytes", v, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], &mut f);
        expect_err("PINGREQ with a body", v, &[0xC0, 0x01, 0x00], &mut f);
        expect_err("PUBACK body too short", v, &[0x40, 0x01, 0x00], &mut f);
    }
    expect_err("AUTH in 3.1.1", V311, &[0xF0, 0x00], &mut f);
    expect_err("PUBACK 3.1.1 trailing byte", V311, &[0x40, 0x03, 0x00, 0x01, 0x00], &mut f);
    expect_err("DISCONNECT 3.1.1 with a body", V311, &[0xE0, 0x01, 0x00], &mut f);
    expect_err("non-minimal remaining length [MQTT-1.5.5-1]", V5, &[0xC0, 0x80, 0x00], &mut f);

    // PUBLISH.
    for v in both {
        expect_err(
            "PUBLISH QoS 3 [MQTT-3.3.1-4]",
            v,
            &publish(v, 0x36, b"a", &[0, 1], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH QoS 0 DUP [MQTT-3.3.1-2]",
            v,
            &publish(v, 0x38, b"a", &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic a/+ [MQTT-3.3.2-2]",
            v,
            &publish(v, 0x30, b"a/+", &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic # [MQTT-3.3.2-2]",
            v,
            &publish(v, 0x30, b"#", &[], &[], b""),
            &mut f,
        );
        expect_err("PUBLISH packet id 0", v, &publish(v, 0x32, b"a", &[0, 0], &[], b""), &mut f);
        expect_err(
            "PUBLISH topic ill-formed UTF-8",
            v,
            &publish(v, 0x30, &[0xC3, 0x28], &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic with U+0000",
            v,
            &publish(v, 0x30, b"a\0", &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic with a UTF-16 surrogate",
            v,
            &publish(v, 0x30, &[0xED, 0xA0, 0x80], &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic with overlong NUL",
            v,
            &publish(v, 0x30, &[0xC0, 0x80], &[], &[], b""),
            &mut f,
        );
        expect_err(
            "PUBLISH topic length past the packet",
            v,
            &pkt(0x30, &[0x00, 0x05, b'a']),
            &mut f,
        );
        expect_err("PUBLISH QoS 1 without packet id", v, &pkt(0x32, &s(b"a")), &mut f);
    }
    expect_err(
        "PUBLISH empty topic 3.1.1 [MQTT-4.7.3-1]",
        V311,
        &publish(V311, 0x30, b"", &[], &[], b"x"),
        &mut f,
    );
    expect_err(
        "PUBLISH empty topic, no alias (5.0)",
        V5,
        &publish(V5, 0x30, b"", &[], &[], b"x"),
        &mut f,
    );

    // 5.0 properties (§2.2.2), in a PUBLISH.
    let p5 = |p: &[u8], payload: &[u8]| publish(V5, 0x30, b"a", &[], p, payload);
    expect_err(
        "duplicate Message Expiry",
        V5,
        &p5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], b""),
        &mut f,
    );
    expect_err(
        "duplicate Content Type",
        V5,
        &p5(&cat(&[&[0x03], &s(b"a"), &[0x03], &s(b"b")]), b""),
        &mut f,
    );
    expect_err("duplicate Topic Alias", V5, &p5(&[0x23, 0, 1, 0x23, 0, 2], b""), &mut f);
    expect_err("duplicate Payload Format Indicator", V5, &p5(&[0x01, 0, 0x01, 0], b""), &mut f);
    expect_err("Session Expiry in PUBLISH", V5, &p5(&[0x11, 0, 0, 0, 1], b""), &mut f);
    expect_err("Reason String in PUBLISH", V5, &p5(&cat(&[&[0x1F], &s(b"r")]), b""), &mut f);
    expect_err("unknown property 0x05", V5, &p5(&[0x05, 0x00], b""), &mut f);
    expect_err("Topic Alias 0 [MQTT-3.3.2-8]", V5, &p5(&[0x23, 0, 0], b""), &mut f);
    expect_err("Payload Format Indicator 2", V5, &p5(&[0x01, 0x02], b""), &mut f);
    expect_err("PFI 1 with a non-UTF-8 payload", V5, &p5(&[0x01, 0x01], &[0xFF, 0xFE]), &mut f);
    expect_err("Subscription Identifier 0", V5, &p5(&[0x0B, 0x00], b""), &mut f);
    expect_err(
        "Response Topic with a wildcard [MQTT-3.3.2-14]",
        V5,
        &p5(&cat(&[&[0x08], &s(b"r/#")]), b""),
        &mut f,
    );
    expect_err(
        "Content Type ill-formed UTF-8",
        V5,
        &p5(&cat(&[&[0x03], &s(&[0xFF])]), b""),
        &mut f,
    );
    expect_err("User Property missing its value", V5, &p5(&cat(&[&[0x26], &s(b"k")]), b""), &mut f);
    expect_err(
        "property length past the packet",
        V5,
        &pkt(0x30, &cat(&[&s(b"a"), &[0x0A]])),
        &mut f,
    );
    expect_err(
        "property length non-minimal",
        V5,
        &pkt(0x30, &cat(&[&s(b"a"), &[0x80, 0x00]])),
        &mut f,
    );
    expect_err("Message Expiry cut short", V5, &p5(&[0x02, 0, 0], b""), &mut f);

    // CONNECT.
    let c = s(b"c");
    expect_err("CONNECT reserved flag [MQTT-3.1.2-3]", V311, &connect311(0x03, &c), &mut f);
    expect_err("will QoS without will flag", V311, &connect311(0x0A, &c), &mut f);
    expect_err("will retain without will flag", V311, &connect311(0x22, &c), &mut f);
    expect_err("will QoS 3", V311, &connect311(0x1E, &cat(&[&c, &s(b"w"), &s(b"")])), &mut f);
    expect_err(
        "password without user name [MQTT-3.1.2-22]",
        V311,
        &connect311(0x42, &cat(&[&c, &s(b"p")])),
        &mut f,
    );
    expect_err(
        "will topic with a wildcard",
        V311,
        &connect311(0x06, &cat(&[&c, &s(b"w/#"), &s(b"")])),
        &mut f,
    );
    expect_err("will topic empty", V311, &connect311(0x06, &cat(&[&c, &s(b""), &s(b"")])), &mut f);
    expect_err("user name flag without the field", V311, &connect311(0x82, &c), &mut f);
    expect_err("client id past the packet", V311, &connect311(0x02, &[0x00, 0x09, b'c']), &mut f);
    expect_err(
        "trailing bytes after the payload",
        V311,
        &connect311(0x02, &cat(&[&c, b"zz"])),
        &mut f,
    );
    expect_err("protocol name MQTX", V311, &connect(b"MQTX", 4, 0x02, None, &c), &mut f);
    expect_err("MQIsdp at level 4", V311, &connect(b"MQIsdp", 4, 0x02, None, &c), &mut f);
    expect_err("MQTT at level 3", V311, &connect(b"MQTT", 3, 0x02, None, &c), &mut f);
    expect_err("level 6", V311, &connect(b"MQTT", 6, 0x02, None, &c), &mut f);
    expect_err("Receive Maximum 0", V5, &connect5(&[0x21, 0, 0]), &mut f);
    expect_err("Maximum Packet Size 0", V5, &connect5(&[0x27, 0, 0, 0, 0]), &mut f);
    expect_err("Request Problem Information 2", V5, &connect5(&[0x17, 2]), &mut f);
    expect_err("Request Response Information 2", V5, &connect5(&[0x19, 2]), &mut f);
    expect_err(
        "Authentication Data without Method",
        V5,
        &connect5(&cat(&[&[0x16], &s(b"x")])),
        &mut f,
    );
    expect_err("Topic Alias in CONNECT", V5, &connect5(&[0x23, 0, 1]), &mut f);
    expect_err(
        "duplicate Session Expiry in CONNECT",
        V5,
        &connect5(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1]),
        &mut f,
    );
    expect_err(
        "duplicate Receive Maximum in CONNECT",
        V5,
        &connect5(&[0x21, 0, 1, 0x21, 0, 1]),
        &mut f,
    );
    expect_err(
        "will property not allowed in a will (Topic Alias)",
        V5,
        &connect(
            b"MQTT",
            5,
            0x06,
            Some(&[]),
            &cat(&[&c, &props(&[0x23, 0, 1]), &s(b"w"), &s(b"")]),
        ),
        &mut f,
    );

    // CONNACK.
    expect_err("CONNACK reserved flags", V311, &[0x20, 0x02, 0x02, 0x00], &mut f);
    expect_err("CONNACK return code 6", V311, &[0x20, 0x02, 0x00, 0x06], &mut f);
    expect_err("CONNACK session present with an error", V311, &[0x20, 0x02, 0x01, 0x05], &mut f);
    expect_err("CONNACK Maximum QoS 2", V5, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], &mut f);
    expect_err("CONNACK reason 0x10", V5, &[0x20, 0x03, 0x00, 0x10, 0x00], &mut f);

    // SUBSCRIBE / UNSUBSCRIBE.
    for v in both {
        let nop: &[u8] = if v.is_v5() { &[0] } else { &[] };
        expect_err("SUBSCRIBE without filters", v, &pkt(0x82, &cat(&[&[0, 1], nop])), &mut f);
        expect_err(
            "SUBSCRIBE packet id 0",
            v,
            &pkt(0x82, &cat(&[&[0, 0], nop, &s(b"a"), &[0]])),
            &mut f,
        );
        expect_err("SUBSCRIBE QoS 3", v, &subscribe(v, &[], b"a", 0x03), &mut f);
        expect_err("SUBSCRIBE reserved option bits", v, &subscribe(v, &[], b"a", 0xC0), &mut f);
        expect_err("filter a/#/b", v, &subscribe(v, &[], b"a/#/b", 0), &mut f);
        expect_err("filter a#", v, &subscribe(v, &[], b"a#", 0), &mut f);
        expect_err("filter a+", v, &subscribe(v, &[], b"a+", 0), &mut f);
        expect_err("filter +a/b", v, &subscribe(v, &[], b"+a/b", 0), &mut f);
        expect_err("empty filter", v, &subscribe(v, &[], b"", 0), &mut f);
        expect_err("filter with U+0000", v, &subscribe(v, &[], b"a\0", 0), &mut f);
        expect_err(
            "filter without options byte",
            v,
            &pkt(0x82, &cat(&[&[0, 1], nop, &s(b"a")])),
            &mut f,
        );
        expect_err("UNSUBSCRIBE without filters", v, &pkt(0xA2, &cat(&[&[0, 1], nop])), &mut f);
        expect_err(
            "UNSUBSCRIBE filter a#",
            v,
            &pkt(0xA2, &cat(&[&[0, 1], nop, &s(b"a#")])),
            &mut f,
        );
    }
    expect_err("SUBSCRIBE 3.1.1 option bit 2", V311, &subscribe(V311, &[], b"a", 0x04), &mut f);
    expect_err("Retain Handling 3", V5, &subscribe(V5, &[], b"a", 0x30), &mut f);
    expect_err(
        "No Local on a shared subscription [MQTT-3.8.3-4]",
        V5,
        &subscribe(V5, &[], b"$share/g/a", 0x04),
        &mut f,
    );
    expect_err("share name empty", V5, &subscribe(V5, &[], b"$share//a", 0), &mut f);
    expect_err("share without a filter", V5, &subscribe(V5, &[], b"$share/g", 0), &mut f);
    expect_err("share with an empty filter", V5, &subscribe(V5, &[], b"$share/g/", 0), &mut f);
    expect_err("share name with +", V5, &subscribe(V5, &[], b"$share/g+/a", 0), &mut f);
    expect_err("share name with #", V5, &subscribe(V5, &[], b"$share/#/a", 0), &mut f);
    expect_err("shared filter invalid", V5, &subscribe(V5, &[], b"$share/g/a#", 0), &mut f);
    expect_err(
        "two Subscription Identifiers",
        V5,
        &subscribe(V5, &[0x0B, 1, 0x0B, 2], b"a", 0),
        &mut f,
    );
    expect_err(
        "Subscription Identifier 0 in SUBSCRIBE",
        V5,
        &subscribe(V5, &[0x0B, 0], b"a", 0),
        &mut f,
    );
    expect_err(
        "Message Expiry in SUBSCRIBE",
        V5,
        &subscribe(V5, &[0x02, 0, 0, 0, 1], b"a", 0),
        &mut f,
    );

    // Acks and reason codes.
    expect_err("SUBACK return code 3", V311, &[0x90, 0x03, 0x00, 0x01, 0x03], &mut f);
    expect_err("SUBACK without codes", V311, &[0x90, 0x02, 0x00, 0x01], &mut f);
    expect_err("SUBACK reason 0x04 (5.0)", V5, &[0x90, 0x04, 0x00, 0x01, 0x00, 0x04], &mut f);
    expect_err("UNSUBACK 3.1.1 with a payload", V311, &[0xB0, 0x03, 0x00, 0x01, 0x00], &mut f);
    expect_err("UNSUBACK reason 0x01 (5.0)", V5, &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01], &mut f);
    expect_err("PUBACK reason 0x05", V5, &[0x40, 0x03, 0x00, 0x01, 0x05], &mut f);
    expect_err("PUBACK packet id 0", V5, &[0x40, 0x02, 0x00, 0x00], &mut f);
    expect_err("PUBREL reason 0x10", V5, &[0x62, 0x03, 0x00, 0x01, 0x10], &mut f);
    expect_err(
        "PUBACK Topic Alias property",
        V5,
        &[0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01],
        &mut f,
    );
    expect_err("DISCONNECT reason 0x01", V5, &[0xE0, 0x01, 0x01], &mut f);
    expect_err(
        "DISCONNECT Topic Alias property",
        V5,
        &[0xE0, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01],
        &mut f,
    );
    expect_err("AUTH reason 0x01", V5, &[0xF0, 0x02, 0x01, 0x00], &mut f);

    let cases = CASES.load(Ordering::Relaxed);
    assert!(
        f.is_empty(),
        "{} of {cases} malformed packets were accepted:\n{}",
        f.len(),
        f.join("\n")
    );
    eprintln!("{cases} malformed packets rejected");
}
