//! The `shardmq` binary as a supervisor sees it: restarting on the same port right after a
//! crash or a stop, the permissions of what it writes, and a failing shard ending the process.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use common::{within, Raw};
use shardmq_codec::{Packet, ProtocolVersion, QoS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `shardmq` child process.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    /// Starts `shardmq --shards 2` listening on `listen` (with `args` added) and waits for
    /// its `listening on ADDR` line. Panics with the broker's stderr if it exits first.
    async fn start(listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args(["--listen", listen, "--shards", "2", "--no-pin"])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting target shardmq binary");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = within("the broker's `listening on ADDR` line", lines.next_line()).await;
        let Ok(Some(line)) = line else {
            let out = child.wait_with_output().await.expect("wait");
            panic!(
                "shardmq exited before listening on {listen} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        // Keep draining stdout so the broker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc { child, addr }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit; returns its status and everything it wrote to stderr.
    async fn exited(mut self) -> (ExitStatus, String) {
        let mut stderr = self.child.stderr.take().expect("piped");
        let mut text = String::new();
        let (status, _) = within("the broker to exit", async {
            tokio::join!(self.child.wait(), stderr.read_to_string(&mut text))
        })
        .await;
        (status.expect("wait"), text)
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmq-life-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Connects one client per shard and keeps the sockets open (never reading): the broker's
/// end of each is an accepted connection, the state that used to block a restart's bind.
async fn connect_clients(addr: SocketAddr, prefix: &str) -> Vec<Raw> {
    let mut clients = Vec::new();
    for id in common::ids_on_all_shards(prefix, 4, 2) {
        clients.push(Raw::connect(addr, &id, ProtocolVersion::V3_1_1).await);
    }
    clients
}

/// Restarts on the port the first run picked (port 0) and checks the new process serves it.
async fn restart_on(addr: SocketAddr, args: &[&str], prefix: &str) -> Proc {
    let again = Proc::start(&addr.to_string(), args, &[]).await;
    assert_eq!(again.addr, addr);
    let mut c = Raw::connect(addr, prefix, ProtocolVersion::V3_1_1).await;
    c.send(&Raw::subscribe_packet("restart/check", QoS::AtMostOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))), "SUBACK after restart");
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_on_the_same_port_right_after_kill9_with_clients_connected() {
    let dir = scratch("kill9");
    let data = ["--data-dir", dir.to_str().unwrap()];
    let first = Proc::start("127.0.0.1:0", &data, &[]).await;
    let addr = first.addr;
    let clients = connect_clients(addr, "kill9").await;
    first.signal(libc::SIGKILL);
    let (status, _) = first.exited().await;
    assert!(!status.success(), "killed, not exited: {status}");
    // The clients stay open: the dead broker's sockets linger (FIN_WAIT2 / TIME_WAIT).
    let again = restart_on(addr, &data, "kill9-again").await;
    // SO_REUSEADDR must not let a second broker listen beside a live one.
    let other = scratch("kill9-other");
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["--listen", &addr.to_string(), "--no-pin", "--data-dir", other.to_str().unwrap()])
        .output();
    let out = within("a second broker on a served port to give up", out).await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("address already in use"), "{stderr}");
    drop(clients);
    again.signal(libc::SIGKILL);
    let _ = again.exited().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_on_the_same_port_right_after_a_graceful_stop() {
    let first = Proc::start("127.0.0.1:0", &["--in-memory"], &[]).await;
    let addr = first.addr;
    let mut clients = connect_clients(addr, "graceful").await;
    first.signal(libc::SIGTERM);
    let (status, stderr) = first.exited().await;
    assert!(status.success(), "graceful stop: {status}, stderr: {stderr}");
    // The broker closed first: its ends are in TIME_WAIT once the clients close theirs.
    for c in &mut clients {
        c.until_closed().await;
    }
    drop(clients);
    let again = restart_on(addr, &["--in-memory"], "graceful-again").await;
    again.signal(libc::SIGTERM);
    let (status, _) = again.exited().await;
    assert!(status.success());
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode()
        & 0o777
}

/// Every directory and file under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(&out[i]).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            out.extend(entries);
        }
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_and_log_files_are_private() {
    // Under a permissive umask too: the modes must not depend on it.
    // SAFETY: umask(2) only changes this process's file creation mask (inherited by the child).
    let old = unsafe { libc::umask(0o002) };
    let dir = scratch("perm").join("nested").join("data");
    let data = ["--data-dir", dir.to_str().unwrap()];
    let broker = Proc::start("127.0.0.1:0", &data, &[]).await;
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    // A QoS 1 message for a persistent session: the log holds its payload.
    let mut sub = Raw::open(broker.addr).await;
    sub.send(&Raw::connect_packet("perm-sub", ProtocolVersion::V3_1_1, false)).await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    sub.send(&Raw::subscribe_packet("perm/t", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publisher = Raw::connect(broker.addr, "perm-pub", ProtocolVersion::V3_1_1).await;
    publisher
        .send(&Raw::publish_packet("perm/t", QoS::AtLeastOnce, Some(1), b"secret".into()))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))), "PUBACK: logged");

    let files = tree(&dir);
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "log")), "{files:?}");
    for p in &files {
        let expected = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), expected, "{} is {:o}", p.display(), mode(p));
    }
    // Parents the broker created are private too.
    assert_eq!(mode(dir.parent().unwrap()), 0o700);
    broker.signal(libc::SIGTERM);
    let (status, _) = broker.exited().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(scratch("perm"));
}

/// The fault trigger is compiled into debug builds only (`CoreConfig::fault_panic_topic`).
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_ends_the_process_with_its_message() {
    const TRIGGER: &str = "test/fault/panic";
    let envs = [("SHARDMQ_TEST_PANIC_TOPIC", TRIGGER)];
    let broker = Proc::start("127.0.0.1:0", &["--in-memory"], &envs).await;
    let v = ProtocolVersion::V3_1_1;
    // A client on the healthy shard, and one on the shard that fails.
    let mut healthy = Raw::connect(broker.addr, &common::id_on_shard("fault", 0, 2), v).await;
    let mut failing = Raw::connect(broker.addr, &common::id_on_shard("fault", 1, 2), v).await;
    // Another topic first: only the trigger panics.
    failing.send(&Raw::publish_packet("test/fault/fine", QoS::AtLeastOnce, Some(1), vec![])).await;
    assert!(matches!(failing.recv().await, Some(Packet::PubAck(_))));
    failing.send(&Raw::publish_packet(TRIGGER, QoS::AtMostOnce, None, vec![])).await;
    // No timer: the process must end by itself (`exited` only bounds a hang).
    let (status, stderr) = broker.exited().await;
    assert_eq!(status.code(), Some(101), "{status}, stderr: {stderr}");
    assert!(stderr.contains("thread 'shardmq-shard-1'"), "{stderr}");
    assert!(stderr.contains(&format!("test-only fault: PUBLISH to {TRIGGER}")), "{stderr}");
    // The healthy shard went with it.
    healthy.until_closed().await;
}
