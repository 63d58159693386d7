//! Authenticated membership gossip (`--cluster-gossip-key-file`): every datagram foca sends
//! gets a 16-byte tag, the first half of HMAC-SHA256 over it with the cluster's key, and a
//! datagram without a good tag is dropped before foca sees it. Without a key datagrams go as
//! they are. (Node links have their own protection: TLS, `tls.rs`.)

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag appended to each datagram.
pub const TAG_BYTES: usize = 16;

/// The shortest key accepted.
pub const KEY_BYTES_MIN: usize = 16;

/// The cluster's gossip key.
#[derive(Clone)]
pub struct GossipKey(Vec<u8>);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// Reads a key file (surrounding whitespace ignored); at least [`KEY_BYTES_MIN`] bytes.
    pub fn load(path: &Path) -> Result<GossipKey, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = raw.trim_ascii().to_vec();
        if key.len() < KEY_BYTES_MIN {
            return Err(format!(
                "{}: a gossip key has at least {KEY_BYTES_MIN} bytes",
                path.display()
            ));
        }
        Ok(GossipKey(key))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(key: &[u8]) -> GossipKey {
        GossipKey(key.to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    /// Appends the tag of `data` to it.
    pub fn seal(&self, data: &mut Vec<u8>) {
        let mut mac = self.mac();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        data.extend_from_slice(&tag[..TAG_BYTES]);
    }

    /// The datagram without its tag, if the tag is good (checked in constant time).
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let split = datagram.len().checked_sub(TAG_BYTES)?;
        let (data, tag) = datagram.split_at(split);
        let mut mac = self.mac();
        mac.update(data);
        mac.verify_truncated_left(tag).ok()?;
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_datagram_opens_with_the_same_key_only() {
        let k = GossipKey::from_bytes(b"0123456789abcdef");
        let mut d = b"foca says hi".to_vec();
        k.seal(&mut d);
        assert_eq!(d.len(), 12 + TAG_BYTES);
        assert_eq!(k.open(&d), Some(&b"foca says hi"[..]));
        let other = GossipKey::from_bytes(b"fedcba9876543210");
        assert_eq!(other.open(&d), None, "another key");
        let mut bad = d.clone();
        bad[0] ^= 1;
        assert_eq!(k.open(&bad), None, "a changed byte");
        assert_eq!(k.open(b"short"), None, "shorter than a tag");
        assert_eq!(k.open(&d[..12]), None, "no tag");
    }
}
