//! The control plane (`io/control.rs`) and reload (`reload.rs`): requests reach every shard
//! of a running broker and are answered; SIGHUP re-reads the configuration file and every
//! shard applies the reload.

mod common;

use std::process::Stdio;

use common::within;
use shardmq_engine::core::ids::ShardId;
use shardmq_engine::io::control::{ControlError, ControlMsg, ControlReply};
use shardmq_engine::reload::build_reload;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_answers_and_a_stopped_one_says_so() {
    let broker = common::broker(2);
    let control = broker.control();
    assert_eq!(control.shard_count(), 2);
    let replies = within("pings", control.ask_all(|_| ControlMsg::Ping)).await;
    assert_eq!(replies.len(), 2);
    for r in replies {
        assert!(matches!(r, Ok(ControlReply::Done)), "{r:?}");
    }
    let (reload, errors) = build_reload(&shardmq_engine::config::Config::local(2));
    assert!(errors.is_empty());
    let reload = std::sync::Arc::new(reload);
    let replies = within("reloads", control.ask_all(|_| ControlMsg::Reload(reload.clone()))).await;
    assert!(replies.iter().all(|r| matches!(r, Ok(ControlReply::Done))), "{replies:?}");
    assert_eq!(
        control.ask(ShardId(7), ControlMsg::Ping).await.unwrap_err(),
        ControlError::NoSuchShard(ShardId(7))
    );
    common::shutdown(broker).await;
    let after = control.ask(ShardId(1), ControlMsg::Ping).await;
    assert_eq!(after.unwrap_err(), ControlError::ShardGone(ShardId(1)));
}

/// The binary reloads on SIGHUP: the new log level from the file applies, and both shards
/// log that they applied the reload (lines that only appear at the new level: the marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file_and_every_shard_applies_it() {
    let dir = std::env::temp_dir().join(format!("shardmq-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "log_level = \"warn\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--in-memory"])
        .arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting target shardmq binary");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("`listening on`", out.next_line()).await.unwrap().unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();

    std::fs::write(&file, "log_level = \"info\"\n").unwrap();
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let mut applied = [false, false];
    within("both shards' `reload applied` lines", async {
        while applied != [true, true] {
            let line = err.next_line().await.unwrap().expect("broker exited");
            if line.contains("reload applied") && line.contains("generation=1") {
                for (i, seen) in applied.iter_mut().enumerate() {
                    *seen |= line.contains(&format!("shard={i}"));
                }
            }
        }
    })
    .await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = within("exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}
