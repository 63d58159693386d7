//! Where the broker binaries are: this crate's `target/`, Debian's paths, `PATH`.

use std::path::{Path, PathBuf};

/// The workspace's `target/` directory, from this crate's location at build time.
pub(crate) fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// Finds the shardmq binary: next to this executable, then `target/release`, `target/debug`.
pub fn find_shardmq(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        // Absolute: the broker runs with its run directory as the working directory.
        return p.canonicalize().ok();
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("shardmq"));
            // Integration tests run from target/<profile>/deps.
            if let Some(up) = dir.parent() {
                candidates.push(up.join("shardmq"));
            }
        }
    }
    candidates.push(workspace_target().join("release").join("shardmq"));
    candidates.push(workspace_target().join("debug").join("shardmq"));
    candidates.into_iter().find(|p| p.is_file())
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Finds Mosquitto: explicit, `/usr/sbin/mosquitto`, then `PATH`.
pub fn find_mosquitto(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.canonicalize().ok();
    }
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.is_file() {
        return Some(sbin);
    }
    find_in_path("mosquitto")
}

/// Finds rumqttd: explicit, `bench-harness/.peers/bin/rumqttd`, then `PATH`.
pub fn find_rumqttd(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.canonicalize().ok();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers").join("bin").join("rumqttd");
    if local.is_file() {
        return Some(local);
    }
    find_in_path("rumqttd")
}
