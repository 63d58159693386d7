//! TLS with a real Rust client: rumqttc over rustls against an in-process broker with a plain
//! and an mqtts listener, client certificates required, the certificate's CN as the user name
//! and anonymous clients refused. Certificates are made here with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rumqttc::{QoS, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shardmq_engine::config::{ClientAuth, ListenerConfig, TlsConfig};
use shardmq_engine::core::Transport as Kind;

struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "rumqttc test CA");
    Issued { cert: p.self_signed(&key).unwrap(), key }
}

fn issue(ca: &Issued, cn: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    Issued { cert: p.signed_by(&key, &ca.cert, &ca.key).unwrap(), key }
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A rustls client configuration (ring) trusting `ca`, presenting `client`.
fn client_config(ca: &Issued, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        Some(c) => {
            let key = PrivateKeyDer::try_from(c.key.serialize_der()).unwrap();
            let chain: Vec<CertificateDer<'static>> = vec![c.cert.der().clone()];
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_tls_with_a_client_certificate_as_identity() {
    let dir = std::env::temp_dir().join(format!("shardmq-transports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca();
    let server = issue(&ca, "localhost");
    let device = issue(&ca, "device-9");
    let tls = TlsConfig {
        cert: write(&dir, "server.pem", server.cert.pem()),
        key: write(&dir, "server.key", server.key.serialize_pem()),
        client_ca: Some(write(&dir, "ca.pem", ca.cert.pem())),
        client_auth: ClientAuth::Required,
        crl: None,
        identity_as_username: true,
    };
    let b = broker_with(2, |c| {
        let mut mqtts = ListenerConfig::mqtt("127.0.0.1:0".parse().unwrap());
        mqtts.transport = Kind::Tls;
        mqtts.tls = Some(tls);
        c.listen.push(mqtts);
        c.auth.allow_anonymous = false;
    });
    assert_eq!(b.local_addrs().len(), 2);
    assert!(b.listener_urls()[1].starts_with("mqtts://"), "{:?}", b.listener_urls());
    let tls_addr = b.local_addrs()[1];

    // Over TLS with the certificate: served (its CN is the user name, no password asked),
    // on both shards' ids (one of them is handed off with its TLS session).
    let with_cert = TlsConfiguration::Rustls(client_config(&ca, Some(&device)));
    let mut clients = Vec::new();
    for id in ids_on_all_shards("tls", 4, 2) {
        let t = with_cert.clone();
        let mut c = V4::connect(tls_addr, &id, |o| {
            o.set_transport(Transport::tls_with_config(t));
        })
        .await;
        c.subscribe("tls/#", QoS::AtLeastOnce).await;
        clients.push(c);
    }
    clients[0].client.publish("tls/a", QoS::AtLeastOnce, false, &b"over rustls"[..]).await.unwrap();
    for c in &mut clients {
        let p = c.next_publish("the message over TLS").await;
        assert_eq!(&p.payload[..], b"over rustls");
    }
    for c in clients {
        c.disconnect().await;
    }
    shutdown(b).await;
    let _ = std::fs::remove_dir_all(&dir);
}
