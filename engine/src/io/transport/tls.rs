//! TLS server settings: reading the certificate, key, client CA and CRL files, and building
//! one `rustls::ServerConfig` per shard from them (each with its own session cache and
//! ticket keys, so shards share no lock). TLS 1.2 and 1.3 only (rustls has nothing older).
//!
//! Also the subject CN of a verified client certificate, for `ConnInfo::cert_subject_cn`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, TlsConfig};

/// TLS sessions remembered per shard for resumption (TLS 1.2 session ids).
const SESSION_CACHE_ENTRIES: usize = 1024;

/// What a TLS listener's files hold, read and checked. Process-wide, immutable: each shard
/// builds its own [`ServerConfig`] from it ([`TlsMaterial::server_config`]).
#[derive(Debug, Clone)]
pub(crate) struct TlsMaterial {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_roots: Option<Arc<RootCertStore>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
}

impl TlsMaterial {
    /// Reads the files of `config`. `alpn`: the protocols offered (`mqtt` on mqtts; none on
    /// wss, where browsers negotiate `http/1.1`). `Err` names the file and the problem.
    pub(crate) fn load(config: &TlsConfig, alpn: &[&[u8]]) -> Result<TlsMaterial, String> {
        let certs = read_certs(&config.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(&config.key)
            .map_err(|e| format!("{}: no usable private key ({e})", config.key.display()))?;
        let client_roots = match &config.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "CA certificate")? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: unusable CA certificate ({e})", path.display())
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let crls = match &config.crl {
            Some(path) => {
                let crls = CertificateRevocationListDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if crls.is_empty() {
                    return Err(format!("{}: no X509 CRL found (PEM expected)", path.display()));
                }
                crls
            }
            None => Vec::new(),
        };
        let material = TlsMaterial {
            certs,
            key: Arc::new(key),
            client_roots,
            crls,
            client_auth: config.client_auth,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        };
        // Build one now so that a key that does not match the certificate, or a CRL that
        // does not parse, is reported when the files are read.
        material
            .server_config()
            .map_err(|e| format!("{} / {}: {e}", config.cert.display(), config.key.display()))?;
        Ok(material)
    }

    /// A fresh server configuration (one per shard: its own session cache and ticketer).
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let verifier = match (&self.client_roots, self.client_auth) {
            (Some(roots), ClientAuth::Optional | ClientAuth::Required) => {
                let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider);
                if !self.crls.is_empty() {
                    // The CRL speaks for the certificates its CA issued; a chain through an
                    // intermediate it does not cover is not refused for that.
                    b = b
                        .with_crls(self.crls.iter().cloned())
                        .only_check_end_entity_revocation()
                        .allow_unknown_revocation_status();
                }
                if self.client_auth == ClientAuth::Optional {
                    b = b.allow_unauthenticated();
                }
                b.build().map_err(|e| format!("client certificate verifier: {e}"))?
            }
            _ => WebPkiClientVerifier::no_client_auth(),
        };
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = self.alpn.clone();
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        Ok(Arc::new(config))
    }
}

/// The PEM certificates of `path` (at least one), errors naming the file. Shared with the
/// cluster's link TLS (`cluster/tls.rs`).
pub(crate) fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no {what} found (PEM expected)", path.display()));
    }
    Ok(certs)
}

/// The subject common name (OID 2.5.4.3) of a DER certificate: the last CN in the subject,
/// as UTF-8. `None` if there is none or the certificate does not parse (it was verified
/// already; this only reads it).
pub(crate) fn subject_cn(cert: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    // signature, issuer, validity, subject, ... }, ... }  (RFC 5280 §4.1)
    let (_, cert_body, _) = der_item(cert)?;
    let (_, mut tbs, _) = der_item(cert_body)?;
    let mut fields = Vec::with_capacity(6);
    while fields.len() < 6 && !tbs.is_empty() {
        let (tag, body, rest) = der_item(tbs)?;
        fields.push((tag, body));
        tbs = rest;
    }
    let skip = usize::from(fields.first()?.0 == 0xA0); // explicit [0] version
    let (tag, mut subject) = *fields.get(skip + 4)?;
    if tag != 0x30 {
        return None;
    }
    let mut cn = None;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while !subject.is_empty() {
        let (_, mut set, rest) = der_item(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, atv, rest) = der_item(set)?;
            set = rest;
            let (oid_tag, oid, value) = der_item(atv)?;
            if oid_tag == 0x06 && oid == CN_OID {
                let (_, text, _) = der_item(value)?;
                cn = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    cn
}

/// One DER item: (tag, contents, what follows).
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = len << 8 | usize::from(*b);
        }
        (len, 2 + n)
    };
    let body = input.get(header..header.checked_add(len)?)?;
    Some((tag, body, &input[header + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_items_are_bounds_checked() {
        assert_eq!(der_item(&[0x04, 0x02, 1, 2, 9]), Some((0x04, &[1u8, 2][..], &[9u8][..])));
        assert_eq!(der_item(&[0x04, 0x03, 1, 2]), None, "short");
        assert_eq!(der_item(&[0x04, 0x81, 0x01, 7]), Some((0x04, &[7u8][..], &[][..])));
        assert_eq!(der_item(&[0x04, 0x85, 1, 1, 1, 1, 1]), None, "length too long");
        assert_eq!(der_item(&[0x04]), None);
        assert_eq!(subject_cn(&[0x30, 0x03, 0x30, 0x01, 0x00]), None, "garbage is None");
    }
}
