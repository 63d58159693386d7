//! The quota flags and the `[quotas]` table (a child module of `config`): connections per
//! broker and per address, and each connection's PUBLISH rate (`core/policy/quota.rs`).
//! Every quota is off unless set.

use clap::Args;
use serde::Deserialize;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::core::policy::quota::Quotas;

/// Quota flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct QuotaArgs {
    /// Connected clients in the whole broker; past it CONNECT gets 0x97 Quota exceeded
    /// (3.1.1: return code 3). Default: no quota.
    #[arg(long, value_name = "N")]
    max_connections: Option<u64>,
    /// New connections a second from one source address, per shard; past it a connection is
    /// closed before CONNECT. Default: no quota.
    #[arg(long, value_name = "N")]
    max_connections_per_sec_per_address: Option<u32>,
    /// PUBLISH packets a second per connection; past it 5.0 DISCONNECT 0x96 Message rate too
    /// high (3.1.1: closed). Default: no quota.
    #[arg(long, value_name = "N")]
    max_publish_rate: Option<u32>,
    /// PUBLISH payload bytes a second per connection (same answer). Default: no quota.
    #[arg(long, value_name = "BYTES")]
    max_publish_bytes_per_sec: Option<u64>,
}

/// The `[quotas]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQuotas {
    max_connections: Option<u64>,
    max_connections_per_sec_per_address: Option<u32>,
    max_publish_rate: Option<u32>,
    max_publish_bytes_per_sec: Option<u64>,
}

/// The quotas from the flags, else the `[quotas]` table. A quota of 0 is refused (it would
/// refuse everything): leave it unset for no quota.
pub(super) fn resolve_quotas(cli: &Cli, file: &FileConfig) -> Result<Quotas, ConfigError> {
    let a = &cli.quotas;
    let f = file.quotas.as_ref();
    let q = Quotas {
        connections_max: a.max_connections.or(f.and_then(|f| f.max_connections)),
        connections_per_sec_per_address: a
            .max_connections_per_sec_per_address
            .or(f.and_then(|f| f.max_connections_per_sec_per_address)),
        publish_messages_per_sec: a.max_publish_rate.or(f.and_then(|f| f.max_publish_rate)),
        publish_bytes_per_sec: a
            .max_publish_bytes_per_sec
            .or(f.and_then(|f| f.max_publish_bytes_per_sec)),
        ..Quotas::default()
    };
    let zero = [
        ("max_connections", q.connections_max == Some(0)),
        ("max_connections_per_sec_per_address", q.connections_per_sec_per_address == Some(0)),
        ("max_publish_rate", q.publish_messages_per_sec == Some(0)),
        ("max_publish_bytes_per_sec", q.publish_bytes_per_sec == Some(0)),
    ];
    if let Some((key, _)) = zero.iter().find(|(_, z)| *z) {
        return Err(invalid(format!(
            "{key} 0 would refuse everything: leave it unset for no quota"
        )));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, parse_with};

    #[test]
    fn quotas_from_flags_and_table() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.auth.quotas.connections_max, None, "off by default");
        let c = parse(&["--max-connections", "10", "--max-publish-rate", "5"]).unwrap();
        assert_eq!(c.auth.quotas.connections_max, Some(10));
        assert_eq!(c.auth.quotas.publish_messages_per_sec, Some(5));
        let file =
            "[quotas]\nmax_publish_bytes_per_sec = 1000\nmax_connections_per_sec_per_address = 3\n";
        let c = parse_with(&[], file, &[0]).unwrap();
        assert_eq!(c.auth.quotas.publish_bytes_per_sec, Some(1000));
        assert_eq!(c.auth.quotas.connections_per_sec_per_address, Some(3));
        let e = parse(&["--max-connections", "0"]).unwrap_err();
        assert!(e.contains("max_connections 0"), "{e}");
    }
}
