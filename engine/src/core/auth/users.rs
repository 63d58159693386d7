//! The users file: one user per line, with SCRAM-SHA-256 credentials (RFC 5802 §3) — a salt,
//! an iteration count, StoredKey and ServerKey — never the password itself.
//!
//! ```text
//! # comments and blank lines are ignored
//! alice SCRAM-SHA-256$4096:<salt, base64>$<StoredKey, base64>:<ServerKey, base64>
//! ```
//!
//! The credential column is the format PostgreSQL uses for its SCRAM verifiers (RFC 5803's
//! fields, `$`-separated). A user name is any UTF-8 without whitespace or control characters
//! (the separator is the first space). `shardmq users add NAME` writes entries.
//!
//! Passwords are used as their UTF-8 bytes: SASLprep (RFC 4013) normalisation is not applied,
//! so a non-ASCII password must be typed in the same normalisation form it was added with.
//!
//! Process-wide: loaded once at start-up, read-only, shared by every shard.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::scram::{client_and_server_keys, salted_password, sha256};

/// The iteration count `shardmq users add` uses unless told otherwise.
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// The fewest iterations accepted (RFC 7677 §4: at least 4096).
pub const ITERATIONS_MIN: u32 = 4096;
/// The most iterations accepted: a plain-password CONNECT costs one PBKDF2 of this many
/// rounds on the shard's core, so a file cannot make that unbounded.
pub const ITERATIONS_MAX: u32 = 1_000_000;
/// Salt length of new entries.
pub const SALT_LEN_BYTES: usize = 16;
/// The longest user name accepted (an MQTT string is at most 65,535 bytes).
pub const USER_NAME_LENGTH_MAX_BYTES: usize = 256;

/// The credential column's scheme prefix.
const SCHEME: &str = "SCRAM-SHA-256";

/// One user's SCRAM-SHA-256 credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Salt of the PBKDF2 derivation.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets (a leaked ServerKey lets an attacker impersonate the server).
        f.debug_struct("Credential").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl Credential {
    /// Derives the credential of `password` with `salt` and `iterations` (RFC 5802 §3).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Credential {
        let salted = salted_password(password, salt, iterations);
        let (client_key, server_key) = client_and_server_keys(&salted);
        Credential { salt: salt.to_vec(), iterations, stored_key: sha256(&client_key), server_key }
    }

    /// Whether `password` is this credential's password (a plain-password CONNECT). Costs
    /// one PBKDF2 of `iterations` rounds. Compares in constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let (client_key, _) = client_and_server_keys(&salted);
        bool::from(sha256(&client_key).ct_eq(&self.stored_key))
    }

    /// The credential column: `SCRAM-SHA-256$ITER:SALT$STOREDKEY:SERVERKEY`.
    pub fn encode(&self) -> String {
        format!(
            "{SCHEME}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses a credential column.
    pub fn parse(s: &str) -> Result<Credential, String> {
        let expected = "expected SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY";
        let mut parts = s.split('$');
        let (Some(scheme), Some(iter_salt), Some(keys), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(expected.into());
        };
        if scheme != SCHEME {
            return Err(format!("unknown scheme `{scheme}` ({expected})"));
        }
        let (iterations, salt) = iter_salt.split_once(':').ok_or(expected)?;
        let iterations: u32 =
            iterations.parse().map_err(|_| format!("`{iterations}` is not an iteration count"))?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "{iterations} iterations: must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}"
            ));
        }
        let salt = B64.decode(salt).map_err(|e| format!("salt: {e}"))?;
        if salt.is_empty() {
            return Err("salt: empty".into());
        }
        let (stored, server) = keys.split_once(':').ok_or(expected)?;
        let key = |what: &str, text: &str| -> Result<[u8; 32], String> {
            let bytes = B64.decode(text).map_err(|e| format!("{what}: {e}"))?;
            bytes.try_into().map_err(|_| format!("{what}: not 32 bytes"))
        };
        Ok(Credential {
            salt,
            iterations,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }
}

/// Checks a user name for the users file.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".into());
    }
    if name.len() > USER_NAME_LENGTH_MAX_BYTES {
        return Err(format!("user name longer than {USER_NAME_LENGTH_MAX_BYTES} bytes"));
    }
    if name.starts_with('#') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "user name `{}`: no whitespace, control characters or leading `#`",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The users of the users file. Process-wide, read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    users: BTreeMap<String, Credential>,
}

impl UserDb {
    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<UserDb, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (name, cred) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {n}: expected `NAME CREDENTIAL`"))?;
            check_user_name(name).map_err(|e| format!("line {n}: {e}"))?;
            let cred = Credential::parse(cred.trim()).map_err(|e| format!("line {n}: {e}"))?;
            if users.insert(name.to_owned(), cred).is_some() {
                return Err(format!("line {n}: user `{name}` appears twice"));
            }
        }
        Ok(UserDb { users })
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, name: &str, cred: Credential) {
        self.users.insert(name.to_owned(), cred);
    }

    /// The credential of `name`.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.users.get(name)
    }

    /// Whether `name` exists and `password` is its password (one PBKDF2 when it exists).
    pub fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        self.get(name).is_some_and(|c| c.verify_password(password))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True without users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file line of a user.
    pub fn line(name: &str, cred: &Credential) -> String {
        format!("{name} {}", cred.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_credential_roundtrips_and_verifies() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = Credential::derive(b"pencil", &salt, 4096);
        let line = UserDb::line("user", &cred);
        assert!(line.starts_with("user SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"), "{line}");
        let db = UserDb::parse(&format!("# users\n\n{line}\n")).unwrap();
        assert_eq!(db.len(), 1);
        assert_eq!(db.get("user"), Some(&cred));
        assert!(db.verify_password("user", b"pencil"));
        assert!(!db.verify_password("user", b"pencil "));
        assert!(!db.verify_password("nobody", b"pencil"));
        assert!(!format!("{cred:?}").contains("stored"), "keys stay out of logs");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cred = Credential::derive(b"pw", b"salt", ITERATIONS_MIN).encode();
        let cases = [
            ("alice".to_string(), "line 1: expected"),
            (format!("a {}\na {cred}", cred), "line 2: user `a` appears twice"),
            ("a SCRAM-SHA-1$4096:c2FsdA==$AA==:AA==".into(), "unknown scheme"),
            ("a SCRAM-SHA-256$10:c2FsdA==$AA==:AA==".into(), "10 iterations"),
            ("a SCRAM-SHA-256$4096:c2FsdA==$AA==:AA==".into(), "StoredKey: not 32 bytes"),
            ("a SCRAM-SHA-256$4096:!!$AA==:AA==".into(), "salt:"),
            ("a SCRAM-SHA-256$x:c2FsdA==$AA==:AA==".into(), "`x` is not"),
            (format!("\u{7}a {cred}"), "control"),
        ];
        for (text, want) in cases {
            let e = UserDb::parse(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(check_user_name("#x").is_err());
        assert!(check_user_name(&"x".repeat(USER_NAME_LENGTH_MAX_BYTES + 1)).is_err());
        assert!(check_user_name("ok-é").is_ok());
    }
}
