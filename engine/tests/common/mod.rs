//! Helpers for the black-box tests: an in-process broker, rumqttc clients whose event loops
//! run in tasks, and a raw client speaking bytes through the codec.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    decode, encode, ByteStr, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish,
    Subscribe, SubscriptionOptions,
};
use shardmq_engine::config::Config;
use shardmq_engine::core::shard::ShardCore;
use shardmq_engine::io::{Broker, BrokerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Generous bound for anything that should happen "soon" (never a performance assertion).
pub const WAIT: Duration = Duration::from_secs(20);

/// Starts a broker with `shards` unpinned shards on 127.0.0.1:0.
pub fn broker(shards: u16) -> BrokerHandle {
    broker_with(shards, |_| {})
}

/// Starts a broker after letting `f` adjust the configuration.
pub fn broker_with(shards: u16, f: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut config = Config::local(shards);
    f(&mut config);
    Broker::start(&config).unwrap_or_else(|e| panic!("broker did not start: {e}"))
}

/// The broker's (first) address.
pub fn addr(b: &BrokerHandle) -> SocketAddr {
    b.local_addrs()[0]
}

/// Shuts the broker down off the async runtime (it joins threads).
pub async fn shutdown(b: BrokerHandle) {
    tokio::task::spawn_blocking(move || b.shutdown()).await.expect("shutdown");
}

/// `n` client ids starting with `prefix` whose home shards cover every one of `shards`.
pub fn ids_on_all_shards(prefix: &str, n: usize, shards: u16) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for s in 0..shards {
        assert!(
            ids.iter().any(|id| ShardCore::home_shard(id.as_bytes(), shards).0 == s),
            "no id homed on shard {s}: pick another prefix"
        );
    }
    ids
}

/// The first id `prefix-N` homed on `shard`.
pub fn id_on_shard(prefix: &str, shard: u16, shards: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| ShardCore::home_shard(id.as_bytes(), shards).0 == shard)
        .expect("some id")
}

/// Awaits `f` for at most [`WAIT`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ------------------------------------------------------------------------------------------
// rumqttc 3.1.1 client

/// A rumqttc 3.1.1 client whose event loop runs in a task that stops at the first error
/// (no automatic reconnect).
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    task: tokio::task::JoinHandle<()>,
    /// PUBLISH packets that arrived while waiting for a SUBACK: the server may start
    /// sending matching messages before the SUBACK (3.1.1 §3.8.4, 5.0 §3.8.4).
    early: std::collections::VecDeque<rumqttc::Publish>,
}

impl V4 {
    /// Connects and waits for CONNACK; `f` adjusts the options.
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        f: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> V4 {
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(100);
        f(&mut o);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 10_000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = V4 { client, events, task, early: Default::default() };
        let ack = c.next_incoming(&format!("CONNACK for {id}")).await;
        match ack {
            rumqttc::Packet::ConnAck(a) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success, "{id} refused")
            }
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        c
    }

    /// The next incoming packet (panics on error or timeout).
    pub async fn next_incoming(&mut self, what: &str) -> rumqttc::Packet {
        within(what, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(rumqttc::Event::Incoming(p))) => return p,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("{what}: connection failed: {e}"),
                    None => panic!("{what}: event loop ended"),
                }
            }
        })
        .await
    }

    /// Subscribes and waits for SUBACK (asserting the grant is not a failure).
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe queued");
        loop {
            match self.next_incoming(&format!("SUBACK for {filter}")).await {
                rumqttc::Packet::SubAck(a) => {
                    assert!(
                        a.return_codes
                            .iter()
                            .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
                        "subscription to {filter} refused: {a:?}"
                    );
                    return;
                }
                rumqttc::Packet::Publish(p) => self.early.push_back(p),
                _ => {}
            }
        }
    }

    /// The next PUBLISH (other packets are skipped).
    pub async fn next_publish(&mut self, what: &str) -> rumqttc::Publish {
        if let Some(p) = self.early.pop_front() {
            return p;
        }
        loop {
            if let rumqttc::Packet::Publish(p) = self.next_incoming(what).await {
                return p;
            }
        }
    }

    /// Collects `n` PUBLISH packets.
    pub async fn publishes(&mut self, n: usize, what: &str) -> Vec<rumqttc::Publish> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let p = self.next_publish(&format!("{what} ({} of {n} received)", out.len())).await;
            out.push(p);
        }
        out
    }

    /// The next PUBLISH if one arrives before `quiet` passes without any.
    pub async fn publish_within(&mut self, quiet: Duration) -> Option<rumqttc::Publish> {
        if let Some(p) = self.early.pop_front() {
            return Some(p);
        }
        loop {
            match tokio::time::timeout(quiet, self.events.recv()).await {
                Err(_) => return None,
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    return Some(p)
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection failed: {e}"),
                Ok(None) => return None,
            }
        }
    }

    /// Every PUBLISH that arrives before the marker, the first PUBLISH on `marker_topic`
    /// (consumed, not returned). The caller sends the marker after whatever is being checked,
    /// on a path that keeps order with it (MQTT keeps one publisher's messages in order per
    /// topic, 4.6; shardmq also across topics of one publisher at one QoS), so whatever was
    /// going to arrive has arrived when the marker does. Panics if the connection fails or
    /// ends first, or if the marker does not come within [`WAIT`].
    pub async fn publishes_before_marker(
        &mut self,
        marker_topic: &str,
        what: &str,
    ) -> Vec<rumqttc::Publish> {
        let mut before = Vec::new();
        loop {
            let p = self.next_publish(&format!("{what}: the marker on {marker_topic}")).await;
            if p.topic == marker_topic {
                return before;
            }
            before.push(p);
        }
    }

    /// Asserts that the marker (see [`V4::publishes_before_marker`]) is the next PUBLISH:
    /// nothing else was published to this client before it. Fails if the connection fails
    /// or ends before the marker: a closed connection proves nothing.
    pub async fn assert_no_publish_before_marker(&mut self, marker_topic: &str, what: &str) {
        let before = self.publishes_before_marker(marker_topic, what).await;
        assert!(before.is_empty(), "{what}: unexpected PUBLISH before the marker: {before:?}");
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = within("event loop end after DISCONNECT", async {
            while let Some(ev) = self.events.recv().await {
                if ev.is_err() {
                    break;
                }
                if let Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) = ev {
                    break;
                }
            }
        })
        .await;
        // Let the DISCONNECT reach the socket before dropping it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }

    /// Drops the connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// rumqttc 5.0 client

/// A rumqttc 5.0 client, like [`V4`].
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl V5 {
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        f: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> V5 {
        let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(60));
        f(&mut o);
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 10_000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        let mut c = V5 { client, events, task };
        match c.next_incoming(&format!("CONNACK for {id}")).await {
            Ok(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a)) => assert_eq!(
                a.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
                "{id} refused"
            ),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        c
    }

    /// The next incoming packet, or the error that ended the connection.
    pub async fn next_incoming(
        &mut self,
        what: &str,
    ) -> Result<rumqttc::v5::mqttbytes::v5::Packet, String> {
        within(what, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(rumqttc::v5::Event::Incoming(p))) => return Ok(p),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err("event loop ended".into()),
                }
            }
        })
        .await
    }

    /// The next PUBLISH (other packets are skipped; panics if the connection ends).
    pub async fn next_publish(&mut self, what: &str) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            match self.next_incoming(what).await {
                Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => return p,
                Ok(_) => {}
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe queued");
        loop {
            match self.next_incoming(&format!("SUBACK for {filter}")).await {
                Ok(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)) => return,
                Ok(_) => {}
                Err(e) => panic!("SUBACK for {filter}: {e}"),
            }
        }
    }

    pub fn kill(self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// Raw client

/// A client that speaks packets through the codec (or raw bytes) over a plain socket.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = within("TCP connect", TcpStream::connect(addr)).await.expect("connect");
        stream.set_nodelay(true).ok();
        Raw { stream, buf: BytesMut::new(), version: ProtocolVersion::V3_1_1 }
    }

    /// A CONNECT packet.
    pub fn connect_packet(id: &str, version: ProtocolVersion, clean_start: bool) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start,
            keep_alive_secs: 60,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }))
    }

    /// A SUBSCRIBE (packet id 1) to one filter.
    pub fn subscribe_packet(filter: &str, qos: shardmq_codec::QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions { qos, ..Default::default() },
            )],
            properties: None,
        })
    }

    /// A PUBLISH without RETAIN (`id` for QoS 1/2).
    pub fn publish_packet(
        topic: &str,
        qos: shardmq_codec::QoS,
        id: Option<u16>,
        payload: Vec<u8>,
    ) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteStr::from(topic),
            packet_id: id.map(|i| PacketId::new(i).unwrap()),
            payload: Bytes::from(payload),
            properties: None,
        })
    }

    /// Opens a socket, sends CONNECT and expects a successful CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str, version: ProtocolVersion) -> Raw {
        let mut r = Raw::open(addr).await;
        r.version = version;
        r.send(&Raw::connect_packet(id, version, true)).await;
        match r.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason.0, 0, "{id} refused: {a:?}"),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        r
    }

    pub fn encode(&self, p: &Packet) -> Bytes {
        let mut out = BytesMut::new();
        encode(p, self.version, &mut out).expect("encodable");
        out.freeze()
    }

    pub async fn send(&mut self, p: &Packet) {
        let b = self.encode(p);
        self.send_bytes(&b).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        within("write", self.stream.write_all(b)).await.expect("write");
    }

    /// The next packet, or `None` once the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        within("a packet from the broker", self.recv_untimed()).await
    }

    async fn recv_untimed(&mut self) -> Option<Packet> {
        let limits = shardmq_codec::Limits { packet_size_max_bytes: 268_435_460 };
        loop {
            match decode(&mut self.buf, &limits, self.version) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent undecodable bytes: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits until the broker closes the connection, skipping packets; returns them.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        within("the broker to close the connection", async {
            let mut seen = Vec::new();
            while let Some(p) = self.recv_untimed().await {
                seen.push(p);
            }
            seen
        })
        .await
    }
}
