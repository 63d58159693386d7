//! Bridges added and removed at run time (`POST`/`DELETE /api/v1/bridges`): the running
//! [`Bridges`] behind a lock the HTTP thread and the broker's handle share (never a shard),
//! and the shards told the new list of counters for `$SYS` through the control plane.
//!
//! A bridge added this way runs until it is removed or the broker stops; it is not written
//! to the configuration file, so a restart runs the file's bridges only. Its local session
//! is persistent like any bridge's and outlives the removal (until its session expiry), so
//! adding the same bridge back resumes its queue; `discard_session` ends it instead.

use std::sync::{Arc, Mutex};

use super::{AddError, BridgeConfig, Bridges};
use crate::core::shard::BridgeCounters;
use crate::io::control::{Control, ControlMsg};

/// A handle on the running bridges, for the admin API.
#[derive(Debug, Clone)]
pub struct BridgeAdmin {
    bridges: Arc<Mutex<Bridges>>,
    control: Control,
    /// One change at a time, from its start to the shards being told: a removal's join and
    /// its list cannot be overtaken by an addition (the shards would get an older list), and
    /// a name being removed cannot be added again before its thread has stopped.
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl BridgeAdmin {
    pub(crate) fn new(bridges: Arc<Mutex<Bridges>>, control: Control) -> BridgeAdmin {
        BridgeAdmin { bridges, control, changing: Arc::new(tokio::sync::Mutex::new(())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bridges> {
        self.bridges.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The running bridges and their counters, in the order they were started.
    pub fn list(&self) -> Vec<(Arc<BridgeConfig>, Arc<BridgeCounters>)> {
        self.lock().list()
    }

    /// Starts `cfg`, then tells every shard (so `$SYS` reports it). The change runs as a
    /// task of its own: a caller that goes away does not leave it half done.
    pub async fn add(&self, cfg: BridgeConfig) -> Result<Arc<BridgeCounters>, AddError> {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let _one = me.changing.lock().await;
            let (counters, all) = {
                let mut b = me.lock();
                let c = b.add(cfg)?;
                (c, b.counters())
            };
            me.tell_shards(all).await;
            Ok(counters)
        });
        task.await.unwrap_or_else(|e| Err(AddError::Refused(format!("adding the bridge: {e}"))))
    }

    /// Stops the bridge `name` and waits for its thread (off the caller's thread), then
    /// tells the shards; `None` when no such bridge runs.
    pub async fn remove(&self, name: &str) -> Option<Arc<BridgeConfig>> {
        let me = self.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let _one = me.changing.lock().await;
            let (cfg, join, all) = {
                let mut b = me.lock();
                let (cfg, join) = b.remove(&name)?;
                (cfg, join, b.counters())
            };
            let _ = tokio::task::spawn_blocking(join).await;
            me.tell_shards(all).await;
            Some(cfg)
        });
        task.await.ok().flatten()
    }

    async fn tell_shards(&self, all: Vec<Arc<BridgeCounters>>) {
        for r in self.control.ask_all(|_| ControlMsg::Bridges(all.clone())).await {
            if let Err(e) = r {
                tracing::warn!("bridges changed, but a shard was not told: {e}");
            }
        }
    }
}
