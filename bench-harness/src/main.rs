//! The `shardmq-bench` binary: see the crate docs and README.md.

fn main() -> anyhow::Result<()> {
    shardmq_bench::cli::main()
}
