//! The `shardmq` binary: parse the configuration, start the broker, print one
//! `listening on ADDR` line per listener, and shut down gracefully on SIGINT/SIGTERM. A
//! panic on any thread ends the process with exit code 101 (`io::failfast`).

use std::io::Write;

use anyhow::Context;
use shardmq_engine::config::Config;
use shardmq_engine::io::Broker;

/// mimalloc, with glommio's io_memory kept out of huge pages (see `io::alloc`).
#[global_allocator]
static GLOBAL: shardmq_engine::io::alloc::BrokerAlloc = shardmq_engine::io::alloc::BrokerAlloc;

fn main() {
    // `shardmq users add|remove NAME --file FILE`: edit a users file, then exit.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "users") {
        if let Err(e) = shardmq_engine::users_cmd::run(args) {
            eprintln!("shardmq users: error: {e}");
            std::process::exit(2);
        }
        return;
    }
    let config = Config::from_env().unwrap_or_else(|e| e.exit());
    // A shard that panics ends the process at once (see `io::failfast`).
    shardmq_engine::io::failfast::exit_on_panic();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // glommio logs an error when it probes a device for polled IO and the
                // device says no (virtio disks); it then uses the ordinary ring: harmless.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,glommio::reactor=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(&config) {
        eprintln!("shardmq: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Register the handlers before starting, so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let broker = Broker::start(config)?;
    {
        let mut out = std::io::stdout().lock();
        for addr in broker.local_addrs() {
            writeln!(out, "listening on {addr}")?;
        }
        out.flush()?;
    }
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: shutting down");
    }
    broker.shutdown();
    Ok(())
}
