//! The operations flags and keys of the configuration (a child module of `config`): logging
//! (`--log-level`, `--log-format`), the admin HTTP listener (`--http`, `--http-token-file`,
//! and for `--http https://…` its certificate: `--http-tls-cert`/`--http-tls-key`, else the
//! MQTT listeners' `--tls-cert`/`--tls-key`), and what a reload needs to re-read the
//! configuration (the command line it came from).

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;

use super::{invalid, Cli, ConfigError, FileConfig};

/// The log level used when neither a flag, the file nor `RUST_LOG` gives one.
pub const LOG_LEVEL_DEFAULT: &str = "warn";

/// The levels `--log-level` accepts, alone or as `TARGET=LEVEL` directives.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`tracing-subscriber`'s json format).
    Json,
}

/// Logging, the admin HTTP listener and reload: resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpsConfig {
    /// The log filter: a level (`info`) or comma-separated `TARGET=LEVEL` directives.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where the admin HTTP listener listens (`None`: no HTTP listener, the default).
    pub http: Option<SocketAddr>,
    /// A file holding the bearer token HTTP clients must present. Without it only loopback
    /// clients are served.
    pub http_token_file: Option<PathBuf>,
    /// The HTTP listener's certificate and key, when it serves HTTPS (`--http https://…`).
    pub http_tls: Option<HttpTlsFiles>,
    /// The command line this configuration was parsed from (`None` when built in code):
    /// a reload parses it again, re-reading the `--config` file.
    pub argv: Option<Vec<OsString>>,
}

/// The HTTPS listener's files (read at start-up and again on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTlsFiles {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Operations flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct OpsArgs {
    /// Log filter: `error`, `warn` (default), `info` (connections and disconnections),
    /// `debug`, `trace`, or directives like `warn,shardmq_engine::io=debug`. Reloadable.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log line format on standard error: `text` (default) or `json`.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Serve metrics, health checks and the admin API over HTTP on ADDR:PORT (e.g.
    /// 127.0.0.1:8080, or http://ADDR:PORT), or over HTTPS with https://ADDR:PORT. Off by
    /// default.
    #[arg(long, value_name = "[http[s]://]ADDR:PORT")]
    http: Option<String>,
    /// File holding the bearer token HTTP clients must send (`Authorization: Bearer TOKEN`).
    /// Without it, only loopback clients are served.
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) of an https:// HTTP listener (default: --tls-cert).
    /// Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    http_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of an https:// HTTP listener (default: --tls-key).
    #[arg(long, value_name = "FILE")]
    http_tls_key: Option<PathBuf>,
}

/// Checks a log filter: every comma-separated part is a level or `TARGET=LEVEL`.
pub fn check_log_level(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("empty (expected a level such as `info`)".into());
    }
    for part in s.split(',').map(str::trim) {
        let level = match part.split_once('=') {
            Some((target, level)) => {
                if target.is_empty()
                    || !target.chars().all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
                {
                    return Err(format!("`{part}`: bad target (expected TARGET=LEVEL)"));
                }
                level
            }
            None => part,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("`{part}`: unknown level (expected one of {})", LEVELS.join(", ")));
        }
    }
    Ok(())
}

/// Merges the operations flags over the file's keys over the defaults.
pub(super) fn resolve_ops(cli: &Cli, file: &FileConfig) -> Result<OpsConfig, ConfigError> {
    let a = &cli.ops;
    let log_level = match (&a.log_level, &file.log_level) {
        (Some(l), _) => (l.clone(), "--log-level"),
        (None, Some(l)) => (l.clone(), "log_level"),
        (None, None) => match std::env::var("RUST_LOG") {
            Ok(l) if check_log_level(&l).is_ok() => (l, "RUST_LOG"),
            _ => (LOG_LEVEL_DEFAULT.to_owned(), "log_level"),
        },
    };
    check_log_level(&log_level.0).map_err(|e| invalid(format!("{} {e}", log_level.1)))?;
    let log_format = match (a.log_format.as_deref(), file.log_format.as_deref()) {
        (Some(f), _) => parse_format(f, "--log-format")?,
        (None, Some(f)) => parse_format(f, "log_format")?,
        (None, None) => LogFormat::Text,
    };
    let (http, https) = match (a.http.as_deref(), file.http.as_deref()) {
        (Some(h), _) => parse_http(h, "--http")?,
        (None, Some(h)) => parse_http(h, "http")?,
        (None, None) => (None, false),
    };
    let http_token_file = a.http_token_file.clone().or_else(|| file.http_token_file.clone());
    if http_token_file.is_some() && http.is_none() {
        return Err(invalid("--http-token-file: needs --http (no HTTP listener is configured)"));
    }
    let (tls_cert, tls_key) = cli.listen.tls_cert_key();
    let own_cert = a.http_tls_cert.clone().or_else(|| file.http_tls_cert.clone());
    let own_key = a.http_tls_key.clone().or_else(|| file.http_tls_key.clone());
    let http_tls = match (own_cert, own_key) {
        _ if http.is_none() => None,
        (Some(_), _) | (_, Some(_)) if !https => {
            return Err(invalid(
                "--http-tls-cert/--http-tls-key: need an https:// HTTP listener \
                 (--http https://ADDR:PORT)",
            ))
        }
        // The HTTP listener's own pair wins over the MQTT listeners' one.
        (Some(cert), Some(key)) => Some(HttpTlsFiles { cert, key }),
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid("--http-tls-cert and --http-tls-key go together"))
        }
        (None, None) if !https => None,
        (None, None) => {
            match (tls_cert.or(file.tls_cert.as_ref()), tls_key.or(file.tls_key.as_ref())) {
                (Some(cert), Some(key)) => {
                    Some(HttpTlsFiles { cert: cert.clone(), key: key.clone() })
                }
                _ => {
                    return Err(invalid(
                        "--http https://…: needs a certificate and key (--http-tls-cert and \
                     --http-tls-key, or --tls-cert and --tls-key)",
                    ))
                }
            }
        }
    };
    Ok(OpsConfig {
        log_level: log_level.0,
        log_format,
        http,
        http_token_file,
        http_tls,
        argv: None,
    })
}

/// `[http://|https://]ADDR:PORT`: the address, and whether it is HTTPS.
fn parse_http(s: &str, key: &str) -> Result<(Option<SocketAddr>, bool), ConfigError> {
    let (rest, https) = match s.split_once("://") {
        Some(("https", rest)) => (rest, true),
        Some(("http", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(invalid(format!("{key} `{s}`: scheme `{scheme}` (expected http or https)")))
        }
        None => (s, false),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Ok((Some(parse_addr(rest, key)?), https))
}

impl OpsConfig {
    /// The HTTP listener's URL scheme.
    pub fn http_scheme(&self) -> &'static str {
        if self.http_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The certificate file of an HTTPS listener.
    pub fn http_tls_cert(&self) -> Option<&Path> {
        self.http_tls.as_ref().map(|t| t.cert.as_path())
    }
}

fn parse_format(s: &str, key: &str) -> Result<LogFormat, ConfigError> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(format!("{key} `{s}`: expected `text` or `json`"))),
    }
}

fn parse_addr(s: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .map_err(|e| invalid(format!("{key} `{s}`: {e} (expected ADDR:PORT)")))?
        .next()
        .ok_or_else(|| invalid(format!("{key} `{s}`: resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, parse_with};
    use super::*;

    #[test]
    fn log_levels_are_checked() {
        for good in ["info", "WARN", "warn,shardmq_engine::io=debug", "off"] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        for bad in ["", "loud", "info,", "=info", "a b=info", "x=verbose"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
        let e = parse(&["--log-level", "loud"]).unwrap_err();
        assert!(e.contains("--log-level") && e.contains("loud"), "{e}");
        let e = parse_with(&[], "log_level = \"loud\"\n", &[0]).unwrap_err();
        assert!(e.starts_with("log_level"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = "log_level = \"info\"\nlog_format = \"json\"\nhttp = \"127.0.0.1:0\"\n";
        let c = parse_with(&[], file, &[0]).unwrap();
        assert_eq!(c.ops.log_level, "info");
        assert_eq!(c.ops.log_format, LogFormat::Json);
        assert_eq!(c.ops.http, Some("127.0.0.1:0".parse().unwrap()));
        let c = parse_with(&["--log-level", "debug", "--log-format", "text"], file, &[0]).unwrap();
        assert_eq!(c.ops.log_level, "debug");
        assert_eq!(c.ops.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(e.contains("--log-format `xml`"), "{e}");
        let e = parse(&["--http", "nowhere"]).unwrap_err();
        assert!(e.contains("--http `nowhere`"), "{e}");
        let e = parse(&["--http-token-file", "/x"]).unwrap_err();
        assert!(e.contains("--http-token-file"), "{e}");
        assert_eq!(parse(&[]).unwrap().ops.http, None);
    }

    #[test]
    fn https_takes_the_http_pair_over_the_listeners_pair() {
        let tls = |c: &crate::config::Config| {
            c.ops.http_tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()))
        };
        let shared = ["--tls-cert", "a.pem", "--tls-key", "a.key"];
        let c = parse(&[&["--http", "https://127.0.0.1:0"][..], &shared].concat()).unwrap();
        assert_eq!(tls(&c), Some(("a.pem".into(), "a.key".into())));
        assert_eq!(c.ops.http, Some("127.0.0.1:0".parse().unwrap()));
        let own = ["--http-tls-cert", "h.pem", "--http-tls-key", "h.key"];
        let c = parse(&[&["--http", "https://127.0.0.1:0"][..], &shared, &own].concat()).unwrap();
        assert_eq!(tls(&c), Some(("h.pem".into(), "h.key".into())), "its own pair wins");
        for plain in ["http://127.0.0.1:0", "127.0.0.1:0"] {
            let c = parse(&[&["--http", plain][..], &shared].concat()).unwrap();
            assert_eq!(tls(&c), None, "{plain}");
        }
        let e = parse(&["--http", "https://127.0.0.1:0"]).unwrap_err();
        assert!(e.contains("needs a certificate and key"), "{e}");
        let e = parse(&[&["--http", "127.0.0.1:0"][..], &own].concat()).unwrap_err();
        assert!(e.contains("need an https://"), "{e}");
        let e = parse(&["--http", "https://127.0.0.1:0", "--http-tls-cert", "h.pem"]).unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = parse(&["--http", "ftp://127.0.0.1:0"]).unwrap_err();
        assert!(e.contains("scheme `ftp`"), "{e}");
        let file =
            "http = \"https://127.0.0.1:0\"\nhttp_tls_cert = \"f.pem\"\nhttp_tls_key = \"f.key\"\n";
        let c = parse_with(&[], file, &[0]).unwrap();
        assert_eq!(tls(&c), Some(("f.pem".into(), "f.key".into())));
    }
}
