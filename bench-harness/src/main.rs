//! The `shardmq-bench` binary: see the crate docs and README.md.

fn main() {
    if let Err(e) = shardmq_bench::cli::main() {
        eprintln!("shardmq-bench: error: {e:#}");
        std::process::exit(1);
    }
}
