//! Authentication on a connection: what happens between CONNECT and CONNACK (redirection,
//! plain credentials, the enhanced authentication exchange), and re-authentication after.
//!
//! Shard-local: runs where the CONNECT is handled, i.e. on the home shard of the client id
//! (the io layer hands the socket over before the core sees CONNECT, together with the bytes
//! read so far), or on the accepting shard for an empty client id. Every AUTH of the exchange
//! therefore arrives on the shard that holds the exchange.
//!
//! While an exchange runs before CONNACK the connection stays in `Phase::AwaitingConnect`
//! with its [`ConnAuth`] holding the CONNECT (so the connect timeout applies to every step);
//! on success the CONNECT goes on as if it had just arrived, with the method's final data in
//! CONNACK.

use bytes::Bytes;
use shardmq_codec::{Auth, ByteStr, ConnAck, Connect, Packet, Properties, ReasonCode};

use super::plain::Credentials;
use super::{AuthStep, ConnAuth};
use crate::core::ids::ConnId;
use crate::core::shard::{CloseKind, ShardCore};

/// The Authentication Method and final Authentication Data a successful CONNACK carries
/// [MQTT-4.12.0-5].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthOk {
    pub(crate) method: ByteStr,
    pub(crate) data: Option<Bytes>,
}

/// The Authentication Method and Data of an AUTH packet.
fn method_and_data(auth: &Auth) -> (Option<&str>, Option<&[u8]>) {
    match &auth.properties {
        Some(p) => (p.authentication_method.as_deref(), p.authentication_data.as_deref()),
        None => (None, None),
    }
}

impl ShardCore {
    /// Redirection and authentication of a CONNECT. Returns the CONNECT (and, after an
    /// enhanced authentication, what CONNACK must carry) when the connection may go on now;
    /// `None` when it was refused, or is held for an AUTH exchange.
    pub(crate) fn authenticate_connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        now: std::time::Instant,
    ) -> Option<(Connect, Option<AuthOk>)> {
        let version = connect.protocol;
        if let Some(redirect) = &self.config.auth.redirect {
            // §4.11: 0x9C Use another server / 0x9D Server moved, with the Server Reference.
            // A 3.1.1 client gets return code 3, Server unavailable (the codec's projection):
            // 3.1.1 has no way to name another server.
            let properties = version.is_v5().then(|| {
                Box::new(Properties {
                    server_reference: Some(ByteStr::from(redirect.server_reference.as_str())),
                    ..Properties::default()
                })
            });
            let reason = redirect.reason();
            let connack = ConnAck { session_present: false, reason, properties };
            self.send_packet(conn, &Packet::ConnAck(connack));
            self.close_conn(conn, CloseKind::Abnormal(None), now);
            return None;
        }

        let Some(name) = connect.properties.authentication_method.clone() else {
            return self.check_plain_credentials(conn, connect, now).map(|c| (c, None));
        };
        // The listener's own credentials, else the global ones (`auth/listener.rs`).
        let listener = self.conns.get(conn).map(|c| c.info.listener);
        let Some(method) = self.config.auth.logins_on(listener).method(&name).cloned() else {
            // [MQTT-4.12.0-1]: an unsupported method: CONNACK 0x8C, close.
            self.refuse_connect(conn, version, ReasonCode::BAD_AUTHENTICATION_METHOD, now);
            return None;
        };
        let data = connect.properties.authentication_data.as_deref();
        let (session, step) = method.start(data, &mut self.auth_rng);
        let mut auth = Box::new(ConnAuth { method, session: None, connect: None, user: None });
        match step {
            AuthStep::Continue(data) => {
                auth.session = Some(session);
                auth.connect = Some(Box::new(connect));
                self.conns.get_mut(conn)?.auth = Some(auth);
                self.send_auth(conn, ReasonCode::CONTINUE_AUTHENTICATION, &name, Some(data));
                None
            }
            AuthStep::Success { user, data } => {
                auth.user = Some(user);
                self.conns.get_mut(conn)?.auth = Some(auth);
                Some((connect, Some(AuthOk { method: name, data })))
            }
            AuthStep::Fail(reason) => {
                self.refuse_connect(conn, version, reason, now);
                None
            }
        }
    }

    /// A CONNECT without an Authentication Method: with a users file, its user name and
    /// password are checked against it (0x86 when wrong, 0x89 when the shard's budget of
    /// password derivations is spent) and a CONNECT without a user name is
    /// refused with 0x87 unless anonymous clients are allowed. Without a users file,
    /// credentials are not checked.
    fn check_plain_credentials(
        &mut self,
        conn: ConnId,
        mut connect: Connect,
        now: std::time::Instant,
    ) -> Option<Connect> {
        let info = &self.conns.get(conn)?.info;
        if info.identity_as_username {
            // The listener maps the verified client certificate's subject CN to the user
            // name and asks no password (like Mosquitto's `use_identity_as_username`).
            // Without a certificate (an `optional` listener) there is no identity: 0x87
            // Not authorized (3.1.1: return code 5).
            let Some(cn) = info.cert_subject_cn.as_deref() else {
                self.refuse_connect(conn, connect.protocol, ReasonCode::NOT_AUTHORIZED, now);
                return None;
            };
            connect.username = Some(ByteStr::from(cn));
            connect.password = None;
            return Some(connect);
        }
        let auth = &self.config.auth;
        let listener = Some(info.listener);
        // The listener's own password and users files, else the global ones.
        let logins = auth.logins_on(listener);
        let reason = match (logins.authenticates(), &connect.username) {
            (true, Some(name)) => {
                let password = connect.password.as_deref().unwrap_or_default();
                let creds = Credentials { passwd: logins.passwd, users: logins.users };
                // 0x86 when wrong, 0x89 Server busy past the shard's PBKDF2 budget (`plain.rs`).
                // The client's address (after PROXY protocol): its share of the budget.
                let source = info.remote.map(|a| a.ip());
                let checks = &mut self.password_checks;
                checks.check_from(&creds, logins.realm, name, password, source, now).err()
            }
            (_, None) if !auth.anonymous_allowed_on(listener) => Some(ReasonCode::NOT_AUTHORIZED),
            _ => None,
        };
        match reason {
            Some(reason) => {
                self.refuse_connect(conn, connect.protocol, reason, now);
                None
            }
            None => Some(connect),
        }
    }

    /// A packet on a connection whose enhanced authentication is in progress (before
    /// CONNACK).
    pub(crate) fn handle_packet_authenticating(
        &mut self,
        conn: ConnId,
        packet: Packet,
        now: std::time::Instant,
    ) {
        match packet {
            Packet::Auth(auth) => self.continue_connect_auth(conn, auth, now),
            // The client gives up.
            Packet::Disconnect(_) => self.close_conn(conn, CloseKind::Normal, now),
            // [MQTT-3.1.2-30]: nothing but AUTH or DISCONNECT before CONNACK. A protocol
            // error before CONNACK may be answered with CONNACK 0x82 (§4.13.1).
            _ => self.refuse_connect_v5(conn, ReasonCode::PROTOCOL_ERROR, now),
        }
    }

    /// The client's AUTH during the exchange that precedes CONNACK.
    fn continue_connect_auth(&mut self, conn: ConnId, auth: Auth, now: std::time::Instant) {
        let Some(mut ca) = self.conns.get_mut(conn).and_then(|c| c.auth.take()) else { return };
        let (method, data) = method_and_data(&auth);
        // [MQTT-4.12.0-3]: the client answers with AUTH 0x18; [MQTT-4.12.0-5]: naming the
        // method of the CONNECT.
        if auth.reason != ReasonCode::CONTINUE_AUTHENTICATION || method != Some(ca.method.name()) {
            return self.refuse_connect_v5(conn, ReasonCode::PROTOCOL_ERROR, now);
        }
        let step =
            ca.session.as_mut().expect("an exchange before CONNACK has a session").step(data);
        let name = ByteStr::from(ca.method.name());
        match step {
            AuthStep::Continue(data) => {
                self.conns.get_mut(conn).expect("held above").auth = Some(ca);
                self.send_auth(conn, ReasonCode::CONTINUE_AUTHENTICATION, &name, Some(data));
            }
            AuthStep::Success { user, data } => {
                ca.session = None;
                ca.user = Some(user);
                let connect = ca.connect.take().expect("the CONNECT is held until success");
                self.conns.get_mut(conn).expect("held above").auth = Some(ca);
                self.accept_connect(conn, *connect, Some(AuthOk { method: name, data }), now);
            }
            // [MQTT-4.12.0-4]: the server may refuse at any point with a CONNACK >= 0x80,
            // and closes.
            AuthStep::Fail(reason) => self.refuse_connect_v5(conn, reason, now),
        }
    }

    /// AUTH on a connected client: re-authentication (§4.12.1).
    pub(crate) fn handle_auth_connected(
        &mut self,
        conn: ConnId,
        auth: Auth,
        now: std::time::Instant,
    ) {
        let protocol_error = CloseKind::Abnormal(Some(ReasonCode::PROTOCOL_ERROR));
        let Some(c) = self.conns.get_mut(conn) else { return };
        // [MQTT-4.12.0-7]: a client that did not name a method in CONNECT sends no AUTH.
        let Some(ca) = c.auth.as_mut() else { return self.close_conn(conn, protocol_error, now) };
        let (method, data) = method_and_data(&auth);
        // [MQTT-4.12.1-1]: re-authentication uses the method of the CONNECT.
        if method != Some(ca.method.name()) {
            return self.close_conn(conn, protocol_error, now);
        }
        if auth.reason == ReasonCode::RE_AUTHENTICATE && ca.session.is_none() {
            // The credentials as they are now (a reload may have changed or removed the
            // user): the method is looked up again on the connection's listener.
            let logins = self.config.auth.logins_on(Some(c.info.listener));
            match logins.method(ca.method.name()) {
                Some(m) => ca.method = m.clone(),
                None => {
                    let kind = CloseKind::Abnormal(Some(ReasonCode::NOT_AUTHORIZED));
                    return self.close_conn(conn, kind, now);
                }
            }
        }
        let step = match (auth.reason, ca.session.as_mut()) {
            (ReasonCode::RE_AUTHENTICATE, None) => {
                let (session, step) = ca.method.start(data, &mut self.auth_rng);
                ca.session = Some(session);
                step
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(session)) => session.step(data),
            // 0x19 during an exchange, 0x18 outside one, or 0x00 (only the server sends it).
            _ => return self.close_conn(conn, protocol_error, now),
        };
        let name = ByteStr::from(ca.method.name());
        match step {
            AuthStep::Continue(data) => {
                self.send_auth(conn, ReasonCode::CONTINUE_AUTHENTICATION, &name, Some(data));
            }
            AuthStep::Success { user, data } => {
                ca.session = None;
                if ca.user.as_deref() != Some(user.as_str()) {
                    // A connection keeps the identity it connected with.
                    let kind = CloseKind::Abnormal(Some(ReasonCode::NOT_AUTHORIZED));
                    return self.close_conn(conn, kind, now);
                }
                self.send_auth(conn, ReasonCode::SUCCESS, &name, data);
            }
            AuthStep::Fail(reason) => {
                // [MQTT-4.12.1-2]: DISCONNECT with a fitting reason code, and close. 0x86 and
                // 0x8C are CONNACK-only codes: DISCONNECT says 0x87 Not authorized instead.
                let reason = if reason.is_valid_for(
                    shardmq_codec::PacketType::Disconnect,
                    shardmq_codec::ProtocolVersion::V5,
                ) {
                    reason
                } else {
                    ReasonCode::NOT_AUTHORIZED
                };
                self.close_conn(conn, CloseKind::Abnormal(Some(reason)), now);
            }
        }
    }

    /// Refuses a 5.0 CONNECT held for authentication.
    fn refuse_connect_v5(&mut self, conn: ConnId, reason: ReasonCode, now: std::time::Instant) {
        self.refuse_connect(conn, shardmq_codec::ProtocolVersion::V5, reason, now);
    }

    /// Queues AUTH with `reason`, naming `method` [MQTT-4.12.0-5].
    fn send_auth(&mut self, conn: ConnId, reason: ReasonCode, method: &str, data: Option<Bytes>) {
        let properties = Properties {
            authentication_method: Some(ByteStr::from(method)),
            authentication_data: data,
            ..Properties::default()
        };
        let auth = Auth { reason, properties: Some(Box::new(properties)) };
        self.send_packet(conn, &Packet::Auth(auth));
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
