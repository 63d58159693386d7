//! The cluster flags and the `[cluster]` table (a child module of `config`): this node's id,
//! the address its node links and membership gossip use, and the nodes it joins through.
//! No `--node-id` means no cluster: the broker runs alone, as without these keys.
//! `--cluster-tls-cert`, `--cluster-tls-key` and `--cluster-tls-ca` (all three or none) put
//! node links under mutual TLS (`cluster/tls.rs`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::{invalid, Cli, ConfigError, FileConfig};
use crate::core::cluster::{NodeId, NodeSet};

/// Default bound on the bytes queued for one node link (its writer drops past it).
pub const LINK_QUEUE_BYTES_DEFAULT: usize = 64 << 20;
/// Most seeds a node may be given.
pub const SEEDS_MAX: usize = NodeSet::CAPACITY;

/// A node's cluster settings: resolved and checked (`Config::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id, 0 to 63, unique in the cluster.
    pub node_id: NodeId,
    /// Where the node link listener (TCP) and membership gossip (UDP) bind. Every datagram
    /// and every outgoing link leaves from this IP (the source address rule).
    pub listen: SocketAddr,
    /// What peers dial and gossip to (`--cluster-advertise`, default `listen`).
    pub advertise: SocketAddr,
    /// Other nodes' advertised addresses to join through (this node's own address removed).
    pub seeds: Vec<SocketAddr>,
    /// Bound on the bytes queued for one outgoing link (default
    /// [`LINK_QUEUE_BYTES_DEFAULT`]); a full queue drops and counts `messages_dropped`.
    pub link_queue_bytes_max: usize,
    /// Mutual TLS on node links; `None`: plain TCP. The files are read when the runtime
    /// starts (`cluster::tls::NodeTls::load`).
    pub tls: Option<ClusterTls>,
    /// A file holding the cluster's gossip key (`--cluster-gossip-key-file`): every
    /// membership datagram carries an HMAC-SHA256 tag made with it, and one without a good
    /// tag is dropped. `None`: gossip is not authenticated.
    pub gossip_key_file: Option<PathBuf>,
}

/// The PEM files of a node's link TLS: this node's certificate chain and key (presented both
/// when it dials and when it is dialled) and the CA every peer's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// This node's certificate chain (`--cluster-tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--cluster-tls-key`).
    pub key: PathBuf,
    /// The CA certificates peers' certificates are checked against (`--cluster-tls-ca`).
    pub ca: PathBuf,
}

impl ClusterSettings {
    /// Settings for node `node_id` listening (and advertising) on `listen`, joining through
    /// `seeds`, with the default limits.
    pub fn new(node_id: NodeId, listen: SocketAddr, seeds: Vec<SocketAddr>) -> ClusterSettings {
        ClusterSettings {
            node_id,
            listen,
            advertise: listen,
            seeds,
            link_queue_bytes_max: LINK_QUEUE_BYTES_DEFAULT,
            tls: None,
            gossip_key_file: None,
        }
    }
}

/// Cluster flags (flattened into the command line).
#[derive(Debug, Default, Args)]
pub(super) struct ClusterArgs {
    /// This node's id in a cluster, 0 to 63, unique per node. Without it the broker runs
    /// alone and the other --cluster-* flags are refused.
    #[arg(long, value_name = "N")]
    node_id: Option<u16>,
    /// Where node links (TCP) and membership gossip (UDP) listen, on the same port, e.g.
    /// 10.0.0.1:7000. Required with --node-id.
    #[arg(long, value_name = "IP:PORT")]
    cluster_listen: Option<String>,
    /// Other nodes to join through, comma-separated HOST:PORT (their advertised addresses;
    /// this node's own is ignored, so every node may get the same list).
    #[arg(long, value_name = "HOST:PORT,…")]
    cluster_seeds: Option<String>,
    /// The address peers reach this node at (default: --cluster-listen).
    #[arg(long, value_name = "IP:PORT")]
    cluster_advertise: Option<String>,
    /// This node's certificate chain (PEM) for TLS on node links; needs --cluster-tls-key
    /// and --cluster-tls-ca. Without the three, node links are plain TCP.
    #[arg(long, value_name = "FILE")]
    cluster_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --cluster-tls-cert.
    #[arg(long, value_name = "FILE")]
    cluster_tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) every peer node's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    cluster_tls_ca: Option<PathBuf>,
    /// A file with the cluster's gossip key (at least 16 bytes, the same on every node):
    /// membership datagrams are authenticated with it (HMAC-SHA256); without it anyone who
    /// can reach the cluster port can join the membership.
    #[arg(long, value_name = "FILE")]
    cluster_gossip_key_file: Option<PathBuf>,
}

/// The `[cluster]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    node_id: Option<u16>,
    listen: Option<String>,
    seeds: Option<Vec<String>>,
    advertise: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    gossip_key_file: Option<PathBuf>,
}

/// The cluster settings from the flags, else the `[cluster]` table; `None` without a node id.
pub(super) fn resolve_cluster(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let a = &cli.cluster;
    let f = file.cluster.as_ref();
    let listen = match (&a.cluster_listen, f.and_then(|f| f.listen.as_ref())) {
        (Some(s), _) => Some((s.clone(), "--cluster-listen")),
        (None, Some(s)) => Some((s.clone(), "cluster.listen")),
        (None, None) => None,
    };
    let advertise = match (&a.cluster_advertise, f.and_then(|f| f.advertise.as_ref())) {
        (Some(s), _) => Some((s.clone(), "--cluster-advertise")),
        (None, Some(s)) => Some((s.clone(), "cluster.advertise")),
        (None, None) => None,
    };
    let seeds = match (&a.cluster_seeds, f.and_then(|f| f.seeds.as_ref())) {
        (Some(s), _) => {
            Some((s.split(',').map(|p| p.trim().to_owned()).collect(), "--cluster-seeds"))
        }
        (None, Some(list)) => Some((list.clone(), "cluster.seeds")),
        (None, None) => None,
    };
    let (node_id, id_key) = match (a.node_id, f.and_then(|f| f.node_id)) {
        (Some(n), _) => (n, "--node-id"),
        (None, Some(n)) => (n, "cluster.node_id"),
        (None, None) => {
            let given = [
                listen.as_ref().map(|l| l.1),
                advertise.as_ref().map(|l| l.1),
                seeds.as_ref().map(|s| s.1),
                tls_key_given(a, f),
            ];
            if let Some(key) = given.into_iter().flatten().next() {
                return Err(invalid(format!(
                    "{key}: needs --node-id (or cluster.node_id): no cluster is configured"
                )));
            }
            return Ok(None);
        }
    };
    let tls = resolve_tls(a, f)?;
    if usize::from(node_id) >= NodeSet::CAPACITY {
        return Err(invalid(format!(
            "{id_key} {node_id}: must be between 0 and {}",
            NodeSet::CAPACITY - 1
        )));
    }
    let Some((listen, listen_key)) = listen else {
        return Err(invalid(format!(
            "{id_key}: needs --cluster-listen IP:PORT (or cluster.listen), where node links \
             and gossip listen"
        )));
    };
    let listen = parse_ip_port(&listen, listen_key)?;
    let advertise = match advertise {
        Some((s, key)) => {
            let addr = parse_ip_port(&s, key)?;
            if addr.ip().is_unspecified() {
                return Err(invalid(format!(
                    "{key} `{s}`: peers cannot dial an unspecified address"
                )));
            }
            addr
        }
        None if listen.ip().is_unspecified() => {
            return Err(invalid(format!(
                "{listen_key} `{listen}`: listening on every address needs --cluster-advertise \
                 (or cluster.advertise): the address peers reach this node at"
            )));
        }
        None => listen,
    };
    let mut seed_addrs = Vec::new();
    if let Some((list, key)) = seeds {
        if list.iter().any(|s: &String| s.is_empty()) {
            return Err(invalid(format!("{key}: an empty entry (expected HOST:PORT,…)")));
        }
        for s in list {
            let addr = s
                .to_socket_addrs()
                .map_err(|e| invalid(format!("{key} `{s}`: {e} (expected HOST:PORT)")))?
                .next()
                .ok_or_else(|| invalid(format!("{key} `{s}`: resolves to no address")))?;
            if addr.port() == 0 {
                return Err(invalid(format!("{key} `{s}`: port 0 names no node")));
            }
            // This node's own address (every node may get the same list) is not a seed.
            if addr != advertise && addr != listen && !seed_addrs.contains(&addr) {
                seed_addrs.push(addr);
            }
        }
        if seed_addrs.len() > SEEDS_MAX {
            return Err(invalid(format!("{key}: more than {SEEDS_MAX} seeds")));
        }
    }
    let gossip_key_file =
        a.cluster_gossip_key_file.clone().or_else(|| f.and_then(|f| f.gossip_key_file.clone()));
    Ok(Some(ClusterSettings {
        advertise,
        seeds: seed_addrs,
        tls,
        gossip_key_file,
        ..ClusterSettings::new(NodeId(node_id), listen, Vec::new())
    }))
}

/// The first link TLS flag or key given, if any.
fn tls_key_given(a: &ClusterArgs, f: Option<&FileCluster>) -> Option<&'static str> {
    [
        (a.cluster_tls_cert.is_some(), "--cluster-tls-cert"),
        (a.cluster_tls_key.is_some(), "--cluster-tls-key"),
        (a.cluster_tls_ca.is_some(), "--cluster-tls-ca"),
        (f.is_some_and(|f| f.tls_cert.is_some()), "cluster.tls_cert"),
        (f.is_some_and(|f| f.tls_key.is_some()), "cluster.tls_key"),
        (f.is_some_and(|f| f.tls_ca.is_some()), "cluster.tls_ca"),
        (a.cluster_gossip_key_file.is_some(), "--cluster-gossip-key-file"),
        (f.is_some_and(|f| f.gossip_key_file.is_some()), "cluster.gossip_key_file"),
    ]
    .into_iter()
    .find_map(|(given, key)| given.then_some(key))
}

/// The link TLS files from the flags, else the table (each file on its own): all three or
/// none.
fn resolve_tls(
    a: &ClusterArgs,
    f: Option<&FileCluster>,
) -> Result<Option<ClusterTls>, ConfigError> {
    let pick = |flag: &Option<PathBuf>,
                key: Option<&PathBuf>,
                names: (&'static str, &'static str)| {
        match (flag, key) {
            (Some(p), _) => Some((p.clone(), names.0)),
            (None, Some(p)) => Some((p.clone(), names.1)),
            (None, None) => None,
        }
    };
    let cert = pick(
        &a.cluster_tls_cert,
        f.and_then(|f| f.tls_cert.as_ref()),
        ("--cluster-tls-cert", "cluster.tls_cert"),
    );
    let key = pick(
        &a.cluster_tls_key,
        f.and_then(|f| f.tls_key.as_ref()),
        ("--cluster-tls-key", "cluster.tls_key"),
    );
    let ca = pick(
        &a.cluster_tls_ca,
        f.and_then(|f| f.tls_ca.as_ref()),
        ("--cluster-tls-ca", "cluster.tls_ca"),
    );
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => {
            for (path, name) in [&cert, &key, &ca] {
                if path.as_os_str().is_empty() {
                    return Err(invalid(format!("{name}: an empty file name")));
                }
            }
            Ok(Some(ClusterTls { cert: cert.0, key: key.0, ca: ca.0 }))
        }
        (cert, key, ca) => {
            let given = [&cert, &key, &ca].into_iter().flatten().map(|g| g.1);
            let given: Vec<&str> = given.collect();
            let missing: Vec<&str> = [
                (cert.is_none(), "--cluster-tls-cert"),
                (key.is_none(), "--cluster-tls-key"),
                (ca.is_none(), "--cluster-tls-ca"),
            ]
            .into_iter()
            .filter_map(|(m, name)| m.then_some(name))
            .collect();
            Err(invalid(format!(
                "{}: TLS on node links needs --cluster-tls-cert, --cluster-tls-key and \
                 --cluster-tls-ca together (or cluster.tls_cert, tls_key, tls_ca); missing {}",
                given.join(", "),
                missing.join(", ")
            )))
        }
    }
}

/// An `IP:PORT` with a port other than 0 (peers must be able to find it).
fn parse_ip_port(s: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr =
        s.parse().map_err(|_| invalid(format!("{key} `{s}`: expected IP:PORT")))?;
    if addr.port() == 0 {
        return Err(invalid(format!("{key} `{s}`: port 0: peers could not find this node")));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, parse_with};
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_node_id_means_no_cluster() {
        assert_eq!(parse(&[]).unwrap().cluster, None);
        let e = parse(&["--cluster-listen", "127.0.0.1:7000"]).unwrap_err();
        assert!(e.contains("--cluster-listen") && e.contains("--node-id"), "{e}");
        let e = parse_with(&[], "[cluster]\nseeds = [\"127.0.0.1:7000\"]\n", &[0]).unwrap_err();
        assert!(e.contains("cluster.seeds") && e.contains("--node-id"), "{e}");
    }

    #[test]
    fn flags_give_the_settings_and_drop_the_own_seed() {
        let c = parse(&[
            "--node-id",
            "2",
            "--cluster-listen",
            "127.0.0.12:7000",
            "--cluster-seeds",
            "127.0.0.11:7000, 127.0.0.12:7000,127.0.0.13:7000,127.0.0.11:7000",
        ])
        .unwrap();
        let s = c.cluster.unwrap();
        assert_eq!(s.node_id, NodeId(2));
        assert_eq!(s.listen, addr("127.0.0.12:7000"));
        assert_eq!(s.advertise, s.listen);
        assert_eq!(s.seeds, vec![addr("127.0.0.11:7000"), addr("127.0.0.13:7000")]);
        assert_eq!(s.link_queue_bytes_max, LINK_QUEUE_BYTES_DEFAULT);
    }

    #[test]
    fn the_table_works_and_flags_override_it() {
        let file = "[cluster]\nnode_id = 63\nlisten = \"0.0.0.0:7000\"\n\
                    advertise = \"10.0.0.5:7000\"\nseeds = [\"10.0.0.5:7000\", \"10.0.0.6:7000\"]\n";
        let s = parse_with(&[], file, &[0]).unwrap().cluster.unwrap();
        assert_eq!(s.node_id, NodeId(63));
        assert_eq!(s.listen, addr("0.0.0.0:7000"));
        assert_eq!(s.advertise, addr("10.0.0.5:7000"));
        assert_eq!(s.seeds, vec![addr("10.0.0.6:7000")]);
        let s = parse_with(&["--node-id", "4", "--cluster-seeds", "10.0.0.7:7000"], file, &[0])
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(s.node_id, NodeId(4));
        assert_eq!(s.seeds, vec![addr("10.0.0.7:7000")]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let l = ["--cluster-listen", "127.0.0.1:7000"];
        let cases: &[(&[&str], &str)] = &[
            (&["--node-id", "64", l[0], l[1]], "--node-id 64"),
            (&["--node-id", "1"], "--cluster-listen"),
            (&["--node-id", "1", l[0], "localhost"], "--cluster-listen `localhost`"),
            (&["--node-id", "1", l[0], "127.0.0.1:0"], "port 0"),
            (&["--node-id", "1", l[0], "0.0.0.0:7000"], "--cluster-advertise"),
            (&["--node-id", "1", l[0], l[1], "--cluster-advertise", "0.0.0.0:7"], "unspecified"),
            (&["--node-id", "1", l[0], l[1], "--cluster-seeds", "nope"], "--cluster-seeds `nope`"),
            (&["--node-id", "1", l[0], l[1], "--cluster-seeds", "a:1,,b:2"], "empty entry"),
            (&["--node-id", "1", l[0], l[1], "--cluster-seeds", "127.0.0.2:0"], "port 0"),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        assert!(parse(&["--node-id", "-1"]).is_err());
        let e = parse_with(&[], "[cluster]\nnode_id = 1\nport = 3\n", &[0]).unwrap_err();
        assert!(e.contains("port") && e.contains("line 3"), "{e}");
        let e = parse_with(&[], "[cluster]\nnode_id = 99\nlisten = \"127.0.0.1:1\"\n", &[0])
            .unwrap_err();
        assert!(e.contains("cluster.node_id 99"), "{e}");
    }

    #[test]
    fn link_tls_takes_all_three_files_or_none() {
        let base = ["--node-id", "1", "--cluster-listen", "127.0.0.1:7000"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        assert_eq!(with(&[]).unwrap().cluster.unwrap().tls, None);
        let all = ["--cluster-tls-cert", "n.pem", "--cluster-tls-key", "n.key"];
        let s = with(&[all[0], all[1], all[2], all[3], "--cluster-tls-ca", "ca.pem"])
            .unwrap()
            .cluster
            .unwrap();
        let want = ClusterTls { cert: "n.pem".into(), key: "n.key".into(), ca: "ca.pem".into() };
        assert_eq!(s.tls, Some(want.clone()));
        // Two of three: the error names what was given and what is missing.
        let e = with(&all).unwrap_err();
        assert!(e.contains("--cluster-tls-cert") && e.contains("missing --cluster-tls-ca"), "{e}");
        let e = with(&["--cluster-tls-ca", "ca.pem"]).unwrap_err();
        assert!(e.contains("missing --cluster-tls-cert, --cluster-tls-key"), "{e}");
        let e = with(&[all[0], "", all[2], all[3], "--cluster-tls-ca", "c"]).unwrap_err();
        assert!(e.contains("--cluster-tls-cert"), "{e}");
        // Without a cluster the flags are refused.
        let e = parse(&["--cluster-tls-ca", "ca.pem"]).unwrap_err();
        assert!(e.contains("--cluster-tls-ca") && e.contains("--node-id"), "{e}");
        // The table, and a flag overriding one of its files.
        let file = "[cluster]\nnode_id = 2\nlisten = \"127.0.0.1:7000\"\ntls_cert = \"n.pem\"\n\
                    tls_key = \"n.key\"\ntls_ca = \"ca.pem\"\n";
        let s = parse_with(&[], file, &[0]).unwrap().cluster.unwrap();
        assert_eq!(s.tls, Some(want));
        let s = parse_with(&["--cluster-tls-ca", "other.pem"], file, &[0]).unwrap();
        assert_eq!(s.cluster.unwrap().tls.unwrap().ca, PathBuf::from("other.pem"));
        let empty = file.replace("\"n.pem\"", "\"\"");
        let e = parse_with(&[], &empty, &[0]).unwrap_err();
        assert!(e.contains("cluster.tls_cert: an empty file name"), "{e}");
        let e = parse_with(&[], "[cluster]\nnode_id = 2\ntls_key = \"k\"\n", &[0]).unwrap_err();
        assert!(e.contains("cluster.tls_key") && e.contains("missing"), "{e}");
    }
}
