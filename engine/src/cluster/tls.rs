//! Mutual TLS on node links (`--cluster-tls-cert`, `--cluster-tls-key`, `--cluster-tls-ca`):
//! rustls with the ring provider, TLS 1.2 and 1.3, over the blocking sockets of `link.rs`
//! (the writer is the TLS client) and `net.rs` (the reader is the TLS server).
//!
//! Both sides present their node certificate and check the other's against the cluster CA:
//! the reader requires a client certificate that chains to it (`WebPkiClientVerifier`), the
//! writer checks the reader's chain ([`ChainOnly`]) but **not its name**: links dial the
//! advertised IP address gossip reported, and node certificates need not carry it (an IP SAN
//! would tie each certificate to one address and break `--cluster-advertise` behind NAT).
//! So the trust boundary is the CA: any certificate it signed may act as any node. Give the
//! cluster its own CA. A node certificate may carry no extended key usage, or both
//! `serverAuth` and `clientAuth` (it is used both ways).
//!
//! With TLS 1.3 a client finishes its handshake before the server has checked the client's
//! certificate, so the reader confirms it: right after its handshake it writes one byte,
//! [`ACCEPTED`], inside TLS, and the writer reads it before its Hello. A writer whose
//! certificate was refused reads the server's alert instead and never reports its link up.
//! That byte and alerts are all a reader ever writes; session tickets and resumption are
//! off (a link lives long; a new one does a full handshake).
//!
//! The files are read once, when the runtime starts (a bad file stops start-up with its
//! name); replacing a certificate takes a restart.

use crate::io::transport::tls::read_certs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, StreamOwned,
};

use crate::config::ClusterTls;

/// What a reader writes, inside TLS, once it has accepted the writer's certificate.
pub(crate) const ACCEPTED: u8 = 0x06;

/// A TLS client connection over a link's socket (the writer's side).
pub(crate) type ClientStream = StreamOwned<ClientConnection, TcpStream>;
/// A TLS server connection over a link's socket (the reader's side).
pub(crate) type ServerStream = StreamOwned<ServerConnection, TcpStream>;

/// A node's link TLS, read from its files: one client and one server configuration shared
/// by every writer and reader thread of the runtime.
#[derive(Debug)]
pub(crate) struct NodeTls {
    /// The files, read again by [`NodeTls::reload`].
    files: ClusterTls,
    /// The configurations new handshakes use; replaced whole by a reload (links already up
    /// keep theirs). A lock of the runtime's threads, never of a shard.
    configs: std::sync::RwLock<Configs>,
    /// Handshakes that failed, as client and as server (each one is logged too).
    handshakes_failed: AtomicU64,
    /// The runtime's counters, where failures are also counted (`$SYS`, the admin API).
    counters: std::sync::OnceLock<Arc<crate::core::cluster::ClusterCounters>>,
}

/// One client and one server configuration, built from the same files.
#[derive(Debug)]
struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// Reloads a node's link TLS files (SIGHUP, `POST /api/v1/reload`).
#[derive(Debug, Clone)]
pub struct TlsReloader(pub(crate) Arc<NodeTls>);

impl TlsReloader {
    /// Reads the certificate, key and CA again; new handshakes use them, links already up
    /// keep theirs. A bad file keeps the old ones (`Err` says which file and why).
    pub fn reload(&self) -> Result<(), String> {
        self.0.reload()
    }
}

impl NodeTls {
    /// Reads and checks the files (the key must match the certificate). `Err` names the
    /// file and the problem.
    pub(crate) fn load(files: &ClusterTls) -> Result<NodeTls, String> {
        Ok(NodeTls {
            files: files.clone(),
            configs: std::sync::RwLock::new(Configs::build(files)?),
            handshakes_failed: AtomicU64::new(0),
            counters: std::sync::OnceLock::new(),
        })
    }

    /// Reads the files again; on success, new handshakes use them.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = Configs::build(&self.files)?;
        *self.configs.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        tracing::info!("cluster: link TLS files reloaded ({})", self.files.cert.display());
        Ok(())
    }

    fn client(&self) -> Arc<ClientConfig> {
        self.configs.read().unwrap_or_else(std::sync::PoisonError::into_inner).client.clone()
    }

    fn server(&self) -> Arc<ServerConfig> {
        self.configs.read().unwrap_or_else(std::sync::PoisonError::into_inner).server.clone()
    }
}

impl Configs {
    fn build(files: &ClusterTls) -> Result<Configs, String> {
        let chain = read_certs(&files.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| format!("{}: no usable private key ({e})", files.key.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&files.ca, "CA certificate")? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate ({e})", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let pair = format!("{} / {}", files.cert.display(), files.key.display());

        let verifier = Arc::new(ChainOnly {
            roots: roots.clone(),
            algs: provider.signature_verification_algorithms,
        });
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{pair}: {e}"))?;
        client.resumption = Resumption::disabled();

        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)
            .map_err(|e| format!("{pair}: {e}"))?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});

        Ok(Configs { client: Arc::new(client), server: Arc::new(server) })
    }
}

impl NodeTls {
    /// Counts failures in `counters` too (`link_handshake_failures`).
    pub(crate) fn count_in(&self, counters: Arc<crate::core::cluster::ClusterCounters>) {
        let _ = self.counters.set(counters);
    }

    /// Handshakes that failed so far, both ways.
    pub(crate) fn handshakes_failed(&self) -> u64 {
        self.handshakes_failed.load(Relaxed)
    }

    /// The writer's handshake with the peer at `peer` over `tcp`, then the reader's
    /// [`ACCEPTED`]; every read waits at most `timeout` (writes: the socket's write
    /// timeout). A failure closes the socket and is logged and counted.
    pub(crate) fn connect(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> io::Result<ClientStream> {
        tcp.set_read_timeout(Some(timeout))?;
        // The name is not checked (see the module doc); rustls needs one to send.
        let name = ServerName::IpAddress(peer.ip().into());
        let conn = ClientConnection::new(self.client(), name).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        let r = (|| {
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
            if ack[0] != ACCEPTED {
                return Err(io::Error::other("the peer sent something else than its accept"));
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(s),
            Err(e) => Err(self.failed("to", peer, &s.sock, e)),
        }
    }

    /// The reader's handshake with the writer at `peer` over `tcp` (whose read timeout bounds
    /// each read), then [`ACCEPTED`]. A failure closes the socket and is logged and counted.
    pub(crate) fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> io::Result<ServerStream> {
        let conn = ServerConnection::new(self.server()).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        let r = (|| {
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            s.conn.writer().write_all(&[ACCEPTED])?;
            flush_tls(&mut s)
        })();
        match r {
            Ok(()) => Ok(s),
            Err(e) => Err(self.failed("from", peer, &s.sock, e)),
        }
    }

    /// A failed handshake: the socket is closed (rustls has sent its alert, if any).
    fn failed(&self, dir: &str, peer: SocketAddr, tcp: &TcpStream, e: io::Error) -> io::Error {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        self.handshakes_failed.fetch_add(1, Relaxed);
        if let Some(c) = self.counters.get() {
            c.link_handshake_failures.fetch_add(1, Relaxed);
        }
        tracing::warn!("cluster: TLS handshake on the link {dir} {peer} failed: {e}");
        e
    }
}

/// Writes every TLS record rustls holds, each socket write's error surfacing (a blocking
/// socket's write timeout ends a stalled write with `WouldBlock`).
pub(crate) fn flush_tls<C, S>(s: &mut StreamOwned<C, TcpStream>) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    while s.conn.wants_write() {
        if s.conn.write_tls(&mut s.sock)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Checks a server certificate's chain to the cluster CA (validity, key usage, signatures),
/// as `WebPkiServerVerifier` does, but not the name (see the module doc).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
