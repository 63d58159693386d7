//! `GET /api/v1/cluster`: this node's view of the cluster (members, their liveness and this
//! node's link to each) and the cluster counters, named as in `$SYS/broker/cluster/…` with
//! `/` written `_`.

use std::sync::atomic::Ordering::Relaxed;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::respond::{error, json, Reply};
use super::HttpState;
use crate::cluster::node::ClusterStatus;
use crate::core::cluster::ClusterCounters;

/// The cluster's members and counters; 404 when this broker is not in a cluster.
pub(crate) async fn cluster(state: &HttpState) -> Reply {
    let Some(view) = state.cluster.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            None,
            "this broker is not in a cluster (no --node-id)",
        );
    };
    // Asking the cluster's main loop may wait (bounded): not on the listener's thread.
    let asked = view.clone();
    let status = match tokio::task::spawn_blocking(move || asked.status()).await {
        Ok(Some(s)) => s,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the cluster runtime did not answer in time",
            )
        }
    };
    json(StatusCode::OK, &body(&status, view.counters()))
}

/// The JSON document (also used by the tests).
pub(crate) fn body(status: &ClusterStatus, c: &ClusterCounters) -> Value {
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node.0,
                "addr": m.addr.to_string(),
                "state": m.state.as_str(),
                "link": m.link.as_str(),
            })
        })
        .collect();
    json!({
        "node_id": status.node.0,
        "members": members,
        "counters": {
            "node_id": c.node_id.load(Relaxed),
            "members": c.members.load(Relaxed),
            "links_up": c.links_up.load(Relaxed),
            "messages_out": c.messages_out.load(Relaxed),
            "messages_in": c.messages_in.load(Relaxed),
            "bytes_out": c.bytes_out.load(Relaxed),
            "bytes_in": c.bytes_in.load(Relaxed),
            "messages_dropped": c.messages_dropped.load(Relaxed),
            "routes_remote": c.remote_routes.load(Relaxed),
            "takeovers": c.takeovers.load(Relaxed),
            "links_handshake_failures": c.link_handshake_failures.load(Relaxed),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::{LinkState, MemberState, MemberStatus};
    use crate::core::cluster::NodeId;

    #[test]
    fn the_body_has_the_documented_shape() {
        let status = ClusterStatus {
            node: NodeId(1),
            members: vec![
                MemberStatus {
                    node: NodeId(1),
                    addr: "127.0.0.11:7000".parse().unwrap(),
                    state: MemberState::Alive,
                    link: LinkState::SelfNode,
                },
                MemberStatus {
                    node: NodeId(2),
                    addr: "127.0.0.12:7000".parse().unwrap(),
                    state: MemberState::Suspect,
                    link: LinkState::Down,
                },
            ],
        };
        let c = ClusterCounters::default();
        c.remote_routes.store(7, Relaxed);
        c.links_up.store(1, Relaxed);
        let v = body(&status, &c);
        assert_eq!(v["node_id"], 1);
        assert_eq!(
            v["members"][1],
            json!({"node_id": 2, "addr": "127.0.0.12:7000", "state": "suspect", "link": "down"})
        );
        assert_eq!(v["members"][0]["link"], "self");
        assert_eq!(v["counters"]["routes_remote"], 7);
        assert_eq!(v["counters"]["links_up"], 1);
        assert_eq!(v["counters"].as_object().unwrap().len(), 11);
    }
}
