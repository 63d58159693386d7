//! What the crash tests share (`crash.rs`, `crash_online.rs`): the `shardmq` binary as a
//! child process killed with SIGKILL, a seeded generator, data directories under cargo's
//! target directory (not `/tmp`, which may be tmpfs: no `O_DIRECT`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::within;

/// Reproducible kill moments and QoS choices: the engine's splitmix64.
#[allow(unused_imports)] // not every test that includes crash_kit uses it
pub use shardmq_engine::splitmix::Rng;

/// The broker as a child process.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts `shardmq --shards 2` on `dir` and waits for its `listening on ADDR` line.
    pub async fn start(dir: &Path, durability: &str) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"])
            .arg("--data-dir")
            .arg(dir)
            .args(["--durability", durability])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting target shardmq binary");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let addr = within("the broker's `listening on ADDR` line", async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(a) = line.strip_prefix("listening on ") {
                            return a.trim().parse::<SocketAddr>().expect("an address");
                        }
                    }
                    _ => panic!("shardmq exited before listening (data dir {})", dir.display()),
                }
            }
        })
        .await;
        // Keep draining stdout so the broker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Broker { child, addr }
    }

    /// SIGKILL, and reap the process.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.expect("wait");
        assert!(!status.success(), "the broker was killed, not exited: {status}");
    }
}

/// A fresh data directory under the target directory.
pub fn data_dir(run: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the data dir");
    dir
}
