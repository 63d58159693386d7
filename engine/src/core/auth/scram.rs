//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as an MQTT 5.0 enhanced authentication method, named
//! `SCRAM-SHA-256`. The SCRAM messages travel in the Authentication Data property:
//!
//! ```text
//! CONNECT  Authentication Data = client-first   n,,n=USER,r=CNONCE
//! AUTH 18  Authentication Data = server-first   r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
//! AUTH 18  Authentication Data = client-final   c=biws,r=CNONCE+SNONCE,p=PROOF
//! CONNACK  Authentication Data = server-final   v=SERVERSIGNATURE
//! ```
//!
//! The server keeps only StoredKey and ServerKey (`users.rs`), so it never sees or stores the
//! password, and the client can check the server knew the credential (the server signature).
//! Channel binding is not supported (`p=` is refused; `n` and `y` are accepted). An unknown
//! user gets a salt derived from the users file's secret and the name (the same one after a
//! restart) and the file's most common iteration count (`UserDb::fake_credential`), and fails
//! only at the proof, like a wrong password, so the exchange does not reveal which users exist
//! (RFC 5802 §5.1).
//!
//! Failures: a wrong proof or an unknown user → 0x86 (bad user name or password); a malformed
//! message, a nonce or channel-binding mismatch → 0x87 (not authorised).
//!
//! [`ScramClient`] is the client side, used by the tests and by anyone scripting a client.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use shardmq_codec::ReasonCode;
use subtle::ConstantTimeEq;

use super::users::UserDb;
use super::{AuthMethod, AuthRng, AuthSession, AuthStep};

/// The Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";
/// Random bytes in a server nonce (base64-encoded on the wire: 24 characters).
const NONCE_LEN_BYTES: usize = 18;
/// The longest SCRAM message accepted from a client.
const MESSAGE_LENGTH_MAX_BYTES: usize = 1024;

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 of `data` under `key`.
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
thread_local! {
    /// Calls of [`salted_password`] on this thread, and their rounds (tests count them).
    pub(crate) static DERIVATIONS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// SaltedPassword := Hi(password, salt, i) (RFC 5802 §2.2: PBKDF2 with HMAC-SHA-256).
pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    #[cfg(test)]
    DERIVATIONS.with(|d| d.set((d.get().0 + 1, d.get().1 + u64::from(iterations))));
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// (ClientKey, ServerKey) of a SaltedPassword.
pub(crate) fn client_and_server_keys(salted: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (hmac(salted, b"Client Key"), hmac(salted, b"Server Key"))
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// RFC 5802 §5.1 `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is invalid.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// RFC 5802 §7 `printable`: %x21-2B / %x2D-7E.
fn is_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

/// The value of attribute `name` (`n=…`) if `attr` is it.
fn attr(attr: &str, name: char) -> Option<&str> {
    let mut chars = attr.chars();
    (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &attr[2..])
}

/// The SCRAM-SHA-256 method over a users file. Process-wide.
#[derive(Debug)]
pub struct ScramSha256 {
    users: Arc<UserDb>,
}

impl ScramSha256 {
    /// The method over `users` (whose secret keys the salts of unknown users).
    pub fn new(users: Arc<UserDb>) -> ScramSha256 {
        ScramSha256 { users }
    }

    /// Starts an exchange with a given server nonce (the RFC test vectors fix it).
    fn start_with_nonce(
        &self,
        data: Option<&[u8]>,
        server_nonce: &str,
    ) -> (Box<dyn AuthSession>, AuthStep) {
        match self.server_first(data, server_nonce) {
            Ok((session, reply)) => (Box::new(session), AuthStep::Continue(Bytes::from(reply))),
            Err(reason) => (Box::new(ScramSession::Done), AuthStep::Fail(reason)),
        }
    }

    fn server_first(
        &self,
        data: Option<&[u8]>,
        server_nonce: &str,
    ) -> Result<(ScramSession, String), ReasonCode> {
        let refuse = ReasonCode::NOT_AUTHORIZED;
        let text = data
            .filter(|d| d.len() <= MESSAGE_LENGTH_MAX_BYTES)
            .and_then(|d| std::str::from_utf8(d).ok())
            .ok_or(refuse)?;
        // gs2-header = gs2-cbind-flag "," [authzid] ","
        let mut it = text.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
            return Err(refuse);
        };
        if cbind != "n" && cbind != "y" {
            return Err(refuse); // "p=…": channel binding is not supported.
        }
        let mut attrs = bare.split(',');
        let name = attrs.next().and_then(|a| attr(a, 'n')).and_then(decode_saslname);
        let client_nonce = attrs.next().and_then(|a| attr(a, 'r')).filter(|n| is_nonce(n));
        let (Some(name), Some(client_nonce)) = (name, client_nonce) else {
            return Err(refuse); // Includes a leading "m=" (reserved-mext): not supported.
        };
        if !authzid.is_empty() && attr(authzid, 'a').and_then(decode_saslname) != Some(name.clone())
        {
            return Err(refuse); // Acting as another user is not supported.
        }
        let (salt, iterations, keys) = match self.users.get(&name) {
            Some(c) => (c.salt.clone(), c.iterations, Some((c.stored_key, c.server_key))),
            None => {
                let fake = self.users.fake_credential(&name);
                (fake.salt, fake.iterations, None)
            }
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let session = ScramSession::AwaitingFinal {
            auth_message: format!("{bare},{server_first}"),
            gs2_header: text[..text.len() - bare.len()].to_owned(),
            nonce,
            user: name,
            keys,
        };
        Ok((session, server_first))
    }
}

impl AuthMethod for ScramSha256 {
    fn name(&self) -> &str {
        METHOD
    }

    fn start(&self, data: Option<&[u8]>, rng: &mut AuthRng) -> (Box<dyn AuthSession>, AuthStep) {
        let mut raw = [0u8; NONCE_LEN_BYTES];
        rng.fill(&mut raw);
        self.start_with_nonce(data, &B64.encode(raw))
    }
}

/// One SCRAM exchange on the server. Shard-local.
enum ScramSession {
    /// server-first was sent; client-final is expected.
    AwaitingFinal {
        /// client-first-message-bare "," server-first-message (the client-final part is
        /// appended when it arrives).
        auth_message: String,
        /// The client's gs2-header, which `c=` must repeat.
        gs2_header: String,
        /// The combined nonce.
        nonce: String,
        user: String,
        /// (StoredKey, ServerKey); `None` for an unknown user.
        keys: Option<([u8; 32], [u8; 32])>,
    },
    /// Finished (the exchange code drops the session then).
    Done,
}

impl std::fmt::Debug for ScramSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramSession::AwaitingFinal { user, .. } => {
                f.debug_struct("AwaitingFinal").field("user", user).finish_non_exhaustive()
            }
            ScramSession::Done => f.write_str("Done"),
        }
    }
}

impl AuthSession for ScramSession {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match std::mem::replace(self, ScramSession::Done) {
            ScramSession::AwaitingFinal { auth_message, gs2_header, nonce, user, keys } => {
                match server_final(data, auth_message, &gs2_header, &nonce, keys) {
                    Ok(v) => AuthStep::Success { user, data: Some(Bytes::from(v)) },
                    Err(reason) => AuthStep::Fail(reason),
                }
            }
            ScramSession::Done => AuthStep::Fail(ReasonCode::NOT_AUTHORIZED),
        }
    }
}

/// Checks client-final and returns server-final.
fn server_final(
    data: Option<&[u8]>,
    mut auth_message: String,
    gs2_header: &str,
    nonce: &str,
    keys: Option<([u8; 32], [u8; 32])>,
) -> Result<String, ReasonCode> {
    let refuse = ReasonCode::NOT_AUTHORIZED;
    let text = data
        .filter(|d| d.len() <= MESSAGE_LENGTH_MAX_BYTES)
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or(refuse)?;
    // client-final-message = client-final-message-without-proof "," proof
    let (without_proof, proof) = text.rsplit_once(',').ok_or(refuse)?;
    let proof = attr(proof, 'p').and_then(|p| B64.decode(p).ok()).ok_or(refuse)?;
    let proof: [u8; 32] = proof.try_into().map_err(|_| refuse)?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs.next().and_then(|a| attr(a, 'c')).and_then(|c| B64.decode(c).ok());
    if cbind.as_deref() != Some(gs2_header.as_bytes()) {
        return Err(refuse);
    }
    if attrs.next().and_then(|a| attr(a, 'r')) != Some(nonce) {
        return Err(refuse);
    }
    auth_message.push(',');
    auth_message.push_str(without_proof);
    // An unknown user's proof is checked too (against keys nothing matches), so it takes
    // as long as a wrong password's.
    let known = keys.is_some();
    let (stored_key, server_key) = keys.unwrap_or(([0; 32], [0; 32]));
    let client_key = xor(&proof, &hmac(&stored_key, auth_message.as_bytes()));
    if !(bool::from(sha256(&client_key).ct_eq(&stored_key)) && known) {
        return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    Ok(format!("v={}", B64.encode(hmac(&server_key, auth_message.as_bytes()))))
}

/// The client side of SCRAM-SHA-256 (no channel binding).
#[derive(Debug)]
pub struct ScramClient {
    password: String,
    client_first_bare: String,
    client_nonce: String,
    /// The server signature to expect, once client-final was made.
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// A client for `user` with `password`; `client_nonce` must be printable ASCII without
    /// commas (and fresh for every exchange).
    pub fn new(user: &str, password: &str, client_nonce: &str) -> ScramClient {
        assert!(is_nonce(client_nonce), "a client nonce is printable ASCII without commas");
        ScramClient {
            password: password.to_owned(),
            client_first_bare: format!("n={},r={client_nonce}", encode_saslname(user)),
            client_nonce: client_nonce.to_owned(),
            expected_server_signature: None,
        }
    }

    /// client-first-message (the Authentication Data of CONNECT or AUTH 0x19).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// client-final-message for `server_first`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(server_first).map_err(|e| e.to_string())?;
        let mut attrs = text.split(',');
        let nonce = attrs.next().and_then(|a| attr(a, 'r')).ok_or("no nonce")?;
        let salt = attrs.next().and_then(|a| attr(a, 's')).ok_or("no salt")?;
        let salt = B64.decode(salt).map_err(|e| format!("salt: {e}"))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| attr(a, 'i'))
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or("no iteration count")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the server nonce does not extend ours".into());
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let salted = salted_password(self.password.as_bytes(), &salt, iterations);
        let (client_key, server_key) = client_and_server_keys(&salted);
        let signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        let proof = B64.encode(xor(&client_key, &signature));
        Ok(format!("{without_proof},p={proof}").into_bytes())
    }

    /// Checks server-final-message: the server proved it knows the credential.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = self.expected_server_signature.ok_or("client-final was not made")?;
        let text = std::str::from_utf8(server_final).map_err(|e| e.to_string())?;
        let v = attr(text.split(',').next().unwrap_or(""), 'v')
            .ok_or_else(|| format!("server-final `{text}` has no verifier"))?;
        let v = B64.decode(v).map_err(|e| format!("verifier: {e}"))?;
        if bool::from(v.ct_eq(&expected)) {
            Ok(())
        } else {
            Err("wrong server signature".into())
        }
    }
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
