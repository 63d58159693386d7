//! Mosquitto's password file, as `mosquitto_passwd` writes it: one `NAME:HASH` per line.
//!
//! ```text
//! alice:$7$101$<salt, base64>$<hash, base64>   PBKDF2-HMAC-SHA512, 101 iterations (2.0)
//! carol:$6$<salt, base64>$<hash, base64>       SHA-512(password ‖ salt) (1.6 and earlier)
//! ```
//!
//! The name is everything before the first `:` (so it may contain spaces, as in Mosquitto);
//! blank lines and lines starting with `#` are ignored. Plain-text passwords (a file not yet
//! run through `mosquitto_passwd -U`) are refused at load: a broker must not keep them.
//!
//! Checks go through the shard's budget and cache (`plain.rs`) like the users file's: a
//! `$7$` entry costs its iteration count in rounds, a `$6$` entry one. An unknown name costs
//! the same as a typical entry (a derivation against a made-up salt) so that the answer does
//! not tell which users exist.
//!
//! Process-wide: loaded at start-up (and on reload), read-only, shared by every shard.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::users::PLAIN_ITERATIONS_MAX;

/// The longest line accepted (Mosquitto reads at most 1024 bytes a line).
pub const LINE_LENGTH_MAX_BYTES: usize = 1024;
/// The most entries a password file may hold.
pub const ENTRIES_MAX: usize = 1_000_000;
/// Iterations `mosquitto_passwd` 2.0 writes: what an unknown user is checked with when the
/// file has no `$7$` entry.
const ITERATIONS_TYPICAL: u32 = 101;

/// One entry's hash.
#[derive(Clone, PartialEq, Eq)]
pub enum MosqHash {
    /// `$7$`: PBKDF2-HMAC-SHA512 of the password with `salt`, `iterations` rounds.
    Pbkdf2Sha512 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl std::fmt::Debug for MosqHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes stay out of logs.
        match self {
            MosqHash::Pbkdf2Sha512 { iterations, .. } => write!(f, "$7$({iterations} iterations)"),
            MosqHash::Sha512 { .. } => f.write_str("$6$"),
        }
    }
}

impl MosqHash {
    /// Parses the hash column (`$7$ITER$SALT$HASH` or `$6$SALT$HASH`).
    pub fn parse(s: &str) -> Result<MosqHash, String> {
        let parts: Vec<&str> = s.split('$').collect();
        let b64 = |what: &str, text: &str| -> Result<Vec<u8>, String> {
            let bytes = B64.decode(text).map_err(|e| format!("{what}: {e}"))?;
            if bytes.is_empty() {
                return Err(format!("{what}: empty"));
            }
            Ok(bytes)
        };
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("`{iterations}` is not an iteration count"))?;
                if !(1..=PLAIN_ITERATIONS_MAX).contains(&iterations) {
                    return Err(format!(
                        "{iterations} iterations: must be between 1 and {PLAIN_ITERATIONS_MAX}"
                    ));
                }
                let salt = b64("salt", salt)?;
                let hash = b64("hash", hash)?;
                if hash.len() != 64 {
                    return Err("hash: not 64 bytes".into());
                }
                Ok(MosqHash::Pbkdf2Sha512 { iterations, salt, hash })
            }
            ["", "6", salt, hash] => {
                let salt = b64("salt", salt)?;
                let hash = b64("hash", hash)?;
                if hash.len() != 64 {
                    return Err("hash: not 64 bytes".into());
                }
                Ok(MosqHash::Sha512 { salt, hash })
            }
            _ => Err("expected a `$7$ITERATIONS$SALT$HASH` or `$6$SALT$HASH` hash (a plain-text \
                      password file must first be hashed with `mosquitto_passwd -U FILE`)"
                .into()),
        }
    }

    /// The PBKDF2 rounds a check costs.
    pub fn rounds(&self) -> u32 {
        match self {
            MosqHash::Pbkdf2Sha512 { iterations, .. } => *iterations,
            MosqHash::Sha512 { .. } => 1,
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut out = [0u8; 64];
        match self {
            MosqHash::Pbkdf2Sha512 { iterations, salt, hash } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.as_slice().ct_eq(hash))
            }
            MosqHash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                out.copy_from_slice(&h.finalize());
                bool::from(out.as_slice().ct_eq(hash))
            }
        }
    }
}

/// The users of a Mosquitto password file. Process-wide, read-only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswdFile {
    users: BTreeMap<String, MosqHash>,
    /// The iteration count of most `$7$` entries: what an unknown user costs.
    typical_iterations: u32,
}

impl std::fmt::Debug for PasswdFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswdFile").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

impl PasswdFile {
    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<PasswdFile, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.len() > LINE_LENGTH_MAX_BYTES {
                return Err(format!("line {n}: longer than {LINE_LENGTH_MAX_BYTES} bytes"));
            }
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) =
                line.split_once(':').ok_or_else(|| format!("line {n}: expected `NAME:HASH`"))?;
            if name.is_empty() {
                return Err(format!("line {n}: empty user name"));
            }
            if name.chars().any(char::is_control) {
                return Err(format!("line {n}: control character in the user name"));
            }
            let hash = MosqHash::parse(hash.trim()).map_err(|e| format!("line {n}: {e}"))?;
            if users.insert(name.to_owned(), hash).is_some() {
                return Err(format!("line {n}: user `{name}` appears twice"));
            }
            if users.len() > ENTRIES_MAX {
                return Err(format!("line {n}: more than {ENTRIES_MAX} users"));
            }
        }
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for h in users.values() {
            if let MosqHash::Pbkdf2Sha512 { iterations, .. } = h {
                *counts.entry(*iterations).or_default() += 1;
            }
        }
        let typical_iterations =
            counts.into_iter().max_by_key(|&(i, n)| (n, i)).map_or(ITERATIONS_TYPICAL, |(i, _)| i);
        Ok(PasswdFile { users, typical_iterations })
    }

    /// The hash of `name`.
    pub fn get(&self, name: &str) -> Option<&MosqHash> {
        self.users.get(name)
    }

    /// The user names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True without users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The rounds [`PasswdFile::verify_password`] spends on `name`.
    pub fn plain_check_rounds(&self, name: &str) -> u32 {
        self.get(name).map_or(self.typical_iterations, MosqHash::rounds)
    }

    /// Whether `name` exists and `password` is its password. An unknown name is refused after
    /// the work of a typical entry.
    pub fn verify_password(&self, name: &str, password: &[u8]) -> bool {
        match self.get(name) {
            Some(h) => h.verify(password),
            None => {
                let fake = MosqHash::Pbkdf2Sha512 {
                    iterations: self.typical_iterations,
                    salt: name.as_bytes().to_vec(),
                    hash: vec![0; 64],
                };
                let _ = std::hint::black_box(fake.verify(password));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd` 2.0.11 (`-b`, and `-H sha512` for carol), for
    /// throwaway passwords.
    const FILE: &str = "\
alice:$7$101$61ayJXSMSfTkGE9p$jicI6lMRIIgiLu/iVYTYTtrYa8TvuJbK5bK9qvyYRJ7m6PoibwEnijCsMmHURP5NT4CxJH7kZxe8LwTLGC59HQ==
bob smith:$7$101$iFjBzw5T9z4yuswK$MOwewFGH8R519rd6qEY6+ZxYao9sa7A4/l54FO/kUkXkZCRKZJyAP9XFH1IUpOStgLuJzwGUw5JYB+uXBiXw5g==
carol:$6$e+wnf2FVnip7JE98$GN4t0IFzExDwqoMYcw6HTbTQUWmxA3ES7zxljbQ6nygLJSAZptXVtGAyEcZ3Yym95Ks0TYYM4XbEpxSj+dAdZw==
";

    #[test]
    fn mosquitto_passwd_vectors_verify() {
        let f = PasswdFile::parse(&format!("# made by mosquitto_passwd\n\n{FILE}")).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify_password("alice", b"wonderland"));
        assert!(!f.verify_password("alice", b"wonderland "));
        assert!(f.verify_password("bob smith", b"s3cret pw"), "a name with a space");
        assert!(!f.verify_password("bob", b"s3cret pw"));
        assert!(f.verify_password("carol", b"old style"), "$6$ entries");
        assert!(!f.verify_password("carol", b"old stylE"));
        assert!(!f.verify_password("nobody", b"wonderland"));
        assert_eq!(f.plain_check_rounds("alice"), 101);
        assert_eq!(f.plain_check_rounds("carol"), 1);
        assert_eq!(f.plain_check_rounds("nobody"), 101, "an unknown user costs a typical one");
        assert!(!format!("{f:?}{:?}", f.get("alice")).contains("jicI"), "no hash in logs");
    }

    #[test]
    fn bad_lines_are_named() {
        let e = |text: &str| PasswdFile::parse(text).unwrap_err();
        assert!(e("alice:wonderland\n").starts_with("line 1: expected"), "plain text refused");
        assert!(e("\nalice\n").starts_with("line 2: expected `NAME:HASH`"));
        assert!(e(":$6$YQ==$YQ==\n").contains("empty user name"));
        assert!(e("a:$6$YQ==$YQ==\n").contains("hash: not 64 bytes"));
        assert!(e("a:$7$0$YQ==$YQ==\n").contains("0 iterations"));
        assert!(e("a:$7$x$YQ==$YQ==\n").contains("`x` is not an iteration count"));
        assert!(e("a:$7$101$!!$YQ==\n").contains("salt"));
        let twice = format!("{FILE}{}", FILE.lines().next().unwrap());
        assert!(e(&twice).contains("line 4: user `alice` appears twice"));
    }
}
