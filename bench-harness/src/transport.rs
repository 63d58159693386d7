//! Transports the harness speaks to brokers: plain TCP, TLS, WebSocket and WebSocket over TLS
//! (`--transport tcp|tls|ws|wss`), and what each broker is started with to serve them.
//!
//! Certificates are made at run time, once per process ([`TestCa::get`]): a CA and a server
//! certificate for `localhost` / `127.0.0.1` (rcgen). Every broker started for a TLS
//! transport gets the server certificate and key written into its run directory; the
//! clients trust only that CA. Nothing is read from or written to the repository.
//!
//! The client side of each transport lives in `load/link.rs`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// The WebSocket path every broker serves MQTT on (MQTT 5.0 §6 leaves it to the broker; the
/// common choice, and shardmq's default).
pub const WS_PATH: &str = "/mqtt";

/// The name the server certificate is issued for and the clients ask for (SNI).
pub const SERVER_NAME: &str = "localhost";

/// How the harness reaches a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS (1.2/1.3, rustls).
    Tls,
    /// MQTT over WebSocket (RFC 6455, subprotocol `mqtt`, path [`WS_PATH`]).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Every transport, in the order tables list them.
    pub const ALL: [Transport; 4] = [Transport::Tcp, Transport::Tls, Transport::Ws, Transport::Wss];

    /// Parses one name.
    pub fn parse(s: &str) -> Result<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => Ok(Transport::Tcp),
            "tls" | "mqtts" => Ok(Transport::Tls),
            "ws" => Ok(Transport::Ws),
            "wss" => Ok(Transport::Wss),
            other => bail!("unknown transport {other:?} (tcp, tls, ws, wss)"),
        }
    }

    /// Parses a comma separated list (no duplicates, at least one).
    pub fn parse_list(s: &str) -> Result<Vec<Transport>> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let t = Transport::parse(part)?;
            if out.contains(&t) {
                bail!("--transport lists {t} twice");
            }
            out.push(t);
        }
        if out.is_empty() {
            bail!("--transport is empty");
        }
        Ok(out)
    }

    /// The name in reports and flags.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// TLS is under this transport.
    pub fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// WebSocket is in this transport.
    pub fn ws(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// shardmq's `--listen` URL for this transport on `addr`.
    pub fn shardmq_listen(self, addr: &str) -> String {
        match self {
            Transport::Tcp => addr.to_string(),
            Transport::Tls => format!("mqtts://{addr}"),
            Transport::Ws => format!("ws://{addr}{WS_PATH}"),
            Transport::Wss => format!("wss://{addr}{WS_PATH}"),
        }
    }

    /// A broker's name in reports: the broker's own name for TCP, `name/transport` else.
    pub fn label(self, broker: &str) -> String {
        match self {
            Transport::Tcp => broker.to_string(),
            t => format!("{broker}/{t}"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client needs to reach a broker over its transport. Serialised to worker processes
/// inside the load spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientTransport {
    /// The transport.
    pub kind: Transport,
    /// The CA certificate (PEM) the clients trust (TLS transports; empty otherwise).
    #[serde(default)]
    pub ca_pem: String,
    /// A deliberate WebSocket protocol error (the smoke tests' negative cases).
    #[serde(default)]
    pub fault: Option<WsFault>,
}

/// A deliberate protocol error, for the smoke tests' negative cases: the broker must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WsFault {
    /// Client frames without a mask (§5.1: the server must close).
    Unmasked,
    /// The upgrade request offers subprotocol `xmpp` instead of `mqtt`.
    WrongSubprotocol,
}

impl WsFault {
    /// Parses a fault's name.
    pub fn parse(s: &str) -> Result<WsFault, String> {
        match s {
            "unmasked" => Ok(WsFault::Unmasked),
            "wrong-subprotocol" => Ok(WsFault::WrongSubprotocol),
            other => Err(format!("unknown fault {other:?} (unmasked, wrong-subprotocol)")),
        }
    }
}

/// A CA and a server certificate made at run time. Process-wide, made once.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate (for `localhost` and `127.0.0.1`), PEM.
    pub server_cert_pem: String,
    /// The server certificate's private key, PEM (PKCS#8).
    pub server_key_pem: String,
}

impl TestCa {
    /// The process's CA and server certificate, made on first use.
    pub fn get() -> Result<Arc<TestCa>> {
        static CA: OnceLock<std::result::Result<Arc<TestCa>, String>> = OnceLock::new();
        CA.get_or_init(|| TestCa::generate().map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!("making the test CA: {e}"))
    }

    fn generate() -> Result<TestCa> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "shardmq-bench test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![SERVER_NAME.into(), "127.0.0.1".into()])?;
        server.distinguished_name.push(DnType::CommonName, SERVER_NAME);
        let cert = server.signed_by(&key, &ca_cert, &ca_key)?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        })
    }

    /// Writes the server certificate and key into `dir` (a broker's run directory) and the CA
    /// beside them: (certificate, key, CA) paths.
    pub fn write_server_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        let ca = dir.join("ca.pem");
        std::fs::write(&cert, &self.server_cert_pem)?;
        std::fs::write(&key, &self.server_key_pem)?;
        std::fs::write(&ca, &self.ca_pem)?;
        Ok((cert, key, ca))
    }
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) trusting only the CA in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| anyhow!("the test CA: {e}"))?)?;
    }
    if roots.is_empty() {
        bail!("no CA certificate to trust (a TLS transport without its CA)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client side of a broker started here for `t`: the test CA for TLS transports.
fn client_for(t: Transport) -> Result<(ClientTransport, Option<Arc<TestCa>>)> {
    if !t.tls() {
        return Ok((ClientTransport { kind: t, ..ClientTransport::default() }, None));
    }
    let ca = TestCa::get()?;
    Ok((ClientTransport { kind: t, ca_pem: ca.ca_pem.clone(), fault: None }, Some(ca)))
}

/// shardmq's listener for `t` on `port`: `--listen URL` (and `--tls-cert/--tls-key` with
/// files written into its run directory `dir`) added to `cmd`.
pub fn listener_args(
    t: Transport,
    port: u16,
    dir: &Path,
    cmd: &mut std::process::Command,
) -> Result<ClientTransport> {
    let (client, ca) = client_for(t)?;
    cmd.arg("--listen").arg(t.shardmq_listen(&format!("127.0.0.1:{port}")));
    if let Some(ca) = ca {
        let (cert, key, _) = ca.write_server_files(dir)?;
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    Ok(client)
}

/// The address in shardmq's `listening on …` line: `127.0.0.1:1883`, `mqtts://ADDR`,
/// `ws://ADDR/mqtt`, `wss://ADDR/mqtt`.
pub fn listening_addr(rest: &str) -> Option<SocketAddr> {
    let url = rest.split_whitespace().next()?;
    let hostport = url.split_once("://").map_or(url, |(_, r)| r);
    hostport.split('/').next()?.parse().ok()
}

/// Mosquitto's configuration lines for one listener on `port` serving `t` (`protocol
/// websockets`; `certfile`/`keyfile` written into its run directory `dir`).
pub fn mosquitto_listener(
    t: Transport,
    port: u16,
    dir: &Path,
) -> Result<(String, ClientTransport)> {
    let (client, ca) = client_for(t)?;
    let mut s = format!("listener {port} 127.0.0.1\n");
    if t.ws() {
        s.push_str("protocol websockets\n");
    }
    if let Some(ca) = ca {
        let (cert, key, _) = ca.write_server_files(dir)?;
        s.push_str(&format!("certfile {}\nkeyfile {}\n", cert.display(), key.display()));
    }
    if t.ws() {
        // Mosquitto 2.0.11 exits with "Unable to start any listening sockets" when every
        // listener is a WebSocket one (its libwebsockets listeners are not counted): an
        // unused plain listener keeps it up.
        s.push_str(&format!("listener {} 127.0.0.1\n", crate::broker::free_port()?));
    }
    Ok((s, client))
}

/// rumqttd 0.20's `tls = {...}` line for a listener section serving `t` (empty without TLS;
/// no client certificates), files written into its run directory `dir`.
pub fn rumqttd_tls(t: Transport, dir: &Path) -> Result<(String, ClientTransport)> {
    let (client, ca) = client_for(t)?;
    let line = match ca {
        Some(ca) => {
            let (cert, key, _) = ca.write_server_files(dir)?;
            format!("tls = {{ certpath = {:?}, keypath = {:?} }}\n", cert, key)
        }
        None => String::new(),
    };
    Ok((line, client))
}

/// Why `broker` (a [`crate::broker::BrokerKind`] name) cannot serve `t` at MQTT protocol
/// level `version`, if it cannot: rumqttd 0.20 serves WebSocket with 3.1.1 only (its
/// `[ws.N]` servers speak the v4 protocol).
pub fn unsupported(broker: &str, t: Transport, version: u8) -> Option<String> {
    (broker == "rumqttd" && t.ws() && version == 5)
        .then(|| "unsupported: rumqttd 0.20 serves WebSocket with MQTT 3.1.1 only".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_label() {
        assert_eq!(Transport::parse_list("tcp, tls,ws,wss").unwrap(), Transport::ALL.to_vec());
        assert!(Transport::parse_list("tcp,tcp").is_err());
        assert!(Transport::parse("quic").is_err());
        assert_eq!(Transport::Tcp.label("shardmq"), "shardmq");
        assert_eq!(Transport::Wss.label("mosquitto"), "mosquitto/wss");
        assert_eq!(Transport::Ws.shardmq_listen("127.0.0.1:0"), "ws://127.0.0.1:0/mqtt");
        let a: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(listening_addr("127.0.0.1:1883"), Some(a));
        assert_eq!(listening_addr("wss://127.0.0.1:1883/mqtt (shard 0)"), Some(a));
        assert_eq!(listening_addr("mqtts://127.0.0.1:1883"), Some(a));
    }

    #[test]
    fn the_test_ca_makes_a_usable_client_config() {
        let ca = TestCa::get().unwrap();
        assert!(ca.ca_pem.contains("BEGIN CERTIFICATE"));
        client_config(&ca.ca_pem).unwrap();
        assert!(client_config("").is_err());
    }
}
