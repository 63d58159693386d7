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
//! Unknown users look like known ones (RFC 5802 §5.1): SCRAM answers them with a made-up
//! credential ([`UserDb::fake_credential`]: a salt keyed by the file's secret and the name, and
//! the file's most common iteration count), and a plain-password check of an unknown user runs
//! the same PBKDF2 as a known one before refusing it.
//!
//! Process-wide: loaded once at start-up, read-only, shared by every shard.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::scram::{client_and_server_keys, hmac, salted_password, sha256};

/// The iteration count `shardmq users add` uses unless told otherwise.
pub const ITERATIONS_DEFAULT: u32 = 4096;
/// The fewest iterations accepted (RFC 7677 §4: at least 4096).
pub const ITERATIONS_MIN: u32 = 4096;
/// The most iterations accepted in the file. SCRAM costs the broker no PBKDF2 at all (the
/// client derives), so SCRAM users may have many.
pub const ITERATIONS_MAX: u32 = 1_000_000;
/// The most iterations of an entry whose password may be checked in clear (a plain-password
/// CONNECT): one check is one PBKDF2 of this many rounds on a shard's core (about 70 ms), during
/// which the shard serves nobody else. Users with more can authenticate with SCRAM only (their
/// plain-password CONNECTs are refused with 0x86, after the same work as a wrong password).
pub const PLAIN_ITERATIONS_MAX: u32 = 65_536;
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

/// The iteration count of most entries (the larger on a tie; the default without entries).
fn most_common_iterations(users: &BTreeMap<String, Credential>) -> u32 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for cred in users.values() {
        *counts.entry(cred.iterations).or_default() += 1;
    }
    counts.into_iter().max_by_key(|&(i, n)| (n, i)).map_or(ITERATIONS_DEFAULT, |(i, _)| i)
}

/// The users of the users file. Process-wide, read-only.
#[derive(Clone, PartialEq, Eq)]
pub struct UserDb {
    users: BTreeMap<String, Credential>,
    /// The iteration count of most entries, kept up to date by every change (computing it per
    /// check would make an unknown user slower to answer than a known one).
    typical_iterations: u32,
    /// Keys the salts made up for unknown users. It must stay the same across restarts (or
    /// an unknown user's salt would change while a real one's does not): [`UserDb::parse`]
    /// derives it from the file's keys, and the configuration replaces it with the secret
    /// file's ([`UserDb::with_secret`]). `Default` leaves it zero: for tests only.
    fake_salt_key: [u8; 32],
}

impl Default for UserDb {
    /// No users; a zero fake-salt key (for tests: the configuration always sets a secret).
    fn default() -> UserDb {
        UserDb {
            users: BTreeMap::new(),
            typical_iterations: ITERATIONS_DEFAULT,
            fake_salt_key: [0; 32],
        }
    }
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDb").field("users", &self.users).finish_non_exhaustive()
    }
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
        // The fallback secret: the file's keys are secret, so a key derived from them is
        // unknown outside; it changes only when the file's credentials change.
        let mut material = Vec::with_capacity(users.len() * 64);
        for cred in users.values() {
            material.extend_from_slice(&cred.stored_key);
            material.extend_from_slice(&cred.server_key);
        }
        let fake_salt_key = hmac(&sha256(&material), b"shardmq users-file fake-salt key");
        let typical_iterations = most_common_iterations(&users);
        Ok(UserDb { users, typical_iterations, fake_salt_key })
    }

    /// The same users, with `secret` keying the salts of unknown users (the configuration
    /// reads it from the secret file beside the users file).
    pub fn with_secret(mut self, secret: &[u8; 32]) -> UserDb {
        self.fake_salt_key = hmac(secret, b"shardmq SCRAM unknown-user salt");
        self
    }

    /// The iteration count of most entries (the larger on a tie; the default without
    /// entries): what an unknown user is shown, so it looks like a typical one.
    pub fn typical_iterations(&self) -> u32 {
        self.typical_iterations
    }

    /// The credential shown for a user that does not exist: a salt stable for the name (and
    /// across restarts, with the same secret), the typical iteration count, and keys no
    /// password matches (zero: a proof would need SHA-256(ClientKey) = 0).
    pub fn fake_credential(&self, name: &str) -> Credential {
        Credential {
            salt: hmac(&self.fake_salt_key, name.as_bytes())[..SALT_LEN_BYTES].to_vec(),
            iterations: self.typical_iterations(),
            stored_key: [0; 32],
            server_key: [0; 32],
        }
    }

    /// The PBKDF2 rounds [`UserDb::verify_password`] spends on `name`: its own count, or,
    /// for an unknown user or one past [`PLAIN_ITERATIONS_MAX`], the typical count (capped).
    pub fn plain_check_rounds(&self, name: &str) -> u32 {
        match self.get(name) {
            Some(c) if c.iterations <= PLAIN_ITERATIONS_MAX => c.iterations,
            _ => self.typical_iterations().min(PLAIN_ITERATIONS_MAX),
        }
    }

    /// Users whose password cannot be checked in clear (more than [`PLAIN_ITERATIONS_MAX`]
    /// iterations), for a start-up warning.
    pub fn scram_only_users(&self) -> impl Iterator<Item = (&str, u32)> {
        self.users
            .iter()
            .filter(|(_, c)| c.iterations > PLAIN_ITERATIONS_MAX)
            .map(|(n, c)| (n.as_str(), c.iterations))
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, name: &str, cred: Credential) {
        self.users.insert(name.to_owned(), cred);
        self.typical_iterations = most_common_iterations(&self.users);
    }

    /// The credential of `name`.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.users.get(name)
    }

    /// Whether `name` exists and `password` is its password. Always one PBKDF2 of
    /// [`UserDb::plain_check_rounds`] rounds: an unknown user (or one that may use SCRAM only)
    /// is refused after deriving against a made-up credential, so the answer takes as long as
    /// for a wrong password and does not tell which users exist (RFC 5802 §5.1's concern, for
    /// plain passwords).
    pub fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        match self.get(name) {
            Some(c) if c.iterations <= PLAIN_ITERATIONS_MAX => c.verify_password(password),
            _ => {
                let mut fake = self.fake_credential(name);
                fake.iterations = self.plain_check_rounds(name);
                // The fake credential's StoredKey is zero; no password derives to it, but the
                // answer is `false` whatever the comparison says.
                let _ = std::hint::black_box(fake.verify_password(password));
                false
            }
        }
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
    fn fake_credentials_are_stable_across_loads_and_look_typical() {
        let line = |name: &str, iterations| {
            UserDb::line(name, &Credential::derive(b"pw", name.as_bytes(), iterations))
        };
        let text = [line("a", 4096), line("b", 8192), line("c", 8192)].join("\n");
        let (one, two) = (UserDb::parse(&text).unwrap(), UserDb::parse(&text).unwrap());
        assert_eq!(one.fake_credential("nobody"), two.fake_credential("nobody"));
        assert_eq!(one.typical_iterations(), 8192, "the most common count");
        assert_eq!(one.fake_credential("nobody").iterations, 8192);
        assert_eq!(one.fake_credential("nobody").salt.len(), SALT_LEN_BYTES);
        assert_ne!(one.fake_credential("nobody").salt, one.fake_credential("other").salt);
        // With the secret file's secret: stable for the same secret, whatever the users.
        let (s1, s2) = (one.with_secret(&[4; 32]), UserDb::parse(&line("d", 4096)).unwrap());
        let s2 = s2.with_secret(&[4; 32]);
        assert_eq!(s1.fake_credential("nobody").salt, s2.fake_credential("nobody").salt);
        let s3 = UserDb::parse(&text).unwrap().with_secret(&[5; 32]);
        assert_ne!(s1.fake_credential("nobody").salt, s3.fake_credential("nobody").salt);
        assert_eq!(UserDb::default().typical_iterations(), ITERATIONS_DEFAULT);
        // A tie goes to the larger count.
        assert_eq!(
            UserDb::parse(&text[..text.rfind('\n').unwrap()]).unwrap().typical_iterations(),
            8192
        );
    }

    #[test]
    fn plain_checks_of_unknown_and_scram_only_users_derive_like_known_ones() {
        use crate::core::auth::scram::DERIVATIONS;
        let mut db = UserDb::default();
        db.insert("a", Credential::derive(b"pw", b"salt", 4096));
        db.insert("b", Credential::derive(b"pw", b"salt", 4096));
        db.insert("s", Credential::derive(b"pw", b"salt", PLAIN_ITERATIONS_MAX + 1));
        let mut calls = Vec::new();
        for (name, password) in [("a", "no"), ("a", "pw"), ("nobody", "pw"), ("s", "pw")] {
            let before = DERIVATIONS.with(|d| d.get());
            let ok = db.verify_password(name, password.as_bytes());
            let after = DERIVATIONS.with(|d| d.get());
            calls.push((ok, after.0 - before.0, after.1 - before.1));
            assert_eq!(u64::from(db.plain_check_rounds(name)), after.1 - before.1);
        }
        let want = [(false, 1, 4096), (true, 1, 4096), (false, 1, 4096), (false, 1, 4096)];
        assert_eq!(calls, want, "one PBKDF2 of the typical count for every refusal");
        assert_eq!(db.scram_only_users().collect::<Vec<_>>(), [("s", PLAIN_ITERATIONS_MAX + 1)]);
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
