//! Simulated clusters: membership and route convergence under random failures, no loss
//! after an acknowledged subscription, takeover of a client id after a netsplit heals.

use std::collections::BTreeSet;

use super::{Sim, SHARDS};
use crate::core::cluster::NodeId;

const FILTERS: [&str; 6] = ["t/0", "t/1", "t/2", "t/+", "#", "u/#"];

/// Starts nodes `0..n` a few ms apart and runs until `until_ms`.
fn start_all(sim: &mut Sim, until_ms: u64) {
    for i in 0..sim.nodes.len() {
        sim.start(i);
        let t = sim.now_ms + 1 + sim.rng.below(40);
        sim.run_until(t);
    }
    sim.run_until(until_ms);
}

/// Every live node sees exactly the live nodes, every live node's shards hold exactly
/// every other live node's filters, and no filter change waits for an acknowledgement.
fn assert_converged(sim: &Sim) {
    let live: BTreeSet<NodeId> =
        (0..sim.nodes.len()).filter(|i| sim.alive(*i)).map(|i| sim.nodes[i].id).collect();
    for i in (0..sim.nodes.len()).filter(|i| sim.alive(*i)) {
        assert_eq!(sim.view(i), live, "node {i}'s membership");
        for j in (0..sim.nodes.len()).filter(|j| *j != i && sim.alive(*j)) {
            assert!(sim.link_up_in_view(i, j), "link {i} -> {j} is up");
            let want = sim.filters_of(j);
            for (s, shard) in sim.nodes[i].shards.iter().enumerate() {
                let got = shard.routes.get(&sim.nodes[j].id).cloned().unwrap_or_default();
                assert_eq!(
                    got,
                    want,
                    "node {i} shard {s}'s routes of node {j}: {} / {}",
                    sim.nodes[i].machine.as_ref().unwrap().peer_debug(sim.nodes[j].id),
                    sim.nodes[j].machine.as_ref().unwrap().peer_debug(sim.nodes[i].id),
                );
            }
        }
        for (s, shard) in sim.nodes[i].shards.iter().enumerate() {
            assert!(
                shard.unacked.is_empty(),
                "node {i} shard {s} waits for {:?}: {:?}",
                shard.unacked,
                sim.nodes[i].machine.as_ref().unwrap().ack_state()
            );
            assert_eq!(shard.credited, shard.cost_out, "node {i} shard {s} credited exactly");
        }
    }
    // Routes of nodes that are not live are gone everywhere.
    for i in (0..sim.nodes.len()).filter(|i| sim.alive(*i)) {
        for shard in &sim.nodes[i].shards {
            for (n, set) in &shard.routes {
                assert!(live.contains(n) || set.is_empty(), "node {i} holds routes of dead {n}");
            }
        }
    }
}

/// True if `filter` matches `topic` (the workload's filters: `+`, `#`, no `$`).
fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// No message published after a subscription's acknowledgement is lost, if the publishing
/// node was one the subscriber's node waited for and its link to the subscriber's node
/// stayed up (same connection) until the end. Returns how many (message, subscription)
/// pairs this covered.
fn assert_no_loss(sim: &Sim) -> usize {
    let mut checked = 0;
    for b in (0..sim.nodes.len()).filter(|b| sim.alive(*b)) {
        let received: BTreeSet<u64> = sim.nodes[b]
            .shards
            .iter()
            .flat_map(|s| s.received.iter())
            .map(|(_, p)| u64::from_be_bytes(p[..8].try_into().unwrap()))
            .collect();
        for shard in &sim.nodes[b].shards {
            for (filter, acked) in &shard.acked_at {
                for (a, t, topic, id) in &sim.published {
                    let a = *a;
                    if a == b || *t < acked.at_ms || !matches(filter, topic) {
                        continue;
                    }
                    let link = sim.links.get(&(a, b)).copied().unwrap_or_default();
                    if !acked.waited.contains(&sim.nodes[a].id)
                        || !link.connected
                        || link.gen != acked.gens[a]
                    {
                        continue;
                    }
                    checked += 1;
                    assert!(
                        received.contains(id),
                        "message {id} from node {a} at {t} ms to {topic} is lost for node {b}'s \
                         {filter} acknowledged at {} ms",
                        acked.at_ms
                    );
                }
            }
        }
    }
    checked
}

/// No client id is connected twice across the live nodes.
fn assert_one_connection_per_id(sim: &Sim) {
    let mut seen = std::collections::BTreeMap::new();
    for i in (0..sim.nodes.len()).filter(|i| sim.alive(*i)) {
        for (s, shard) in sim.nodes[i].shards.iter().enumerate() {
            for (token, id) in &shard.conns {
                if let Some(other) = seen.insert(id.clone(), (i, s, *token)) {
                    panic!("{id} is connected on {other:?} and {:?}", (i, s, token));
                }
            }
        }
    }
}

#[test]
fn three_nodes_exchange_routes_and_messages() {
    let mut sim = Sim::new(3, 7);
    start_all(&mut sim, 5_000);
    sim.filter(1, 0, "t/+", true);
    sim.filter(2, 1, "t/#", true);
    sim.run_until(6_000);
    assert_converged(&sim);
    sim.publish(0, 1, "t/x", false);
    sim.run_until(6_100);
    let got = |sim: &Sim, i: usize| -> usize {
        sim.nodes[i].shards.iter().map(|s| s.received.len()).sum()
    };
    assert_eq!((got(&sim, 1), got(&sim, 2)), (1, 1));
    // Origin shard 1 lands on shard 1 of every receiver.
    assert_eq!(sim.nodes[1].shards[1].received.len(), 1);
    // A message nobody wants is credited at once.
    sim.publish(0, 0, "v", false);
    assert_eq!(sim.nodes[0].shards[0].credited, sim.nodes[0].shards[0].cost_out);
    // A retained message goes to every live peer.
    sim.publish(0, 0, "v", true);
    sim.run_until(6_200);
    assert_eq!((got(&sim, 1), got(&sim, 2)), (2, 2));
    assert_eq!(sim.publish_answers, sim.publishes, "one answer per publish");
    assert_converged(&sim);
    assert!(assert_no_loss(&sim) >= 2);
}

/// What the churn may do.
struct Churn {
    kills: bool,
    partitions: bool,
}

/// Random subscriptions, publishes, connections and failures until `until_ms`.
fn churn(sim: &mut Sim, until_ms: u64, c: &Churn) {
    let n = sim.nodes.len();
    let mut partitioned_until = None;
    while sim.now_ms < until_ms {
        let t = sim.now_ms + 50;
        let i = sim.rng.index(n);
        let shard = sim.rng.below(u64::from(SHARDS)) as u16;
        match sim.rng.below(100) {
            0..=49 => {
                let f = FILTERS[sim.rng.index(FILTERS.len())];
                let added = sim.rng.below(2) == 0;
                sim.filter(i, shard, f, added);
            }
            50..=79 => {
                let topic = format!("t/{}", sim.rng.below(4));
                sim.publish(i, shard, &topic, false);
            }
            80..=85 if sim.alive(i) => {
                let id = format!("client-{}", sim.rng.below(20));
                sim.connect(i, shard, &id);
            }
            86..=88 => {
                let tokens: Vec<u64> =
                    sim.nodes[i].shards[shard as usize].conns.keys().copied().collect();
                if !tokens.is_empty() {
                    let token = tokens[sim.rng.index(tokens.len())];
                    sim.disconnect(i, shard, token);
                }
            }
            89..=94 => {
                // Break a random connected link (a TCP reset).
                let keys: Vec<(usize, usize)> =
                    sim.links.iter().filter(|(_, l)| l.connected).map(|(k, _)| *k).collect();
                if !keys.is_empty() {
                    let (a, b) = keys[sim.rng.index(keys.len())];
                    sim.break_link(a, b);
                }
            }
            95..=96 if c.kills => {
                let dead = (0..n).filter(|i| !sim.alive(*i)).count();
                if sim.alive(i) && dead < n / 10 {
                    sim.kill(i);
                } else if !sim.alive(i) {
                    sim.start(i);
                }
            }
            97 if c.partitions && partitioned_until.is_none() => {
                let side = (0..n).map(|_| sim.rng.below(2) as u8).collect();
                sim.partition(side);
                partitioned_until = Some(sim.now_ms + 3_000 + sim.rng.below(10_000));
            }
            _ => {}
        }
        if partitioned_until.is_some_and(|u| sim.now_ms >= u) {
            sim.heal();
            partitioned_until = None;
        }
        sim.run_until(t);
    }
}

/// Failures stop: heal, restart the dead, and let the cluster settle.
fn settle(sim: &mut Sim, quiet_ms: u64) {
    sim.heal();
    for i in 0..sim.nodes.len() {
        if !sim.alive(i) {
            sim.start(i);
        }
    }
    sim.loss_permille = 0;
    let until = sim.now_ms + quiet_ms;
    sim.run_until(until);
}

#[test]
fn fifty_nodes_converge_after_random_failures() {
    for seed in [1u64, 2] {
        let mut sim = Sim::new(50, seed);
        sim.loss_permille = 20;
        sim.publish_after_ack = true;
        start_all(&mut sim, 10_000);
        assert_converged(&sim);
        churn(&mut sim, 70_000, &Churn { kills: true, partitions: true });
        settle(&mut sim, 60_000);
        assert_converged(&sim);
        assert_one_connection_per_id(&sim);
        // On the settled cluster, fresh subscriptions get every message.
        for i in 0..50 {
            sim.filter(i, 0, "u/#", false);
            sim.filter(i, 1, "u/#", false);
            sim.filter(i, 0, "u/#", true);
        }
        let until = sim.now_ms + 1_000;
        sim.run_until(until);
        for k in 0..100 {
            let i = sim.rng.index(50);
            sim.publish(i, (k % 2) as u16, &format!("u/{}", k % 4), false);
        }
        let until = sim.now_ms + 1_000;
        sim.run_until(until);
        assert_eq!(sim.publish_answers, sim.publishes, "seed {seed}: one answer per publish");
        let checked = assert_no_loss(&sim);
        assert!(checked > 1000, "seed {seed}: only {checked} deliveries checked");
    }
}

#[test]
fn no_message_is_lost_after_an_acknowledged_subscription() {
    // Link resets and datagram loss, but no node fails: most links stay up.
    for seed in [3u64, 4, 5] {
        let mut sim = Sim::new(8, seed);
        sim.loss_permille = 50;
        sim.publish_after_ack = true;
        start_all(&mut sim, 5_000);
        churn(&mut sim, 40_000, &Churn { kills: false, partitions: false });
        settle(&mut sim, 5_000);
        let checked = assert_no_loss(&sim);
        assert!(checked > 300, "seed {seed}: only {checked} deliveries checked");
        assert_converged(&sim);
    }
}

#[test]
fn the_later_connection_wins_after_a_netsplit_heals() {
    for seed in [6u64, 7, 8] {
        let mut sim = Sim::new(10, seed);
        start_all(&mut sim, 5_000);
        // Split 0..5 | 5..10 and let each side see the other down.
        sim.partition((0..10).map(|i| u8::from(i >= 5)).collect());
        sim.run_until(30_000);
        assert_eq!(sim.view(0).len(), 5, "seed {seed}: the sides saw each other fail");
        let first = sim.connect(1, 0, "dup");
        sim.run_until(31_000);
        let second = sim.connect(7, 1, "dup");
        sim.run_until(32_000);
        // Each side kept its connection.
        assert!(sim.nodes[1].shards[0].conns.contains_key(&first));
        assert!(sim.nodes[7].shards[1].conns.contains_key(&second));
        sim.heal();
        sim.run_until(90_000);
        assert_converged(&sim);
        assert!(
            !sim.nodes[1].shards[0].conns.contains_key(&first),
            "seed {seed}: the earlier one ends"
        );
        assert_eq!(sim.nodes[1].shards[0].kicked, vec![("dup".to_owned(), first)]);
        assert!(
            sim.nodes[7].shards[1].conns.contains_key(&second),
            "seed {seed}: the later one stays"
        );
        assert!(sim.nodes[7].shards[1].kicked.is_empty());
        assert_one_connection_per_id(&sim);
    }
}

#[test]
fn a_client_id_connecting_on_another_node_takes_over() {
    let mut sim = Sim::new(5, 9);
    start_all(&mut sim, 5_000);
    for round in 0..20u64 {
        let a = (round % 5) as usize;
        let b = ((round * 3 + 1) % 5) as usize;
        let id = format!("c{round}");
        let first = sim.connect(a, 0, &id);
        sim.run_until(sim.now_ms + 100);
        let second = sim.connect(b, 1, &id);
        sim.run_until(sim.now_ms + 100);
        assert!(!sim.nodes[a].shards[0].conns.contains_key(&first), "{id}: the first ends");
        assert!(sim.nodes[b].shards[1].conns.contains_key(&second), "{id}: the second stays");
    }
    assert_one_connection_per_id(&sim);
    let takeovers: u64 = sim
        .nodes
        .iter()
        .map(|n| n.counters.takeovers.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(takeovers, 20);
}

#[test]
fn sides_find_each_other_after_a_long_netsplit() {
    // Longer than foca keeps down members: each side forgets the other, and only the seeds
    // (all on one side here) bring them together again.
    let mut sim = Sim::new(10, 11);
    start_all(&mut sim, 5_000);
    sim.filter(8, 0, "a/#", true);
    sim.partition((0..10).map(|i| u8::from(i >= 5)).collect());
    sim.run_until(300_000);
    assert_eq!(sim.view(9).len(), 5, "the sides saw each other fail");
    sim.heal();
    sim.run_until(330_000);
    assert_converged(&sim);
}

#[test]
fn a_quickly_restarted_node_replaces_its_old_incarnation() {
    // Restarted before its peers noticed the failure: its links come back to a process that
    // knows nothing, and its peers must drop what the old process told them.
    let mut sim = Sim::new(6, 12);
    start_all(&mut sim, 5_000);
    sim.filter(3, 0, "old/#", true);
    sim.filter(1, 1, "keep/+", true);
    sim.run_until(6_000);
    assert_converged(&sim);
    sim.kill(3);
    sim.run_until(6_100);
    sim.start(3);
    sim.filter(3, 1, "new/#", true);
    sim.run_until(40_000);
    assert_converged(&sim);
    for i in [0usize, 1, 2, 4, 5] {
        let routes = &sim.nodes[i].shards[0].routes[&NodeId(3)];
        assert_eq!(routes.iter().collect::<Vec<_>>(), ["new/#"], "node {i}");
    }
    assert!(sim.nodes[3].shards[0].routes[&NodeId(1)].contains("keep/+"));
}
