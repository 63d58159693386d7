//! The transport stack driven in memory against rustls's client: TLS, WebSocket, both, and
//! refusals. Certificates are made here with rcgen; nothing is read from the repository.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::config::{ClientAuth, TlsConfig};

/// A CA and what it signed, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-transport-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "shardmq test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A certificate for `cn` (also valid for `localhost`): its PEM file paths and DER.
    fn issue(
        &self,
        cn: &str,
    ) -> (PathBuf, PathBuf, CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "shardmq");
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{cn}.pem"));
        let key_path = self.dir.join(format!("{cn}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let der = cert.der().clone();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert_path, key_path, der, key_der)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server(pki: &Pki, client_auth: ClientAuth, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let (cert, key, _, _) = pki.issue("server");
    let config = TlsConfig {
        cert,
        key,
        client_ca: (client_auth != ClientAuth::None).then(|| pki.dir.join("ca.pem")),
        client_auth,
        crl: None,
        identity_as_username: false,
    };
    TlsMaterial::load(&config, alpn).unwrap().server_config().unwrap()
}

fn client(
    roots: RootCertStore,
    cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> ClientConnection {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
}

use self::tls::TlsMaterial;

/// Moves bytes both ways until neither side has anything to say; returns the server's
/// MQTT bytes and its last ingest result.
fn pump(c: &mut ClientConnection, s: &mut TransportState, mqtt: &mut BytesMut) -> Ingest {
    let mut last = Ingest::Ok;
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            last = s.ingest(&wire, mqtt);
        }
        let out = s.out().to_vec();
        s.consume(out.len());
        if !out.is_empty() {
            let mut r = &out[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                if c.process_new_packets().is_err() {
                    return last;
                }
            }
        }
        if wire.is_empty() && out.is_empty() {
            break;
        }
    }
    last
}

/// Feeds the server's bytes to the client.
fn client_receive(c: &mut ClientConnection, wire: &[u8]) {
    let mut r = wire;
    while !r.is_empty() {
        c.read_tls(&mut r).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn client_plain(c: &mut ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = c.reader().read_to_end(&mut got);
    got
}

#[test]
fn tls_carries_mqtt_both_ways_and_batches_frames_into_few_records() {
    let pki = Pki::new("tls");
    let mut s =
        TransportState::new(Some(server(&pki, ClientAuth::None, &[b"mqtt"])), None, 1 << 20)
            .unwrap();
    let mut c = client(pki.roots(), None);
    let mut mqtt = BytesMut::new();
    assert!(s.handshaking());
    c.writer().write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00").unwrap();
    assert_eq!(pump(&mut c, &mut s, &mut mqtt), Ingest::Ok);
    assert!(!s.handshaking());
    assert_eq!(&mqtt[..], b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    assert_eq!(s.peer_cn(), None, "no client certificate asked");

    // 200 frames of 30 bytes: one wrap, one TLS record (not 200).
    let frame = [0x30u8; 30];
    let slices: Vec<IoSlice<'_>> = (0..200).map(|_| IoSlice::new(&frame)).collect();
    assert_eq!(s.wrap(&slices), 6000);
    let wire = s.out().to_vec();
    s.consume(wire.len());
    let mut records = 0;
    let mut rest = &wire[..];
    while rest.len() >= 5 {
        records += 1;
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        rest = &rest[5 + len..];
    }
    assert_eq!(records, 1, "{} bytes in {records} records", wire.len());
    client_receive(&mut c, &wire);
    let got = client_plain(&mut c);
    assert!(got == [0x30u8; 6000], "{} bytes", got.len());
}

#[test]
fn client_certificates_give_the_subject_cn_and_bad_ones_are_refused() {
    let pki = Pki::new("mtls");
    let other = Pki::new("mtls-other");
    let config = server(&pki, ClientAuth::Required, &[]);
    // A certificate from the CA: its CN.
    let (_, _, der, key) = pki.issue("device-7");
    let mut s = TransportState::new(Some(config.clone()), None, 1 << 20).unwrap();
    let mut c = client(pki.roots(), Some((der, key)));
    c.writer().write_all(b"\xc0\x00").unwrap();
    let mut mqtt = BytesMut::new();
    assert_eq!(pump(&mut c, &mut s, &mut mqtt), Ingest::Ok);
    assert_eq!(&mqtt[..], b"\xc0\x00");
    assert_eq!(s.peer_cn().as_deref(), Some("device-7"));

    // One from another CA, and none at all: refused in the handshake, with an alert out.
    let (_, _, der, key) = other.issue("device-7");
    for cert in [Some((der, key)), None] {
        let mut s = TransportState::new(Some(config.clone()), None, 1 << 20).unwrap();
        let mut c = client(pki.roots(), cert);
        let mut mqtt = BytesMut::new();
        let got = pump(&mut c, &mut s, &mut mqtt);
        let Ingest::Close(closing) = got else { panic!("accepted: {got:?}") };
        assert_eq!(closing.stage, Stage::TlsHandshake, "{closing}");
        assert!(mqtt.is_empty());
    }
}

#[test]
fn garbage_instead_of_a_client_hello_is_refused() {
    let pki = Pki::new("garbage");
    let mut s =
        TransportState::new(Some(server(&pki, ClientAuth::None, &[])), None, 1 << 20).unwrap();
    let mut mqtt = BytesMut::new();
    let got = s.ingest(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", &mut mqtt);
    assert!(matches!(&got, Ingest::Close(c) if c.stage == Stage::TlsHandshake), "{got:?}");
    assert!(!s.out_is_empty(), "an alert is sent");
    assert!(mqtt.is_empty());
}

#[test]
fn websocket_over_tls_upgrades_then_frames() {
    let pki = Pki::new("wss");
    let settings = Arc::new(WsSettings { path: "/mqtt".into(), origins: vec![] });
    let mut s =
        TransportState::new(Some(server(&pki, ClientAuth::None, &[])), Some(settings), 1 << 20)
            .unwrap();
    let mut c = client(pki.roots(), None);
    let mut mqtt = BytesMut::new();
    c.writer()
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .unwrap();
    // A masked binary frame with PINGREQ, sent right behind the request.
    // Payload C0 00 masked with 01 02 03 04.
    c.writer().write_all(&[0x82, 0x82, 1, 2, 3, 4, 0xC1, 0x02]).unwrap();
    assert_eq!(pump(&mut c, &mut s, &mut mqtt), Ingest::Ok);
    assert!(!s.handshaking());
    assert_eq!(&mqtt[..], [0xC0, 0x00]);
    let answer = String::from_utf8(client_plain(&mut c)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    // PINGRESP goes out as one unmasked binary frame.
    s.wrap(&[IoSlice::new(&[0xD0, 0x00])]);
    let wire = s.out().to_vec();
    s.consume(wire.len());
    client_receive(&mut c, &wire);
    assert_eq!(client_plain(&mut c), [0x82, 0x02, 0xD0, 0x00]);
}

#[test]
fn plain_websocket_refusals_answer_http() {
    let settings = Arc::new(WsSettings { path: "/mqtt".into(), origins: vec![] });
    let mut s = TransportState::new(None, Some(settings), 1 << 20).unwrap();
    let mut mqtt = BytesMut::new();
    let got = s.ingest(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", &mut mqtt);
    assert!(matches!(&got, Ingest::Close(c) if c.stage == Stage::WsHandshake), "{got:?}");
    assert!(s.out().starts_with(b"HTTP/1.1 404 "), "{:?}", String::from_utf8_lossy(s.out()));
    // Nothing more is read.
    assert_eq!(s.ingest(b"more", &mut mqtt), Ingest::Ok);
    assert!(mqtt.is_empty());
}

#[test]
fn subject_cn_reads_real_certificates() {
    let pki = Pki::new("cn");
    let (_, _, der, _) = pki.issue("sensor-42");
    assert_eq!(tls::subject_cn(&der).as_deref(), Some("sensor-42"));
    assert_eq!(tls::subject_cn(pki.ca.der()).as_deref(), Some("shardmq test CA"));
}

#[test]
fn plain_websocket_is_sent_direct_and_a_partial_frame_is_kept_whole() {
    let settings = Arc::new(WsSettings { path: "/mqtt".into(), origins: vec![] });
    let mut s = TransportState::new(None, Some(settings), 1 << 20).unwrap();
    assert!(!s.ws_direct(), "not before the upgrade");
    let mut mqtt = BytesMut::new();
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    assert_eq!(s.ingest(upgrade.as_bytes(), &mut mqtt), Ingest::Ok);
    assert!(s.ws_direct(), "plain WebSocket, upgraded");
    let answer = s.out().len();
    s.consume(answer);
    // Header (2 bytes) + two slices (3 + 4 bytes); the socket took 4 bytes: the rest (1 byte
    // of the first slice, all of the second) is kept, in order.
    let (h, hl) = ws::data_header(7);
    let frame = [IoSlice::new(&h[..hl]), IoSlice::new(b"abc"), IoSlice::new(b"defg")];
    s.keep_unsent(&frame, 4);
    assert_eq!(s.out(), b"cdefg");
    // Nothing sent at all: the whole frame.
    s.consume(5);
    s.keep_unsent(&frame, 0);
    assert_eq!(s.out(), [&h[..hl], b"abcdefg"].concat());
    // A TLS connection never goes direct (encryption is per connection).
    let pki = Pki::new("direct");
    let config = server(&pki, ClientAuth::None, &[]);
    assert!(!TransportState::new(Some(config), None, 1 << 20).unwrap().ws_direct());
}
