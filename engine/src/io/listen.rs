//! The listening sockets: reserving the ports before the shards start, and each shard's own
//! listener on every address.
//!
//! Every shard listens on every address with `SO_REUSEPORT` (the kernel spreads new
//! connections over them) **and** `SO_REUSEADDR`. The second is what lets a supervisor
//! restart the broker at once after a stop or a `kill -9`: the dead process's connections
//! linger in FIN_WAIT2 or TIME_WAIT, still bound to the port, and Linux lets a new socket bind
//! over them only when both the lingering sockets (which inherit the flag from the listener
//! that accepted them) and the new one have `SO_REUSEADDR`. On Linux `SO_REUSEADDR` never lets
//! two sockets *listen* on one port; that is `SO_REUSEPORT`'s job, limited to one user.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, ListenerConfig};
use crate::core::{ConnInfo, Transport};

use super::shard::ShardIo;
use super::transport::tls::TlsMaterial;
use super::transport::ws_handshake::WsSettings;

/// The accept queue of each listener (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;
/// How long start-up waits for a port still held by a process that just died.
const BIND_RETRY_MAX: Duration = Duration::from_secs(2);

/// One listener as the shards serve it: its index in the configuration (what
/// [`ConnInfo::listener`] holds), its bound address and its transport settings.
/// Process-wide, immutable; each shard gets a clone (and builds its own TLS server
/// configuration from the material, `ShardIo::tls_configs`).
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    /// Index in `Config::listen` (after duplicates collapse, see [`unique`]).
    pub(crate) index: u16,
    /// The address (port 0 resolved).
    pub(crate) addr: SocketAddr,
    /// The transport of its connections.
    pub(crate) transport: Transport,
    /// Certificates and client-certificate policy (`mqtts`, `wss`).
    pub(crate) tls: Option<TlsMaterial>,
    /// The certificate's subject CN is the user name (`--tls-identity-as-username`).
    pub(crate) identity_as_username: bool,
    /// Path and origins (`ws`, `wss`).
    pub(crate) ws: Option<Arc<WsSettings>>,
    /// Connections start with a PROXY protocol header (`transport/proxy.rs`).
    pub(crate) proxy_protocol: bool,
}

impl Listener {
    /// The listener `index` of the configuration, bound to `addr`: reads its TLS files.
    /// `Err` names the listener and why it cannot be served.
    pub(crate) fn new(
        index: u16,
        addr: SocketAddr,
        config: ListenerConfig,
    ) -> Result<Listener, String> {
        let tls = match &config.tls {
            Some(tls) => {
                // ALPN "mqtt" on mqtts (clients that offer other protocols only are refused,
                // RFC 7301 §3.2); a browser's wss offers "http/1.1": none is selected there.
                let alpn: &[&[u8]] =
                    if config.transport == Transport::Tls { &[b"mqtt"] } else { &[] };
                Some(TlsMaterial::load(tls, alpn).map_err(|e| format!("{}: {e}", config.url()))?)
            }
            None => None,
        };
        let ws = config.transport.is_websocket().then(|| {
            Arc::new(WsSettings {
                path: config.ws_path.clone(),
                origins: config.ws_origins.clone(),
            })
        });
        Ok(Listener {
            index,
            addr,
            transport: config.transport,
            identity_as_username: config.tls.as_ref().is_some_and(|t| t.identity_as_username),
            tls,
            ws,
            proxy_protocol: config.proxy_protocol,
        })
    }

    /// The listener as a URL (`ADDR:PORT` for plain MQTT, as it always was printed).
    pub(crate) fn url(&self) -> String {
        match &self.ws {
            _ if self.transport == Transport::Tcp => self.addr.to_string(),
            Some(ws) => format!("{}://{}{}", self.transport.scheme(), self.addr, ws.path),
            None => format!("{}://{}", self.transport.scheme(), self.addr),
        }
    }

    /// The identity of a connection accepted here from `remote` (the certificate subject is
    /// filled in once the TLS handshake verified one).
    pub(crate) fn conn_info(&self, remote: Option<SocketAddr>) -> ConnInfo {
        ConnInfo {
            listener: self.index,
            transport: self.transport,
            remote,
            cert_subject_cn: None,
            identity_as_username: self.identity_as_username,
            bridge: false,
        }
    }
}

/// The TLS files of every listener, read again for a reload: by listener index, the new
/// material, or `None` (no TLS, or the files failed to load: the shards keep what they
/// have). Process-wide, immutable; shared by every shard through the reload message.
#[derive(Debug, Clone, Default)]
pub struct TlsReload(pub(crate) Vec<Option<Arc<TlsMaterial>>>);

impl PartialEq for TlsReload {
    /// The same material (by identity: the files were read once per reload).
    fn eq(&self, other: &TlsReload) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
    }
}

impl Eq for TlsReload {}

/// Reads the TLS files of `config`'s listeners again (SIGHUP, `reload.rs`): the new material
/// by listener index, and one error line per listener whose files do not load (it keeps its
/// old certificate: new handshakes go on with it).
pub fn reload_tls(config: &Config) -> (TlsReload, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for l in unique(&config.listen) {
        let material = l.tls.as_ref().and_then(|tls| {
            let alpn: &[&[u8]] = if l.transport == Transport::Tls { &[b"mqtt"] } else { &[] };
            match TlsMaterial::load(tls, alpn) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    errors.push(format!("{}: {e} (the old certificate stays in use)", l.url()));
                    None
                }
            }
        });
        out.push(material);
    }
    (TlsReload(out), errors)
}

/// Applies a reload's TLS material on this shard: new handshakes use it; open connections
/// keep the configuration they started with.
pub(crate) fn apply_tls_reload(shard: &ShardIo, tls: &TlsReload) {
    let mut configs = shard.tls_configs.borrow_mut();
    for (index, material) in tls.0.iter().enumerate() {
        let Some(material) = material else { continue };
        match material.server_config() {
            Ok(c) if index < configs.len() => configs[index] = Some(c),
            Ok(_) => {}
            Err(e) => tracing::warn!("{}: listener {index}: TLS not reloaded: {e}", shard.id),
        }
    }
}

/// The configured listeners without repeats (the configuration already collapses the same
/// listener given twice; a `Config` built in code may not have).
pub(crate) fn unique(listeners: &[ListenerConfig]) -> Vec<ListenerConfig> {
    let mut out: Vec<ListenerConfig> = Vec::with_capacity(listeners.len());
    for l in listeners {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

/// Resolves port 0 to a concrete free port shared by every shard, and checks fixed ports
/// are not already served (SO_REUSEPORT would otherwise silently share them with another
/// process of the same user). Returns the addresses and the sockets holding the free
/// ports until the shards have bound them.
pub(super) fn reserve_ports(
    addrs: &[SocketAddr],
) -> Result<(Vec<SocketAddr>, Vec<Socket>), String> {
    let mut out = Vec::with_capacity(addrs.len());
    let mut reservations = Vec::new();
    for &addr in addrs {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        if addr.port() == 0 {
            // Bound but not listening: it holds the port yet never receives connections.
            sock.set_reuse_port(true).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            sock.bind(&addr.into()).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let bound = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("cannot listen on {addr}: no local address"))?;
            out.push(bound);
            reservations.push(sock);
        } else {
            // SO_REUSEADDR without SO_REUSEPORT: binds over the lingering connections of
            // a previous run, fails if anyone listens there already.
            sock.set_reuse_address(true).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            bind_retrying(&sock, addr).map_err(|e| {
                if e.kind() == io::ErrorKind::AddrInUse {
                    format!("cannot listen on {addr}: address already in use")
                } else {
                    format!("cannot listen on {addr}: {e}")
                }
            })?;
            out.push(addr);
        }
    }
    Ok((out, reservations))
}

/// Binds `sock` to `addr`, retrying while the address is in use for at most
/// [`BIND_RETRY_MAX`]: the listeners of a broker that was just killed stay open until the
/// kernel has torn down its io_uring rings (their pending accepts hold the sockets), which
/// happens after the process is reaped (0 to 15 ms after `kill -9` on this project's test
/// machine). A port served by a live process is still refused, only that much later.
fn bind_retrying(sock: &Socket, addr: SocketAddr) -> io::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match sock.bind(&addr.into()) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && started.elapsed() < BIND_RETRY_MAX =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

/// One shard's socket listening on `addr`, with `SO_REUSEADDR` and `SO_REUSEPORT` (see the
/// module documentation). Close-on-exec (socket2's default) and blocking, like glommio's own
/// listeners: io_uring does the waiting.
pub(super) fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock.into())
}
