//! The authentication and redirection flags and keys of the configuration (a child module of
//! `config`): the users file, anonymous access, the Server Reference.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::core::auth::users::UserDb;
use crate::core::auth::{AuthConfig, Redirect};

/// Authentication and redirection flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct AuthArgs {
    /// Users file (SCRAM-SHA-256 credentials; `shardmq users add` writes it): plain user
    /// name/password CONNECTs are checked against it, and enhanced authentication with
    /// SCRAM-SHA-256 is offered.
    #[arg(long, value_name = "FILE")]
    auth_users_file: Option<PathBuf>,
    /// Accept clients with neither a user name nor an authentication method. Default: true
    /// without a users file, false with one.
    #[arg(long, value_name = "BOOL")]
    allow_anonymous: Option<bool>,
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
    allow_anonymous: Option<bool>,
}

/// The `[auth]` table, its flags, and redirection (`server_reference`, `redirect`).
pub(super) fn resolve_auth(cli: &Cli, file: &FileConfig) -> Result<AuthConfig, ConfigError> {
    let args = &cli.auth;
    let file_auth = file.auth.as_ref();
    let users_path =
        args.auth_users_file.as_ref().map(|p| ("--auth-users-file", p)).or_else(|| {
            file_auth.and_then(|a| a.users_file.as_ref()).map(|p| ("[auth] users_file", p))
        });
    let allow_anonymous = args.allow_anonymous.or(file_auth.and_then(|a| a.allow_anonymous));
    let mut auth = match users_path {
        Some((key, path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
            let users = UserDb::parse(&text)
                .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
            AuthConfig::with_users(users, allow_anonymous.unwrap_or(false), random_seed())
        }
        None if allow_anonymous == Some(false) => {
            return Err(invalid(
                "allow_anonymous false needs a users file (--auth-users-file or [auth] users_file)",
            ));
        }
        None => AuthConfig { rng_seed: random_seed(), ..AuthConfig::default() },
    };
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
}
