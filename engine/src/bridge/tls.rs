//! TLS to a bridge's remote broker (`mqtts://`, `wss://`): rustls as a client over a blocking socket,
//! verifying the remote's certificate against `tls_ca_file` (and presenting
//! `tls_cert_file` / `tls_key_file` when the remote asks for a client certificate).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::config::BridgeTls;

/// A bridge's TLS client settings, loaded once per connection attempt (so that replaced
/// files are picked up at the next reconnect).
#[derive(Debug)]
pub(super) struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Reads the CA (and the client certificate and key, if any).
    pub(super) fn load(t: &BridgeTls) -> Result<ClientTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&t.ca_file)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", t.ca_file.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match (&t.cert_file, &t.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"mqtt".to_vec()];
        Ok(ClientTls { config: Arc::new(config) })
    }

    /// Runs the handshake with `host` over `tcp`.
    pub(super) fn connect(&self, host: &str, mut tcp: TcpStream) -> Result<Stream, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// A bridge's socket: plain TCP or TLS over it.
pub(super) enum Stream {
    /// `mqtt://`.
    Plain(TcpStream),
    /// `mqtts://`.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// `ws://` or `wss://`: WebSocket over one of the above.
    Ws(Box<super::ws::WsStream>),
}

impl Stream {
    /// The TCP socket under it.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
            Stream::Ws(w) => w.inner().tcp(),
        }
    }

    /// Decrypted bytes are waiting to be read (poll(2) on the socket would not say so).
    pub(super) fn buffered(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => {
                s.conn.process_new_packets().is_ok_and(|st| st.plaintext_bytes_to_read() > 0)
            }
            Stream::Ws(w) => w.buffered(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Ws(w) => w.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Ws(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Ws(w) => w.flush(),
        }
    }
}
