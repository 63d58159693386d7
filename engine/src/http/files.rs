//! The HTTP listener's files: the bearer token (`--http-token-file`) and, for an
//! `https://` listener, the certificate and key (`--http-tls-cert`/`--http-tls-key`, else
//! `--tls-cert`/`--tls-key`). Read at start-up (an error stops the broker) and again on
//! every reload (SIGHUP, `POST /api/v1/reload`): a file that no longer reads keeps what is
//! in use, and the reload's errors say why. New requests see a new token at once; new TLS
//! handshakes use a new certificate (open connections keep theirs).
//!
//! Lives on the HTTP thread and the reloading thread (behind `RwLock`s: taken once per
//! request or connection, never on a shard).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::ServerConfig;

use crate::config::HttpTlsFiles;

/// Largest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;
/// Shortest token accepted.
const TOKEN_CHARS_MIN: usize = 16;

/// The token and the TLS configuration in use, and where they are read from.
#[derive(Debug)]
pub struct HttpFiles {
    token_file: Option<PathBuf>,
    tls_files: Option<HttpTlsFiles>,
    token: RwLock<Option<Arc<[u8]>>>,
    tls: RwLock<Option<Arc<ServerConfig>>>,
}

impl HttpFiles {
    /// Reads every file; `Err` names the file and the problem.
    pub fn load(token_file: Option<&Path>, tls: Option<&HttpTlsFiles>) -> Result<Self, String> {
        let token = token_file.map(read_token).transpose()?;
        let config = tls.map(server_config).transpose()?;
        Ok(HttpFiles {
            token_file: token_file.map(Path::to_path_buf),
            tls_files: tls.cloned(),
            token: RwLock::new(token.map(Arc::from)),
            tls: RwLock::new(config),
        })
    }

    /// The bearer token in use (`None`: no token file, loopback clients only).
    pub(crate) fn token(&self) -> Option<Arc<[u8]>> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The TLS configuration for new connections (`None`: plain HTTP).
    pub(crate) fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again. Returns the keys reloaded (`http_token_file`, `http_tls`) and
    /// the errors of those that were not (each keeps what is in use).
    pub fn reload(&self) -> (Vec<&'static str>, Vec<String>) {
        let (mut reloaded, mut errors) = (Vec::new(), Vec::new());
        if let Some(path) = &self.token_file {
            match read_token(path) {
                Ok(t) => {
                    *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(t));
                    reloaded.push("http_token_file");
                }
                Err(e) => errors.push(format!("{e}; the token in use is kept")),
            }
        }
        if let Some(files) = &self.tls_files {
            match server_config(files) {
                Ok(c) => {
                    *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
                    reloaded.push("http_tls");
                }
                Err(e) => errors.push(format!("{e}; the certificate in use is kept")),
            }
        }
        (reloaded, errors)
    }
}

/// Reads the bearer token: the file's first line, trimmed; at least 16 characters.
pub fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_FILE_BYTES_MAX).read_to_string(&mut text))
        .map_err(|e| format!("--http-token-file {shown}: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("--http-token-file {shown}: the first line (the token) is empty"));
    }
    if token.len() < TOKEN_CHARS_MIN {
        return Err(format!("--http-token-file {shown}: the token is shorter than 16 characters"));
    }
    Ok(token.as_bytes().to_vec())
}

/// The HTTPS listener's server configuration: TLS 1.2 and 1.3, ALPN `http/1.1`, no client
/// certificates (clients authenticate with the bearer token).
fn server_config(files: &HttpTlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = crate::io::transport::tls::read_certs(&files.cert, "certificate")
        .map_err(|e| format!("HTTP listener certificate {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!("HTTP listener key {}: no usable private key ({e})", files.key.display())
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("HTTP listener {} / {}: {e}", files.cert.display(), files.key.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
