//! Who may connect, and where clients are sent: enhanced authentication (MQTT 5.0 §4.12) with
//! pluggable methods, plain user name / password checks against the users file, and server
//! redirection (§4.11).
//!
//! - [`AuthMethod`] is one enhanced authentication method (named by the Authentication Method
//!   property); it makes an [`AuthSession`] per exchange, a state machine fed the client's
//!   Authentication Data and answering with an [`AuthStep`]. `scram.rs` is the first method,
//!   SCRAM-SHA-256 (RFC 5802, RFC 7677).
//! - `users.rs` is the users file: salted, iterated SCRAM credentials, never passwords.
//! - `plain.rs` checks plain CONNECT passwords against it without stalling the shard: an
//!   outcome cache and a budget of PBKDF2 rounds per second.
//! - `exchange.rs` wires both into the connection state: CONNECT with a method, the AUTH
//!   exchange before CONNACK, re-authentication after it, plain CONNECT credentials, and the
//!   redirection answer.
//!
//! Deliberately not here: authorisation (who may publish or subscribe to what). Methods are
//! sans-IO like the rest of the core: no clock, no file, and randomness comes from the
//! shard's [`AuthRng`], seeded by the configuration (so the simulator is deterministic).
//!
//! Process-wide: [`AuthConfig`] and the methods are immutable and shared by every shard;
//! sessions ([`ConnAuth`]) are shard-local, owned by their connection.

pub mod acl;
pub mod listener;
pub mod passwd;
pub mod plain;
pub mod scram;
pub mod users;

pub(crate) mod exchange;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use shardmq_codec::{Connect, ReasonCode};

use self::acl::Acl;
use self::passwd::PasswdFile;
use self::users::UserDb;

/// One step of an authentication exchange, as decided by an [`AuthSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// More is needed: send this Authentication Data with AUTH 0x18 [MQTT-4.12.0-2].
    Continue(Bytes),
    /// Authenticated as `user`; the final Authentication Data, if any, goes with the CONNACK
    /// (or AUTH 0x00 when re-authenticating).
    Success {
        /// The authenticated identity.
        user: String,
        /// Final data for the client (SCRAM: the server signature).
        data: Option<Bytes>,
    },
    /// Refused with this CONNACK reason code (0x86 bad user name or password, 0x87 not
    /// authorised, …).
    Fail(ReasonCode),
}

/// An enhanced authentication method. Process-wide: shared by every shard, so it keeps no
/// per-connection state (that is the [`AuthSession`]'s).
pub trait AuthMethod: fmt::Debug + Send + Sync {
    /// The Authentication Method property value this method answers to (e.g.
    /// `SCRAM-SHA-256`).
    fn name(&self) -> &str;

    /// Starts an exchange with the client's first Authentication Data (from CONNECT, or from
    /// AUTH 0x19 when re-authenticating). The session is kept only if the step is
    /// [`AuthStep::Continue`].
    fn start(&self, data: Option<&[u8]>, rng: &mut AuthRng) -> (Box<dyn AuthSession>, AuthStep);
}

/// One exchange in progress. Shard-local: owned by its connection.
pub trait AuthSession: fmt::Debug {
    /// The client's next Authentication Data (from AUTH 0x18).
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// Where clients are sent instead of being served (§4.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The Server Reference property: one or more `host[:port]`, space separated.
    pub server_reference: String,
    /// `true`: 0x9D Server moved (use it from now on); `false`: 0x9C Use another server
    /// (this time).
    pub permanent: bool,
}

impl Redirect {
    /// The CONNACK reason code.
    pub fn reason(&self) -> ReasonCode {
        if self.permanent {
            ReasonCode::SERVER_MOVED
        } else {
            ReasonCode::USE_ANOTHER_SERVER
        }
    }
}

/// Authentication and redirection settings. Process-wide, read-only.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The users file, if one is configured: checks plain CONNECT credentials and backs
    /// SCRAM-SHA-256.
    pub users: Option<Arc<UserDb>>,
    /// Mosquitto's password file (`passwd.rs`), if one is configured: checks plain CONNECT
    /// credentials beside (or instead of) the users file.
    pub passwd: Option<Arc<PasswdFile>>,
    /// Mosquitto's ACL file (`acl.rs`), if one is configured: who may read and write what.
    pub acl: Option<Arc<Acl>>,
    /// A 3.1.1 PUBLISH without write right closes the connection (instead of being
    /// acknowledged and dropped).
    pub acl_deny_publish_disconnect: bool,
    /// Connection and publish quotas (`policy/quota.rs`); all off by default.
    pub quotas: crate::core::policy::quota::Quotas,
    /// Whether a CONNECT with neither a user name nor an Authentication Method is accepted.
    pub allow_anonymous: bool,
    /// Per listener (indexed like `ConnInfo::listener`): its own `allow_anonymous`,
    /// credentials and ACL (`[[listener]]` tables, `listener.rs`), e.g. a localhost
    /// listener for anonymous tools beside a public one with passwords and an ACL.
    pub listeners: Vec<listener::ListenerAuth>,
    /// The enhanced authentication methods offered, by name.
    pub methods: Vec<Arc<dyn AuthMethod>>,
    /// Send every client elsewhere (CONNACK 0x9C / 0x9D).
    pub redirect: Option<Redirect>,
    /// Each shard's budget of PBKDF2 rounds a second for plain-password checks (`plain.rs`);
    /// past it, CONNECTs that need one are answered 0x89 Server busy.
    pub password_rounds_per_sec: u32,
    /// Seed of the shards' [`AuthRng`]s (each shard uses its own stream of it). The
    /// configuration fills it from the operating system.
    pub rng_seed: [u8; 32],
}

impl Default for AuthConfig {
    /// No users file, anonymous clients allowed, no enhanced method, no redirection.
    fn default() -> AuthConfig {
        AuthConfig {
            users: None,
            passwd: None,
            acl: None,
            acl_deny_publish_disconnect: false,
            quotas: Default::default(),
            allow_anonymous: true,
            listeners: Vec::new(),
            methods: Vec::new(),
            redirect: None,
            password_rounds_per_sec: plain::ROUNDS_PER_SEC_DEFAULT,
            rng_seed: [0; 32],
        }
    }
}

impl PartialEq for AuthConfig {
    /// Equal settings: the same users, the same method names, the same redirection (the seed
    /// is not a setting).
    fn eq(&self, other: &AuthConfig) -> bool {
        self.users == other.users
            && self.passwd == other.passwd
            && self.acl == other.acl
            && self.acl_deny_publish_disconnect == other.acl_deny_publish_disconnect
            && self.quotas == other.quotas
            && self.allow_anonymous == other.allow_anonymous
            && self.listeners == other.listeners
            && self.redirect == other.redirect
            && self.password_rounds_per_sec == other.password_rounds_per_sec
            && self.methods.len() == other.methods.len()
            && self.methods.iter().zip(&other.methods).all(|(a, b)| a.name() == b.name())
    }
}

impl Eq for AuthConfig {}

impl AuthConfig {
    /// Settings with a users file: anonymous clients refused unless `allow_anonymous`, and
    /// SCRAM-SHA-256 offered against the same users.
    pub fn with_users(users: UserDb, allow_anonymous: bool, rng_seed: [u8; 32]) -> AuthConfig {
        let users = Arc::new(users);
        let scram = scram::ScramSha256::new(users.clone());
        AuthConfig {
            users: Some(users),
            passwd: None,
            acl: None,
            acl_deny_publish_disconnect: false,
            quotas: Default::default(),
            allow_anonymous,
            listeners: Vec::new(),
            methods: vec![Arc::new(scram)],
            redirect: None,
            password_rounds_per_sec: plain::ROUNDS_PER_SEC_DEFAULT,
            rng_seed,
        }
    }

    /// True when clients are authenticated by the global files (a users file or a password
    /// file); see [`AuthConfig::logins_on`] for one listener's.
    pub fn authenticates(&self) -> bool {
        self.users.is_some() || self.passwd.is_some()
    }

    /// The method called `name`, if offered.
    pub fn method(&self, name: &str) -> Option<&Arc<dyn AuthMethod>> {
        self.methods.iter().find(|m| m.name() == name)
    }
}

/// The randomness of one shard's authentication exchanges (nonces): ChaCha20, seeded from
/// [`AuthConfig::rng_seed`] on a stream of its own per shard. Shard-local.
pub struct AuthRng(ChaCha20Rng);

impl AuthRng {
    /// The generator of shard `shard`.
    pub fn new(seed: [u8; 32], shard: u16) -> AuthRng {
        let mut rng = ChaCha20Rng::from_seed(seed);
        rng.set_stream(u64::from(shard));
        AuthRng(rng)
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }
}

impl fmt::Debug for AuthRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthRng")
    }
}

/// A connection's enhanced authentication: the method it authenticated (or is
/// authenticating) with, and the exchange in progress. Shard-local: owned by its connection.
#[derive(Debug)]
pub(crate) struct ConnAuth {
    /// The method named in CONNECT; every AUTH must name it too [MQTT-4.12.0-5].
    pub(crate) method: Arc<dyn AuthMethod>,
    /// The exchange in progress, if any.
    pub(crate) session: Option<Box<dyn AuthSession>>,
    /// The CONNECT held until the first exchange succeeds (`None` once connected).
    pub(crate) connect: Option<Box<Connect>>,
    /// Who the connection is authenticated as (`None` until the first success).
    pub(crate) user: Option<String>,
}
