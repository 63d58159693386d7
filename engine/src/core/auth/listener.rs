//! Per-listener policy (`[[listener]]` `allow_anonymous`, `password_file`, `users_file`,
//! `acl_file`): Mosquitto's `per_listener_settings true`.
//!
//! - A listener with its own password or users file authenticates its clients with those
//!   only (the global `--password-file` / `--auth-users-file` are not consulted there), and
//!   refuses anonymous clients unless its `allow_anonymous` says otherwise. A listener with
//!   neither uses the global files.
//! - A listener with its own ACL file authorises its clients with it only; one without uses
//!   the global `--acl-file` (or none).
//! - A session is judged by the ACL of the listener its client last connected on
//!   (`Session::listener`). A session whose listener is unknown (recovered from the log
//!   after a restart, or moved from another node, until its client connects again) is
//!   judged by the global ACL when no listener has its own, and is otherwise denied
//!   everything (as Mosquitto denies a client that has no listener).
//!
//! Process-wide: built at start-up (and on reload) with the global files, read-only, each
//! file loaded once and shared (`Arc`) by every shard.

use std::sync::{Arc, OnceLock};

use super::acl::Acl;
use super::passwd::PasswdFile;
use super::users::UserDb;
use super::{AuthConfig, AuthMethod};

/// One listener's own settings (indexed like `ConnInfo::listener`). Process-wide.
#[derive(Debug, Clone, Default)]
pub struct ListenerAuth {
    /// `Some` overrides the default (the global `allow_anonymous`, or `false` with
    /// `logins`).
    pub allow_anonymous: Option<bool>,
    /// The listener's own password and users files; `None`: the global ones.
    pub logins: Option<Logins>,
    /// The listener's own ACL file; `None`: the global one.
    pub acl: Option<Arc<Acl>>,
}

impl PartialEq for ListenerAuth {
    fn eq(&self, o: &ListenerAuth) -> bool {
        self.allow_anonymous == o.allow_anonymous && self.logins == o.logins && self.acl == o.acl
    }
}

impl Eq for ListenerAuth {}

/// A set of credentials: a users file (with the SCRAM method backed by it) and a password
/// file, either or both. Process-wide.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    /// The users file (SCRAM credentials; also checks plain passwords).
    pub users: Option<Arc<UserDb>>,
    /// Mosquitto's password file.
    pub passwd: Option<Arc<PasswdFile>>,
    /// The enhanced authentication methods offered (SCRAM-SHA-256 with a users file).
    pub methods: Vec<Arc<dyn AuthMethod>>,
}

impl Logins {
    /// Credentials from a users file and a password file (SCRAM offered with the users).
    pub fn new(users: Option<UserDb>, passwd: Option<PasswdFile>) -> Logins {
        let users = users.map(Arc::new);
        let methods: Vec<Arc<dyn AuthMethod>> = match &users {
            Some(u) => vec![Arc::new(super::scram::ScramSha256::new(u.clone()))],
            None => Vec::new(),
        };
        Logins { users, passwd: passwd.map(Arc::new), methods }
    }
}

impl PartialEq for Logins {
    fn eq(&self, o: &Logins) -> bool {
        self.users == o.users
            && self.passwd == o.passwd
            && self.methods.len() == o.methods.len()
            && self.methods.iter().zip(&o.methods).all(|(a, b)| a.name() == b.name())
    }
}

impl Eq for Logins {}

/// The credentials a connection is checked against, borrowed from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginsRef<'a> {
    pub(crate) users: Option<&'a UserDb>,
    pub(crate) passwd: Option<&'a PasswdFile>,
    pub(crate) methods: &'a [Arc<dyn AuthMethod>],
    /// Which set this is, for the password cache: 0 the global files, `l + 1` listener
    /// `l`'s own (a password right on one listener proves nothing on another).
    pub(crate) realm: u16,
}

impl LoginsRef<'_> {
    /// True when clients are authenticated (a users file or a password file).
    pub(crate) fn authenticates(&self) -> bool {
        self.users.is_some() || self.passwd.is_some()
    }

    /// The method called `name`, if offered.
    pub(crate) fn method(&self, name: &str) -> Option<&Arc<dyn AuthMethod>> {
        self.methods.iter().find(|m| m.name() == name)
    }
}

/// The ACL that denies everything (an empty file).
fn deny_all() -> &'static Acl {
    static DENY_ALL: OnceLock<Acl> = OnceLock::new();
    DENY_ALL.get_or_init(|| Acl::parse("").expect("an empty ACL parses"))
}

impl AuthConfig {
    fn listener(&self, listener: Option<u16>) -> Option<&ListenerAuth> {
        self.listeners.get(usize::from(listener?))
    }

    /// Whether anonymous clients are accepted on `listener`.
    pub fn anonymous_allowed_on(&self, listener: Option<u16>) -> bool {
        match self.listener(listener) {
            Some(ListenerAuth { allow_anonymous: Some(allow), .. }) => *allow,
            Some(ListenerAuth { logins: Some(_), .. }) => false,
            _ => self.allow_anonymous,
        }
    }

    /// The credentials clients of `listener` are checked against: its own, else the global
    /// ones.
    pub(crate) fn logins_on(&self, listener: Option<u16>) -> LoginsRef<'_> {
        match listener.zip(self.listener(listener).and_then(|l| l.logins.as_ref())) {
            Some((l, own)) => LoginsRef {
                users: own.users.as_deref(),
                passwd: own.passwd.as_deref(),
                methods: &own.methods,
                realm: l + 1,
            },
            None => LoginsRef {
                users: self.users.as_deref(),
                passwd: self.passwd.as_deref(),
                methods: &self.methods,
                realm: 0,
            },
        }
    }

    /// True when some listener (or the broker) authenticates clients: sessions then belong
    /// to their user (`sessions/connect.rs`).
    pub fn authenticates_anywhere(&self) -> bool {
        self.authenticates() || self.listeners.iter().any(|l| l.logins.is_some())
    }

    /// True when some listener has its own ACL file.
    fn per_listener_acl(&self) -> bool {
        self.listeners.iter().any(|l| l.acl.is_some())
    }

    /// True when clients are authorised by an ACL anywhere (globally or on a listener).
    pub fn any_acl(&self) -> bool {
        self.acl.is_some() || self.per_listener_acl()
    }

    /// The ACL a session last connected on `listener` is judged by (`None`: everything
    /// allowed). An unknown listener: the global ACL unless a listener has its own, then
    /// nothing is allowed.
    pub fn acl_on(&self, listener: Option<u16>) -> Option<&Acl> {
        match listener {
            Some(_) => {
                self.listener(listener).and_then(|l| l.acl.as_deref()).or(self.acl.as_deref())
            }
            None if self.per_listener_acl() => Some(deny_all()),
            None => self.acl.as_deref(),
        }
    }

    /// Whether reloading to `fresh` changes an ACL anywhere (coverage is decided again).
    pub(crate) fn acls_differ(&self, fresh: &AuthConfig) -> bool {
        self.acl != fresh.acl
            || self.listeners.len() != fresh.listeners.len()
            || self.listeners.iter().zip(&fresh.listeners).any(|(a, b)| a.acl != b.acl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Option<Arc<Acl>> {
        Some(Arc::new(Acl::parse(text).unwrap()))
    }

    #[test]
    fn a_listener_uses_its_own_files_else_the_global_ones() {
        let pw = PasswdFile::default();
        let global = acl("topic read g/#\n");
        let own = acl("topic read own/#\n");
        let auth = AuthConfig {
            acl: global.clone(),
            allow_anonymous: true,
            listeners: vec![
                ListenerAuth::default(),
                ListenerAuth {
                    logins: Some(Logins::new(None, Some(pw))),
                    acl: own.clone(),
                    ..ListenerAuth::default()
                },
                ListenerAuth { allow_anonymous: Some(true), ..ListenerAuth::default() },
            ],
            ..AuthConfig::default()
        };
        assert!(auth.anonymous_allowed_on(Some(0)));
        assert!(!auth.anonymous_allowed_on(Some(1)), "own logins: no anonymous by default");
        assert!(auth.anonymous_allowed_on(Some(2)));
        assert!(!auth.logins_on(Some(0)).authenticates());
        assert!(auth.logins_on(Some(1)).authenticates());
        assert_eq!((auth.logins_on(Some(0)).realm, auth.logins_on(Some(1)).realm), (0, 2));
        assert!(auth.authenticates_anywhere() && !auth.authenticates());
        assert_eq!(auth.acl_on(Some(0)), global.as_deref());
        assert_eq!(auth.acl_on(Some(1)), own.as_deref());
        assert_eq!(auth.acl_on(Some(9)), global.as_deref(), "no such listener: global");
        let ident = super::super::acl::Ident { user: None, client_id: "c" };
        let unknown = auth.acl_on(None).expect("an ACL");
        assert!(!unknown.allows(&ident, "g/x", super::super::acl::READ), "unknown: deny all");
        let only_global = AuthConfig { acl: global.clone(), ..AuthConfig::default() };
        assert_eq!(only_global.acl_on(None), global.as_deref());
    }
}
