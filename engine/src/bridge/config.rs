//! `[[bridge]]` tables of the configuration file.
//!
//! ```toml
//! [[bridge]]
//! name = "edge1"
//! address = "mqtt://central.example:1883"      # or addresses = [...], tried in turn
//! protocol = "3.1.1"                           # or "5.0"
//! client_id = "edge1"
//! topics = ["sensors/# out 1", "cmd/# in 1 \"\" edge1/"]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shardmq_codec::ProtocolVersion;

use super::topics::{TopicRule, TOPIC_RULES_MAX};

/// The most bridges one broker may have.
pub const BRIDGES_MAX: usize = 64;
/// The most remote addresses one bridge may list.
pub const ADDRESSES_MAX: usize = 16;

/// A `[[bridge]]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTable {
    name: String,
    address: Option<String>,
    addresses: Option<Vec<String>>,
    protocol: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    keepalive_secs: Option<u16>,
    clean_start: Option<bool>,
    session_expiry_secs: Option<u32>,
    topics: Vec<String>,
    reconnect_min_secs: Option<u32>,
    reconnect_max_secs: Option<u32>,
    try_private: Option<bool>,
    local_client_id: Option<String>,
    local_username: Option<String>,
    local_password: Option<String>,
    inflight_max: Option<u16>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

/// TLS to the remote broker (`mqtts://` addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// CA certificates (PEM) the remote's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate chain (PEM), when the remote asks for one.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// One bridge, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Unique name (logs, `$SYS/broker/bridges/NAME/...`, the default client ids).
    pub name: String,
    /// Remote `HOST:PORT`s (`HOST:PORT/PATH` for WebSocket), tried in turn.
    pub addresses: Vec<String>,
    /// MQTT version spoken to the remote broker (3.1.1 or 5.0).
    pub protocol: ProtocolVersion,
    /// Client id at the remote broker (default: the name).
    pub client_id: String,
    /// Credentials at the remote broker.
    pub username: Option<String>,
    /// Password at the remote broker.
    pub password: Option<String>,
    /// Keep alive on both links.
    pub keepalive_secs: u16,
    /// Clean start at the remote broker (default false: the remote keeps what arrives for
    /// the bridge while the link is down).
    pub clean_start: bool,
    /// 5.0: session expiry asked of the remote broker.
    pub session_expiry_secs: u32,
    /// What crosses, which way.
    pub topics: Vec<TopicRule>,
    /// First reconnect delay; doubles (with jitter) up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// 3.1.1: announce a bridge (protocol level | 0x80, Mosquitto's `try_private`).
    pub try_private: bool,
    /// The bridge's client id at this broker (default `bridge-NAME`).
    pub local_client_id: String,
    /// Credentials at this broker, when it requires them.
    pub local_username: Option<String>,
    /// Password at this broker.
    pub local_password: Option<String>,
    /// Unacknowledged QoS 1/2 messages per direction.
    pub inflight_max: u16,
    /// TLS to the remote (every address is `mqtts://` or `wss://`), or none.
    pub tls: Option<BridgeTls>,
    /// MQTT over WebSocket (every address is `ws://` or `wss://`; each address then ends
    /// with its path, `/mqtt` unless given).
    pub websocket: bool,
}

impl BridgeTable {
    /// Checks the table; errors name the bridge and the key.
    pub fn resolve(self) -> Result<BridgeConfig, String> {
        let name = self.name.trim().to_string();
        if name.is_empty() || name.contains(['/', '+', '#']) || name.chars().any(char::is_control) {
            // It names a thread and `$SYS/broker/bridges/NAME/…` topics [MQTT-1.5.4-2].
            return Err(format!(
                "bridge {:?}: name: non-empty, without / + # or control characters",
                self.name
            ));
        }
        let err = |key: &str, why: String| format!("bridge {name:?}: {key}: {why}");
        let mut addresses = Vec::new();
        let mut schemes = Vec::new();
        for a in self.address.iter().chain(self.addresses.iter().flatten()) {
            let (tls, ws, rest) = match a.split_once("://") {
                None => (false, false, a.as_str()),
                Some(("mqtt" | "tcp", rest)) => (false, false, rest),
                Some(("mqtts" | "ssl" | "tls", rest)) => (true, false, rest),
                Some(("ws", rest)) => (false, true, rest),
                Some(("wss", rest)) => (true, true, rest),
                Some((scheme, _)) => {
                    return Err(err(
                        "address",
                        format!(
                            "{a:?}: scheme {scheme}:// is not supported (mqtt://, mqtts://, \
                             ws://, wss://)"
                        ),
                    ))
                }
            };
            // WebSocket addresses keep their path (default /mqtt); others have none.
            let (hostport, path) = match rest.find('/') {
                Some(i) if ws => (&rest[..i], &rest[i..]),
                None if ws => (rest, "/mqtt"),
                Some(_) => {
                    return Err(err("address", format!("{a:?}: a path needs ws:// or wss://")))
                }
                None => (rest, ""),
            };
            schemes.push((tls, ws));
            if hostport.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(err("address", format!("{a:?}: expected mqtt://HOST:PORT")));
            }
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err("address", format!("{a:?}: the path has a space")));
            }
            addresses.push(format!("{hostport}{path}"));
        }
        if addresses.is_empty() || addresses.len() > ADDRESSES_MAX {
            return Err(err("address", format!("1 to {ADDRESSES_MAX} addresses")));
        }
        let websocket = schemes.first().is_some_and(|(_, ws)| *ws);
        if schemes.iter().any(|(_, ws)| *ws != websocket) {
            return Err(err("address", "all WebSocket (ws://, wss://) or none".into()));
        }
        let schemes: Vec<bool> = schemes.into_iter().map(|(tls, _)| tls).collect();
        let tls = match (schemes.iter().all(|t| *t), schemes.iter().any(|t| *t)) {
            (true, _) => match self.tls_ca_file {
                Some(ca_file) => {
                    if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
                        return Err(err("tls_cert_file", "needs tls_key_file (and back)".into()));
                    }
                    Some(BridgeTls {
                        ca_file,
                        cert_file: self.tls_cert_file,
                        key_file: self.tls_key_file,
                    })
                }
                None => {
                    return Err(err(
                        "tls_ca_file",
                        "mqtts:// and wss:// need the remote's CA".into(),
                    ))
                }
            },
            (false, true) => {
                return Err(err("address", "all with TLS (mqtts://, wss://) or none".into()))
            }
            (false, false) => None,
        };
        let protocol = match self.protocol.as_deref().unwrap_or("3.1.1") {
            "3.1.1" | "mqttv311" | "4" => ProtocolVersion::V3_1_1,
            "5" | "5.0" | "mqttv50" => ProtocolVersion::V5,
            other => return Err(err("protocol", format!("{other:?}: 3.1.1 or 5.0"))),
        };
        if self.topics.is_empty() || self.topics.len() > TOPIC_RULES_MAX {
            return Err(err("topics", format!("1 to {TOPIC_RULES_MAX} rules")));
        }
        let topics = self
            .topics
            .iter()
            .map(|t| TopicRule::parse(t).map_err(|e| err("topics", format!("{t:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let min = self.reconnect_min_secs.unwrap_or(1).max(1);
        let max = self.reconnect_max_secs.unwrap_or(30).max(min);
        let inflight_max = self.inflight_max.unwrap_or(20);
        if inflight_max == 0 {
            return Err(err("inflight_max", "at least 1".into()));
        }
        let keepalive_secs = self.keepalive_secs.unwrap_or(60);
        if keepalive_secs < 2 {
            return Err(err("keepalive_secs", "at least 2".into()));
        }
        Ok(BridgeConfig {
            client_id: self.client_id.unwrap_or_else(|| name.clone()),
            local_client_id: self.local_client_id.unwrap_or_else(|| format!("bridge-{name}")),
            name,
            addresses,
            protocol,
            username: self.username,
            password: self.password,
            keepalive_secs,
            clean_start: self.clean_start.unwrap_or(false),
            session_expiry_secs: self.session_expiry_secs.unwrap_or(7 * 24 * 3600),
            topics,
            reconnect_min: Duration::from_secs(u64::from(min)),
            reconnect_max: Duration::from_secs(u64::from(max)),
            try_private: self.try_private.unwrap_or(true),
            local_username: self.local_username,
            local_password: self.local_password,
            inflight_max,
            tls,
            websocket,
        })
    }
}

/// Checks every table (names unique, at most [`BRIDGES_MAX`]).
pub fn resolve_all(tables: Vec<BridgeTable>) -> Result<Vec<BridgeConfig>, String> {
    if tables.len() > BRIDGES_MAX {
        return Err(format!("at most {BRIDGES_MAX} bridges"));
    }
    let mut out: Vec<BridgeConfig> = Vec::new();
    for t in tables {
        let b = t.resolve()?;
        if out.iter().any(|o| o.name == b.name || o.local_client_id == b.local_client_id) {
            return Err(format!("bridge {:?}: defined twice", b.name));
        }
        out.push(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Vec<BridgeConfig>, String> {
        #[derive(Deserialize)]
        struct F {
            bridge: Vec<BridgeTable>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve_all(f.bridge)
    }

    #[test]
    fn a_bridge_with_defaults() {
        let b = table(
            "[[bridge]]\nname = \"edge1\"\naddress = \"mqtt://127.0.0.1:1884\"\n\
             topics = [\"sensors/# out 1\", \"cmd/# in 1\"]\n",
        )
        .unwrap();
        let b = &b[0];
        assert_eq!(b.addresses, vec!["127.0.0.1:1884".to_string()]);
        assert_eq!((b.client_id.as_str(), b.local_client_id.as_str()), ("edge1", "bridge-edge1"));
        assert_eq!(b.protocol, ProtocolVersion::V3_1_1);
        assert!(!b.clean_start && b.try_private);
        assert_eq!(b.topics.len(), 2);
    }

    #[test]
    fn bad_tables_name_the_key() {
        let base = "[[bridge]]\nname = \"b\"\ntopics = [\"a out 1\"]\n";
        let e = table(base).unwrap_err();
        assert!(e.contains("address"), "{e}");
        let e = table(&format!("{base}address = \"http://h:1\"\n")).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let ws = table(&format!("{base}address = \"ws://h:1\"\n")).unwrap();
        assert!(ws[0].websocket && ws[0].tls.is_none());
        assert_eq!(ws[0].addresses, vec!["h:1/mqtt".to_string()]);
        let wss = table(&format!("{base}address = \"wss://h:1/x/y\"\ntls_ca_file = \"c\"\n"));
        assert_eq!(wss.unwrap()[0].addresses, vec!["h:1/x/y".to_string()]);
        let e = table(&format!("{base}addresses = [\"ws://h:1\", \"h:2\"]\n")).unwrap_err();
        assert!(e.contains("WebSocket"), "{e}");
        let e = table(&format!("{base}address = \"h:1/x\"\n")).unwrap_err();
        assert!(e.contains("path"), "{e}");
        let e = table(&format!("{base}address = \"mqtts://h:1\"\n")).unwrap_err();
        assert!(e.contains("tls_ca_file"), "{e}");
        let ok = table(&format!("{base}address = \"mqtts://h:1\"\ntls_ca_file = \"ca.pem\"\n"));
        assert!(ok.unwrap()[0].tls.is_some());
        let e =
            table(&format!("{base}addresses = [\"mqtts://h:1\", \"h:2\"]\ntls_ca_file = \"c\"\n"))
                .unwrap_err();
        assert!(e.contains("or none"), "{e}");
        let e = table(&format!("{base}address = \"h:1\"\nprotocol = \"6\"\n")).unwrap_err();
        assert!(e.contains("protocol"), "{e}");
        let e = table(&format!("{base}address = \"h:1\"\n{base}address = \"h:2\"\n")).unwrap_err();
        assert!(e.contains("defined twice"), "{e}");
        let e = table("[[bridge]]\nname = \"b\"\naddress = \"h:1\"\ntopics = [\"a up 1\"]\n")
            .unwrap_err();
        assert!(e.contains("topics") && e.contains("direction"), "{e}");
    }
}
