//! The `shardmq` binary: parse the configuration, start the broker, print one
//! `listening on ADDR` (or `listening on URL`) line per listener, reload on SIGHUP
//! (`reload.rs`), and shut down gracefully on SIGINT/SIGTERM. A panic on any thread ends the
//! process with exit code 101 (`io::failfast`).

use std::io::Write;

use anyhow::Context;
use shardmq_engine::config::Config;
use shardmq_engine::http;
use shardmq_engine::io::Broker;
use shardmq_engine::reload::Reloader;
use std::sync::Arc;

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
    // `shardmq check-config FILE [FLAGS…]`: check a configuration, then exit.
    if args.get(1).is_some_and(|a| a == "check-config") {
        match shardmq_engine::check_config::run(&args[2..]) {
            Ok(summary) => println!("{summary}"),
            Err(e) => {
                eprintln!("shardmq check-config: error: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let config = Config::from_env().unwrap_or_else(|e| e.exit());
    // A shard that panics ends the process at once (see `io::failfast`).
    shardmq_engine::io::failfast::exit_on_panic();
    shardmq_engine::logging::init(&config.ops.log_level, config.ops.log_format);
    if let Err(e) = run(&config) {
        eprintln!("shardmq: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Register the handlers before starting, so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let broker = Broker::start(config)?;
    let reloader = Arc::new(
        Reloader::new(config.clone(), broker.control())
            .with_cluster_tls(broker.cluster_tls_reloader()),
    );
    let http = match config.ops.http {
        Some(addr) => {
            let token = config.ops.http_token_file.as_deref();
            let tls = config.ops.http_tls.as_ref();
            let bridges = broker.bridges();
            let cluster = broker.cluster_view();
            let control = broker.control();
            let started =
                http::start(addr, token, tls, control, reloader.clone(), bridges, cluster);
            Some(started.map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        // `listening on 127.0.0.1:1883` for plain MQTT, `listening on mqtts://…`,
        // `ws://…/mqtt`, `wss://…/mqtt` for the others.
        for url in broker.listener_urls() {
            writeln!(out, "listening on {url}")?;
        }
        if let Some(h) = &http {
            // `http listening on 127.0.0.1:8080`, or `… on https://127.0.0.1:8443`.
            match config.ops.http_tls {
                Some(_) => writeln!(out, "http listening on https://{}", h.local_addr())?,
                None => writeln!(out, "http listening on {}", h.local_addr())?,
            }
        }
        out.flush()?;
    }
    if let Err(e) = shardmq_engine::sd_notify::notify("READY=1") {
        tracing::warn!("cannot tell systemd the broker is ready: {e}");
    }
    for sig in signals.forever() {
        if sig == SIGHUP {
            let outcome = reloader.reload();
            tracing::info!(
                "SIGHUP: reload {} sent to the shards ({} errors)",
                outcome.generation,
                outcome.errors.len()
            );
            continue;
        }
        tracing::info!("signal {sig}: shutting down");
        break;
    }
    let _ = shardmq_engine::sd_notify::notify("STOPPING=1");
    if let Some(h) = http {
        h.shutdown();
    }
    broker.shutdown();
    Ok(())
}
