//! Listeners (a child module of `config`): `--listen URL` and `[[listener]]` tables, and the
//! TLS and WebSocket settings each listener carries.
//!
//! A listener is a URL: `mqtt://ADDR:PORT` (a bare `ADDR:PORT` is the same), `mqtts://ADDR:PORT`,
//! `ws://ADDR:PORT/PATH` and `wss://ADDR:PORT/PATH` (PATH defaults to `/mqtt`). The `--tls-*`
//! flags (and the same top-level keys in the file) apply to every TLS listener; a
//! `[[listener]]` table overrides them for its own listener:
//!
//! ```toml
//! listen = ["127.0.0.1:1883"]
//! tls_cert = "server.pem"
//! tls_key = "server.key"
//!
//! [[listener]]
//! url = "mqtts://0.0.0.0:8883"
//! tls_client_ca = "ca.pem"
//! tls_client_auth = "required"
//! # This listener's own credentials and ACL (Mosquitto's `per_listener_settings true`):
//! password_file = "public.passwd"
//! acl_file = "public.acl"
//! max_connections = 10000
//! ```
//!
//! A listener's index (what [`crate::core::ConnInfo::listener`] holds) is its position in
//! [`super::Config::listen`]: the `--listen` flags in order, or else the file's `listen`
//! entries followed by its `[[listener]]` tables.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::core::Transport;

/// The WebSocket path when a `ws://` or `wss://` URL names none.
pub const WS_PATH_DEFAULT: &str = "/mqtt";
/// The most listeners a broker may have (each shard holds a socket per listener).
pub const LISTENERS_MAX: usize = 64;

/// One listening address and how its connections are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where to listen (port 0 picks a free port, shared by all shards).
    pub addr: SocketAddr,
    /// The transport under MQTT.
    pub transport: Transport,
    /// The HTTP path of the WebSocket upgrade (`ws`/`wss` only; empty otherwise).
    pub ws_path: String,
    /// Origins a browser may connect from (`ws`/`wss`; empty: any, and requests without an
    /// `Origin` header are always allowed, as non-browser clients send none).
    pub ws_origins: Vec<String>,
    /// Certificate, key and client-certificate policy (`mqtts`/`wss` only).
    pub tls: Option<TlsConfig>,
    /// Connections start with a PROXY protocol header (v1 or v2) from a load balancer,
    /// whose source address becomes the client's.
    pub proxy_protocol: bool,
    /// Whether clients without credentials are accepted here; `None`: the broker-wide
    /// `allow_anonymous` (`[[listener]]` tables only, like Mosquitto's per-listener setting).
    pub allow_anonymous: Option<bool>,
    /// This listener's own Mosquitto password file and users file (`[[listener]]` tables
    /// only): its clients are checked against these only. Neither: the global ones.
    pub password_file: Option<PathBuf>,
    /// See `password_file`.
    pub users_file: Option<PathBuf>,
    /// This listener's own ACL file (`[[listener]]` tables only); `None`: the global one.
    pub acl_file: Option<PathBuf>,
    /// Connected clients of this listener at most (`[[listener]] max_connections`); past
    /// it, CONNECT gets 0x97 Quota exceeded like the broker-wide `--max-connections`.
    pub connections_max: Option<u64>,
}

impl ListenerConfig {
    /// A plain MQTT listener on `addr`.
    pub fn mqtt(addr: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            addr,
            transport: Transport::Tcp,
            ws_path: String::new(),
            ws_origins: Vec::new(),
            tls: None,
            proxy_protocol: false,
            allow_anonymous: None,
            password_file: None,
            users_file: None,
            acl_file: None,
            connections_max: None,
        }
    }

    /// The listener as a URL (`wss://127.0.0.1:8443/mqtt`).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.transport.scheme(), self.addr, self.ws_path)
    }
}

/// Whether a TLS listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never asks.
    None,
    /// Asks; a client without one is served, one with a bad one is refused.
    Optional,
    /// Asks and refuses a client without a valid one.
    Required,
}

/// A TLS listener's files and client-certificate policy. The files are read when the broker
/// starts and again on reload (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is asked for.
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM) checked against client certificates.
    pub crl: Option<PathBuf>,
    /// The client certificate's subject CN becomes the user name; no password is asked.
    pub identity_as_username: bool,
}

/// Listener flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct ListenArgs {
    /// Where to listen, as a URL (repeatable): `mqtt://ADDR:PORT` (or just `ADDR:PORT`),
    /// `mqtts://ADDR:PORT`, `ws://ADDR:PORT/PATH`, `wss://ADDR:PORT/PATH` (PATH defaults to
    /// /mqtt). Default mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// Server certificate chain (PEM) for mqtts:// and wss:// listeners.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for mqtts:// and wss:// listeners.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required` (default: `required` with --tls-client-ca, else
    /// `none`).
    #[arg(long, value_name = "MODE")]
    tls_client_auth: Option<String>,
    /// Certificate revocation list (PEM) for client certificates.
    #[arg(long, value_name = "FILE")]
    tls_crl: Option<PathBuf>,
    /// Use the client certificate's subject CN as the user name (no password asked).
    #[arg(long)]
    tls_identity_as_username: bool,
    /// Origin a browser may open a WebSocket from (repeatable; default: any).
    #[arg(long, value_name = "ORIGIN")]
    ws_origin: Vec<String>,
    /// Every --listen listener expects a PROXY protocol v1/v2 header first (behind a load
    /// balancer; the header's source address becomes the client's).
    #[arg(long)]
    proxy_protocol: bool,
}

impl ListenArgs {
    pub(super) fn given(&self) -> bool {
        !self.listen.is_empty()
    }

    /// `--tls-cert` and `--tls-key` (the HTTP listener's default certificate).
    pub(super) fn tls_cert_key(&self) -> (Option<&PathBuf>, Option<&PathBuf>) {
        (self.tls_cert.as_ref(), self.tls_key.as_ref())
    }
}

/// A `[[listener]]` table: a URL and the settings that differ from the top-level ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerTable {
    url: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_client_auth: Option<String>,
    tls_crl: Option<PathBuf>,
    tls_identity_as_username: Option<bool>,
    ws_origins: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    users_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    max_connections: Option<u64>,
}

/// The flags, the file's top-level keys and its tables, merged into the listener list.
pub(super) fn resolve_listeners(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let args = &cli.listen;
    let top = file;
    // Flags over the file's top-level keys.
    let defaults = ListenerTable {
        url: String::new(),
        tls_cert: args.tls_cert.clone().or_else(|| top.tls_cert.clone()),
        tls_key: args.tls_key.clone().or_else(|| top.tls_key.clone()),
        tls_client_ca: args.tls_client_ca.clone().or_else(|| top.tls_client_ca.clone()),
        tls_client_auth: args.tls_client_auth.clone().or_else(|| top.tls_client_auth.clone()),
        tls_crl: args.tls_crl.clone().or_else(|| top.tls_crl.clone()),
        tls_identity_as_username: (args.tls_identity_as_username
            || top.tls_identity_as_username.unwrap_or(false))
        .then_some(true),
        ws_origins: if args.ws_origin.is_empty() {
            top.ws_origins.clone()
        } else {
            Some(args.ws_origin.clone())
        },
        proxy_protocol: (args.proxy_protocol || top.proxy_protocol.unwrap_or(false))
            .then_some(true),
        ..ListenerTable::default()
    };
    let mut out: Vec<ListenerConfig> = Vec::new();
    let mut push = |key: &str, table: &ListenerTable| -> Result<(), ConfigError> {
        let l = listener(key, table, &defaults)?;
        if out.contains(&l) {
            // The same listener twice: one socket.
            return Ok(());
        }
        if l.addr.port() != 0 {
            if let Some(other) = out.iter().find(|o| o.addr == l.addr) {
                return Err(invalid(format!(
                    "{key} `{}`: {} is already the address of `{}`",
                    table.url,
                    l.addr,
                    other.url()
                )));
            }
        }
        out.push(l);
        Ok(())
    };
    if args.given() {
        for url in &args.listen {
            push("--listen", &ListenerTable { url: url.clone(), ..ListenerTable::default() })?;
        }
    } else if file.listen.is_some() || file.listener.is_some() {
        for url in file.listen.iter().flatten() {
            push("listen", &ListenerTable { url: url.clone(), ..ListenerTable::default() })?;
        }
        for (i, table) in file.listener.iter().flatten().enumerate() {
            push(&format!("[[listener]] #{}", i + 1), table)?;
        }
        if out.is_empty() {
            return Err(invalid("listen: at least one address is required"));
        }
    } else {
        out.push(ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 1883))));
    }
    if out.len() > LISTENERS_MAX {
        return Err(invalid(format!("listen: at most {LISTENERS_MAX} listeners")));
    }
    Ok(out)
}

/// One listener from its table (a `--listen` or `listen` entry is a table with only a URL)
/// over the defaults.
fn listener(
    key: &str,
    table: &ListenerTable,
    defaults: &ListenerTable,
) -> Result<ListenerConfig, ConfigError> {
    let item = &table.url;
    let bad = |why: String| invalid(format!("{key} `{item}`: {why}"));
    let (transport, addr, path) = parse_url(item).map_err(bad)?;
    let ws_origins = table.ws_origins.clone().or_else(|| defaults.ws_origins.clone());
    let tls_keys_given = table.tls_cert.is_some()
        || table.tls_key.is_some()
        || table.tls_client_ca.is_some()
        || table.tls_client_auth.is_some()
        || table.tls_crl.is_some()
        || table.tls_identity_as_username.is_some();
    if !transport.is_tls() && tls_keys_given {
        return Err(bad("tls_* keys apply to mqtts:// and wss:// listeners only".into()));
    }
    if !transport.is_websocket() && table.ws_origins.is_some() {
        return Err(bad("ws_origins applies to ws:// and wss:// listeners only".into()));
    }
    let tls = if transport.is_tls() {
        let pick = |own: &Option<PathBuf>, default: &Option<PathBuf>| {
            own.clone().or_else(|| default.clone())
        };
        let cert = pick(&table.tls_cert, &defaults.tls_cert)
            .ok_or_else(|| bad("a TLS listener needs a certificate (--tls-cert)".into()))?;
        let key_file = pick(&table.tls_key, &defaults.tls_key)
            .ok_or_else(|| bad("a TLS listener needs a private key (--tls-key)".into()))?;
        let client_ca = pick(&table.tls_client_ca, &defaults.tls_client_ca);
        let crl = pick(&table.tls_crl, &defaults.tls_crl);
        let client_auth = match table.tls_client_auth.as_ref().or(defaults.tls_client_auth.as_ref())
        {
            Some(s) => parse_client_auth(s).map_err(bad)?,
            None if client_ca.is_some() => ClientAuth::Required,
            None => ClientAuth::None,
        };
        let identity_as_username =
            table.tls_identity_as_username.or(defaults.tls_identity_as_username).unwrap_or(false);
        if client_auth != ClientAuth::None && client_ca.is_none() {
            return Err(bad(
                "tls_client_auth optional/required needs a CA to check certificates against \
                 (--tls-client-ca)"
                    .into(),
            ));
        }
        if client_auth == ClientAuth::None && (crl.is_some() || identity_as_username) {
            return Err(bad("--tls-crl and --tls-identity-as-username need client certificates \
                 (--tls-client-ca, --tls-client-auth optional|required)"
                .into()));
        }
        Some(TlsConfig { cert, key: key_file, client_ca, client_auth, crl, identity_as_username })
    } else {
        None
    };
    let proxy_protocol = table.proxy_protocol.or(defaults.proxy_protocol).unwrap_or(false);
    if table.max_connections == Some(0) {
        return Err(bad("max_connections 0 would refuse everything: leave it unset".into()));
    }
    Ok(ListenerConfig {
        addr,
        transport,
        proxy_protocol,
        ws_path: path,
        ws_origins: if transport.is_websocket() { ws_origins.unwrap_or_default() } else { vec![] },
        tls,
        allow_anonymous: table.allow_anonymous,
        password_file: table.password_file.clone(),
        users_file: table.users_file.clone(),
        acl_file: table.acl_file.clone(),
        connections_max: table.max_connections,
    })
}

fn parse_client_auth(s: &str) -> Result<ClientAuth, String> {
    match s {
        "none" => Ok(ClientAuth::None),
        "optional" => Ok(ClientAuth::Optional),
        "required" => Ok(ClientAuth::Required),
        _ => Err(format!("tls_client_auth `{s}`: expected none, optional or required")),
    }
}

/// Splits a listener URL into transport, address and WebSocket path.
pub(super) fn parse_url(item: &str) -> Result<(Transport, SocketAddr, String), String> {
    let (transport, rest) = match item.split_once("://") {
        Some((scheme, rest)) => {
            let t = Transport::from_scheme(scheme).ok_or_else(|| {
                format!("unknown scheme `{scheme}` (expected mqtt, mqtts, ws or wss)")
            })?;
            (t, rest)
        }
        None => (Transport::Tcp, item),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if transport.is_websocket() {
        if path.is_empty() {
            WS_PATH_DEFAULT.to_owned()
        } else if path.len() > 256 || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the path must be at most 256 printable ASCII characters".into());
        } else {
            path.to_owned()
        }
    } else if !path.is_empty() && path != "/" {
        return Err(format!("a path (`{path}`) only makes sense for ws:// and wss://"));
    } else {
        String::new()
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{e} (expected SCHEME://ADDR:PORT)"))?
        .next()
        .ok_or_else(|| "resolves to no address".to_owned())?;
    Ok((transport, addr, path))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, parse_with};
    use super::*;

    #[test]
    fn urls() {
        let p = |s: &str| parse_url(s).unwrap();
        let a: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(p("127.0.0.1:1883"), (Transport::Tcp, a, String::new()));
        assert_eq!(p("mqtt://127.0.0.1:1883"), (Transport::Tcp, a, String::new()));
        assert_eq!(p("mqtts://127.0.0.1:1883"), (Transport::Tls, a, String::new()));
        assert_eq!(p("ws://127.0.0.1:1883"), (Transport::Ws, a, "/mqtt".into()));
        assert_eq!(p("wss://127.0.0.1:1883/x/y"), (Transport::Wss, a, "/x/y".into()));
        assert_eq!(p("ws://[::1]:80/").2, "/");
        assert!(parse_url("http://127.0.0.1:1").unwrap_err().contains("unknown scheme"));
        assert!(parse_url("mqtt://127.0.0.1:1/x").unwrap_err().contains("ws://"));
        assert!(parse_url("mqtt://127.0.0.1").is_err());
        assert!(parse_url("ws://127.0.0.1:1/a b").is_err());
    }

    #[test]
    fn listen_flags() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "ws://127.0.0.1:0/m",
            "--listen",
            "mqtts://127.0.0.1:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        let kinds: Vec<_> = c.listen.iter().map(|l| l.transport).collect();
        assert_eq!(kinds, [Transport::Tcp, Transport::Ws, Transport::Tls]);
        assert_eq!(c.listen[1].ws_path, "/m");
        let tls = c.listen[2].tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert!(c.listen[0].tls.is_none());
        // The same listener twice is one listener; one address for two is an error.
        let c = parse(&["--listen", "127.0.0.1:0", "--listen", "mqtt://127.0.0.1:0"]).unwrap();
        assert_eq!(c.listen.len(), 1);
        let e = parse(&["--listen", "127.0.0.1:5", "--listen", "ws://127.0.0.1:5"]).unwrap_err();
        assert!(e.contains("already the address"), "{e}");
    }

    #[test]
    fn tls_settings_are_checked() {
        let e = parse(&["--listen", "mqtts://127.0.0.1:0"]).unwrap_err();
        assert!(e.contains("--listen `mqtts://127.0.0.1:0`") && e.contains("--tls-cert"), "{e}");
        let base = ["--listen", "mqtts://127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k"];
        let with = |more: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(more);
            parse(&v)
        };
        let e = with(&["--tls-client-auth", "required"]).unwrap_err();
        assert!(e.contains("--tls-client-ca"), "{e}");
        let e = with(&["--tls-client-auth", "maybe"]).unwrap_err();
        assert!(e.contains("none, optional or required"), "{e}");
        let e = with(&["--tls-identity-as-username"]).unwrap_err();
        assert!(e.contains("client certificates"), "{e}");
        let c = with(&["--tls-client-ca", "ca", "--tls-crl", "crl"]).unwrap();
        let tls = c.listen[0].tls.as_ref().unwrap();
        assert_eq!(tls.client_auth, ClientAuth::Required, "a CA alone means required");
        assert_eq!(tls.crl, Some(PathBuf::from("crl")));
        let c = with(&["--tls-client-ca", "ca", "--tls-client-auth", "optional"]).unwrap();
        assert_eq!(c.listen[0].tls.as_ref().unwrap().client_auth, ClientAuth::Optional);
    }

    #[test]
    fn listener_tables() {
        let file = r#"
            listen = ["127.0.0.1:0"]
            tls_cert = "c.pem"
            tls_key = "k.pem"
            [[listener]]
            url = "wss://127.0.0.1:0"
            ws_origins = ["https://a.example"]
            [[listener]]
            url = "mqtts://127.0.0.1:0"
            tls_key = "other.key"
            tls_client_ca = "ca.pem"
            tls_identity_as_username = true
        "#;
        let c = parse_with(&[], file, &[0]).unwrap();
        assert_eq!(c.listen.len(), 3);
        assert_eq!(c.listen[1].transport, Transport::Wss);
        assert_eq!(c.listen[1].ws_path, "/mqtt");
        assert_eq!(c.listen[1].ws_origins, ["https://a.example"]);
        assert_eq!(c.listen[1].tls.as_ref().unwrap().key, PathBuf::from("k.pem"));
        let tls = c.listen[2].tls.as_ref().unwrap();
        assert_eq!(tls.key, PathBuf::from("other.key"));
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert!(tls.identity_as_username);
        assert!(c.listen.iter().all(|l| !l.proxy_protocol));
        let e = "[[listener]]\nurl = \"127.0.0.1:0\"\nproxy_protocol = true\n";
        assert!(parse_with(&[], e, &[0]).unwrap().listen[0].proxy_protocol);
        let c = parse(&["--listen", "127.0.0.1:0", "--proxy-protocol"]).unwrap();
        assert!(c.listen[0].proxy_protocol);
        // A flag replaces the file's listeners.
        let c = parse_with(&["--listen", "127.0.0.1:0"], file, &[0]).unwrap();
        assert_eq!(c.listen.len(), 1);
        // Keys that do not apply are errors naming the table.
        let e = parse_with(&[], "[[listener]]\nurl = \"127.0.0.1:0\"\ntls_crl = \"x\"\n", &[0])
            .unwrap_err();
        assert!(e.contains("[[listener]] #1") && e.contains("mqtts://"), "{e}");
        let e =
            parse_with(&[], "[[listener]]\nurl = \"127.0.0.1:0\"\nbogus = 1\n", &[0]).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }
}
