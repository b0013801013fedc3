//! `gateway-service`: parse the configuration, start the gateway, stop on SIGTERM/SIGINT.

use clap::Parser;
use gateway_service::{Args, Config};

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees a few dozen small
/// blocks, across threads, and glibc's `malloc`/`free` were 15–20 % of the gateway's
/// instructions per request (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if gateway_service::run_command(&args)? {
        return Ok(());
    }
    gateway_service::serve_until_signal(Config::resolve(args)?).await
}
