//! `gateway-service`: parse the configuration, start the gateway, stop on SIGTERM/SIGINT.

use clap::Parser;
use gateway_service::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::resolve(Args::parse())?;
    mcp_gateway_telemetry::init_logging(&config.log, config.log_format)?;
    let handle = gateway_service::run(config).await?;
    gateway_service::shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
