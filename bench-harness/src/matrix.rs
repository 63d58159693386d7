//! The named scenario matrices `compare` runs, and `--only` selection.
//!
//! `standard` is what `scripts/bench.sh` runs for every broker. Beside the closed-loop max-rate
//! rows (the best case) it holds the shapes that show the worst: publishers that flood (write
//! as fast as TCP accepts), fixed low rates where every delivery is its own send, QoS 1
//! fan-out, fixed-rate latency, and memory of connections that are subscribed and receiving
//! as well as of idle ones.

use anyhow::{anyhow, Result};

use crate::spec::{Kind, Pace, Params, Placement, PlacementMode};

fn with(kind: Kind, count: u32, qos: u8, pace: Pace) -> Params {
    let mut p = Params::new(kind, count);
    p.qos = qos;
    pace.apply(&mut p);
    p
}

/// Fan-out under the load shapes of issue 11: flood 1 → 100 and 1 → 1000, 1 → 1000 paced at
/// 3,000 msg/s (latency), at 20 msg/s (CPU per delivery, one send each), QoS 1 at 5 msg/s,
/// and 15,000 subscribers receiving 1 msg/s each (memory per subscribed connection).
fn fanout_shapes() -> Vec<Params> {
    vec![
        with(Kind::Fanout, 100, 0, Pace::Flood),
        with(Kind::Fanout, 1000, 0, Pace::Flood),
        with(Kind::Fanout, 1000, 0, Pace::Fixed(3000.0)),
        with(Kind::Fanout, 1000, 0, Pace::Fixed(20.0)),
        with(Kind::Fanout, 1000, 1, Pace::Fixed(5.0)),
        {
            let mut p = with(Kind::Fanout, 15_000, 0, Pace::Fixed(1.0));
            p.source_ips = 4;
            p
        },
    ]
}

/// The named scenario matrices.
pub fn named_matrix(name: &str) -> Result<Vec<Params>> {
    use Pace::{Fixed, Max};
    match name {
        "standard" => {
            let mut ps = vec![
                with(Kind::Fanout, 100, 0, Max),
                with(Kind::Fanout, 1000, 0, Max),
                with(Kind::Fanout, 5000, 0, Max),
            ];
            ps.extend(fanout_shapes());
            ps.extend([
                with(Kind::Fanin, 100, 0, Max),
                with(Kind::P2p, 10, 1, Max),
                with(Kind::P2p, 10, 2, Max),
                // Latency where it means something: a fixed rate well under every broker's
                // limit (10,000 msg/s in all).
                with(Kind::P2p, 10, 1, Fixed(1000.0)),
                with(Kind::P2p, 10, 2, Fixed(1000.0)),
                with(Kind::Shared, 10, 0, Max),
                with(Kind::Conn, 15_000, 0, Max),
                with(Kind::Retained, 10_000, 1, Max),
            ]);
            Ok(ps)
        }
        "flood" => Ok(fanout_shapes()),
        "smoke" => {
            let mut ps = vec![
                with(Kind::Fanout, 5, 0, Fixed(200.0)),
                with(Kind::Fanout, 5, 0, Pace::Flood),
                with(Kind::Fanin, 5, 0, Fixed(200.0)),
                with(Kind::P2p, 3, 1, Fixed(200.0)),
                with(Kind::P2p, 3, 2, Fixed(200.0)),
                with(Kind::Shared, 3, 0, Fixed(200.0)),
                with(Kind::Conn, 200, 0, Max),
                with(Kind::Retained, 100, 1, Max),
            ];
            for p in &mut ps {
                p.warmup_secs = 0.2;
                p.duration_secs = 1.0;
                if p.kind == Kind::Conn {
                    p.workers = 2;
                    p.source_ips = 2;
                    p.settle_secs = 1.0;
                }
            }
            Ok(ps)
        }
        "durability" => Ok(vec![with(Kind::P2p, 10, 1, Max), with(Kind::P2p, 10, 2, Max)]),
        // Cross-shard cost: the same fan-out with every subscriber on the publisher's shard,
        // then spread over every shard (run it with 2+ --broker-cpus; the shard count is
        // filled in from them). CPU per delivered message comes from /proc, so it stays a
        // fair per-message figure when the load generator shares the cores.
        "scaling" => {
            let mut ps = Vec::new();
            for pace in [Fixed(200.0), Max] {
                for mode in [PlacementMode::Local, PlacementMode::Spread] {
                    let mut p = with(Kind::Fanout, 1000, 0, pace);
                    p.placement = Some(Placement { mode, shards: 0 });
                    ps.push(p);
                }
            }
            Ok(ps)
        }
        // Issue 12's targets (run it with `--transports tcp,tls,ws,wss`): broker CPU per
        // delivery in fan-out 1 → 1000, QoS 0, 64 B, paced at 100 and 1,000 msg/s, at max
        // rate and in a flood; and the connect rate of 2,000 connections (over TLS: full
        // handshakes per second, one shard per broker CPU).
        "transports" => {
            let mut ps = vec![
                with(Kind::Fanout, 1000, 0, Fixed(100.0)),
                with(Kind::Fanout, 1000, 0, Fixed(1000.0)),
                with(Kind::Fanout, 1000, 0, Max),
                with(Kind::Fanout, 1000, 0, Pace::Flood),
                with(Kind::Conn, 2000, 0, Max),
            ];
            if let Some(conn) = ps.last_mut() {
                conn.settle_secs = 1.0;
            }
            Ok(ps)
        }
        other => Err(anyhow!(
            "unknown matrix {other:?} (standard, flood, smoke, durability, scaling, transports)"
        )),
    }
}

/// Keeps the scenarios `only` selects: comma separated scenario kinds (`fanout`) or parts of
/// labels (`1->1000 qos0 64B flood`; `->` stands for `→`). Every term must select something.
pub fn select(ps: &mut Vec<Params>, only: &str) -> Result<()> {
    let terms: Vec<String> =
        only.split(',').map(|t| t.trim().replace("->", "→")).filter(|t| !t.is_empty()).collect();
    let hit = |p: &Params, t: &str| p.kind.name() == t || p.label().contains(t);
    if let Some(t) = terms.iter().find(|t| !ps.iter().any(|p| hit(p, t))) {
        let labels: Vec<String> = ps.iter().map(Params::label).collect();
        return Err(anyhow!(
            "--only {t:?} selects nothing; the rows are:\n  {}",
            labels.join("\n  ")
        ));
    }
    ps.retain(|p| terms.iter().any(|t| hit(p, t)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_has_the_unflattering_shapes() {
        let labels: Vec<String> =
            named_matrix("standard").unwrap().iter().map(Params::label).collect();
        for want in [
            "fanout 1→100 qos0 64B flood",
            "fanout 1→1000 qos0 64B flood",
            "fanout 1→1000 qos0 64B 20/s per publisher",
            "fanout 1→1000 qos1 64B 5/s per publisher",
            "fanout 1→15000 qos0 64B 1/s per publisher",
            "p2p 10 pairs qos1 64B 1000/s per publisher",
        ] {
            assert!(labels.iter().any(|l| l == want), "{want} missing from {labels:?}");
        }
    }

    #[test]
    fn only_by_kind_and_label() {
        let mut ps = named_matrix("standard").unwrap();
        select(&mut ps, "1->1000 qos0 64B flood,1->100 qos0 64B flood").unwrap();
        assert_eq!(ps.len(), 2);
        let mut ps = named_matrix("standard").unwrap();
        select(&mut ps, "conn").unwrap();
        assert_eq!(ps.len(), 1);
        assert!(select(&mut named_matrix("standard").unwrap(), "nothing-like-this").is_err());
    }
}
