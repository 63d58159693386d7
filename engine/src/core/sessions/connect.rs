//! CONNECT and DISCONNECT: client identifiers, takeover, sessions starting, resuming and
//! ending, wills.
//!
//! Shard-local: runs on the home shard of the client id (the io layer moved the connection
//! here), or, for an empty client id, on the shard that accepted it (the assigned id is then
//! chosen so that its home is this shard).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq_codec::{
    ByteStr, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode, Will,
};

use crate::core::auth::exchange::AuthOk;
use crate::core::ids::{ConnId, SessionSlot};
use crate::core::mesh::{Message, Origin};
use crate::core::sessions::conn::Phase;
use crate::core::sessions::session::{PendingWill, Session};
use crate::core::shard::{CloseKind, ShardCore};

impl ShardCore {
    /// CONNECT on a connection awaiting it.
    pub(crate) fn handle_connect(&mut self, conn: ConnId, connect: Connect, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.version = Some(connect.protocol);
        }
        // Redirection and authentication (`auth/exchange.rs`): an enhanced authentication
        // holds the CONNECT and calls `accept_connect` once its AUTH exchange succeeds.
        if let Some((connect, auth)) = self.authenticate_connect(conn, connect, now) {
            // In a cluster, a persistent session may be on another node: it moves here
            // before CONNACK (`cluster/moves.rs`); an older CONNECT still waiting for it
            // gives way to this one.
            self.cluster_supersede_held(&connect.client_id, now);
            if let Some((connect, auth)) = self.cluster_hold_connect(conn, connect, auth) {
                self.accept_connect(conn, connect, auth, now);
            }
        }
    }

    /// An authenticated CONNECT: client id, takeover, session, CONNACK (with the
    /// authentication method's final data, if any).
    pub(crate) fn accept_connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        auth: Option<AuthOk>,
        now: Instant,
    ) {
        let version = connect.protocol;
        let limits = self.config.limits.clone();

        // Client identifier [MQTT-3.1.3-5..9].
        // Sessions outlive the packet: own the bytes instead of pinning the read buffer.
        let mut client_id = ByteStr::from(connect.client_id.as_str());
        let mut assigned = None;
        if client_id.len() > usize::from(limits.client_id_length_max_bytes) {
            return self.refuse_connect(
                conn,
                version,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                now,
            );
        }
        if client_id.is_empty() {
            // 3.1 requires 1 to 23 characters; 3.1.1 allows an empty id only with Clean
            // Session = 1 [MQTT-3.1.3-8]; 5.0 always assigns one [MQTT-3.1.3-6].
            let allowed = match version {
                ProtocolVersion::V3_1 => false,
                ProtocolVersion::V3_1_1 => connect.clean_start,
                ProtocolVersion::V5 => true,
            };
            if !allowed {
                return self.refuse_connect(
                    conn,
                    version,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    now,
                );
            }
            client_id = self.assign_client_id();
            assigned = Some(client_id.clone());
        } else if Self::home_shard(client_id.as_bytes(), self.config.shard_count) != self.shard {
            // The io layer routes connections to their client id's home shard; a session on
            // the wrong shard would break takeover. Serve it anyway rather than fail.
            tracing::error!(shard = %self.shard, %client_id, "CONNECT on a shard that is not the client id's home");
        }

        if let Some(will) = &connect.will {
            if self.topic_limits.check(&will.topic).is_err() {
                return self.refuse_connect(conn, version, ReasonCode::TOPIC_NAME_INVALID, now);
            }
        }

        // Session Expiry Interval: 5.0 from the property (absent = 0); 3.1.1 Clean Session = 0
        // means "never", capped like everything else.
        let requested_expiry_secs = if version.is_v5() {
            connect.properties.session_expiry_interval_secs.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry_secs = requested_expiry_secs.min(limits.session_expiry_max_secs);

        // Keep alive: capped. 5.0 tells the client (Server Keep Alive); 3.1.1 has no way to,
        // so the capped value is used silently (a client pinging less often than it asked is
        // closed after 1.5 × the cap).
        let keep_alive_secs = connect.keep_alive_secs.min(limits.keep_alive_max_secs);

        // Who the client is: the identity its enhanced authentication established, else
        // the CONNECT's user name (checked by `auth/exchange.rs` when authentication is on).
        let enhanced =
            self.conns.get(conn).and_then(|c| c.auth.as_ref()).and_then(|a| a.user.as_deref());
        let user: Option<Box<str>> = enhanced.or(connect.username.as_deref()).map(Into::into);
        // A user name nobody checked (a listener without credentials, while another one has
        // them) is no identity: such a client is anonymous, so it cannot claim a session that
        // a verified user owns by sending that user's name.
        let conn_listener = self.conns.get(conn).map(|c| c.info.listener);
        let verified = enhanced.is_some()
            || self.config.auth.logins_on(conn_listener).authenticates()
            || self.conns.get(conn).is_some_and(|c| c.info.identity_as_username);
        let user = if verified || !self.config.auth.authenticates_anywhere() { user } else { None };

        let existing = self.sessions.find(&client_id);
        if existing.is_none() && self.sessions.len() >= limits.sessions_per_shard_max as usize {
            return self.refuse_connect(conn, version, ReasonCode::QUOTA_EXCEEDED, now);
        }
        // Authentication is on with a password or users file (global, or a listener's own:
        // sessions are shared by the listeners), or on a listener that takes
        // the user name from a verified client certificate.
        let authenticated = self.config.auth.authenticates_anywhere()
            || self.conns.get(conn).is_some_and(|c| c.info.identity_as_username);
        if let Some(slot) = existing.filter(|_| authenticated) {
            // With authentication on, a session belongs to the identity that created it:
            // another user (or an anonymous client) with its client id is refused, and takes
            // over neither the session nor its live connection. 5.0: 0x87 Not authorized
            // (§3.2.2.2); 3.1.1: return code 5, the codec's projection.
            if self.sessions.owner_known(slot) && self.sessions.user(slot) != user.as_deref() {
                self.count_denial(crate::core::policy::Denial::SessionOwner, slot, &client_id);
                return self.refuse_connect(conn, version, ReasonCode::NOT_AUTHORIZED, now);
            }
        }

        // Takeover [MQTT-3.1.4-3]: the existing connection is closed (5.0: DISCONNECT 0x8E),
        // as an abnormal close: its will is published, or delayed if the session continues.
        if let Some(slot) = existing {
            if let Some(old) = self.sessions.get(slot).conn {
                self.close_conn(
                    old,
                    CloseKind::Abnormal(Some(ReasonCode::SESSION_TAKEN_OVER)),
                    now,
                );
            }
        }
        // The broker-wide and the listener's connection quotas (`policy/quota.rs`), taken
        // after a takeover gave the old connection's slot back: 0x97 Quota exceeded (3.1.1:
        // return code 3).
        let listener = self.conns.get(conn).map_or(0, |c| c.info.listener);
        if let Err(full) = self.config.auth.quotas.take_connection(listener) {
            use crate::core::policy::{quota::ConnectionsFull, Denial};
            let denial = match full {
                ConnectionsFull::Broker => Denial::ConnectionsMax,
                ConnectionsFull::Listener => Denial::ListenerConnectionsMax,
            };
            self.stats.denials[denial as usize] += 1;
            tracing::debug!(shard = %self.shard, %client_id, listener, "denied: {}", denial.name());
            return self.refuse_connect(conn, version, ReasonCode::QUOTA_EXCEEDED, now);
        }
        // The old connection's close may have ended the session (expiry 0).
        let existing = self.sessions.find(&client_id);
        let (slot, session_present) = match existing {
            Some(slot) if !connect.clean_start => (slot, true),
            other => {
                if let Some(slot) = other {
                    self.end_session(slot, now);
                }
                (self.sessions.insert(Session::new(&client_id)), false)
            }
        };

        self.sessions.set_user(slot, user.as_deref());
        self.sessions.get_mut(slot).listener = Some(listener);
        if session_present && self.config.auth.any_acl() {
            // The identity may differ from the last connection's (without authentication),
            // and so may the listener, whose ACL judges it.
            self.refresh_acl_coverage(slot);
        }
        let session = self.sessions.get_mut(slot);
        session.conn = Some(conn);
        session.expiry_secs = expiry_secs;
        session.expires_at = None;
        // A reconnection within the Will Delay Interval cancels the delayed will
        // [MQTT-3.1.3-9] (5.0 §3.1.3.2.2).
        session.set_pending_will(None);
        session.will = connect.will.map(|w| {
            Box::new(Will {
                topic: ByteStr::from(w.topic.as_str()),
                payload: Bytes::copy_from_slice(&w.payload),
                ..w
            })
        });

        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let client_packet_size_max_bytes =
            connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let c = self.conns.get_mut(conn).expect("connection being connected");
        c.phase = Phase::Connected(slot);
        let since_start = now.saturating_duration_since(self.config.started_at);
        c.connected_at_secs = u32::try_from(since_start.as_secs()).unwrap_or(u32::MAX);
        c.keep_alive_secs = keep_alive_secs;
        c.client_receive_max = client_receive_max.max(1);
        c.client_packet_size_max_bytes = client_packet_size_max_bytes;
        c.client_topic_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
        self.stats.clients_connected += 1;
        self.cluster_connected(conn, &client_id, !connect.clean_start);
        self.ops.connected(version, listener);
        if tracing::enabled!(tracing::Level::INFO) {
            let c = self.conns.get(conn).expect("connection being connected");
            let remote = c.info.remote.map(|a| a.to_string()).unwrap_or_default();
            let protocol = crate::core::admin::clients::protocol_label(version);
            tracing::info!(shard = %self.shard, %client_id, %remote, %protocol, session_present, "client connected");
        }
        self.persist_connect(slot, session_present);

        // Response Information (5.0 §3.2.2.3.15): only when asked for; a topic prefix the
        // client may use for response topics. The broker attaches no meaning to it.
        let response_information = (connect.properties.request_response_information == Some(1))
            .then(|| ByteStr::from(format!("response/{client_id}")));
        // Request Problem Information (5.0 §3.1.2.11.7) needs no handling: the broker never
        // sends a Reason String or User Properties on any packet [MQTT-3.1.2-29].
        let (authentication_method, authentication_data) =
            auth.map_or((None, None), |a| (Some(a.method), a.data));
        let properties = version.is_v5().then(|| {
            Box::new(Properties {
                // [MQTT-4.12.0-5]: the method of the CONNECT, and its final data.
                authentication_method,
                authentication_data,
                assigned_client_identifier: assigned,
                server_keep_alive_secs: (connect.keep_alive_secs != keep_alive_secs)
                    .then_some(keep_alive_secs),
                session_expiry_interval_secs: (requested_expiry_secs != expiry_secs)
                    .then_some(expiry_secs),
                receive_maximum: Some(limits.inflight_in_max),
                maximum_packet_size: Some(limits.packet_size_max_bytes),
                topic_alias_maximum: Some(limits.topic_alias_max),
                response_information,
                // Maximum QoS (2), Retain Available and Wildcard Subscription Available
                // (both 1) are the defaults when absent: every one is supported.
                shared_subscription_available: Some(1),
                subscription_identifier_available: Some(1),
                ..Properties::default()
            })
        });
        let connack = ConnAck { session_present, reason: ReasonCode::SUCCESS, properties };
        self.send_packet(conn, &Packet::ConnAck(connack));
        if session_present {
            self.resume_session(conn, slot, self.uptime_ms(now));
        }
    }

    /// A client id no session uses whose home shard is this shard, so that a later CONNECT
    /// with it (5.0, after a Session Expiry Interval > 0) is routed back here. In a cluster
    /// it names the node too: ids are unique cluster-wide, and another node's assigned id
    /// must not take over this one's client.
    fn assign_client_id(&mut self) -> ByteStr {
        let node = self.config.cluster.as_ref().map(|c| format!("n{}-", c.node.0));
        loop {
            self.assigned_ids += 1;
            let candidate = format!(
                "shardmq-{}{}-{:x}",
                node.as_deref().unwrap_or(""),
                self.shard.0,
                self.assigned_ids
            );
            if Self::home_shard(candidate.as_bytes(), self.config.shard_count) == self.shard {
                let id = ByteStr::from(candidate);
                if self.sessions.find(&id).is_none() {
                    return id;
                }
            }
        }
    }

    /// Answers CONNECT with a failure CONNACK (projected to 3.1.1 return codes by the codec)
    /// and closes.
    pub(crate) fn refuse_connect(
        &mut self,
        conn: ConnId,
        version: ProtocolVersion,
        reason: ReasonCode,
        now: Instant,
    ) {
        self.send_connack_refusal(conn, version, reason);
        self.close_conn(conn, CloseKind::Abnormal(None), now);
    }

    /// Queues a failure CONNACK in `version`'s encoding (Session Present 0 [MQTT-3.2.2-6]).
    pub(crate) fn send_connack_refusal(
        &mut self,
        conn: ConnId,
        version: ProtocolVersion,
        reason: ReasonCode,
    ) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.version = Some(version);
        }
        self.ops.refused(reason);
        if tracing::enabled!(tracing::Level::INFO) {
            let remote = self.conns.get(conn).and_then(|c| c.info.remote);
            let remote = remote.map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(shard = %self.shard, %remote, reason = %format!("0x{:02x}", reason.0), "connect refused");
        }
        let connack = ConnAck { session_present: false, reason, properties: None };
        self.send_packet(conn, &Packet::ConnAck(connack));
    }

    /// DISCONNECT from a connected client.
    pub(crate) fn handle_disconnect(
        &mut self,
        conn: ConnId,
        slot: SessionSlot,
        d: Disconnect,
        now: Instant,
    ) {
        if let Some(p) = &d.properties {
            if let Some(secs) = p.session_expiry_interval_secs {
                let session = self.sessions.get_mut(slot);
                if session.expiry_secs == 0 && secs != 0 {
                    // 5.0 §3.14.2.2.2: a protocol error.
                    let kind = CloseKind::Abnormal(Some(ReasonCode::PROTOCOL_ERROR));
                    return self.close_conn(conn, kind, now);
                }
                session.expiry_secs = secs.min(self.config.limits.session_expiry_max_secs);
            }
        }
        if d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            // 5.0: the client asks for its will to be published.
            self.close_conn(conn, CloseKind::Abnormal(None), now);
        } else {
            // [MQTT-3.1.2-10]: the will is discarded on a normal DISCONNECT.
            self.close_conn(conn, CloseKind::Normal, now);
        }
    }

    /// The session's connection ended. Publishes the will now, or after its delay if the
    /// session outlives the connection; ends the session if its expiry is 0.
    pub(crate) fn detach_session(&mut self, slot: SessionSlot, publish_will: bool, now: Instant) {
        let session = self.sessions.get_mut(slot);
        session.conn = None;
        let will = session.will.take().filter(|_| publish_will);
        if will.is_none() {
            // Discarded (normal DISCONNECT) or none: the log forgets it.
            self.persist_will_cleared(slot);
        }
        let session = self.sessions.get_mut(slot);
        if session.expiry_secs == 0 {
            if let Some(will) = will {
                self.publish_will(slot, *will, now);
            }
            self.end_session(slot, now);
            return;
        }
        session.expires_at = Some(now + Duration::from_secs(session.expiry_secs.into()));
        if let Some(will) = will {
            let delay_secs = will.properties.will_delay_interval_secs.unwrap_or(0);
            if delay_secs == 0 {
                self.publish_will(slot, *will, now);
            } else {
                // 5.0 §3.1.3.2.2: published when the delay or the session ends, whichever
                // comes first; cancelled by a reconnection before that.
                let publish_at = now + Duration::from_secs(delay_secs.into());
                self.sessions
                    .get_mut(slot)
                    .set_pending_will(Some(PendingWill { will, publish_at }));
            }
        }
    }

    /// Removes a session: its subscriptions (broadcasting routing deltas), its queues; a
    /// delayed will is published now (the session ended first).
    pub(crate) fn end_session(&mut self, slot: SessionSlot, now: Instant) {
        // A delayed will is judged while the session (and its identity) is still there.
        let will_topic = self.sessions.get(slot).pending_will().map(|pw| pw.will.topic.clone());
        let will_allowed = will_topic.map(|t| self.will_allowed(slot, &t));
        let mut session = self.sessions.remove(slot);
        debug_assert!(session.conn.is_none(), "ending a session with a connection");
        // An export of it to another node ends with it (that node's commit finds it kept).
        self.cluster_forget_export(&session.client_id);
        for (filter, _) in &session.subs {
            self.remove_subscription_entry(slot, filter, now);
        }
        // After the leaves: the owner sees them first (FIFO rings) and picks another member.
        self.shared_requeue_session(&session, self.uptime_ms(now));
        if let Some(pw) = session.take_pending_will() {
            if will_allowed == Some(true) {
                self.publish_will_authorised(slot, *pw.will, now);
            }
        }
    }

    /// Whether `slot`'s client may publish its will on `topic` (a will is checked when it
    /// is published, like any PUBLISH); counts a denial.
    fn will_allowed(&mut self, slot: SessionSlot, topic: &str) -> bool {
        if self.acl_allows(slot, topic, crate::core::auth::acl::WRITE) {
            return true;
        }
        self.count_denial(crate::core::policy::Denial::Will, slot, topic);
        false
    }

    /// Publishes a will as an ordinary message from the live session `slot`, if its client
    /// may write the will's topic.
    pub(crate) fn publish_will(&mut self, slot: SessionSlot, will: Will, now: Instant) {
        if !self.will_allowed(slot, &will.topic) {
            self.stats.dropped(crate::core::delivery::drops::DropReason::AclDenied, 1);
            return self.persist_will_cleared(slot);
        }
        self.publish_will_authorised(slot, will, now);
    }

    /// Publishes a will that was checked.
    fn publish_will_authorised(&mut self, slot: SessionSlot, will: Will, now: Instant) {
        self.persist_will_cleared(slot);
        let mut properties = will.properties;
        properties.will_delay_interval_secs = None;
        let properties = (!properties.is_empty()).then(|| Box::new(properties));
        let msg = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            origin: Origin { shard: self.shard, session: slot.0 },
            received_at_ms: self.uptime_ms(now),
        };
        let mark = self.mesh_out.len();
        self.publish_from_client(Arc::new(msg), now);
        // Nobody waits for a will's copies, but a shard that refuses one (its log is full)
        // answers the next `DurableReq` from here with the failure: ask now, so that answer
        // is not taken for a later PUBLISH's (`persist/ack.rs`).
        self.request_remote_durability(mark);
        self.take_copy_refused();
    }
}
