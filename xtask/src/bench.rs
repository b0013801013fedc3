//! `cargo xtask bench`: load and latency benchmarks of the gateway (not written yet).

/// Runs the benchmarks with the arguments after `cargo xtask bench`.
pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench is not written yet (args: {args:?})")
}
