//! `gateway-service`: parse the configuration, start the gateway, stop on SIGTERM/SIGINT.

use clap::Parser;
use gateway_service::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if gateway_service::run_command(&args)? {
        return Ok(());
    }
    gateway_service::serve_until_signal(Config::resolve(args)?).await
}
