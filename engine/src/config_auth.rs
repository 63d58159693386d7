//! The authentication and redirection flags and keys of the configuration (a child module of
//! `config`): the users file and its secret file, anonymous access, the plain-password budget,
//! the Server Reference.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::config::ListenerConfig;
use crate::core::auth::acl::Acl;
use crate::core::auth::listener::{ListenerAuth, Logins};
use crate::core::auth::passwd::PasswdFile;
use crate::core::auth::plain::{ROUNDS_PER_SEC_DEFAULT, ROUNDS_PER_SEC_MAX, ROUNDS_PER_SEC_MIN};
use crate::core::auth::users::{UserDb, PLAIN_ITERATIONS_MAX};
use crate::core::auth::{AuthConfig, Redirect};

/// Authentication and redirection flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct AuthArgs {
    /// Users file (SCRAM-SHA-256 credentials; `shardmq users add` writes it): plain user
    /// name/password CONNECTs are checked against it, and enhanced authentication with
    /// SCRAM-SHA-256 is offered. `FILE.secret` beside it keys the salts shown for unknown
    /// users (created with mode 0600 on first start).
    #[arg(long, value_name = "FILE")]
    auth_users_file: Option<PathBuf>,
    /// Mosquitto password file (`mosquitto_passwd` format, `$7$` and `$6$` hashes): plain
    /// user name/password CONNECTs are checked against it, beside or instead of the users
    /// file (a user must not be in both).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Mosquitto ACL file (`user`, `topic [read|write|readwrite|deny] FILTER`, `pattern` with
    /// `%c`/`%u`): with one, what no line grants is denied. A malformed line stops start-up.
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// What a 3.1.1 PUBLISH without write right gets: `ack` (acknowledged and dropped, as
    /// Mosquitto does; the default) or `disconnect`. 5.0 QoS 1/2 always get 0x87.
    #[arg(long, value_name = "ACTION")]
    acl_deny_publish: Option<String>,
    /// Accept clients with neither a user name nor an authentication method. Default: true
    /// without a users file, false with one.
    #[arg(long, value_name = "BOOL")]
    allow_anonymous: Option<bool>,
    /// Each shard's budget of PBKDF2 rounds a second for checking plain CONNECT passwords
    /// (repeated logins are answered from a cache); past it, such CONNECTs get 0x89 Server
    /// busy. Default 100000 (about a tenth of a core).
    #[arg(long, value_name = "N")]
    auth_password_rounds_per_sec: Option<u32>,
    /// Send every client to this server (`HOST[:PORT]`, several separated by spaces):
    /// CONNACK 0x9C/0x9D with a Server Reference (5.0), return code 3 (3.1.1).
    #[arg(long, value_name = "HOST:PORT")]
    server_reference: Option<String>,
    /// With --server-reference: `temporary` (0x9C Use another server, the default) or
    /// `permanent` (0x9D Server moved).
    #[arg(long, value_name = "KIND")]
    redirect: Option<String>,
}

/// The `[auth]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    users_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    acl_deny_publish: Option<String>,
    allow_anonymous: Option<bool>,
    password_rounds_per_sec: Option<u32>,
}

/// The `[auth]` table, its flags, and redirection (`server_reference`, `redirect`).
pub(super) fn resolve_auth(
    cli: &Cli,
    file: &FileConfig,
    listen: &[ListenerConfig],
) -> Result<AuthConfig, ConfigError> {
    let args = &cli.auth;
    let file_auth = file.auth.as_ref();
    let users_path =
        args.auth_users_file.as_ref().map(|p| ("--auth-users-file", p)).or_else(|| {
            file_auth.and_then(|a| a.users_file.as_ref()).map(|p| ("[auth] users_file", p))
        });
    let allow_anonymous = args.allow_anonymous.or(file_auth.and_then(|a| a.allow_anonymous));
    let passwd_path = args.password_file.as_ref().map(|p| ("--password-file", p)).or_else(|| {
        file_auth.and_then(|a| a.password_file.as_ref()).map(|p| ("[auth] password_file", p))
    });
    let passwd = match passwd_path {
        Some((key, path)) => {
            Some(Arc::new(load_password_file(path).map_err(|e| invalid(format!("{key} {e}")))?))
        }
        None => None,
    };
    let mut auth = match users_path {
        Some((key, path)) => {
            let users = load_users_file(path).map_err(|e| invalid(format!("{key} {e}")))?;
            AuthConfig::with_users(users, allow_anonymous.unwrap_or(false), random_seed())
        }
        None if passwd.is_some() => AuthConfig {
            allow_anonymous: allow_anonymous.unwrap_or(false),
            rng_seed: random_seed(),
            ..AuthConfig::default()
        },
        None if allow_anonymous == Some(false) => {
            return Err(invalid(
                "allow_anonymous false needs a users file or a password file \
                 (--auth-users-file, --password-file)",
            ));
        }
        None => AuthConfig { rng_seed: random_seed(), ..AuthConfig::default() },
    };
    if let (Some(users), Some(pw)) = (&auth.users, &passwd) {
        check_disjoint(users, pw).map_err(invalid)?;
    }
    auth.passwd = passwd;
    let acl_path =
        args.acl_file.as_ref().map(|p| ("--acl-file", p)).or_else(|| {
            file_auth.and_then(|a| a.acl_file.as_ref()).map(|p| ("[auth] acl_file", p))
        });
    if let Some((key, path)) = acl_path {
        auth.acl = Some(Arc::new(load_acl_file(path).map_err(|e| invalid(format!("{key} {e}")))?));
    }
    let global_acl = acl_path.map(|(_, p)| p.as_path()).zip(auth.acl.as_ref());
    auth.listeners = resolve_listener_auth(listen, global_acl)?;
    if let Some(l) = listen.iter().zip(&auth.listeners).find_map(|(l, own)| {
        (own.allow_anonymous == Some(false) && own.logins.is_none() && !auth.authenticates())
            .then_some(l)
    }) {
        // Its clients' user names would be taken unchecked.
        return Err(invalid(format!(
            "[[listener]] `{}`: allow_anonymous false needs a password or users file (its own \
             password_file / users_file, or --password-file / --auth-users-file)",
            l.url()
        )));
    }
    let deny_key = if args.acl_deny_publish.is_some() {
        "--acl-deny-publish"
    } else {
        "[auth] acl_deny_publish"
    };
    auth.acl_deny_publish_disconnect = match args
        .acl_deny_publish
        .as_deref()
        .or(file_auth.and_then(|a| a.acl_deny_publish.as_deref()))
    {
        None | Some("ack") => false,
        Some("disconnect") => true,
        Some(other) => {
            return Err(invalid(format!("{deny_key} `{other}`: expected `ack` or `disconnect`")))
        }
    };
    let rounds_key = if args.auth_password_rounds_per_sec.is_some() {
        "--auth-password-rounds-per-sec"
    } else {
        "[auth] password_rounds_per_sec"
    };
    let rounds = args
        .auth_password_rounds_per_sec
        .or(file_auth.and_then(|a| a.password_rounds_per_sec))
        .unwrap_or(ROUNDS_PER_SEC_DEFAULT);
    if !(ROUNDS_PER_SEC_MIN..=ROUNDS_PER_SEC_MAX).contains(&rounds) {
        return Err(invalid(format!(
            "{rounds_key} {rounds}: must be between {ROUNDS_PER_SEC_MIN} and {ROUNDS_PER_SEC_MAX}"
        )));
    }
    auth.password_rounds_per_sec = rounds;
    let reference = args.server_reference.as_ref().or(file.server_reference.as_ref());
    let kind_key = if args.redirect.is_some() { "--redirect" } else { "redirect" };
    let permanent = match args.redirect.as_deref().or(file.redirect.as_deref()) {
        None | Some("temporary") => false,
        Some("permanent") => true,
        Some(other) => {
            return Err(invalid(format!(
                "{kind_key} `{other}`: expected `temporary` or `permanent`"
            )))
        }
    };
    match reference {
        Some(r) if r.trim().is_empty() => return Err(invalid("server_reference: empty")),
        Some(r) => {
            let server_reference = r.trim().to_owned();
            auth.redirect = Some(Redirect { server_reference, permanent });
        }
        None if args.redirect.is_some() || file.redirect.is_some() => {
            return Err(invalid(format!(
                "{kind_key} needs a server reference (--server-reference)"
            )));
        }
        None => {}
    }
    Ok(auth)
}

/// Each listener's own credentials and ACL (`[[listener]]` `password_file`, `users_file`,
/// `acl_file`, `allow_anonymous`; `core/auth/listener.rs`), with the same rules as the
/// global files: a user in both files of one listener, or a malformed line, is an error
/// naming the listener, the file and the line. A file named by several listeners, or also
/// globally, is read once and shared.
pub(super) fn resolve_listener_auth(
    listen: &[ListenerConfig],
    global_acl: Option<(&Path, &Arc<Acl>)>,
) -> Result<Vec<ListenerAuth>, ConfigError> {
    let mut acls: Vec<(PathBuf, Arc<Acl>)> =
        global_acl.map(|(p, a)| (p.to_owned(), a.clone())).into_iter().collect();
    let mut out = Vec::with_capacity(listen.len());
    for (i, l) in listen.iter().enumerate() {
        let key = |file: &str| format!("[[listener]] `{}` {file}", l.url());
        let passwd = match &l.password_file {
            Some(p) => Some(
                load_password_file(p)
                    .map_err(|e| invalid(format!("{} {e}", key("password_file"))))?,
            ),
            None => None,
        };
        let users = match &l.users_file {
            Some(p) => Some(
                load_users_file(p).map_err(|e| invalid(format!("{} {e}", key("users_file"))))?,
            ),
            None => None,
        };
        if let (Some(u), Some(p)) = (&users, &passwd) {
            check_disjoint(u, p)
                .map_err(|e| invalid(format!("[[listener]] `{}`: {e}", l.url())))?;
        }
        let logins = (users.is_some() || passwd.is_some()).then(|| Logins::new(users, passwd));
        let acl = match &l.acl_file {
            Some(p) => match acls.iter().find(|(q, _)| q == p) {
                Some((_, a)) => Some(a.clone()),
                None => {
                    let a = Arc::new(
                        load_acl_file(p)
                            .map_err(|e| invalid(format!("{} {e}", key("acl_file"))))?,
                    );
                    acls.push((p.clone(), a.clone()));
                    Some(a)
                }
            },
            None => None,
        };
        debug_assert_eq!(out.len(), i);
        out.push(ListenerAuth { allow_anonymous: l.allow_anonymous, logins, acl });
    }
    Ok(out)
}

/// Reads and parses a users file, keyed by its secret file (created on first start); the
/// error starts with the path. Warns about users who can log in with SCRAM only.
fn load_users_file(path: &Path) -> Result<UserDb, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut users = UserDb::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(secret) = users_secret(path)? {
        users = users.with_secret(&secret);
    }
    for (name, iterations) in users.scram_only_users() {
        eprintln!(
            "shardmq: warning: {}: user `{name}` has {iterations} iterations, more than \
             {PLAIN_ITERATIONS_MAX}: it can log in with SCRAM-SHA-256 only",
            path.display()
        );
    }
    Ok(users)
}

/// Reads and parses a Mosquitto password file; the error starts with the path.
pub(crate) fn load_password_file(path: &Path) -> Result<PasswdFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PasswdFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and parses a Mosquitto ACL file; the error starts with the path and names the line.
pub(crate) fn load_acl_file(path: &Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A user defined in both the users file and the password file would have two passwords:
/// refused.
pub(crate) fn check_disjoint(users: &UserDb, passwd: &PasswdFile) -> Result<(), String> {
    match passwd.names().find(|n| users.get(n).is_some()) {
        Some(name) => {
            Err(format!("user `{name}` is in both the users file and the password file: keep one"))
        }
        None => Ok(()),
    }
}

/// The secret file beside a users file: `FILE.secret`.
pub(crate) fn secret_path(users_path: &Path) -> PathBuf {
    let mut p = users_path.as_os_str().to_owned();
    p.push(".secret");
    PathBuf::from(p)
}

/// The secret keying the salts SCRAM shows for unknown users, which must survive restarts
/// (RFC 5802 §5.1): 32 bytes, base64, in [`secret_path`]. Created with mode 0600 on first
/// start; `None` when it cannot be created (a read-only directory: the users file's own keys
/// are the secret then, which changes whenever a credential changes).
fn users_secret(users_path: &Path) -> Result<Option<[u8; 32]>, String> {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    let path = secret_path(users_path);
    let parse = |text: &str| -> Result<Option<[u8; 32]>, String> {
        let bytes = B64.decode(text.trim()).map_err(|e| format!("{}: {e}", path.display()))?;
        let secret = bytes.try_into().map_err(|_| format!("{}: not 32 bytes", path.display()))?;
        Ok(Some(secret))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let secret = random_seed();
    let created =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).and_then(
            |mut f| {
                f.write_all(format!("{}\n", B64.encode(secret)).as_bytes())?;
                f.sync_all()
            },
        );
    match created {
        Ok(()) => Ok(Some(secret)),
        // Another broker on the same file created it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            parse(&std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        Err(e) => {
            eprintln!(
                "shardmq: warning: {}: {e}; unknown users' SCRAM salts are keyed by the users \
                 file's credentials instead (they change when the file does)",
                path.display()
            );
            Ok(None)
        }
    }
}

/// 32 bytes from the operating system, seeding the shards' authentication nonces.
pub(super) fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("the operating system's random number generator");
    seed
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, parse_with};
    use super::*;
    use crate::core::auth::users::Credential;

    #[test]
    fn auth_users_file_anonymous_and_redirection() {
        let dir = std::env::temp_dir().join(format!("shardmq-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        let cred = Credential::derive(b"pw", b"salt", 4096);
        std::fs::write(&users, UserDb::line("alice", &cred) + "\n").unwrap();
        let path = users.to_str().unwrap();

        let c = parse(&[]).unwrap();
        assert!(c.auth.allow_anonymous && c.auth.users.is_none() && c.auth.methods.is_empty());
        let c = parse(&["--auth-users-file", path]).unwrap();
        assert!(!c.auth.allow_anonymous, "a users file turns anonymous access off");
        assert_eq!(c.auth.users.as_ref().unwrap().len(), 1);
        assert!(c.auth.method("SCRAM-SHA-256").is_some());
        let c = parse(&["--auth-users-file", path, "--allow-anonymous", "true"]).unwrap();
        assert!(c.auth.allow_anonymous);
        let file = format!("[auth]\nusers_file = {path:?}\nallow_anonymous = true\n");
        assert_eq!(parse_with(&[], &file, &[0]).unwrap().auth.users.unwrap().len(), 1);
        let e = parse(&["--allow-anonymous", "false"]).unwrap_err();
        assert!(e.contains("needs a users file"), "{e}");
        let e = parse(&["--auth-users-file", "/nonexistent/users"]).unwrap_err();
        assert!(e.contains("--auth-users-file /nonexistent/users"), "{e}");
        std::fs::write(&users, "alice nonsense\n").unwrap();
        let e = parse(&["--auth-users-file", path]).unwrap_err();
        assert!(e.contains("line 1"), "{e}");

        let c = parse(&["--server-reference", "b:1883"]).unwrap();
        let want = Redirect { server_reference: "b:1883".into(), permanent: false };
        assert_eq!(c.auth.redirect, Some(want));
        let c = parse_with(&[], "server_reference = \"b\"\nredirect = \"permanent\"\n", &[0]);
        assert!(c.unwrap().auth.redirect.unwrap().permanent);
        let e = parse(&["--server-reference", "b", "--redirect", "forever"]).unwrap_err();
        assert!(e.contains("--redirect `forever`"), "{e}");
        let e = parse(&["--redirect", "permanent"]).unwrap_err();
        assert!(e.contains("server reference"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn secret_file_is_created_once_0600_and_keeps_fake_salts_across_starts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shardmq-auth-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        let cred = Credential::derive(b"pw", b"salt", 4096);
        std::fs::write(&users, UserDb::line("alice", &cred) + "\n").unwrap();
        let path = users.to_str().unwrap();
        let fake_salt = |c: &crate::config::Config| {
            c.auth.users.as_ref().unwrap().fake_credential("nobody").salt
        };
        let first = parse(&["--auth-users-file", path]).unwrap();
        let secret = secret_path(&users);
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret file is the owner's only");
        let text = std::fs::read_to_string(&secret).unwrap();
        // A restart after a user was added: the secret and the made-up salts stay.
        let other = Credential::derive(b"pw2", b"salt2", 4096);
        std::fs::write(&users, UserDb::line("bob", &other) + "\n").unwrap();
        let second = parse(&["--auth-users-file", path]).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), text);
        assert_eq!(fake_salt(&first), fake_salt(&second));
        std::fs::write(&secret, "c2hvcnQ=\n").unwrap();
        let e = parse(&["--auth-users-file", path]).unwrap_err();
        assert!(e.contains("not 32 bytes"), "{e}");

        let c = parse(&["--auth-password-rounds-per-sec", "50000"]).unwrap();
        assert_eq!(c.auth.password_rounds_per_sec, 50_000);
        let file = "[auth]\npassword_rounds_per_sec = 8192\n";
        assert_eq!(parse_with(&[], file, &[0]).unwrap().auth.password_rounds_per_sec, 8192);
        let e = parse(&["--auth-password-rounds-per-sec", "10"]).unwrap_err();
        assert!(e.contains("--auth-password-rounds-per-sec 10: must be between"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn password_file_alone_or_beside_the_users_file_but_no_user_in_both() {
        let dir = std::env::temp_dir().join(format!("shardmq-auth-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (users, pw) = (dir.join("users"), dir.join("passwd"));
        let cred = Credential::derive(b"pw", b"salt", 4096);
        std::fs::write(&users, UserDb::line("alice", &cred) + "\n").unwrap();
        // `mosquitto_passwd -H sha512 -b FILE carol "old style"`.
        let carol = "carol:$6$e+wnf2FVnip7JE98$GN4t0IFzExDwqoMYcw6HTbTQUWmxA3ES7zxljbQ6nygLJSAZptX\
                     VtGAyEcZ3Yym95Ks0TYYM4XbEpxSj+dAdZw==\n";
        std::fs::write(&pw, carol).unwrap();
        let (users_s, pw_s) = (users.to_str().unwrap(), pw.to_str().unwrap());
        let c = parse(&["--password-file", pw_s]).unwrap();
        assert!(!c.auth.allow_anonymous, "a password file turns anonymous access off");
        assert!(c.auth.authenticates() && c.auth.users.is_none());
        assert_eq!(c.auth.passwd.as_ref().unwrap().len(), 1);
        let c = parse(&["--password-file", pw_s, "--auth-users-file", users_s]).unwrap();
        assert_eq!((c.auth.passwd.unwrap().len(), c.auth.users.unwrap().len()), (1, 1));
        let file = format!("[auth]\npassword_file = {pw_s:?}\nallow_anonymous = true\n");
        assert!(parse_with(&[], &file, &[0]).unwrap().auth.allow_anonymous);
        std::fs::write(&pw, format!("{carol}alice:{}", &carol["carol:".len()..])).unwrap();
        let e = parse(&["--password-file", pw_s, "--auth-users-file", users_s]).unwrap_err();
        assert!(e.contains("user `alice` is in both"), "{e}");
        std::fs::write(&pw, "alice:plain\n").unwrap();
        let e = parse(&["--password-file", pw_s]).unwrap_err();
        assert!(e.contains(&format!("--password-file {pw_s}: line 1:")), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn listener_files_follow_the_global_rules() {
        let dir =
            std::env::temp_dir().join(format!("shardmq-auth-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (users, pw, acl) = (dir.join("users"), dir.join("passwd"), dir.join("acl"));
        let cred = Credential::derive(b"pw", b"salt", 4096);
        std::fs::write(&users, UserDb::line("alice", &cred) + "\n").unwrap();
        let carol = "carol:$6$e+wnf2FVnip7JE98$GN4t0IFzExDwqoMYcw6HTbTQUWmxA3ES7zxljbQ6nygLJSAZptX\
                     VtGAyEcZ3Yym95Ks0TYYM4XbEpxSj+dAdZw==\n";
        std::fs::write(&pw, carol).unwrap();
        std::fs::write(&acl, "user carol\ntopic read a/#\n").unwrap();
        let (u, p, a) = (users.to_str().unwrap(), pw.to_str().unwrap(), acl.to_str().unwrap());
        let file = format!(
            "[[listener]]\nurl = \"127.0.0.1:0\"\n\
             [[listener]]\nurl = \"127.0.0.1:0\"\npassword_file = {p:?}\nusers_file = {u:?}\n\
             acl_file = {a:?}\nmax_connections = 5\n[auth]\nacl_file = {a:?}\n"
        );
        let c = parse_with(&[], &file, &[0]).unwrap();
        let (open, own) = (&c.auth.listeners[0], &c.auth.listeners[1]);
        assert!(open.logins.is_none() && open.acl.is_none(), "listener 0 uses the global files");
        let logins = own.logins.as_ref().unwrap();
        assert_eq!(
            (logins.users.as_ref().unwrap().len(), logins.passwd.as_ref().unwrap().len()),
            (1, 1)
        );
        assert!(Arc::ptr_eq(own.acl.as_ref().unwrap(), c.auth.acl.as_ref().unwrap()), "read once");
        assert_eq!(c.auth.quotas.listener_connections_max, [None, Some(5)]);
        // A user in both of one listener's files; a malformed line names file and line.
        std::fs::write(&pw, format!("{carol}alice:{}", &carol["carol:".len()..])).unwrap();
        let e = parse_with(&[], &file, &[0]).unwrap_err();
        assert!(e.contains("[[listener]] `mqtt://127.0.0.1:0`: user `alice` is in both"), "{e}");
        std::fs::write(&pw, carol).unwrap();
        std::fs::write(&acl, "user carol\ntopic raed a/#\n").unwrap();
        let e = parse_with(&[], &file, &[0]).unwrap_err();
        assert!(e.contains(&format!("{a}: line 2")), "{e}");
        let file = "[[listener]]\nurl = \"127.0.0.1:0\"\nallow_anonymous = false\n";
        let e = parse_with(&[], file, &[0]).unwrap_err();
        assert!(e.contains("allow_anonymous false needs a password or users file"), "{e}");
        let e = parse_with(&[], "[[listener]]\nurl = \"127.0.0.1:0\"\nmax_connections = 0\n", &[0])
            .unwrap_err();
        assert!(e.contains("max_connections 0"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
