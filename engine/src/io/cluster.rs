//! The io side of the cluster: each shard's line to the node's cluster runtime
//! (`engine/src/cluster/`), which the shard's `drain` feeds with the core's
//! [`crate::core::cluster::ClusterOut`] messages. The runtime answers through the control
//! plane (`ControlMsg::Cluster`).

use std::sync::Arc;

use crate::core::cluster::ClusterTx;

/// A shard's line to the node's cluster runtime.
#[derive(Clone)]
pub(crate) struct ClusterLine(pub(crate) Arc<dyn ClusterTx>);

impl std::fmt::Debug for ClusterLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterLine")
    }
}
